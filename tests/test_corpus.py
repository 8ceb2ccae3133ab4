"""The training corpus takes a user's own clean recordings as real speakers (`prepare-data --speech-dir`)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from indexer.training.corpus import CorpusError, build_real_utterances, prepare_corpus, user_speech_groups
from tests.audio_factory import speech_signal, write_audio


def write_recordings(root, ext: str = "wav"):
    """Two speakers in sub-folders (16 kHz and 8 kHz) and one loose file at the top."""
    for speaker, sr, seed in (("anna", 16000, 0), ("ben", 8000, 1)):
        (root / speaker).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            write_audio(root / speaker / f"take{i}.{ext}", speech_signal(1.5, sr=sr, seed=seed + 10 * i, pauses=False), sr)
    write_audio(root / "intro.wav", speech_signal(1.5, sr=16000, seed=5, pauses=False), 16000)
    (root / "notes.txt").write_text("not audio")
    return root


def test_each_sub_folder_of_your_recordings_is_one_speaker_and_8khz_ones_are_narrowband(tmp_path):
    groups = user_speech_groups([write_recordings(tmp_path / "mine")])
    assert set(groups) == {"user:mine", "user:mine/anna", "user:mine/ben"}
    assert groups["user:mine/anna"][0] == 16000 and groups["user:mine/ben"][0] == 8000
    assert len(groups["user:mine/anna"][1]) == 3 and len(groups["user:mine"][1]) == 1


def test_your_recordings_become_16khz_training_utterances_of_their_speaker(tmp_path):
    groups = user_speech_groups([write_recordings(tmp_path / "mine")])
    rows = build_real_utterances(tmp_path / "data", groups, seed=0, min_s=2.0, max_s=3.0, subdir="user")
    assert {r.group for r in rows} == {"user:mine", "user:mine/anna", "user:mine/ben"}
    assert all(r.split == "train" and r.source == "real" and r.path.startswith("speech/user/") for r in rows)
    assert {r.native_rate for r in rows if r.group == "user:mine/ben"} == {8000}
    for r in rows:
        info = sf.info(str(tmp_path / "data" / r.path))
        assert info.samplerate == 16000 and 1.0 <= info.duration <= 3.0


def test_prepare_data_adds_your_speakers_to_the_manifest_and_keeps_them_on_a_rerun(tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    data = tmp_path / "data"
    mine = write_recordings(tmp_path / "mine")
    result = CliRunner().invoke(app, ["prepare-data", str(data), "--tts", "0", "--no-real", "--no-noise", "--speech-dir", str(mine)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    groups = {json.loads(line)["group"] for line in (data / "manifest.jsonl").read_text().splitlines()}
    assert {"user:mine/anna", "user:mine/ben"} <= groups
    prepare_corpus(data, n_tts=0, real=False, noise=False, log=lambda _: None)  # no --speech-dir: kept
    assert groups == {json.loads(line)["group"] for line in (data / "manifest.jsonl").read_text().splitlines()}


def test_a_speech_dir_without_audio_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no audio files"):
        user_speech_groups([tmp_path / "empty"])
    with pytest.raises(CorpusError, match="no folder"):
        user_speech_groups([tmp_path / "missing"])
