"""A generated mini-benchmark validates against the BENCHMARK.md format."""

from __future__ import annotations

import json

import soundfile as sf

from indexer.training.benchmark import make_benchmark, validate_benchmark
from tests.audio_factory import speech_signal

SR = 16000


def _clean_dir(tmp_path):
    """Two speakers of two 2 s speech-like files each."""
    clean = tmp_path / "clean"
    for spk in range(2):
        (clean / f"spk{spk}").mkdir(parents=True)
        for i in range(2):
            sf.write(str(clean / f"spk{spk}" / f"{i}.wav"), speech_signal(2.0, SR, 10 * spk + i, pitch=100 + 40 * spk, pauses=False), SR)
    return clean


def test_mini_benchmark_from_clean_dir_validates(tmp_path):
    clean = _clean_dir(tmp_path)
    out = tmp_path / "bench"
    labels = ["noise_white", "clipping", "echo", "packet_loss"]
    summary = make_benchmark(out, seed=1, data_dir=None, clean_dir=clean, channel="telephone", minutes=0.5,
                             file_s=3.0, labels=labels, log=lambda *_: None)
    assert validate_benchmark(out) == []
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"enroll", "test"}
    assert any(r["clean"] for r in rows if r["split"] == "enroll")
    enroll_labels = [e["label"] for r in rows if r["split"] == "enroll" for e in r["events"]]
    assert all(enroll_labels.count(label) >= 2 for label in labels)
    assert sf.info(str(out / rows[0]["audio"])).samplerate == 8000
    assert summary["events"] == sum(len(r["events"]) for r in rows)


def test_whole_file_benchmark_degrades_each_degraded_file_from_start_to_end(tmp_path):
    out = tmp_path / "bench"
    labels = ["noise_white", "clipping"]
    make_benchmark(out, seed=2, data_dir=None, clean_dir=_clean_dir(tmp_path), channel="wideband", minutes=0.5,
                   file_s=3.0, labels=labels, whole_file=True, log=lambda *_: None)
    assert validate_benchmark(out) == []
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    degraded = [r for r in rows if not r["clean"]]
    assert degraded and any(r["split"] == "test" for r in degraded)
    assert all(len(r["events"]) == 1 and r["events"][0]["start"] == 0.0 and r["events"][0]["end"] == 3.0 for r in degraded)
    enroll_labels = [r["events"][0]["label"] for r in degraded if r["split"] == "enroll"]
    assert all(enroll_labels.count(label) >= 2 for label in labels)


def test_validator_reports_unsorted_events_and_unsorted_pair_labels(tmp_path):
    (tmp_path / "audio").mkdir()
    sf.write(str(tmp_path / "audio" / "a.wav"), speech_signal(2.0, SR, 0, pauses=False), SR)
    row = {"id": "a", "audio": "audio/a.wav", "split": "test", "clean": False,
           "events": [{"start": 1.0, "end": 1.5, "label": "noise+gsm"}, {"start": 0.2, "end": 2.5, "label": "x"}]}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    problems = validate_benchmark(tmp_path)
    assert any("not sorted" in p for p in problems)
    assert any("'+'-joined sorted" in p for p in problems)
    assert any("outside" in p for p in problems)
