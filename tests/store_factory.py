"""Stores for tests, written through ``Store.write_recording`` with synthetic RecordingResults
(no model needed), and helpers that read back what the indexer stored.

- ``populate_api_store``: a small store for the HTTP API (stereo 8 kHz WAV files, segments with
  known vectors: a segment's nearest neighbours are the other segments of its recording);
- ``build_planted_store``: segment vectors are noisy copies of planted cluster centres, and the
  ground truth travels with the store;
- ``store_recording`` / ``fill_store``: random unit vectors, for the store's own tests.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from tests.audio_factory import write_speechlike_wav

API_SAMPLE_RATE = 8000
API_RECORDING_S = 3.0
# (channel, start_s, end_s) of the segments written for every recording.
API_SEGMENT_LAYOUT = ((0, 0.5, 1.0), (0, 1.5, 2.2), (1, 0.8, 1.6))


@dataclasses.dataclass
class ApiStore:
    """What a test needs to know about the store the fixture built."""

    settings: object  # indexer.settings.Settings
    model: object  # indexer.model.FrameModel
    audio_dir: Path
    recording_ids: list[int]
    segments: list[dict]  # id, recording_id, channel, start_s, end_s, vector, path


def populate_api_store(settings, model, audio_dir: Path, n_recordings: int = 3, seed: int = 0,
                       first_index: int = 0) -> ApiStore:
    """Write ``n_recordings`` WAV files and commit one synthetic RecordingResult per file.

    Recording r's segments are noisy copies of a per-recording random direction, so a segment's
    nearest neighbours are the other segments of its own recording.
    """
    from indexer.records import DetectedSegment, RecordingResult
    from retrieval.models import Segment
    from retrieval.store import Store

    rng = np.random.default_rng(seed)
    audio_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings)
    recording_ids, segments = [], []
    try:
        store.ensure_model(model.model_id, model.name, model.frame_rate, model.dim, model.threshold, {})
        run_id = store.start_run(model.model_id, {"test": "api"})
        for r in range(first_index, first_index + n_recordings):
            path = write_speechlike_wav(audio_dir / f"call_{r:03d}.wav", seed=seed + r)
            center = rng.standard_normal(model.dim)
            detected = []
            for channel, start, end in API_SEGMENT_LAYOUT:
                v = center / np.linalg.norm(center) + 0.15 * rng.standard_normal(model.dim) / np.sqrt(model.dim)
                v = (v / np.linalg.norm(v)).astype(np.float32)
                detected.append(DetectedSegment(channel=channel, start_s=start, end_s=end, n_frames=int((end - start) * 50),
                                                embedding=v, mos=2.0 + 0.1 * r, score=0.4))
            result = RecordingResult(
                path=str(path), content_hash=f"hash-{seed}-{r}", duration_s=API_RECORDING_S, sample_rate=API_SAMPLE_RATE,
                channels=2, model_id=model.model_id, segments=detected, analysed_s=2 * API_RECORDING_S,
                degraded_s=sum(s.duration_s for s in detected), mean_mos=3.0, attributes={"site": "paris" if r % 2 else "lyon"},
            )
            rec_id = store.write_recording(result, run_id)
            recording_ids.append(rec_id)
            with store.session() as session:
                rows = session.query(Segment).filter(Segment.recording_id == rec_id).order_by(Segment.start_s, Segment.channel).all()
                by_key = {(row.channel, round(row.start_s, 3)): row.id for row in rows}
            for seg in detected:
                segments.append({"id": by_key[(seg.channel, round(seg.start_s, 3))], "recording_id": rec_id, "channel": seg.channel,
                                 "start_s": seg.start_s, "end_s": seg.end_s, "vector": seg.embedding, "path": str(path)})
        store.finish_run(run_id, status="done", files_indexed=n_recordings, files_skipped=0, files_failed=0,
                         audio_seconds=n_recordings * API_RECORDING_S, wall_seconds=0.1)
        store.flush_index()
    finally:
        store.close()
    return ApiStore(settings, model, audio_dir, recording_ids, segments)


RET_DIM = 64
RET_MODEL_ID = "test-model-retrieval"
RET_SITES = ("paris", "lyon", "nice")
RET_BASE_TIME = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


@dataclasses.dataclass
class PlantedStore:
    """A store of planted clusters and the truth about every segment written to it."""

    settings: object  # indexer.settings.Settings
    centres: np.ndarray  # (n_clusters, dim), L2-normalised
    recordings: list[dict]  # id, path, attributes, channels, duration_s, analysed_s, degraded_s, indexed_at
    segments: list[dict]  # id, recording_id, channel, start_s, end_s, mos, label, cluster, vector

    def store(self, readonly: bool = False):
        from retrieval.store import Store

        return Store.open(self.settings, readonly=readonly)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build_planted_store(store_dir: Path, *, n_recordings: int = 30, n_clusters: int = 4, noise: float = 0.35,
                        seed: int = 0, wav_dir: Path | None = None, factory: str = "Flat",
                        model_id: str = RET_MODEL_ID, database_url: str | None = None) -> PlantedStore:
    """Write ``n_recordings`` synthetic recordings (2 channels, 0-8 segments each, one of which
    may have none) whose segment vectors sit around ``n_clusters`` random centres.

    Segment labels are ``deg<cluster>``; recordings get agent/site/date attributes and distinct
    ``indexed_at`` times (one hour apart). With ``wav_dir``, a real 8 kHz stereo WAV is written
    for each recording (4 s long) so segments can be cut from it.
    """
    from sqlalchemy import update

    from indexer.records import DetectedSegment, RecordingResult
    from indexer.settings import get_settings
    from retrieval.models import Recording, Segment
    from retrieval.store import Store

    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((n_clusters, RET_DIM)))
    settings = get_settings(store_dir=store_dir, faiss_factory=factory, database_url=database_url)
    store_dir.mkdir(parents=True, exist_ok=True)
    if wav_dir is not None:
        wav_dir.mkdir(parents=True, exist_ok=True)
    recordings, segments = [], []
    store = Store.open(settings)
    try:
        store.ensure_model(model_id, "planted", 50.0, RET_DIM, 0.3, {})
        run_id = store.start_run(model_id, {"test": "retrieval"})
        for r in range(n_recordings):
            duration = 4.0 if wav_dir is not None else float(rng.uniform(20, 60))
            if wav_dir is not None:
                path = str(write_speechlike_wav(wav_dir / f"call_{r:03d}.wav", seconds=duration, seed=seed + r))
            else:
                path = f"/archive/{RET_SITES[r % 3]}/2024-05-{1 + r % 5:02d}/call_{r:03d}.wav"
            n_seg = 0 if r == 1 else int(rng.integers(1, 9))
            detected, truth = [], []
            for _ in range(n_seg):
                cluster = int(rng.integers(n_clusters))
                channel = int(rng.integers(2))
                seg_len = float(rng.uniform(0.3, min(3.0, duration / 3)))
                start = round(float(rng.uniform(0, duration - seg_len)), 3)
                end = round(start + seg_len, 3)
                vector = _unit(centres[cluster] + noise * rng.standard_normal(RET_DIM) / np.sqrt(RET_DIM))
                mos = float(rng.uniform(1.2, 4.0))
                detected.append(DetectedSegment(channel=channel, start_s=start, end_s=end, n_frames=int(seg_len * 50),
                                                embedding=vector, mos=mos, score=0.5, label=f"deg{cluster}"))
                truth.append({"recording_index": r, "channel": channel, "start_s": start, "end_s": end, "mos": mos,
                              "label": f"deg{cluster}", "cluster": cluster, "vector": vector})
            attributes = {"agent": f"A{r % 4}", "site": RET_SITES[r % 3], "date": f"2024-05-{1 + r % 5:02d}", "queue": r % 2}
            degraded = sum(s.duration_s for s in detected)
            result = RecordingResult(path=path, content_hash=f"planted-{seed}-{r}", duration_s=duration, sample_rate=8000,
                                     channels=2, model_id=model_id, segments=detected, analysed_s=2 * duration,
                                     degraded_s=degraded, mean_mos=3.0, attributes=attributes)
            rec_id = store.write_recording(result, run_id)
            indexed_at = RET_BASE_TIME + timedelta(hours=r)
            with store.engine.begin() as conn:  # spread indexing times so date filters have something to cut
                conn.execute(update(Recording).where(Recording.id == rec_id).values(indexed_at=indexed_at))
            with store.session() as session:
                rows = session.query(Segment).filter(Segment.recording_id == rec_id).all()
                by_key = {(row.channel, round(row.start_s, 3), round(row.end_s, 3)): row.id for row in rows}
            for t in truth:
                t["id"] = by_key[(t["channel"], t["start_s"], t["end_s"])]
                t["recording_id"] = rec_id
                t["path"] = path
                segments.append(t)
            recordings.append({"id": rec_id, "path": path, "attributes": attributes, "channels": 2, "duration_s": duration,
                               "analysed_s": 2 * duration, "degraded_s": degraded, "indexed_at": indexed_at})
        store.finish_run(run_id, status="done", files_indexed=n_recordings, files_skipped=0, files_failed=0,
                         audio_seconds=sum(r["duration_s"] for r in recordings), wall_seconds=0.1)
        store.flush_index()
    finally:
        store.close()
    return PlantedStore(settings, centres, recordings, segments)


STORE_DIM = 16
STORE_MODEL_ID = "test-model-store"


def store_recording(path: str, n_segments: int = 3, *, dim: int = STORE_DIM, seed: int = 0,
                    model_id: str = STORE_MODEL_ID, content_hash: str | None = None):
    """A RecordingResult for ``path`` with ``n_segments`` segments of random unit vectors."""
    from indexer.records import DetectedSegment, RecordingResult

    rng = np.random.default_rng(seed)
    segments = []
    for j in range(n_segments):
        v = rng.standard_normal(dim).astype(np.float32)
        segments.append(DetectedSegment(channel=j % 2, start_s=0.5 * j, end_s=0.5 * j + 0.4, n_frames=20,
                                        embedding=v / np.linalg.norm(v), mos=2.0 + 0.1 * j, score=0.4))
    return RecordingResult(path=path, content_hash=content_hash or f"hash-{path}-{seed}", duration_s=10.0,
                           sample_rate=8000, channels=2, model_id=model_id, segments=segments, analysed_s=20.0,
                           degraded_s=0.4 * n_segments, mean_mos=3.2, attributes={"seed": seed})


def fill_store(store, n_recordings: int, n_segments: int = 3, *, dim: int = STORE_DIM, seed: int = 0) -> list[int]:
    """Write ``n_recordings`` synthetic recordings through the store; returns their recording ids."""
    store.ensure_model(STORE_MODEL_ID, "test", 50.0, dim, 0.3, {})
    run_id = store.start_run(STORE_MODEL_ID, {"test": True})
    ids = [store.write_recording(store_recording(f"/archive/call_{i:04d}.wav", n_segments, dim=dim, seed=seed + i), run_id)
           for i in range(n_recordings)]
    store.finish_run(run_id, status="done", files_indexed=n_recordings, files_skipped=0, files_failed=0,
                     audio_seconds=10.0 * n_recordings, wall_seconds=0.1)
    return ids


def store_invariants(settings) -> dict:
    """Counts that must hold for any store: segments without a vector, orphan vectors, FAISS == DB."""
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            segments = conn.execute(text("SELECT count(*) FROM segments")).scalar_one()
            vectors = conn.execute(text("SELECT count(*) FROM segment_vectors")).scalar_one()
            no_vector = conn.execute(text(
                "SELECT count(*) FROM segments s LEFT JOIN segment_vectors v ON v.segment_id = s.id "
                "WHERE v.segment_id IS NULL")).scalar_one()
            orphans = conn.execute(text(
                "SELECT count(*) FROM segment_vectors v LEFT JOIN segments s ON s.id = v.segment_id "
                "WHERE s.id IS NULL")).scalar_one()
            per_segment = conn.execute(text(
                "SELECT max(c) FROM (SELECT count(*) AS c FROM segment_vectors GROUP BY segment_id) t")).scalar()
    finally:
        engine.dispose()
    return {"segments": segments, "vectors": vectors, "no_vector": no_vector, "orphans": orphans,
            "max_vectors_per_segment": per_segment or 0}


def quantile_threshold(model, path: Path, quantile: float = 0.6) -> float:
    """A detection threshold at a quantile of ``path``'s frame scores: with an untrained model
    this flags a realistic mix of frames, so tests see several segments per file."""
    from indexer.audio import load_audio
    from indexer.detect import frame_scores
    from indexer.enrollment import enrollment_for

    audio = load_audio(path)
    enrollment = enrollment_for(dict(model.enrollments), audio.orig_sr)
    scores = np.concatenate([frame_scores(model.embed(ch).embeddings, enrollment) for ch in audio.samples])
    return float(np.quantile(scores, quantile))


def stored_segments(settings) -> dict[str, list[tuple]]:
    """Stored segments per recording path: sorted (channel, start_s, end_s, n_frames, mos, vector bytes)."""
    from sqlalchemy import select

    from retrieval.models import Recording, Segment, SegmentVector
    from retrieval.store import Store

    store = Store.open(settings, readonly=True)
    try:
        with store.session() as session:
            rows = session.execute(
                select(Recording.path, Segment.channel, Segment.start_s, Segment.end_s, Segment.n_frames, Segment.mos, SegmentVector.vector)
                .join(Segment, Segment.recording_id == Recording.id).join(SegmentVector, SegmentVector.segment_id == Segment.id)).all()
    finally:
        store.close()
    out: dict[str, list[tuple]] = {}
    for path, *rest in rows:
        out.setdefault(path, []).append(tuple(rest))
    return {k: sorted(v) for k, v in out.items()}


def derive_settings(settings, **changes):
    """A validated copy of ``settings`` with ``changes`` (``model_copy`` would keep the cached
    database URL of the original store)."""
    return type(settings)(**{**settings.model_dump(), **changes})
