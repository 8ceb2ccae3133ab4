"""End to end: `degsearch evaluate` on a tiny benchmark written here, with the untrained model.

The benchmark follows BENCHMARK.md: speech-like 8 kHz files, an enroll split (one clean file, one
with events) and a test split (a clean file and degraded ones), labels invented for the test so
nothing can depend on training label names. Also checks the baselines' building blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 8000
LABELS = ("zz-hiss", "zz-square", "zz-hiss+zz-square")


def _speech(seconds: float, seed: int) -> np.ndarray:
    """Harmonic 'voice' with a syllable-rate envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 10))
    env = (0.5 * (1 + np.sin(2 * np.pi * 3.0 * t + seed))) ** 2
    return (0.12 * voice * env + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def _degrade(x: np.ndarray, start: float, end: float, label: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = int(start * SR), int(end * SR)
    for name in label.split("+"):
        if name == "zz-hiss":
            x[a:b] += 0.2 * rng.standard_normal(b - a).astype(np.float32)
        elif name == "zz-square":
            x[a:b] = np.clip(8 * x[a:b], -0.05, 0.05)


def _write_benchmark(root: Path) -> Path:
    bench = root / "bench"
    (bench / "audio").mkdir(parents=True)
    plan = [  # (id, split, clean, seconds, events, speaker)
        ("e-clean", "enroll", True, 3.0, [], "spk-a"),
        ("e-clean-b", "enroll", True, 2.0, [], "spk-b"),
        ("e-deg", "enroll", False, 4.0, [(0.5, 1.3, LABELS[0]), (1.8, 2.6, LABELS[1]), (3.0, 3.7, LABELS[2])], "spk-b"),
        ("t-clean", "test", True, 2.5, [], "spk-a"),
        ("t-deg1", "test", False, 4.0, [(0.4, 1.2, LABELS[0]), (2.0, 2.9, LABELS[1])], "spk-a"),
        ("t-deg2", "test", False, 4.0, [(0.6, 1.5, LABELS[1]), (2.2, 3.0, LABELS[2]), (3.2, 3.9, LABELS[0])], "spk-b"),
    ]
    lines = []
    for k, (fid, split, clean, seconds, events, speaker) in enumerate(plan):
        x = _speech(seconds, seed=k)
        for j, (s, e, lab) in enumerate(events):
            _degrade(x, s, e, lab, seed=10 * k + j)
        sf.write(bench / "audio" / f"{fid}.wav", np.clip(x, -1, 1), SR, subtype="PCM_16")
        lines.append(json.dumps({"id": fid, "audio": f"audio/{fid}.wav", "split": split, "clean": clean,
                                 "events": [{"start": s, "end": e, "label": lab} for s, e, lab in events],
                                 "speaker": speaker}))
    (bench / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return bench


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Run the real CLI once (untrained checkpoint, baselines on); yield (report dict, output dir)."""
    import torch
    from typer.testing import CliRunner

    torch.set_num_threads(1)
    from api.cli import app
    from indexer.model.checkpoint import build_untrained_checkpoint

    root = tmp_path_factory.mktemp("bench-eval")
    checkpoint = root / "untrained.pt"
    build_untrained_checkpoint(checkpoint)
    bench = _write_benchmark(root)
    out = root / "out" / "report.json"
    result = CliRunner().invoke(app, ["evaluate", str(bench), "--output", str(out), "--model", str(checkpoint),
                                      "--work-dir", str(root)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(out.read_text()), out.parent, result.output


BENCHMARK_KEYS = ("frame_eer", "frame_min_dcf", "i_auc", "mos_i_auc", "verification_eer", "prototype_accuracy", "ari",
                  "retrieval_p_at_10", "detection_f1", "index_rtf", "per_label")


def test_report_has_every_benchmark_key_in_range(evaluated):
    rep, _, _ = evaluated
    for key in BENCHMARK_KEYS:
        assert key in rep, key
    for key in ("frame_eer", "verification_eer", "prototype_accuracy"):
        assert 0.0 <= rep[key] <= 100.0, (key, rep[key])
    for key in ("i_auc", "mos_i_auc", "retrieval_p_at_10", "detection_f1"):
        assert 0.0 <= rep[key] <= 1.0, (key, rep[key])
    assert rep["frame_min_dcf"] >= 0.0
    assert -1.0 <= rep["ari"] <= 1.0
    assert rep["index_rtf"] > 0.0


def test_single_degradation_breakdown_leaves_out_joined_labels(evaluated):
    rep, _, _ = evaluated
    single = rep["single_degradations"]
    assert (single["n_events"], single["labels"]) == (4, 2)
    assert 0.0 <= single["prototype_accuracy"] <= 100.0
    assert rep["baselines"]["logmel"]["single_degradations"]["n_events"] == 4


def test_report_describes_model_benchmark_and_version(evaluated):
    rep, _, _ = evaluated
    assert rep["model"]["id"] and rep["model"]["frame_rate"] > 0
    bench = rep["benchmark"]
    assert (bench["files"], bench["events"], bench["labels"]) == (6, 8, 3)
    assert bench["test"] == {"files": 3, "seconds": pytest.approx(10.5, abs=0.05), "events": 5, "labels": 3}
    assert bench["seconds"] == pytest.approx(19.5, abs=0.1)
    assert "evaluation" in rep["version"]
    assert len(bench["fingerprint"]) == 16
    assert bench["enrollment"].startswith("2 clean")


def test_benchmark_fingerprint_tells_identical_benchmarks_from_changed_audio(tmp_path):
    from retrieval.benchmark_eval import benchmark_fingerprint, read_manifest

    a = _write_benchmark(tmp_path / "a")
    b = _write_benchmark(tmp_path / "b")
    fp = benchmark_fingerprint(a, read_manifest(a))
    assert fp == benchmark_fingerprint(b, read_manifest(b)) and len(fp) == 16
    files = read_manifest(b)
    data = bytearray(files[-1].audio.read_bytes())
    data[-1] ^= 1
    files[-1].audio.write_bytes(bytes(data))
    assert benchmark_fingerprint(b, files) != fp


def test_per_speaker_breakdown_covers_each_test_speaker(evaluated):
    rep, out_dir, _ = evaluated
    per = rep["per_speaker"]
    assert set(per) == {"spk-a", "spk-b"}
    assert (per["spk-a"]["files"], per["spk-b"]["files"]) == (2, 1)
    assert per["spk-a"]["clean_s"] + per["spk-a"]["degraded_s"] == pytest.approx(6.5, abs=0.1)
    assert per["spk-b"]["degraded_s"] == pytest.approx(2.4, abs=0.1)
    for v in per.values():
        for key in ("frame_eer", "clean_false_alarm", "miss"):
            assert 0.0 <= v[key] <= 100.0, key
    assert "| spk-b | 1 |" in (out_dir / "report.md").read_text()


def test_per_speaker_names_the_speaker_whose_clean_frames_read_degraded():
    from retrieval.benchmark_eval import BenchmarkFile, _FileData, _per_speaker

    def file(fid: str, speaker: str) -> _FileData:
        meta = BenchmarkFile(fid, Path(f"{fid}.wav"), "test", False, [], speaker)
        return _FileData(meta, 1.0, 16000, np.zeros((4, 2), np.float32), np.zeros(4, np.float32), 0.02,
                         np.zeros((0, 2), np.float32), np.zeros(0, bool), [])

    test = [file("a", "near"), file("b", "far")]
    targets = {"a": np.array([0, 0, 1, 1], bool), "b": np.array([0, 0, 1, 1], bool)}
    scores = {"a": np.array([0.1, 0.2, 0.8, 0.9]), "b": np.array([0.7, 0.75, 0.8, 0.9])}
    per = _per_speaker(test, scores, targets, threshold=0.5)
    assert per["near"]["clean_false_alarm"] == 0.0 and per["far"]["clean_false_alarm"] == 100.0
    assert per["near"]["miss"] == per["far"]["miss"] == 0.0
    assert per["far"]["frame_eer"] == 0.0  # alone, its own threshold still separates it


def test_own_speaker_enrollment_scores_each_file_against_its_speakers_clean_files(evaluated):
    from retrieval.benchmark_eval import BenchmarkFile, _FileData, _own_speaker_enrollment_eer

    def file(fid: str, split: str, speaker: str, emb: list[list[float]]) -> _FileData:
        meta = BenchmarkFile(fid, Path(f"{fid}.wav"), split, split == "enroll", [], speaker)
        e = np.asarray(emb, np.float32)
        return _FileData(meta, 1.0, 16000, e, np.zeros(len(e), np.float32), 0.02, np.zeros((0, 2), np.float32), np.zeros(0, bool), [])

    # Speaker "x" speaks along (1, 0), "y" along (0, 1), and each one's degraded frame lies where the
    # other one's clean speech does: against the pooled enrollment every frame scores the same.
    enroll = [file("ex", "enroll", "x", [[1, 0]]), file("ey", "enroll", "y", [[0, 1]])]
    test = [file("tx", "test", "x", [[1, 0], [0, 1]]), file("ty", "test", "y", [[0, 1], [1, 0]])]
    targets = np.array([0, 1, 0, 1], bool)  # tx's frames, then ty's
    assert _own_speaker_enrollment_eer(test, enroll, targets) == {"frame_eer": 0.0, "speakers": 2}
    assert _own_speaker_enrollment_eer(test, enroll[:1], targets) is None  # "y" has no clean enroll file
    rep, out_dir, output = evaluated
    own = rep["own_speaker_enrollment"]  # the fixture's speakers each have a clean enroll file
    assert own["speakers"] == 2 and 0.0 <= own["frame_eer"] <= 100.0
    for key in ("detection_f1", "detection_precision", "detection_recall"):
        assert 0.0 <= own[key] <= 1.0, key
    assert "its own speaker's clean enroll files" in (out_dir / "report.md").read_text()
    printed = " ".join(output.split())  # Rich wraps long lines at the terminal width
    assert "with each speaker's own clean enrollment" in printed and f"detection F1 {own['detection_f1']:.3f}" in printed


def test_own_speaker_indexing_gives_each_speaker_a_group_enrollment(tmp_path):
    """The indexer run behind own_speaker_enrollment's detection figures enrolls each speaker's
    clean files as its group and indexes the test split from a manifest naming the speakers."""
    import torch

    torch.set_num_threads(1)
    from indexer.audio import load_audio
    from indexer.model import load_model
    from indexer.model.checkpoint import build_untrained_checkpoint
    from indexer.enrollment import list_enrollments
    from indexer.settings import Settings
    from retrieval.benchmark_eval import _channel0_segments, _FileData, _index_test_split, read_manifest
    from retrieval.store import Store

    checkpoint = tmp_path / "untrained.pt"
    build_untrained_checkpoint(checkpoint)
    model = load_model(str(checkpoint))
    files = []
    for meta in read_manifest(_write_benchmark(tmp_path)):
        out = model.embed(load_audio(meta.audio, target_sr=16000).samples[0])
        files.append(_FileData(meta, 1.0, 8000, out.embeddings, np.asarray(out.mos, np.float32), out.hop_s,
                               np.zeros((0, model.dim), np.float32), np.zeros(0, bool), []))
    test = [d for d in files if d.meta.split == "test"]
    clean = [d for d in files if d.meta.split == "enroll" and d.meta.clean]
    settings, summary = _index_test_split(test, clean, str(checkpoint), model, Settings(), tmp_path / "store", speaker_groups=True)
    assert summary.indexed == len(test) and summary.failed == 0
    store = Store.open(settings, readonly=True)
    try:
        scopes = [(e.scope, e.clips) for e in list_enrollments(store)]
        segments = _channel0_segments(store, test)
    finally:
        store.close()
    assert scopes == [("store", 2), ("speaker=spk-a", 1), ("speaker=spk-b", 1)]
    assert all(d in test and 0.0 <= start < end for _, d, start, end in segments)


def test_frame_miss_per_label_names_the_degradation_whose_frames_read_clean():
    from retrieval.benchmark_eval import BenchmarkEvent, BenchmarkFile, _FileData, _frame_miss_per_label

    events = [BenchmarkEvent(0.0, 0.08, "noise"), BenchmarkEvent(0.08, 0.16, "mp3")]
    meta = BenchmarkFile("a", Path("a.wav"), "test", False, events, None)
    d = _FileData(meta, 0.2, 16000, np.zeros((10, 2), np.float32), np.zeros(10, np.float32), 0.02,
                  np.zeros((2, 2), np.float32), np.ones(2, bool), [])
    scores = {"a": np.array([0.9, 0.8, 0.7, 0.9, 0.1, 0.2, 0.6, 0.3, 0.1, 0.1])}
    assert _frame_miss_per_label([d], scores, threshold=0.5) == {"mp3": 75.0, "noise": 0.0}


def test_by_level_splits_every_test_frame_into_level_bands(evaluated):
    rep, out_dir, output = evaluated
    rows = rep["by_level"]
    assert [(r["from_db"], r["to_db"]) for r in rows] == [(None, -40.0), (-40.0, -25.0), (-25.0, -10.0), (-10.0, None)]
    n_frames = sum(r["degraded_frames"] + r["clean_frames"] for r in rows)
    assert n_frames == pytest.approx(round(rep["benchmark"]["test"]["seconds"] / rep["benchmark"]["hop_s"]), abs=3)
    for r in rows:
        for key in ("missed", "clean_flagged"):
            assert r[key] is None or 0.0 <= r[key] <= 100.0
    assert "## Frame detection by level" in (out_dir / "report.md").read_text()
    assert "by level against each file's loud speech: under -40 dB" in " ".join(output.split())


def test_frame_levels_are_measured_against_the_files_loud_speech():
    from retrieval.benchmark_eval import frame_levels_db

    loud = 0.5 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)
    x = np.concatenate([loud, 0.01 * loud, np.zeros(3200)]).astype(np.float32)
    level = frame_levels_db(x, 110, 320)
    assert np.allclose(level[:50], 0.0, atol=0.1)  # the loud second is the reference
    assert np.allclose(level[50:100], -40.0, atol=0.1)  # 40 dB quieter
    assert (level[100:] < -100).all()  # digital silence
    assert (frame_levels_db(np.zeros(3200, np.float32), 10, 320) <= -50).all()  # a silent file is not its own reference


def test_by_level_counts_misses_and_false_alarms_in_their_band():
    from retrieval.benchmark_eval import BenchmarkFile, _by_level, _FileData

    meta = BenchmarkFile("a", Path("a.wav"), "test", False, [], None)
    d = _FileData(meta, 0.08, 16000, np.zeros((4, 2), np.float32), np.zeros(4, np.float32), 0.02,
                  np.zeros((0, 2), np.float32), np.zeros(0, bool), [], level_db=np.array([-60.0, -60.0, 0.0, 0.0]))
    targets = {"a": np.array([1, 0, 1, 0], bool)}
    scores = {"a": np.array([0.1, 0.1, 0.9, 0.9])}  # the pause is missed; the loud clean frame is flagged
    rows = _by_level([d], scores, targets, threshold=0.5)
    assert (rows[0]["missed"], rows[0]["clean_flagged"]) == (100.0, 0.0)
    assert (rows[3]["missed"], rows[3]["clean_flagged"]) == (0.0, 100.0)
    assert rows[1]["degraded_frames"] == rows[1]["clean_frames"] == 0 and np.isnan(rows[1]["missed"])


def test_per_label_uses_the_benchmark_labels(evaluated):
    rep, _, _ = evaluated
    assert set(rep["per_label"]) == set(LABELS)
    counts = {name: v["n_events"] for name, v in rep["per_label"].items()}
    assert counts == {LABELS[0]: 2, LABELS[1]: 2, LABELS[2]: 1}
    for v in rep["per_label"].values():
        assert v["prototype_accuracy"] is None or 0.0 <= v["prototype_accuracy"] <= 100.0
        assert 0.0 <= v["detection_recall"] <= 1.0
        assert 0.0 <= v["frame_miss"] <= 100.0


def test_baselines_are_scored_on_the_same_segments(evaluated):
    rep, _, _ = evaluated
    dn, lm = rep["baselines"]["dnsmos"], rep["baselines"]["logmel"]
    for key in ("frame_eer", "verification_eer", "prototype_accuracy"):
        assert 0.0 <= dn[key] <= 100.0, key
    assert 0.0 <= dn["i_auc"] <= 1.0
    assert 0.0 <= lm["verification_eer"] <= 100.0 and 0.0 <= lm["prototype_accuracy"] <= 100.0
    assert set(dn["per_label"]) == set(lm["per_label"]) == set(LABELS)


def test_report_files_and_table_are_written(evaluated):
    rep, out_dir, output = evaluated
    for name in ("report.json", "report.md", "report_det.png", "report_confusion.png", "report_map.png"):
        assert (out_dir / name).stat().st_size > 0, name
    md = (out_dir / "report.md").read_text()
    assert "frame_eer" in md and LABELS[2] in md and "report_det.png" in md
    assert "frame EER" in output and "DNSMOS" in output


# --- manifest and baselines building blocks ----------------------------------------------------


def test_manifest_errors_name_the_line(tmp_path):
    from retrieval.benchmark_eval import read_manifest
    from retrieval.evaluation import EvaluationError

    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "manifest.jsonl").write_text(
        json.dumps({"id": "a", "audio": "a.wav", "split": "test", "clean": False,
                    "events": [{"start": 1.0, "end": 0.5, "label": "x"}]}) + "\n")
    with pytest.raises(EvaluationError, match=r"manifest.jsonl:1"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"id": "a", "audio": "a.wav", "split": "dev", "events": []}) + "\n")
    with pytest.raises(EvaluationError, match="split"):
        read_manifest(tmp_path)


def test_dnsmos_graph_edit_reproduces_dnsmos_on_its_native_input():
    """The length-free graph plus the numpy head give DNSMOS's own output on a 9.01 s input."""
    import onnxruntime as ort

    from indexer.training.teacher import dnsmos_model_path
    from retrieval.baselines import DNSMOSBaseline

    x = np.tile(_speech(1.0, seed=3), 19)[: 144160] * 2.0  # DNSMOS's native 9.01 s at 16 kHz
    ref = ort.InferenceSession(str(dnsmos_model_path())).run(None, {"input_1": x[None, :]})[0][0]
    base = DNSMOSBaseline()
    out, fmap = base._session.run(None, {"input_1": x[None, :]})
    np.testing.assert_allclose(out[0], ref, rtol=1e-4)
    (w0, b0), (w1, b1), (w2, b2) = base._head
    pooled = fmap[0].max(axis=(0, 1))[None, :]
    raw = np.maximum(np.maximum(pooled @ w0 + b0, 0) @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(raw[0], ref, rtol=1e-4)
    # any length works; the map has one row per 80 ms and segment embeddings are unit vectors
    fm = base.analyse(_speech(2.0, seed=1))
    assert len(fm) == 13  # 16000 samples at 16 kHz = 1 s -> ceil(1 s / 80 ms)
    emb = base.segment_embeddings(fm, [(0.0, 0.5), (1.0, 2.0)])
    assert emb.shape == (2, 64)
    assert base.frame_mos(fm, 100, 0.02).shape == (100,)


def test_logmel_statistics_separate_noise_from_speech():
    from retrieval.baselines import LogMelBaseline
    from retrieval.evaluation import verification_eer

    rng = np.random.default_rng(0)
    lm = LogMelBaseline()
    clean = np.tile(_speech(1.0, seed=0), 6)  # 3 s at 16 kHz
    noisy = clean + 0.1 * rng.standard_normal(clean.size).astype(np.float32)
    spans = [(i * 0.3, i * 0.3 + 0.3) for i in range(10)]
    stats = np.vstack([lm.segment_stats(lm.features(clean), spans), lm.segment_stats(lm.features(noisy), spans)])
    emb = lm.fit(stats).embed(stats)
    assert emb.shape == (20, 128)
    assert verification_eer(emb, ["clean"] * 10 + ["noisy"] * 10) < 0.1
