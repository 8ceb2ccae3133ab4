"""Calibration written into a checkpoint: clean enrollments and the detection threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from indexer.model import FrameModel
from indexer.model.network import FrameNetwork


def frame_eer(scores: np.ndarray, positive: np.ndarray) -> float:
    """Equal error rate (%) of ``scores`` (higher = degraded) against boolean ``positive``."""
    fpr, tpr, _ = roc_curve(positive, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float(100 * (fpr[i] + fnr[i]) / 2)


def eer_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The score threshold at the equal-error point."""
    fpr, tpr, thr = roc_curve(positive, scores)
    i = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    return float(thr[i])


def _mean_clean(model: FrameModel, audio: np.ndarray, labels: np.ndarray) -> np.ndarray:
    frames = [model.embed(a).embeddings[lab[: 200] == 0] for a, lab in zip(audio, labels)]
    v = np.concatenate(frames).mean(0)
    return v / np.linalg.norm(v)


def calibrate(net: FrameNetwork, train: dict[str, np.ndarray], val: dict[str, dict[str, np.ndarray]],
              n_enroll: int = 300) -> dict:
    """Enrollments from clean training frames (wideband and narrowband separately); threshold at the
    equal-error point of the pooled held-out real-speaker validation sets, each scored with the
    enrollment matching its examples' bandwidth. Returns checkpoint metadata."""
    model = FrameModel(net, model_id="calibrating", name="calibrating", threshold=0.0, enrollments={})
    nb = train["narrowband"]
    enroll = {}
    for key, sel in (("wideband", ~nb), ("narrowband", nb)):
        pick = np.flatnonzero(sel)[:n_enroll]
        enroll[key] = _mean_clean(model, train["audio"][pick], train["frame_labels"][pick])
    all_scores, all_pos, per_set = [], [], {}
    for name, arrays in val.items():
        emb = np.stack([model.embed(a).embeddings for a in arrays["audio"]])
        e = np.where(arrays["narrowband"][:, None, None], enroll["narrowband"], enroll["wideband"])
        scores = 1.0 - (emb * e).sum(-1)
        pos = arrays["frame_labels"][:, : emb.shape[1]] != 0
        per_set[f"frame_eer_{name}"] = frame_eer(scores.ravel(), pos.ravel())
        all_scores.append(scores.ravel())
        all_pos.append(pos.ravel())
    threshold = eer_threshold(np.concatenate(all_scores), np.concatenate(all_pos))
    return {"threshold": threshold, "enrollments": enroll, "validation": per_set}
