# ==== BEGIN api fixtures (issue 6, API engineer: tests/test_api*.py, tests/test_browser.py) ====
# A small real store for the HTTP API: stereo 8 kHz WAV files written here, segments with known
# vectors committed through Store.write_recording, and an untrained checkpoint as the model.
import dataclasses as _api_dc
from pathlib import Path as _ApiPath

import numpy as _api_np
import pytest as _api_pytest

API_SAMPLE_RATE = 8000
API_RECORDING_S = 3.0
# (channel, start_s, end_s) of the segments written for every recording.
API_SEGMENT_LAYOUT = ((0, 0.5, 1.0), (0, 1.5, 2.2), (1, 0.8, 1.6))


def write_speechlike_wav(path: _ApiPath, seconds: float = API_RECORDING_S, sr: int = API_SAMPLE_RATE,
                         channels: int = 2, seed: int = 0, clip_level: float | None = None) -> _ApiPath:
    """Write a speech-like WAV (harmonic voice with syllable envelope + noise); optional hard clipping."""
    import soundfile as sf

    rng = _api_np.random.default_rng(seed)
    t = _api_np.arange(int(seconds * sr)) / sr
    out = []
    for ch in range(channels):
        f0 = 110 + 40 * ch + 15 * _api_np.sin(2 * _api_np.pi * 0.7 * t)
        phase = 2 * _api_np.pi * _api_np.cumsum(f0) / sr
        voice = sum(_api_np.sin(k * phase) / k for k in range(1, 12))
        envelope = 0.5 * (1 + _api_np.sin(2 * _api_np.pi * 3.5 * t + ch)) ** 2
        x = 0.15 * voice * envelope + 0.01 * rng.standard_normal(t.size)
        if clip_level is not None:
            x = _api_np.clip(x * 4, -clip_level, clip_level)
        out.append(x)
    data = _api_np.stack(out, axis=1).astype(_api_np.float32)
    sf.write(str(path), data if channels > 1 else data[:, 0], sr, subtype="PCM_16")
    return path


@_api_dc.dataclass
class ApiStore:
    """What a test needs to know about the store the fixture built."""

    settings: object  # indexer.settings.Settings
    model: object  # indexer.model.FrameModel
    audio_dir: _ApiPath
    recording_ids: list[int]
    segments: list[dict]  # id, recording_id, channel, start_s, end_s, vector, path


def populate_api_store(settings, model, audio_dir: _ApiPath, n_recordings: int = 3, seed: int = 0,
                       first_index: int = 0) -> ApiStore:
    """Write ``n_recordings`` WAV files and commit one synthetic RecordingResult per file.

    Recording r's segments are noisy copies of a per-recording random direction, so a segment's
    nearest neighbours are the other segments of its own recording.
    """
    from indexer.records import DetectedSegment, RecordingResult
    from retrieval.models import Segment
    from retrieval.store import Store

    rng = _api_np.random.default_rng(seed)
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
                v = center / _api_np.linalg.norm(center) + 0.15 * rng.standard_normal(model.dim) / _api_np.sqrt(model.dim)
                v = (v / _api_np.linalg.norm(v)).astype(_api_np.float32)
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


@_api_pytest.fixture(scope="session")
def api_checkpoint(tmp_path_factory) -> _ApiPath:
    """An untrained (randomly initialised, deterministic) checkpoint file used as settings.model."""
    from indexer.model.checkpoint import build_untrained_checkpoint

    path = tmp_path_factory.mktemp("api-model") / "untrained.pt"
    build_untrained_checkpoint(path)
    return path


@_api_pytest.fixture(scope="session")
def api_model(api_checkpoint):
    import torch

    torch.set_num_threads(1)
    from indexer.model import load_model

    return load_model(str(api_checkpoint))


@_api_pytest.fixture(scope="session")
def api_store_template(tmp_path_factory, api_checkpoint, api_model) -> ApiStore:
    """Built once per session: 3 recordings x 3 segments (schema migration + writes take ~0.5 s)."""
    from indexer.settings import get_settings

    root = tmp_path_factory.mktemp("api-store-template")
    settings = get_settings(store_dir=root / "store", model=str(api_checkpoint))
    settings.store_dir.mkdir(parents=True, exist_ok=True)
    return populate_api_store(settings, api_model, root / "audio")


