"""Checkpoint files: network weights plus everything needed to use them.

A checkpoint is one ``torch.save`` dict: ``format``, ``config`` (:class:`NetworkConfig`),
``state_dict`` and ``meta`` (name, frame rate, dimension, calibrated threshold, the wideband and
narrowband clean enrollments, class names, training recipe and validation figures). An ensemble
(:class:`EnsembleNetwork`) has ``members``, a list of ``config`` + ``state_dict`` dicts, in place of
the two and its own ``meta``, and may have ``type_head`` (``weight``, ``bias``, ``type_weight``). The model id is the first 16 hex digits of the file's SHA-256, so
any retrained file gets a new id.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.errors import ModelError
from indexer.model.ensemble import EnsembleNetwork
from indexer.model.network import FRAME_RATE, FrameNetwork, NetworkConfig

FORMAT = "degsearch-frame-model/1"
ENSEMBLE_FORMAT = "degsearch-frame-ensemble/1"


def file_model_id(path: str | Path) -> str:
    """Stable id of a checkpoint file (SHA-256 prefix of its bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _weights(net: FrameNetwork) -> dict[str, Any]:
    return {"config": net.cfg.to_dict(), "state_dict": net.state_dict()}


def save_checkpoint(path: str | Path, network: FrameNetwork | EnsembleNetwork, meta: dict[str, Any]) -> str:
    """Write a checkpoint (a single network or an ensemble) atomically; returns its model id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"frame_rate": FRAME_RATE, "dim": network.dim, **meta}
    meta["enrollments"] = {k: np.asarray(v, dtype=np.float32).tolist() for k, v in meta.get("enrollments", {}).items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    if isinstance(network, EnsembleNetwork):
        body: dict[str, Any] = {"format": ENSEMBLE_FORMAT, "members": [_weights(m) for m in network.members]}
        if network.type_head is not None:
            body["type_head"] = {"weight": network.type_head.weight.detach().clone(), "bias": network.type_head.bias.detach().clone(),
                                 "type_weight": network.type_weight}
    else:
        body = {"format": FORMAT, **_weights(network)}
    torch.save({**body, "meta": meta}, tmp)
    os.replace(tmp, path)
    return file_model_id(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict, with a clear error for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model checkpoint {path} does not exist", "pass --model fast, or train one: degsearch train --preset default")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        raise ModelError(f"{path} is not a readable checkpoint ({exc.__class__.__name__}: {exc})", "re-train or re-download the model file") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, ENSEMBLE_FORMAT):
        raise ModelError(f"{path} is not a degsearch frame-model checkpoint", "pass a file written by degsearch train")
    return ckpt


def network_from_checkpoint(ckpt: dict[str, Any]) -> FrameNetwork | EnsembleNetwork:
    """Rebuild the network of a checkpoint (pretrained encoders are not re-read: the state dict has them)."""
    if ckpt["format"] == ENSEMBLE_FORMAT:
        head, weight = None, 0.0
        if "type_head" in ckpt:
            w = ckpt["type_head"]["weight"]
            head = torch.nn.Linear(w.shape[1], w.shape[0])
            head.load_state_dict({"weight": w, "bias": ckpt["type_head"]["bias"]})
            weight = float(ckpt["type_head"]["type_weight"])
        return EnsembleNetwork([_network(m) for m in ckpt["members"]], head, weight).eval()
    return _network(ckpt)


def _network(weights: dict[str, Any]) -> FrameNetwork:
    net = FrameNetwork(NetworkConfig(**weights["config"]), load_pretrained=False)
    net.load_state_dict(weights["state_dict"])
    return net.eval()


def _synthetic_voice(rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """A speech-like harmonic signal with a wandering pitch and syllable envelope (test material)."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)) ** 2
    return (0.1 * x * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def build_untrained_checkpoint(path: str | Path, seed: int = 0, encoder: str = "logmel_cnn") -> str:
    """Write a randomly initialised model (fast by default; pretrained encoders keep their
    weights) whose enrollments come from synthetic voices.

    Tests use it so they never depend on the shipped weights, and ``bench/bench_embed.py`` to time
    an architecture that has no shipped checkpoint. Returns the model id.
    """
    from indexer.model import FrameModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = FrameNetwork(NetworkConfig(encoder=encoder)).eval()
    model = FrameModel(net, model_id="untrained", name="untrained", threshold=0.0, enrollments={})
    clean = _synthetic_voice(rng, 4.0)
    frames = model.embed(clean).embeddings
    enroll = frames.mean(0)
    enroll /= np.linalg.norm(enroll)
    scores = 1.0 - frames @ enroll
    meta = {
        "name": "untrained",
        "threshold": float(np.quantile(scores, 0.95)),
        "enrollments": {"wideband": enroll, "narrowband": enroll},
        "classes": ["clean"],
        "recipe": {"untrained": True, "seed": seed},
    }
    return save_checkpoint(path, net, meta)
