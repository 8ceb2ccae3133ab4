"""The frame network: an encoder (one of several) followed by 003's decoders.

Every encoder maps a (B, N) 16 kHz waveform to (B, C, T) features at 50 frames/s with
T = ceil(N / 320); the shared temporal head adds context, then the heads give the frame MOS
(1..5), the 64-d L2-normalised embedding (what is indexed) and the 128-d projection that only
the contrastive loss sees.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from indexer.features import HOP, N_FFT, N_MELS, log_mel

FRAME_HOP = 320  # samples per output frame at 16 kHz: 20 ms, 50 frames/s
FRAME_RATE = 16000 / FRAME_HOP


@dataclass
class NetworkConfig:
    """Architecture hyper-parameters, stored in every checkpoint."""

    encoder: str = "logmel_cnn"  # logmel_cnn | distillmos | hf:<dir>
    channels: list[int] = field(default_factory=lambda: [24, 32, 64, 64])
    hidden: int = 192
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    emb_dim: int = 64
    proj_dim: int = 128
    freeze_encoder: bool = False
    # Fast encoder's front end: log-mel bands and analysis window (samples at 16 kHz; hop 10 ms).
    n_mels: int = N_MELS
    n_fft: int = N_FFT

    def to_dict(self) -> dict:
        return asdict(self)


def n_frames(n_samples: int) -> int:
    """Output frames for a signal of ``n_samples``: frame t covers [t, t+1) * 20 ms."""
    return max(1, math.ceil(n_samples / FRAME_HOP))


class LogMelCNN(nn.Module):
    """Fast encoder: 2-D convs over log-mels (64 by default), stride 2 in time (100 -> 50 Hz) in the first layer."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.n_mels, self.n_fft = cfg.n_mels, cfg.n_fft
        layers: list[nn.Module] = []
        in_ch, mels = 1, cfg.n_mels
        for i, ch in enumerate(cfg.channels):
            # Stride time once, in the first layer, and frequency in every layer: the 2-D convs
            # then run at 50 Hz on ever fewer bands, which keeps the encoder ~1,000x real time.
            stride = (2, 2) if i == 0 else (2, 1)
            layers += [nn.Conv2d(in_ch, ch, 3, stride=stride, padding=1), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
            mels = (mels + 1) // 2
            in_ch = ch
        self.convs = nn.Sequential(*layers)
        self.out_channels = in_ch * mels

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        feats = self.features(audio)
        return self.forward_features(feats)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """This encoder's log-mel front end: (B, N) waveform -> (B, n_mels, 1 + N // HOP)."""
        return log_mel(audio, self.n_mels, self.n_fft)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.convs(feats.unsqueeze(1))  # (B, C, M', T50+1)
        b, c, m, t = x.shape
        return x.reshape(b, c * m, t)


class DistillMOSFrontEnd(nn.Module):
    """The pretrained conv front end of the ``distillmos`` package (MIT), rebuilt without torchaudio.

    Six Conv2d layers on a power-law (0.3) compressed complex STFT (20 ms window, 10 ms hop), the
    last one striding time by 2 -> 50 frames/s. Weights are read from the installed wheel's
    ``distillmos/weights/distill_mos_v7.pt`` (no network).
    """

    win, hop = 320, 160

    def __init__(self, load_weights: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fdim, prev = 161, 2
        for i in range(6):
            ch = min(64 * 2 ** max(i - 1, 0), 256)
            layers += [nn.Conv2d(prev, ch, 3, stride=(2 if i >= 1 else 1, 2 if i == 5 else 1), padding=(0, 1)), nn.LeakyReLU(0.1)]
            fdim = (fdim - 3) // (2 if i >= 1 else 1) + 1
            prev = ch
        self.cnn = nn.Sequential(*layers)
        self.out_channels = prev * fdim
        if load_weights:
            self.cnn.load_state_dict(distillmos_cnn_state())

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # distillmos peak-normalises every input window; its weights expect that level range.
        audio = audio / (audio.abs().amax(-1, keepdim=True) + 1e-8)
        pad = (self.win - self.hop) // 2
        x = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(x, self.win, self.hop, window=torch.hann_window(self.win, device=x.device), center=False, return_complex=True)
        spec = torch.view_as_real(spec)
        mag = spec.square().sum(-1, keepdim=True).sqrt().clamp_min(1e-12)
        comp = (mag**0.3 * spec / mag).permute(0, 3, 1, 2)  # (B, 2, F, T)
        x = self.cnn(comp)
        return torch.flatten(x, 1, -2)


def distillmos_cnn_state() -> dict[str, torch.Tensor]:
    """The distillmos v7 front-end weights from the installed package, keyed for ``nn.Sequential``."""
    from importlib.util import find_spec
    from pathlib import Path

    from indexer.errors import ModelError

    spec = find_spec("distillmos")
    if spec is None or spec.origin is None:
        raise ModelError("the distillmos package is not installed", "pip install --no-deps distillmos==0.9.1")
    path = Path(spec.origin).parent / "weights" / "distill_mos_v7.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    return {k.removeprefix("cnn.cnn."): v for k, v in state.items() if k.startswith("cnn.cnn.")}


class HFEncoder(nn.Module):
    """Any transformers audio encoder (wav2vec2, WavLM, HuBERT) loaded from a local directory."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, config=config, local_files_only=True)
        self.out_channels = int(config.hidden_size)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        audio = (audio - audio.mean(-1, keepdim=True)) / (audio.std(-1, keepdim=True) + 1e-5)
        return self.model(audio).last_hidden_state.transpose(1, 2)


class ResBlock(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, padding=dilation, dilation=dilation)
        self.norm = nn.BatchNorm1d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.norm(self.conv(x)))


class FrameNetwork(nn.Module):
    """Encoder + temporal head (~600 ms receptive field) + MOS / embedding / projection heads."""

    def __init__(self, cfg: NetworkConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.encoder == "logmel_cnn":
            self.encoder: nn.Module = LogMelCNN(cfg)
        elif cfg.encoder == "distillmos":
            self.encoder = DistillMOSFrontEnd(load_weights=load_pretrained)
        elif cfg.encoder.startswith("hf:"):
            self.encoder = HFEncoder(cfg.encoder[3:])
        else:
            from indexer.errors import ModelError

            raise ModelError(f"unknown encoder {cfg.encoder!r}", "use logmel_cnn, distillmos or hf:/path/to/model_dir")
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        self.inp = nn.Sequential(nn.Conv1d(self.encoder.out_channels, cfg.hidden, 1), nn.BatchNorm1d(cfg.hidden), nn.ReLU())
        self.temporal = nn.Sequential(*[ResBlock(cfg.hidden, d) for d in cfg.dilations])
        self.mos_head = nn.Conv1d(cfg.hidden, 1, 1)
        self.emb_head = nn.Conv1d(cfg.hidden, cfg.emb_dim, 1)
        self.proj_head = nn.Sequential(nn.Conv1d(cfg.emb_dim, cfg.proj_dim, 1), nn.ReLU(), nn.Conv1d(cfg.proj_dim, cfg.proj_dim, 1))

    @property
    def dim(self) -> int:
        """Dimension of the indexed embedding."""
        return self.cfg.emb_dim

    def forward(self, audio: torch.Tensor, feats: torch.Tensor | None = None, *, project: bool = True) -> dict[str, torch.Tensor]:
        """(B, N) waveform (or precomputed log-mel ``feats`` for the fast encoder) -> per-frame outputs.

        Returns ``emb`` (B, T, D) L2-normalised, ``mos`` (B, T) in 1..5, ``hidden`` (B, T, H), the
        temporal head's output that both heads read (an ensemble's type head reads it too) and, with
        ``project`` (training: only the loss uses it), ``proj`` (B, T, P) L2-normalised; T = ceil(N / 320).
        """
        return self.decode(self.encode(audio, feats), n_frames(audio.shape[-1]), project=project)

    def encode(self, audio: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's (B, C, T') features (``feats``: precomputed log-mels for the fast encoder)."""
        return self.encoder.forward_features(feats) if feats is not None else self.encoder(audio)

    def decode(self, h: torch.Tensor, t: int, *, project: bool = True) -> dict[str, torch.Tensor]:
        """Encoder features -> the outputs of :meth:`forward` for ``t`` frames (training a frozen
        encoder feeds features computed once, :mod:`indexer.training.frozen`)."""
        h = self.temporal(self.inp(fit_length(h, t)))
        emb = F.normalize(self.emb_head(h), dim=1)
        mos = 1.0 + 4.0 * torch.sigmoid(self.mos_head(h).squeeze(1))
        out = {"emb": emb.transpose(1, 2), "mos": mos, "hidden": h.transpose(1, 2)}
        if project:
            out["proj"] = F.normalize(self.proj_head(emb), dim=1).transpose(1, 2)
        return out


def fold_batchnorm(net: FrameNetwork) -> FrameNetwork:
    """An inference copy of ``net`` with every BatchNorm folded into the convolution before it.

    Same outputs (to float rounding) in eval mode, ~1.5x faster on CPU: the fast model spends
    most of its time in these small convolutions.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(seq: nn.Sequential) -> nn.Sequential:
        out: list[nn.Module] = []
        for m in seq:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and out and isinstance(out[-1], (nn.Conv1d, nn.Conv2d)):
                out[-1] = fuse_conv_bn_eval(out[-1], m)
            else:
                out.append(m)
        return nn.Sequential(*out)

    folded = copy.deepcopy(net).eval()
    if isinstance(folded.encoder, LogMelCNN):
        folded.encoder.convs = fold(folded.encoder.convs)
    folded.inp = fold(folded.inp)
    for block in folded.temporal:
        block.conv = fuse_conv_bn_eval(block.conv, block.norm)
        block.norm = nn.Identity()
    return folded


def fit_length(h: torch.Tensor, t: int) -> torch.Tensor:
    """Crop or edge-pad the encoder's time axis to exactly ``t`` frames (encoders differ by a frame)."""
    if h.shape[-1] >= t:
        return h[..., :t]
    return F.pad(h, (0, t - h.shape[-1]), mode="replicate")


def feature_hop_ratio() -> int:
    """Log-mel frames per output frame (used to crop feature windows)."""
    return FRAME_HOP // HOP