@_api_pytest.fixture
def api_store(tmp_path, api_store_template) -> ApiStore:
    """A private copy of the template store (database + FAISS files) for one test.

    The WAV files stay shared with the template (the database holds their absolute paths): tests
    must not modify them.
    """
    import shutil

    from indexer.settings import get_settings

    template = api_store_template
    store_dir = tmp_path / "store"
    shutil.copytree(template.settings.store_dir, store_dir)
    settings = get_settings(store_dir=store_dir, model=template.settings.model)
    segments = [dict(seg) for seg in template.segments]
    return ApiStore(settings, template.model, template.audio_dir, list(template.recording_ids), segments)


@_api_pytest.fixture
def api_clip(tmp_path) -> _ApiPath:
    """A 2 s mono 8 kHz clipped speech-like clip to upload as a query."""
    return write_speechlike_wav(tmp_path / "query.wav", seconds=2.0, channels=1, seed=99, clip_level=0.3)
# ==== END api fixtures ====


# ==== BEGIN retrieval fixtures (issue 5, retrieval engineer: tests/test_search.py, test_prototypes.py, test_stats.py) ====
# Stores populated through Store.write_recording with synthetic RecordingResults whose segment
# vectors are noisy copies of planted cluster centres; the ground truth travels with the store.
import dataclasses as _ret_dc
from datetime import datetime as _ret_datetime, timedelta as _ret_timedelta, timezone as _ret_timezone
from pathlib import Path as _RetPath

import numpy as _ret_np
import pytest as _ret_pytest

RET_DIM = 64
RET_MODEL_ID = "test-model-retrieval"
RET_SITES = ("paris", "lyon", "nice")
RET_BASE_TIME = _ret_datetime(2024, 5, 1, 8, 0, tzinfo=_ret_timezone.utc)


@_ret_dc.dataclass
class PlantedStore:
    """A store of planted clusters and the truth about every segment written to it."""

    settings: object  # indexer.settings.Settings
    centres: _ret_np.ndarray  # (n_clusters, dim), L2-normalised
    recordings: list[dict]  # id, path, attributes, channels, duration_s, analysed_s, degraded_s, indexed_at
    segments: list[dict]  # id, recording_id, channel, start_s, end_s, mos, label, cluster, vector

    def store(self, readonly: bool = False):
        from retrieval.store import Store

        return Store.open(self.settings, readonly=readonly)


def _ret_unit(x: _ret_np.ndarray) -> _ret_np.ndarray:
    return (x / _ret_np.linalg.norm(x, axis=-1, keepdims=True)).astype(_ret_np.float32)


