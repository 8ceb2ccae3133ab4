"""Training on a frozen pretrained encoder: each clip's encoder features computed once, not every step.

While the encoder is frozen a clip's features never change, and the distillmos front end costs
about 60 times the fast model's whole network on CPU (MODEL_CARD, Speed). The default step budget
visits every clip about 55 times, so computing the features once is what makes a CPU run of the
``accurate`` preset fit. Both pretrained encoders are level-invariant (distillmos peak-normalises,
the transformers encoders standardise), so the training gain augmentation does not change their
features and the cache is exact.

Features are kept as float16 ``.npy`` files beside the shards, named by encoder, margin and a
fingerprint of the audio, and reused by the next run on the same shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from indexer.model.network import FRAME_HOP, FrameNetwork, fit_length, n_frames

# A set name ("train" or a validation set) and row indices -> (rows, frames, dim) embeddings.
ClipEmbed = Callable[[str, np.ndarray], np.ndarray]


def cache_path(shard_dir: Path, encoder: str, audio: np.ndarray, margin: int) -> Path:
    """Where the features of ``audio`` (N, samples) under ``encoder`` with ``margin`` frames of zeros are kept."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{encoder}|{audio.shape}|{margin}".encode())
    digest.update(np.ascontiguousarray(audio[:, ::997]).tobytes())  # a sparse sample: cheap, and any re-render changes it
    return shard_dir / f"encoded-{digest.hexdigest()}.npy"


def encode_clips(net: FrameNetwork, audio: np.ndarray, margin: int, path: Path | None = None, *,
                 batch_size: int = 16, log: Callable[[str], None] | None = None) -> np.ndarray:
    """The frozen encoder's (N, C, T + 2 * margin) float16 features of ``audio`` (N, samples).

    ``margin`` frames of zeros pad each side, as :meth:`FrameModel.embed` pads a short signal, so
    validation through the cache scores exactly what the shipped model would. With ``path`` the
    result is read from there when present, else written there (via a ``.partial`` file).
    """
    if path is not None and path.is_file():
        return np.load(path, mmap_mode="r")
    pad = margin * FRAME_HOP
    t = n_frames(audio.shape[1]) + 2 * margin
    out: np.ndarray | None = None
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(audio), batch_size):
            batch = torch.from_numpy(np.pad(audio[start:start + batch_size], ((0, 0), (pad, pad))))
            h = net.encode(batch)
            h = fit_length(h, t)
            if out is None:
                shape = (len(audio), h.shape[1], t)
                out = (np.lib.format.open_memmap(path.with_suffix(".partial"), mode="w+", dtype=np.float16, shape=shape)
                       if path is not None else np.empty(shape, np.float16))
            out[start:start + len(h)] = h.numpy().astype(np.float16)
            if log and (start // batch_size) % 50 == 0:
                log(f"encoded {start + len(h)}/{len(audio)} clips")
    assert out is not None
    if path is not None:
        out.flush()  # type: ignore[attr-defined]
        del out
        path.with_suffix(".partial").rename(path)
        return np.load(path, mmap_mode="r")
    return out


def decode_clips(net: FrameNetwork, features: np.ndarray, margin: int, *, batch_size: int = 64) -> np.ndarray:
    """(N, T, D) embeddings from cached encoder features, the ``margin`` frames each side dropped."""
    t = features.shape[-1]
    rows = []
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            h = torch.from_numpy(np.asarray(features[start:start + batch_size], dtype=np.float32))
            rows.append(net.decode(h, t, project=False)["emb"][:, margin:t - margin].numpy())
    return np.concatenate(rows)


def cached_embedder(net: FrameNetwork, caches: dict[str, tuple[np.ndarray, int]]) -> ClipEmbed:
    """Embeds rows of each set from its cached (features, margin), through ``net``'s head only."""
    return lambda name, rows: decode_clips(net, caches[name][0][rows], caches[name][1])
