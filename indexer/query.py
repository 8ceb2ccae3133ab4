"""A query clip -> one vector to search the store with (``degsearch search CLIP``, the API's uploads)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.audio import MIN_DURATION_S, TARGET_SR, load_audio
from indexer.detect import SegmentDetector
from indexer.enrollment import clean_detection
from indexer.errors import AudioDecodeError, ModelError
from indexer.settings import Settings

if TYPE_CHECKING:
    from indexer.model import FrameModel
    from retrieval.store import Store


def embed_clip(model: FrameModel, path_or_samples: str | Path | np.ndarray, *, whole: bool = False,
               store: Store | None = None, settings: Settings | None = None) -> np.ndarray:
    """One L2-normalised query vector for a clip (a path, or mono 16 kHz samples).

    Channels are averaged to mono. By default the frames inside detected segments (same detection
    as indexing) are averaged; if none are detected, frames whose score exceeds the threshold; if
    none either (a clean clip), every frame. ``whole=True`` averages every frame.
    """
    from indexer.settings import get_settings

    settings = settings or (store.settings if store is not None else get_settings())
    if isinstance(path_or_samples, np.ndarray):
        mono = np.asarray(path_or_samples, dtype=np.float32).reshape(-1)
        sample_rate = TARGET_SR
    else:
        audio = load_audio(path_or_samples)
        mono = audio.samples.mean(axis=0).astype(np.float32)
        sample_rate = audio.orig_sr
    if mono.size < int(MIN_DURATION_S * TARGET_SR):
        raise AudioDecodeError(str(path_or_samples) if not isinstance(path_or_samples, np.ndarray) else "<samples>",
                               f"clip too short ({mono.size / TARGET_SR * 1000:.0f} ms)", "use a clip of at least 0.1 s")
    if not np.isfinite(mono).all():
        raise AudioDecodeError("<samples>", "contains NaN/inf samples", "pass finite samples")
    frames = model.embed(mono)
    emb = frames.embeddings.astype(np.float64)
    chosen = emb
    if not whole and len(frames):
        enrollment, threshold = clean_detection(store, model, settings, sample_rate=sample_rate)
        # merge_gap_s=0: a merge would add the clean frames between two segments to the query's frames
        det = SegmentDetector(enrollment, threshold, channel=0, hop_s=frames.hop_s,
                              params=replace(settings.detection, merge_gap_s=0.0))
        segs = det.push(frames) + det.finish()
        if segs:
            idx = np.concatenate([np.arange(round(s.start_s / frames.hop_s), round(s.end_s / frames.hop_s)) for s in segs])
            chosen = emb[np.clip(idx, 0, len(emb) - 1)]
        else:
            scores = 1.0 - emb @ (enrollment / np.linalg.norm(enrollment))
            if (scores > threshold).any():
                chosen = emb[scores > threshold]
    vec = chosen.mean(axis=0) if len(chosen) else np.zeros(model.dim)
    norm = float(np.linalg.norm(vec))
    if norm == 0:
        raise ModelError("the clip's frame embeddings average to zero", "use a longer or different clip")
    return (vec / norm).astype(np.float32)