def build_planted_store(store_dir: _RetPath, *, n_recordings: int = 30, n_clusters: int = 4, noise: float = 0.35,
                        seed: int = 0, wav_dir: _RetPath | None = None, factory: str = "Flat",
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

    rng = _ret_np.random.default_rng(seed)
    centres = _ret_unit(rng.standard_normal((n_clusters, RET_DIM)))
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
                vector = _ret_unit(centres[cluster] + noise * rng.standard_normal(RET_DIM) / _ret_np.sqrt(RET_DIM))
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
            indexed_at = RET_BASE_TIME + _ret_timedelta(hours=r)
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


@_ret_pytest.fixture
def planted_store(tmp_path) -> PlantedStore:
    """30 recordings, 4 planted clusters (~130 segments), no audio files."""
    return build_planted_store(tmp_path / "store")


@_ret_pytest.fixture(scope="session")
def retrieval_checkpoint(tmp_path_factory) -> _RetPath:
    """An untrained (randomly initialised, deterministic) checkpoint for the clip-query tests."""
    from indexer.model.checkpoint import build_untrained_checkpoint

    path = tmp_path_factory.mktemp("retrieval-model") / "untrained.pt"
    build_untrained_checkpoint(path)
    return path
# ==== END retrieval fixtures ====


# ==== BEGIN audio fixtures (issue 4, indexer engineer: tests/test_audio.py, test_detect.py, test_pipeline.py, test_bad_files.py, test_resume.py, test_ray_engine.py) ====
# Real audio files written with numpy + soundfile (PyAV for compressed codecs), an untrained
# checkpoint as the frame model, and a corpus with one file of each bad kind the indexer must survive.
import os as _ix_os
import struct as _ix_struct
from pathlib import Path as _IxPath

import numpy as _ix_np
import pytest as _ix_pytest


def ix_speech(seconds: float, sr: int = 8000, seed: int = 0) -> _ix_np.ndarray:
    """Mono speech-like signal: gliding harmonic voice, syllable envelope, pauses, faint noise."""
    rng = _ix_np.random.default_rng(seed)
    t = _ix_np.arange(int(round(seconds * sr))) / sr
    f0 = 100 + 30 * rng.random() + 20 * _ix_np.sin(2 * _ix_np.pi * (0.5 + rng.random()) * t)
    phase = 2 * _ix_np.pi * _ix_np.cumsum(f0) / sr
    voice = sum(_ix_np.sin(k * phase + rng.random()) / k for k in range(1, 15) if k * f0.max() < sr / 2)
    envelope = _ix_np.clip(_ix_np.sin(2 * _ix_np.pi * (3 + rng.random()) * t), 0, None) ** 2
    envelope *= (_ix_np.sin(2 * _ix_np.pi * 0.3 * t + rng.random() * 6) > -0.6)  # pauses between phrases
    return (0.2 * voice * envelope + 0.003 * rng.standard_normal(t.size)).astype(_ix_np.float32)


def ix_write(path: _IxPath, data: _ix_np.ndarray, sr: int, subtype: str | None = "PCM_16") -> _IxPath:
    """Write (n,) or (C, n) samples; subtype None lets soundfile pick (FLAC/OGG)."""
    import soundfile as sf

    data = _ix_np.asarray(data)
    sf.write(str(path), data.T if data.ndim == 2 else data, sr, subtype=subtype)
    return _IxPath(path)


def ix_call(seconds: float = 4.0, sr: int = 8000, seed: int = 0, noise_span: tuple[float, float] | None = None,
            noise_channel: int = 1) -> _ix_np.ndarray:
    """(2, n) call: agent and customer speech; ``noise_span`` adds loud white noise on one channel."""
    x = _ix_np.stack([ix_speech(seconds, sr, seed), ix_speech(seconds, sr, seed + 1000)])
    if noise_span is not None:
        a, b = (int(v * sr) for v in noise_span)
        x[noise_channel, a:b] += 0.3 * _ix_np.random.default_rng(seed).standard_normal(b - a).astype(_ix_np.float32)
    return _ix_np.clip(x, -1, 1)


def ix_wav_with_format_tag(path: _IxPath, tag: int = 0x3039, sr: int = 8000, seconds: float = 1.0) -> _IxPath:
    """A RIFF/WAVE file whose fmt chunk names a codec no decoder knows."""
    data = (ix_speech(seconds, sr) * 32767).astype("<i2").tobytes()
    fmt = _ix_struct.pack("<HHIIHH", tag, 1, sr, sr * 2, 2, 16)
    body = b"WAVE" + b"fmt " + _ix_struct.pack("<I", len(fmt)) + fmt + b"data" + _ix_struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + _ix_struct.pack("<I", len(body)) + body)
    return path


