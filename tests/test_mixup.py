"""Partial mix-up: frame labels line up with where the audio changed; eq. 4 targets; shards."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from indexer.training.mixup import HOP, energy_vad, partial_mixup, sample_regions, speech_frames
from indexer.training.teacher import DNSMOSTeacher, pseudo_targets
from tests.audio_factory import speech_signal

SR = 16000


def test_labels_line_up_with_where_audio_changed():
    rng = np.random.default_rng(0)
    clean = speech_signal(4.0, SR, 0, pauses=False)
    degraded = clean + 0.05 * rng.standard_normal(clean.size).astype(np.float32)
    for seed in range(5):
        res = partial_mixup(clean, degraded, 7, np.random.default_rng(seed))
        changed = np.abs(res.audio - clean).reshape(-1, HOP).max(axis=1) > 0
        assert res.frame_labels.shape == (200,)
        assert np.array_equal(changed, res.frame_labels == 7)
        assert np.array_equal(res.frame_mask > 0, res.frame_labels > 0)
        assert 1 <= len(res.regions) <= 3
        for f0, f1, cid in res.regions:
            assert 10 <= f1 - f0 <= 50 and cid == 7  # 200 ms .. 1 s at 50 frames/s


def test_regions_from_several_degraded_versions_carry_their_own_class():
    clean = speech_signal(4.0, SR, 1, pauses=False)
    a, b = clean * 0.3, -clean
    res = partial_mixup(clean, [a, b], [3, 9], np.random.default_rng(2), n_regions=(2, 2))
    assert [r[2] for r in res.regions] == [3, 9]
    for f0, f1, cid in res.regions:
        src = a if cid == 3 else b
        mid = slice(f0 * HOP + 100, f1 * HOP - 100)  # inside the crossfades
        assert np.allclose(res.audio[mid], src[mid])


def test_regions_are_placed_in_speech():
    x = np.zeros(SR * 4, dtype=np.float32)
    x[SR: 3 * SR] = speech_signal(2.0, SR, 3, pauses=False)  # speech only in the middle two seconds
    flags = energy_vad(x)
    assert flags[:40].sum() == 0 and flags[60:140].mean() > 0.4
    regions = sample_regions(flags, np.random.default_rng(0), (3, 3), (0.2, 0.4))
    for f0, f1 in regions:
        assert flags[f0:f1].mean() >= 0.5
    assert speech_frames(x).shape == (200,)


def test_pseudo_targets_follow_eq4_and_teacher_ranks_noise_lower():
    mask = np.zeros(200, np.float32)
    mask[50:100] = 1
    q, utt = pseudo_targets(mask, 4.0, 2.0)
    assert np.all(q[50:100] == 2.0) and np.all(q[:50] == 4.0)
    assert abs(utt - (150 * 4.0 + 50 * 2.0) / 200) < 1e-6
    teacher = DNSMOSTeacher()
    clean = speech_signal(4.0, SR, 4, pauses=False)
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.size).astype(np.float32)
    assert teacher.score(noisy) < teacher.score(clean, key="c")
    assert "c" in teacher.cache


def test_build_shards_writes_the_documented_arrays(tmp_path):
    from indexer.training.shards import build_shards

    data = tmp_path / "data"
    (data / "speech").mkdir(parents=True)
    rows = []
    for i in range(4):
        path = data / "speech" / f"u{i}.wav"
        sf.write(str(path), speech_signal(3.0, SR, i, pitch=100 + 20 * i, pauses=False), SR)
        rows.append({"path": f"speech/u{i}.wav", "group": f"spk{i % 2}", "source": "real", "native_rate": 16000,
                     "lang": "xx", "seconds": 3.0, "split": "train"})
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = build_shards(data, tmp_path / "out", 6, seed=0, shard_size=3, log=lambda *_: None)
    assert info["n_examples"] == 6 and info["shards"] == 2
    z = np.load(tmp_path / "out" / "shard_00000.npz")
    assert z["audio"].shape == (3, 64000) and z["audio"].dtype == np.float32
    assert z["frame_labels"].shape == (3, 200) and z["frame_labels"].dtype == np.int16
    assert z["frame_mos"].shape == (3, 200) and z["utt_mos"].shape == (3,)
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert classes[0] == "clean" and int(z["frame_labels"].max()) < len(classes)
    assert np.allclose(z["frame_mos"].mean(axis=1), z["utt_mos"], atol=1e-4)


def espeak_speech() -> np.ndarray:
    """A real (synthetic) spoken sentence from espeak-ng at 16 kHz; skips the test without it."""
    import shutil
    import subprocess
    import tempfile

    import pytest

    from indexer.training.catalog import _resample

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (indexer/training/SYSTEM_PACKAGES.txt)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = f"{tmp}/s.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", wav, "--", "Please hold the line, your call is important to us."],
                       check=True, capture_output=True)
        x, sr = sf.read(wav, dtype="float32")
    return _resample(x, sr, SR)


def test_distillmos_teacher_short_clip_path_matches_full_window_and_ranks_noise_lower():
    import pytest

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from indexer.training.teacher import DistillMOSTeacher

    try:
        teacher = DistillMOSTeacher()
    except Exception as exc:  # noqa: BLE001 - ModelError when the wheel is missing
        pytest.skip(f"distillmos weights unavailable: {exc}")
    clean = espeak_speech()
    rms = float(np.sqrt(np.mean(clean**2)))
    noisy = clean + rms * np.random.default_rng(1).standard_normal(clean.size).astype(np.float32)  # 0 dB SNR
    fast = teacher.net(clean[None])[0]
    margin = teacher.net._MARGIN
    teacher.net._MARGIN = 10**9  # forces the full 7.68 s window through the front end
    try:
        full = teacher.net(clean[None])[0]
    finally:
        teacher.net._MARGIN = margin
    assert abs(fast - full) < 1e-4
    assert 1.0 <= teacher.score(noisy) < teacher.score(clean) <= 5.0
