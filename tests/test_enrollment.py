"""Clean enrollments from reference clips: a clip unlike the rest is set aside, and the user told."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.enrollment import enrollment_from_clips
from tests.audio_factory import speech_signal, write_audio

SR = 8000


@pytest.fixture(scope="module")
def fast_model():
    from indexer.model import load_model

    return load_model("fast")


@pytest.fixture
def reference_clips(tmp_path):
    """Four clean speech-like clips and one with loud white noise all along (about 0-5 dB SNR)."""
    clean = [write_audio(tmp_path / f"clean{i}.wav", speech_signal(4.0, SR, i), SR) for i in range(4)]
    noisy = speech_signal(4.0, SR, 9) + 0.3 * np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32)
    return clean, write_audio(tmp_path / "noisy.wav", np.clip(noisy, -1, 1), SR)


def test_a_noisy_clip_among_clean_ones_is_set_aside_from_the_enrollment_and_its_threshold(fast_model, reference_clips):
    clean, noisy = reference_clips
    with_noisy = enrollment_from_clips(fast_model, [*clean, noisy])
    clean_only = enrollment_from_clips(fast_model, clean)
    assert with_noisy.outliers == [str(noisy)]
    assert clean_only.outliers == []
    np.testing.assert_allclose(with_noisy.vector, clean_only.vector, atol=1e-6)
    assert with_noisy.threshold == pytest.approx(clean_only.threshold)
    # its frames are still scored (and counted) against the enrollment of the others
    assert with_noisy.frames > clean_only.frames and with_noisy.scores.size == with_noisy.frames


@pytest.mark.parametrize("leave_one_out_max", [1000, 200])
def test_a_channel_pointing_elsewhere_is_set_aside_with_or_without_leave_one_out(leave_one_out_max, monkeypatch):
    import indexer.enrollment as enrollment

    rng = np.random.default_rng(0)
    clean_direction, other_direction = np.eye(16, dtype=np.float32)[:2]

    def channel(direction: np.ndarray) -> np.ndarray:
        frames = direction + 0.3 * rng.standard_normal((50, 16)).astype(np.float32)
        return frames / np.linalg.norm(frames, axis=1, keepdims=True)

    channels = [channel(clean_direction) for _ in range(250)]
    channels.insert(7, channel(other_direction))
    # 251 channels: past the limit of 200 each is judged against the enrollment of all of them
    monkeypatch.setattr(enrollment, "LEAVE_ONE_OUT_MAX", leave_one_out_max)
    assert np.flatnonzero(enrollment._outlying(channels, 0.98, 5)).tolist() == [7]


def test_two_clips_are_too_few_to_set_one_aside(fast_model, reference_clips):
    clean, noisy = reference_clips
    assert enrollment_from_clips(fast_model, [clean[0], noisy]).outliers == []


def test_enroll_clean_command_names_the_clips_it_set_aside(fast_model, reference_clips, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    clean, noisy = reference_clips
    result = CliRunner().invoke(app, ["enroll-clean", *map(str, clean), str(noisy), "--store-dir", str(tmp_path / "store"),
                                      "--model", "fast"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "set aside 1 clip(s) unlike the rest" in result.output and "noisy.wav" in result.output
    assert "--group KEY=VALUE" in result.output
    listed = CliRunner().invoke(app, ["enrollments", "--store-dir", str(tmp_path / "store")], env={"COLUMNS": "300"})
    assert listed.exit_code == 0, listed.output
    assert "5 (1 set aside)" in listed.output