def ix_bad_corpus(root: _IxPath, long_s: float = 150.0) -> dict[str, tuple[_IxPath, bool]]:
    """One file per bad-file kind (and the edge cases that must index): name -> (path, should_index)."""
    from indexer.demo import write_encoded

    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[_IxPath, bool]] = {}
    call = ix_call(3.0, seed=7, noise_span=(1.0, 2.0))
    files["good_8k_stereo"] = (ix_write(root / "good_8k_stereo.wav", call, 8000), True)
    (root / "corrupt.wav").write_bytes(_ix_np.random.default_rng(1).bytes(4000))
    files["corrupt"] = (root / "corrupt.wav", False)
    trunc = root / "truncated.flac"
    ix_write(trunc, call, 8000, None)
    raw = trunc.read_bytes()
    trunc.write_bytes(raw[:200] + _ix_np.random.default_rng(2).bytes(len(raw) - 200))  # garbage after the header
    files["corrupt_stream"] = (trunc, False)
    (root / "empty.wav").write_bytes(b"")
    files["empty"] = (root / "empty.wav", False)
    files["zero_length"] = (ix_write(root / "zero_length.wav", _ix_np.zeros((2, 0), _ix_np.float32), 8000), False)
    nan = call.copy()
    nan[0, 5000] = _ix_np.nan
    files["nan_samples"] = (ix_write(root / "nan_samples.wav", nan, 8000, "FLOAT"), False)
    inf = call.copy()
    inf[1, 100] = _ix_np.inf
    files["inf_samples"] = (ix_write(root / "inf_samples.wav", inf, 8000, "FLOAT"), False)
    files["wrong_extension"] = (ix_write(root / "flac_named_as.mp3", call, 8000, None), True)
    (root / "text_named_as.wav").write_text("this is not audio\n" * 50)
    files["not_audio"] = (root / "text_named_as.wav", False)
    files["unsupported_codec"] = (ix_wav_with_format_tag(root / "unsupported_codec.wav"), False)
    files["too_short"] = (ix_write(root / "too_short.wav", ix_speech(0.05, 8000), 8000), False)
    files["bit8"] = (ix_write(root / "bit8.wav", call, 8000, "PCM_U8"), True)
    files["wb_96k"] = (ix_write(root / "wb_96k.flac", ix_speech(2.0, 96000, seed=3), 96000, "PCM_24"), True)
    eight = _ix_np.stack([ix_speech(1.5, 8000, seed=10 + c) for c in range(8)])
    files["channels_8"] = (ix_write(root / "channels_8.wav", eight, 8000), True)
    twelve = _ix_np.stack([ix_speech(1.0, 8000, seed=20 + c) for c in range(12)])
    files["channels_12"] = (ix_write(root / "channels_12.wav", twelve, 8000), False)
    files["amr"] = (write_encoded(root / "codec.amr", call[0], 8000, "amr122"), True)
    files["mp3"] = (write_encoded(root / "codec.mp3", call, 8000, "mp3"), True)
    # "Long": several streaming chunks of tone + silence, cheap to write (the 10 h one is in bench/).
    t = _ix_np.arange(int(long_s * 8000)) / 8000
    tone = (0.1 * _ix_np.sin(2 * _ix_np.pi * 300 * t) * (_ix_np.floor(t) % 2 == 0)).astype(_ix_np.float32)
    files["long"] = (ix_write(root / "long.wav", tone, 8000), True)
    locked = ix_write(root / "unreadable.wav", call, 8000)
    locked.chmod(0)
    if not _ix_os.access(locked, _ix_os.R_OK):  # root ignores permissions: then this kind cannot be tested
        files["unreadable"] = (locked, False)
    else:
        locked.chmod(0o644)
        locked.unlink()
    return files


@_ix_pytest.fixture(scope="session")
def ix_checkpoint(tmp_path_factory) -> _IxPath:
    """An untrained, deterministic checkpoint (tests never depend on shipped weights)."""
    from indexer.model.checkpoint import build_untrained_checkpoint

    path = tmp_path_factory.mktemp("ix-model") / "untrained.pt"
    build_untrained_checkpoint(path)
    return path


@_ix_pytest.fixture(scope="session")
def ix_model(ix_checkpoint):
    import torch

    torch.set_num_threads(1)
    from indexer.model import load_model

    return load_model(str(ix_checkpoint))


@_ix_pytest.fixture
def ix_settings(tmp_path, ix_checkpoint):
    """Settings for a fresh store under tmp_path using the untrained checkpoint."""
    from indexer.settings import get_settings

    return get_settings(store_dir=tmp_path / "store", model=str(ix_checkpoint), chunk_s=20.0)
