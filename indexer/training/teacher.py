"""MOS teacher for the partial mix-up pseudo-targets (paper 003, eq. 3-4).

Teachers (``make_teacher(name)``), both offline and fast:

- **distillmos v7** (default, ``'distillmos'``): the issue's preferred teacher, a MOS model trained
  on real human speech. ``distillmos.sqa`` imports torchaudio at load (not installable beside
  torch 2.13), so the network is rebuilt here from the package source and loaded from the
  wheel's ``weights/distill_mos_v7.pt``; torchaudio is never imported. Its 7.68 s window is
  zero-padded for short clips, as the package does; the conv front end runs only on the clip
  plus 0.2 s (the padded tail's features are taken from a cached all-zero pass: bit-identical
  output), ~0.12 s per 4 s clip on one thread.
- **DNSMOS P.835** OVRL (``'dnsmos'``) from the ``speechmos`` package's ONNX file
  ``dnsmos_models/sig_bak_ovr.onnx``, run directly with onnxruntime (the package's wrapper
  also runs the P.808 model through librosa, which is not needed): ~0.16 s per clip. The
  first training set (``data/shards/train``) used it. On 60 training examples the two agreed
  moderately (Spearman 0.41 on degraded scores); DNSMOS missed narrowband codecs (GSM, AMR-NB,
  codec2, MP3 scored as clean or better) that distillmos marks down (deg < ref in 77 % vs 72 %).

Eq. 3-4: with the frame mask m_l (1 inside degraded regions), the utterance scores of the clean
clip q_ref and of the fully degraded clip q_deg give per-frame targets
``q_pseudo_l = m_l q_deg + (1 - m_l) q_ref``; the utterance target is their mean (003 sec. 3).
DNSMOS gives utterance scores, so q_ref and q_deg are constant over frames. With several
degradations in one example, each region uses the score of its own degraded version.

Scores are cached per key (e.g. ``(utterance path, clip offset, channel)`` for clean clips);
:class:`TeacherCache` can persist them as JSON lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from indexer.errors import ModelError

SR = 16000
_INPUT_LEN = int(9.01 * SR)


def dnsmos_model_path() -> Path:
    """Path of the DNSMOS P.835 ONNX file shipped inside the ``speechmos`` package."""
    import importlib.util

    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the speechmos package is not installed", "pip install 'degsearch[train]' (speechmos ships DNSMOS)")
    path = Path(list(spec.submodule_search_locations)[0]) / "dnsmos_models" / "sig_bak_ovr.onnx"
    if not path.exists():
        raise ModelError(f"DNSMOS model missing at {path}", "reinstall speechmos")
    return path


class DNSMOSTeacher:
    """DNSMOS P.835 OVRL utterance MOS (1..5) for 16 kHz float32 clips, with a score cache."""

    name = "dnsmos-p835-ovrl"

    def __init__(self, cache: "TeacherCache | None" = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(dnsmos_model_path()), opts, providers=["CPUExecutionProvider"])
        self.cache = cache or TeacherCache()

    def score(self, x: np.ndarray, key: str | None = None) -> float:
        """Utterance MOS of ``x``; clips shorter than 9.01 s are tiled (as the DNSMOS reference does)."""
        if key is not None and key in self.cache:
            return self.cache[key]
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0 or not np.any(x):
            mos = 1.0
        else:
            y = np.tile(x, int(np.ceil(_INPUT_LEN / x.size)))[:_INPUT_LEN] if x.size < _INPUT_LEN else x[:_INPUT_LEN]
            y = np.clip(y, -1.0, 1.0)[None, :]
            _sig, _bak, ovr = self.session.run(None, {"input_1": y})[0][0]
            mos = float(np.clip(np.poly1d([-0.06766283, 1.11546468, 0.04602535])(ovr), 1.0, 5.0))
        if key is not None:
            self.cache[key] = mos
        return mos


def pseudo_targets(frame_mask: np.ndarray, q_ref: float, q_deg: float | np.ndarray) -> tuple[np.ndarray, float]:
    """Eq. 4: per-frame targets ``m q_deg + (1 - m) q_ref`` and their mean as the utterance target.

    ``q_deg`` may be a per-frame array (regions from different degraded versions).
    """
    m = np.asarray(frame_mask, dtype=np.float32)
    q = m * np.asarray(q_deg, dtype=np.float32) + (1.0 - m) * np.float32(q_ref)
    q = q.astype(np.float32)
    return q, float(q.mean()) if q.size else float(q_ref)


class _DistillMOSNet:
    """Builds distillmos v7 (MIT) from its wheel's state dict without importing the package.

    ``distillmos.sqa`` imports torchaudio at module load, which is not installable beside torch
    2.13, so the architecture is rebuilt here from the package source (conv front end on a
    power-law compressed complex STFT, 20 ms window, 10 ms hop; BatchNorm; 7-layer transformer,
    dim 200, 8 heads, fixed 384-frame positional table; attention pooling; sigmoid -> 1 + 4 q).
    Input windows are exactly 7.68 s (122880 samples), peak-normalised, shorter clips zero-padded,
    as the package does.
    """

    SEQ_LEN = 122880

    def __init__(self) -> None:
        import importlib.util

        import torch
        from torch import nn

        spec = importlib.util.find_spec("distillmos")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("the distillmos package is not installed",
                             "pip install --no-deps distillmos==0.9.1 (only its weight file is used)")
        weights = Path(list(spec.submodule_search_locations)[0]) / "weights" / "distill_mos_v7.pt"
        layers: list[nn.Module] = []
        prev = 2
        for i in range(6):
            ch = min(64 * 2 ** max(i - 1, 0), 256)
            layers += [nn.Conv2d(prev, ch, (3, 3), stride=(2 if i >= 1 else 1, 2 if i == 5 else 1), padding=(0, 1)),
                       nn.LeakyReLU(0.1)]
            prev = ch
        cnn = nn.Sequential(*layers)
        enc_layer = nn.TransformerEncoderLayer(d_model=200, dim_feedforward=400, nhead=8, batch_first=True, dropout=0.0)
        net = nn.Module()
        net.cnn = nn.Module()
        net.cnn.cnn = cnn
        tpa = nn.Module()
        tpa.norm_input = nn.BatchNorm1d(1024)
        tpa.transformer = nn.Module()
        tpa.transformer.norm = nn.BatchNorm1d(1024)
        tpa.transformer.position_encoding = nn.Module()
        tpa.transformer.position_encoding.register_buffer("pe", torch.zeros(1, 384, 200))
        tpa.transformer.linear_proj = nn.Linear(1024, 200)
        tpa.transformer.transformer_encoder = nn.TransformerEncoder(enc_layer, num_layers=7, enable_nested_tensor=False)
        tpa.norm_trans = nn.BatchNorm1d(200)
        tpa.pool = nn.Module()
        tpa.pool.linear1 = nn.Linear(200, 400)
        tpa.pool.linear2 = nn.Linear(400, 1)
        tpa.pool.linear3 = nn.Linear(200, 1)
        net.transformer_pool_attn = tpa
        state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
        net.load_state_dict(state)
        net.eval()
        self.net = net
        self.torch = torch
        with torch.inference_mode():
            self._zero_feat = self._cnn(torch.zeros(1, self.SEQ_LEN))

    _MARGIN = 3200  # 0.2 s of zeros after the clip: covers the CNN's temporal receptive field

    def _cnn(self, x):
        """Compressed complex STFT + conv front end: (B, n) -> (B, n / 320, 1024)."""
        torch = self.torch
        F = torch.nn.functional
        x = F.pad(x, (80, 80), mode="reflect")
        spec = torch.stft(x, n_fft=320, hop_length=160, win_length=320, center=False, return_complex=True,
                          window=torch.hann_window(320))
        ri = torch.view_as_real(spec)
        mag = (ri**2).sum(-1, keepdim=True).sqrt()
        comp = (mag.clamp_min(1e-12) ** 0.3 * ri / mag.clamp_min(1e-12)).permute(0, 3, 1, 2)
        return torch.flatten(self.net.cnn.cnn(comp), 1, -2).permute(0, 2, 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(B, n) float32 at 16 kHz, n <= 122880 -> MOS (B,) in 1..5."""
        torch = self.torch
        F = torch.nn.functional
        net = self.net
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        n_valid = -(-min(x.shape[1], self.SEQ_LEN) // 320) * 320  # whole 20 ms steps
        if x.shape[1] < self.SEQ_LEN:
            x = F.pad(x, (0, self.SEQ_LEN - x.shape[1]))
        x = x[:, : self.SEQ_LEN]
        with torch.inference_mode():
            x = x / (x.abs().max(dim=1, keepdim=True).values + 1e-8)
            if n_valid + self._MARGIN < self.SEQ_LEN:
                # Short clip: the zero-padded tail gives the same CNN output as an all-zero window
                # (its STFT is exactly 0), so run the CNN on clip + 0.2 s only and take the tail
                # frames from a cached all-zero pass: identical output, about half the cost.
                part = self._cnn(x[:, : n_valid + self._MARGIN])
                k = (n_valid + self._MARGIN // 2) // 320
                feat = torch.cat([part[:, :k], self._zero_feat[:, k:].expand(x.shape[0], -1, -1)], dim=1)
            else:
                feat = self._cnn(x)  # (B, 384, 1024)
            t = net.transformer_pool_attn
            h = t.norm_input(feat.transpose(-1, -2)).transpose(-1, -2)
            h = t.transformer.norm(h.transpose(-1, -2)).transpose(-1, -2)
            h = t.transformer.linear_proj(h) + t.transformer.position_encoding.pe
            h = t.transformer.transformer_encoder(h)
            h = t.norm_trans(h.transpose(-1, -2)).transpose(-1, -2)
            att = F.softmax(t.pool.linear2(F.relu(t.pool.linear1(h))).transpose(2, 1), dim=2)
            q = torch.sigmoid(t.pool.linear3(torch.bmm(att, h).squeeze(1))).squeeze(-1)
        return (1 + 4 * q).numpy().astype(np.float64)


class DistillMOSTeacher:
    """distillmos v7 utterance MOS (trained on real speech), same interface as :class:`DNSMOSTeacher`."""

    name = "distillmos-v7"

    def __init__(self, cache: "TeacherCache | None" = None) -> None:
        self.net = _DistillMOSNet()
        self.cache = cache or TeacherCache()

    def score(self, x: np.ndarray, key: str | None = None) -> float:
        """Utterance MOS of one clip (<= 7.68 s is one window; longer clips use their first window)."""
        if key is not None and key in self.cache:
            return self.cache[key]
        x = np.asarray(x, dtype=np.float32)
        mos = 1.0 if x.size == 0 or not np.any(x) else float(self.net(x[None, :])[0])
        if key is not None:
            self.cache[key] = mos
        return mos

    def score_batch(self, clips: list[np.ndarray]) -> list[float]:
        """Scores of several equal-length clips in one forward pass."""
        return [float(v) for v in self.net(np.stack(clips))]


def make_teacher(name: str = "dnsmos", cache: "TeacherCache | None" = None) -> "DNSMOSTeacher | DistillMOSTeacher":
    """'dnsmos' (DNSMOS P.835 OVRL, ONNX) or 'distillmos' (distillmos v7 rebuilt in torch)."""
    if name == "dnsmos":
        return DNSMOSTeacher(cache)
    if name == "distillmos":
        return DistillMOSTeacher(cache)
    raise ModelError(f"unknown teacher {name!r}", "use 'dnsmos' or 'distillmos'")


class TeacherCache(dict):
    """A ``dict`` of key -> MOS that can load from and append to a JSON-lines file."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.path = Path(path) if path else None
        self._pending: list[tuple[str, float]] = []
        if self.path and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    k, v = json.loads(line)
                    super().__setitem__(k, float(v))

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        self._pending.append((key, value))

    def flush(self) -> None:
        """Append new entries to the file (no-op without a path)."""
        if self.path and self._pending:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.writelines(json.dumps([k, v]) + "\n" for k, v in self._pending)
        self._pending.clear()
