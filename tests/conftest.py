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


@_api_pytest.fixture
def api_store(tmp_path, api_checkpoint, api_model) -> ApiStore:
    """A fresh store with 3 recordings x 3 segments; settings point at it and at the checkpoint."""
    from indexer.settings import get_settings

    settings = get_settings(store_dir=tmp_path / "store", model=str(api_checkpoint))
    settings.store_dir.mkdir(parents=True, exist_ok=True)
    return populate_api_store(settings, api_model, tmp_path / "audio")


@_api_pytest.fixture
def api_clip(tmp_path) -> _ApiPath:
    """A 2 s mono 8 kHz clipped speech-like clip to upload as a query."""
    return write_speechlike_wav(tmp_path / "query.wav", seconds=2.0, channels=1, seed=99, clip_level=0.3)
# ==== END api fixtures ====