def ix_archive(root: _IxPath, n: int = 3, seconds: float = 4.0, sr: int = 8000, first_seed: int = 0) -> list[_IxPath]:
    """``n`` stereo call WAVs (every other one with loud noise on the customer channel)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        span = (seconds * 0.3, seconds * 0.7) if i % 2 else None
        paths.append(ix_write(root / f"call_{first_seed + i:03d}.wav", ix_call(seconds, sr, seed=first_seed + i, noise_span=span), sr))
    return paths


def ix_threshold(model, path: _IxPath, quantile: float = 0.6) -> float:
    """A detection threshold at a quantile of ``path``'s frame scores: with an untrained model
    this flags a realistic mix of frames, so tests see several segments per file."""
    from indexer.audio import load_audio
    from indexer.detect import frame_scores
    from indexer.pipeline import enrollment_for

    audio = load_audio(path)
    enrollment = enrollment_for(dict(model.enrollments), audio.orig_sr)
    scores = _ix_np.concatenate([frame_scores(model.embed(ch).embeddings, enrollment) for ch in audio.samples])
    return float(_ix_np.quantile(scores, quantile))


def ix_segments(settings) -> dict[str, list[tuple]]:
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


def ix_derive(settings, **changes):
    """A validated copy of ``settings`` with ``changes`` (``model_copy`` would keep the cached
    database URL of the original store)."""
    return type(settings)(**{**settings.model_dump(), **changes})


# ==== END audio fixtures ====


# ==== BEGIN store fixtures (issue 2, store engineer: tests/test_store*.py, test_vectors.py, test_migrations.py) ====
# Stores built from small synthetic RecordingResults with random L2-normalised vectors (no model
# needed); ``store_settings`` is SQLite in tmp_path, ``postgres_settings`` a fresh PostgreSQL
# database per test when a server is reachable (DEGSEARCH_TEST_POSTGRES_URL, else
# postgresql://postgres@localhost/), skipped with the reason otherwise.
import os as _store_os
import uuid as _store_uuid

import numpy as _store_np
import pytest as _store_pytest

STORE_DIM = 16
STORE_MODEL_ID = "test-model-store"


def store_recording(path: str, n_segments: int = 3, *, dim: int = STORE_DIM, seed: int = 0,
                    model_id: str = STORE_MODEL_ID, content_hash: str | None = None):
    """A RecordingResult for ``path`` with ``n_segments`` segments of random unit vectors."""
    from indexer.records import DetectedSegment, RecordingResult

    rng = _store_np.random.default_rng(seed)
    segments = []
    for j in range(n_segments):
        v = rng.standard_normal(dim).astype(_store_np.float32)
        segments.append(DetectedSegment(channel=j % 2, start_s=0.5 * j, end_s=0.5 * j + 0.4, n_frames=20,
                                        embedding=v / _store_np.linalg.norm(v), mos=2.0 + 0.1 * j, score=0.4))
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


@_store_pytest.fixture
def store_settings(tmp_path):
    """Settings for a fresh SQLite store in tmp_path (the directory does not exist yet)."""
    from indexer.settings import get_settings

    return get_settings(store_dir=tmp_path / "store")


def _postgres_admin_url() -> str:
    return _store_os.environ.get("DEGSEARCH_TEST_POSTGRES_URL") or "postgresql://postgres@localhost/postgres"


@_store_pytest.fixture
def postgres_settings(tmp_path):
    """Settings for a fresh PostgreSQL database (dropped afterwards), or skip saying why."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from indexer.settings import get_settings

    admin_url = make_url(_postgres_admin_url())
    if admin_url.get_backend_name() != "postgresql":
        _store_pytest.skip(f"DEGSEARCH_TEST_POSTGRES_URL is not a PostgreSQL URL: {admin_url!r}")
    if not admin_url.database:
        admin_url = admin_url.set(database="postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means skip
        admin.dispose()
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        _store_pytest.skip(f"no PostgreSQL server reachable at {admin_url.render_as_string(hide_password=True)} "
                           f"(set DEGSEARCH_TEST_POSTGRES_URL): {reason}")
    name = f"degsearch_test_{_store_uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        yield get_settings(store_dir=tmp_path / "store", database_url=url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
# ==== END store fixtures ====
