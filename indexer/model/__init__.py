"""The frame-level quality model: waveform -> frame embeddings + frame MOS (paper 003).

``load_model('balanced-5')`` (the default) loads ``balanced-4`` with a type head: a linear map of
its networks' hidden features and their squares, fitted on the training clips and appended to the
embedding, which then detects and tells degradation types apart better. ``'balanced-4'`` is the shipped ``distilled`` network, the
``telephone-distilled`` network and the ``telephone-3-long`` network (~2.5 s of context) run as one
ensemble, ``'balanced-3'`` ``distilled`` and two seeds of ``telephone-distilled`` as one (the default
before it), ``'balanced-2'`` the ``distilled`` and ``telephone`` networks as one, ``'balanced'`` the
``fast`` and ``telephone`` networks as one, ``'fast'`` the log-mel CNN alone (twice the speed),
``'telephone'`` the same network trained for archives of 8 kHz calls, ``'distilled'`` the fast network
trained to reproduce ``balanced``'s cosines, ``'telephone-3'`` the telephone network taught by
``balanced-3``, ``'accurate'`` the distillmos-front-end model when it is shipped, and any
other value is a checkpoint path. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from indexer.errors import ModelError
from indexer.model.ensemble import EnsembleNetwork, fold_ensemble
from indexer.model.network import FRAME_HOP, FRAME_RATE, FrameNetwork, fold_batchnorm, n_frames
from indexer.records import FrameOutput
from indexer.settings import DEFAULT_MODEL, SHIPPED_MODELS

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED = {name: WEIGHTS_DIR / f"{name}.pt" for name in SHIPPED_MODELS}
MIN_SECONDS = 0.1
# Long signals are cut into windows with context margins so memory stays bounded whatever the length.
WINDOW_FRAMES = 1000  # 20 s
MARGIN_FRAMES = 50  # 1 s of context each side (the receptive field is ~0.7 s)
WINDOWS_PER_BATCH = 8


class FrameModel:
    """A loaded frame model with its calibration (threshold and clean enrollments)."""

    def __init__(self, network: FrameNetwork | EnsembleNetwork, *, model_id: str, name: str, threshold: float,
                 enrollments: dict[str, np.ndarray], meta: dict | None = None) -> None:
        # An inference copy: the caller's network is left as it is.
        self.network = fold_ensemble(network) if isinstance(network, EnsembleNetwork) else fold_batchnorm(network)
        self.model_id = model_id
        self.name = name
        self.threshold = float(threshold)
        self.enrollments = {k: np.asarray(v, dtype=np.float32) for k, v in enrollments.items()}
        self.meta = meta or {}
        self.frame_rate = FRAME_RATE
        self.dim = network.dim

    @property
    def hop_s(self) -> float:
        return 1.0 / self.frame_rate

    def embed(self, samples: np.ndarray) -> FrameOutput:
        """Embed a mono float32 16 kHz signal of at least 0.1 s; frame t covers [t, t+1) x 20 ms."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ModelError(f"expected a mono signal, got shape {x.shape}", "pass one channel at a time")
        if x.size < MIN_SECONDS * 16000:
            raise ModelError(f"signal of {x.size / 16000:.3f} s is shorter than {MIN_SECONDS} s", "pass at least 0.1 s of audio")
        if not np.isfinite(x).all():
            raise ModelError("signal contains NaN or infinite samples", "repair or skip the file")
        t_total = n_frames(x.size)
        padded = np.zeros(t_total * FRAME_HOP, dtype=np.float32)
        padded[: x.size] = x
        win, margin = WINDOW_FRAMES, MARGIN_FRAMES
        starts = list(range(0, t_total, win))
        src = np.pad(padded, (margin * FRAME_HOP, (margin + win) * FRAME_HOP))
        span = (win + 2 * margin) * FRAME_HOP
        emb = np.empty((t_total, self.dim), dtype=np.float32)
        mos = np.empty(t_total, dtype=np.float32)
        with torch.inference_mode():
            for b in range(0, len(starts), WINDOWS_PER_BATCH):
                group = starts[b : b + WINDOWS_PER_BATCH]
                batch = np.stack([src[s * FRAME_HOP : s * FRAME_HOP + span] for s in group])
                if len(starts) == 1:  # short signal: no need to compute the padding window
                    batch = batch[:, : (t_total + 2 * margin) * FRAME_HOP]
                out = self.network(torch.from_numpy(batch), project=False)
                for i, s in enumerate(group):
                    n = min(win, t_total - s)
                    emb[s : s + n] = out["emb"][i, margin : margin + n].numpy()
                    mos[s : s + n] = out["mos"][i, margin : margin + n].numpy()
        return FrameOutput(embeddings=emb, mos=mos, hop_s=self.hop_s)

    def embed_batch(self, signals: list[np.ndarray]) -> list[FrameOutput]:
        """Embed several signals (each as :meth:`embed`)."""
        return [self.embed(s) for s in signals]

    def enrollment_for(self, sample_rate: int) -> np.ndarray:
        """The model's clean enrollment matching a source: narrowband for <= 8 kHz sources."""
        key = "narrowband" if sample_rate <= 8000 and "narrowband" in self.enrollments else "wideband"
        return self.enrollments[key]


def shipped_name(model_id: str) -> str | None:
    """The name of the installed shipped model whose file has ``model_id``, if any."""
    from indexer.model.checkpoint import file_model_id

    return next((name for name, path in SHIPPED.items() if path.is_file() and file_model_id(path) == model_id), None)


def model_path(name_or_path: str | Path) -> Path:
    """The checkpoint file of a shipped model name (a key of ``SHIPPED``) or of a path; a shipped
    name whose file is not installed is a :class:`ModelError` that says how to get it."""
    path = SHIPPED.get(str(name_or_path), Path(name_or_path))
    if str(name_or_path) in SHIPPED and not path.is_file():
        raise ModelError(
            f"the shipped '{name_or_path}' model is not installed at {path}",
            f"reinstall degsearch, or train it: degsearch prepare-data data && degsearch train --preset "
            f"{name_or_path} --data data/shards --out {path}",
        )
    return path


def load_model(name_or_path: str = DEFAULT_MODEL) -> FrameModel:
    """Load a shipped model by name (a key of ``SHIPPED``) or a checkpoint file; never downloads."""
    from indexer.model.checkpoint import file_model_id, network_from_checkpoint, read_checkpoint

    path = model_path(name_or_path)
    ckpt = read_checkpoint(path)
    meta = ckpt["meta"]
    return FrameModel(
        network_from_checkpoint(ckpt),
        model_id=file_model_id(path),
        # A shipped model goes by its shipped name, not the name of the training run that made it.
        name=str(name_or_path) if str(name_or_path) in SHIPPED else meta.get("name", Path(path).stem),
        threshold=meta["threshold"],
        enrollments=meta["enrollments"],
        meta=meta,
    )


__all__ = ["FrameModel", "load_model", "model_path", "shipped_name", "FRAME_RATE"]
