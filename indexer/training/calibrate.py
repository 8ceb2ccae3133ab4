"""Calibration written into a checkpoint: clean enrollments and the detection threshold."""

from __future__ import annotations

import numpy as np

from indexer.errors import ConfigError
from indexer.model import FrameModel
from indexer.model.ensemble import EnsembleNetwork
from indexer.model.network import FrameNetwork
from indexer.training.frozen import ClipEmbed
from retrieval.evaluation import eer_threshold, equal_error_rate


def model_embedder(net: FrameNetwork | EnsembleNetwork, sets: dict[str, dict[str, np.ndarray]]) -> ClipEmbed:
    """Embeds rows of ``sets`` (name -> shard arrays) through the model, as the indexer would."""
    model = FrameModel(net, model_id="training", name="training", threshold=0.0, enrollments={})
    return lambda name, rows: np.stack([model.embed(a).embeddings for a in sets[name]["audio"][rows]])


def calibrate(net: FrameNetwork | EnsembleNetwork, train: dict[str, np.ndarray], val: dict[str, dict[str, np.ndarray]],
              n_enroll: int = 300, embed: ClipEmbed | None = None) -> dict:
    """Enrollments from clean training frames (wideband and narrowband separately); threshold at the
    equal-error point of the pooled held-out real-speaker validation sets, each scored with the
    enrollment matching its examples' bandwidth. ``embed`` (set name, rows) gives the clips'
    embeddings ("train" names ``train``; default: through ``net``). Returns checkpoint metadata."""
    embed = embed or model_embedder(net, {"train": train, **val})
    nb = train["narrowband"]
    enroll = {}
    for key, sel in (("wideband", ~nb), ("narrowband", nb)):
        pick = np.flatnonzero(sel)[:n_enroll]
        if not pick.size:
            raise ConfigError(f"no {key} clips among the training clips to take the {key} enrollment from",
                              "train on clips of both bandwidths (check --real-only and --real-share)")
        emb = embed("train", pick)
        v = emb[train["frame_labels"][pick][:, : emb.shape[1]] == 0].mean(0)
        enroll[key] = v / np.linalg.norm(v)
    all_scores, all_pos, per_set = [], [], {}
    for name, arrays in val.items():
        emb = embed(name, np.arange(len(arrays["audio"])))
        e = np.where(arrays["narrowband"][:, None, None], enroll["narrowband"], enroll["wideband"])
        scores = 1.0 - (emb * e).sum(-1)
        pos = arrays["frame_labels"][:, : emb.shape[1]] != 0
        per_set[f"frame_eer_{name}"] = 100.0 * equal_error_rate(scores.ravel(), pos.ravel())
        all_scores.append(scores.ravel())
        all_pos.append(pos.ravel())
    threshold = eer_threshold(np.concatenate(all_scores), np.concatenate(all_pos))
    return {"threshold": threshold, "enrollments": enroll, "validation": per_set}
