"""The batch indexer end to end on small real archives: inputs, per-channel segments, skip and
re-index, labels, enrollments, worker processes and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.audio import load_audio
from indexer.errors import ConfigError
from indexer.enrollment import set_clean_enrollment, stored_enrollment
from indexer.inputs import resolve_inputs
from indexer.pipeline import detection_key, index_archive
from indexer.query import embed_clip
from tests.audio_factory import call_signal, write_archive, write_audio
from tests.store_factory import derive_settings, quantile_threshold, stored_segments


@pytest.fixture
def archive(tmp_path):
    return write_archive(tmp_path / "archive", n=3, seconds=4.0)


@pytest.fixture
def settings(indexer_settings, untrained_model, archive):
    """Settings whose threshold flags a realistic share of frames with the untrained model."""
    return derive_settings(indexer_settings, threshold=quantile_threshold(untrained_model, archive[1]))


def recordings(settings) -> dict[str, dict]:
    from sqlalchemy import select

    from retrieval.models import Recording
    from retrieval.store import Store

    store = Store.open(settings, readonly=True)
    try:
        with store.session() as session:
            rows = session.scalars(select(Recording)).all()
            return {r.path: {"status": r.status, "channels": r.channels, "duration_s": r.duration_s, "analysed_s": r.analysed_s,
                             "degraded_s": r.degraded_s, "mean_mos": r.mean_mos, "attributes": r.attributes, "error": r.error,
                             "sample_rate": r.sample_rate, "hash": r.content_hash, "detected_with": r.detected_with} for r in rows}
    finally:
        store.close()


# --- inputs ----------------------------------------------------------------------------------------


def test_directories_are_scanned_recursively_for_audio_only(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_audio(tmp_path / "a" / "b" / "deep.flac", call_signal(1.0), 8000, None)
    write_audio(tmp_path / "top.wav", call_signal(1.0), 8000)
    (tmp_path / "notes.txt").write_text("not audio")
    tasks = resolve_inputs([tmp_path])
    assert sorted(p.split("/")[-1] for p in (t.path for t in tasks)) == ["deep.flac", "top.wav"]


def test_glob_patterns_and_duplicates(tmp_path):
    for name in ("x1.wav", "x2.wav", "y.wav"):
        write_audio(tmp_path / name, call_signal(0.5), 8000)
    tasks = resolve_inputs([str(tmp_path / "x*.wav"), str(tmp_path / "x1.wav")])
    assert [t.path.split("/")[-1] for t in tasks] == ["x1.wav", "x2.wav"]
    with pytest.raises(ConfigError, match="matches no files"):
        resolve_inputs([str(tmp_path / "z*.wav")])
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_inputs([str(tmp_path / "missing.wav")])


def test_csv_and_jsonl_manifests_give_paths_relative_to_manifest_and_attributes(tmp_path):
    sub = tmp_path / "calls"
    sub.mkdir()
    write_audio(sub / "c1.wav", call_signal(0.5), 8000)
    write_audio(sub / "c2.wav", call_signal(0.5), 8000)
    (tmp_path / "m.csv").write_text("path,call_id,agent\ncalls/c1.wav,A1,alice\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "calls/c2.wav", "call_id": "A2", "score": 3}) + "\n")
    tasks = {t.path.split("/")[-1]: t.attributes for t in resolve_inputs([tmp_path / "m.csv", tmp_path / "m.jsonl"])}
    assert tasks == {"c1.wav": {"call_id": "A1", "agent": "alice"}, "c2.wav": {"call_id": "A2", "score": 3}}
    (tmp_path / "bad.csv").write_text("file,agent\nc1.wav,bob\n")
    with pytest.raises(ConfigError, match="'path' column"):
        resolve_inputs([tmp_path / "bad.csv"])


# --- indexing --------------------------------------------------------------------------------------


def test_archive_is_indexed_per_channel_with_denominators(settings, archive):
    summary = index_archive([str(archive[0].parent)], settings, progress=False)
    assert (summary.indexed, summary.skipped, summary.failed) == (3, 0, 0)
    assert summary.audio_s == pytest.approx(12.0, abs=0.05) and summary.realtime_factor > 0
    recs = recordings(settings)
    segs = stored_segments(settings)
    assert summary.segments == sum(len(v) for v in segs.values()) > 0
    for path in map(str, archive):
        rec = recs[path]
        assert rec["status"] == "done" and rec["channels"] == 2 and rec["sample_rate"] == 8000
        assert rec["duration_s"] == pytest.approx(4.0, abs=0.01)
        assert rec["analysed_s"] == pytest.approx(8.0, abs=0.02)  # both channels
        stored = segs.get(path, [])
        assert rec["degraded_s"] == pytest.approx(sum(e - s for _, s, e, *_ in stored))
        assert 1.0 <= rec["mean_mos"] <= 5.0
        for channel, start, end, n_frames, mos, blob in stored:
            assert channel in (0, 1) and 0 <= start < end <= 4.0 + 1e-6
            assert n_frames == round((end - start) * 50)
            assert np.linalg.norm(np.frombuffer(blob, "<f4")) == pytest.approx(1.0, abs=1e-5)
    assert {c for v in segs.values() for c, *_ in v} == {0, 1}


def test_rerun_skips_unchanged_and_reindexes_changed_files(settings, archive):
    index_archive([str(p) for p in archive], settings, progress=False)
    before = stored_segments(settings)
    again = index_archive([str(p) for p in archive], settings, progress=False)
    assert (again.indexed, again.skipped) == (0, 3)
    assert stored_segments(settings) == before
    # Change one file: only it is re-indexed and its segments are replaced by the new content's.
    write_audio(archive[0], call_signal(3.0, seed=42, noise_span=(0.5, 2.5), noise_channel=0), 8000)
    third = index_archive([str(p) for p in archive], settings, progress=False)
    assert (third.indexed, third.skipped) == (1, 2)
    after = stored_segments(settings)
    assert after[str(archive[1])] == before[str(archive[1])]
    assert recordings(settings)[str(archive[0])]["duration_s"] == pytest.approx(3.0, abs=0.01)
    fresh = derive_settings(settings, store_dir=settings.store_dir.parent / "fresh")
    index_archive([str(archive[0])], fresh, progress=False)
    assert after.get(str(archive[0]), []) == stored_segments(fresh).get(str(archive[0]), [])


def test_manifest_attributes_are_stored_on_recordings(settings, archive, tmp_path):
    manifest = tmp_path / "archive" / "manifest.csv"
    manifest.write_text("path,call_id,agent,date\n" + "".join(f"{p.name},C{i},alice,2026-11-0{i + 1}\n" for i, p in enumerate(archive)))
    index_archive([str(manifest)], settings, progress=False)
    recs = recordings(settings)
    assert recs[str(archive[2])]["attributes"] == {"call_id": "C2", "agent": "alice", "date": "2026-11-03"}


def test_segments_get_nearest_named_prototype_label(settings, archive, untrained_model):
    from retrieval.models import Prototype, vector_to_bytes
    from retrieval.prototypes import write_session
    from retrieval.store import Store

    index_archive([str(archive[1])], settings, progress=False)
    segs = stored_segments(settings)[str(archive[1])]
    target = np.frombuffer(segs[0][5], "<f4")
    store = Store.open(settings)
    try:
        with write_session(store) as session:
            session.add(Prototype(name="hiss", kind="named", model_id=untrained_model.model_id, dim=untrained_model.dim, vector=vector_to_bytes(target)))
    finally:
        store.close()
    index_archive([str(archive[2])], derive_settings(settings, label_threshold=-1.0), progress=False)
    from sqlalchemy import select

    from retrieval.models import Recording, Segment

    store = Store.open(settings, readonly=True)
    try:
        with store.session() as session:
            labels = session.execute(select(Segment.label, Segment.label_score).join(Recording)
                                     .where(Recording.path == str(archive[2]))).all()
    finally:
        store.close()
    assert labels and all(lab == "hiss" and -1.0 <= score <= 1.0 for lab, score in labels)


def test_clean_enrollment_from_clips_is_stored_and_used(settings, archive, untrained_model):
    from indexer.pipeline import build_context
    from retrieval.store import Store

    clean = write_audio(archive[0].parent / "clean.wav", call_signal(2.0, seed=5), 8000)
    store = Store.open(settings)
    try:
        store.ensure_model(untrained_model.model_id, untrained_model.name, untrained_model.frame_rate, untrained_model.dim, untrained_model.threshold, {})
        vector = set_clean_enrollment(store, untrained_model, [clean]).vector
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(stored_enrollment(store, untrained_model.model_id).vector, vector, atol=1e-6)
        ctx = build_context(store, untrained_model, settings)
        assert list(ctx.enrollments) == ["store"]
        assert ctx.threshold == settings.threshold  # an explicit threshold wins over the calibrated one
        calibrated = build_context(store, untrained_model, derive_settings(settings, threshold=None)).threshold
        assert calibrated == pytest.approx(stored_enrollment(store, untrained_model.model_id).threshold)
        # It leaves 98 % of the reference clip's (smoothed) frames below it.
        scores = 1.0 - untrained_model.embed(load_audio(clean).samples[0]).embeddings @ vector
        assert 0.9 <= float(np.mean(scores <= calibrated + 1e-6)) <= 1.0
        set_clean_enrollment(store, untrained_model, [archive[0]])  # replacing keeps one enrollment
        assert not np.allclose(stored_enrollment(store, untrained_model.model_id).vector, vector)
    finally:
        store.close()


def test_embed_clip_gives_unit_vector_for_path_and_samples(untrained_model, archive, settings):
    v = embed_clip(untrained_model, archive[1], settings=settings)
    w = embed_clip(untrained_model, call_signal(2.0)[0], whole=True, settings=settings)
    assert v.shape == w.shape == (untrained_model.dim,)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5) and np.linalg.norm(w) == pytest.approx(1.0, abs=1e-5)


def test_two_worker_processes_give_the_same_segments_as_one(settings, archive):
    index_archive([str(p) for p in archive], settings, progress=False)
    parallel = derive_settings(settings, store_dir=settings.store_dir.parent / "parallel", workers=2)
    summary = index_archive([str(p) for p in archive], parallel, progress=False)
    assert summary.indexed == 3 and summary.workers == 2
    assert stored_segments(parallel) == stored_segments(settings)


def test_index_command_prints_summary(settings, archive):
    from typer.testing import CliRunner

    from api.cli import app

    args = ["index", str(archive[0].parent), "--store-dir", str(settings.store_dir), "--model", str(settings.model),
            "--threshold", str(settings.threshold), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "indexed" in result.output and "real-time factor" in result.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    skipped_line = next(line for line in again.output.splitlines() if "skipped (unchanged)" in line)
    assert skipped_line.replace("│", " ").split()[-1] == "3"


def test_index_command_detection_flags_reach_the_run_record(settings, archive):
    from sqlalchemy import select
    from typer.testing import CliRunner

    from api.cli import app
    from retrieval.models import IndexRun
    from retrieval.store import Store

    args = ["index", str(archive[0]), "--store-dir", str(settings.store_dir), "--model", str(settings.model),
            "--threshold", str(settings.threshold), "--merge-gap-s", "2.5", "--merge-similarity", "0.9",
            "--min-segment-s", "0.5", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with Store.open(settings).session() as session:
        recorded = session.scalars(select(IndexRun)).one().args
    assert (recorded["merge_gap_s"], recorded["merge_similarity"], recorded["min_segment_s"]) == (2.5, 0.9, 0.5)
    assert recorded["smooth_frames"] == settings.smooth_frames and recorded["bridge_gap_s"] == settings.bridge_gap_s


def test_enroll_clean_makes_the_next_run_detect_unchanged_files_again(settings, archive, untrained_model):
    from retrieval.store import Store

    index_archive([str(p) for p in archive], settings, progress=False)
    clean = write_audio(archive[0].parent / "reference.wav", call_signal(2.0, seed=5), 8000)
    store = Store.open(settings)
    try:
        set_clean_enrollment(store, untrained_model, [clean])
    finally:
        store.close()
    redo = index_archive([str(p) for p in archive], settings, progress=False)
    assert (redo.indexed, redo.skipped) == (3, 0)
    again = index_archive([str(p) for p in archive], settings, progress=False)
    assert (again.indexed, again.skipped) == (0, 3)


def test_group_enrollment_applies_to_the_manifest_rows_of_its_group_only(settings, archive, untrained_model):
    from indexer.enrollment import EnrollmentGroup
    from indexer.pipeline import build_context
    from retrieval.store import Store

    manifest = archive[0].parent / "calls.csv"
    manifest.write_text("path,agent\n" + "".join(f"{p.name},{agent}\n" for p, agent in zip(archive, ("alice", "alice", "bob"))))
    assert index_archive([str(manifest)], settings, progress=False).indexed == 3
    alice = EnrollmentGroup.parse("agent = alice")
    reference = write_audio(archive[0].parent / "alice_good.wav", call_signal(2.0, seed=7), 8000)
    store = Store.open(settings)
    try:
        vector = set_clean_enrollment(store, untrained_model, [reference], group=alice).vector
        assert stored_enrollment(store, untrained_model.model_id) is None  # the store-level enrollment is untouched
        np.testing.assert_allclose(stored_enrollment(store, untrained_model.model_id, alice).vector, vector, atol=1e-6)
        ctx = build_context(store, untrained_model, derive_settings(settings, threshold=None))
        enrollment, threshold = ctx.detection_for({"agent": "alice", "call_id": 7}, 8000)
        np.testing.assert_allclose(enrollment, vector, atol=1e-6)
        assert threshold == pytest.approx(stored_enrollment(store, untrained_model.model_id, alice).threshold)
        other, other_threshold = ctx.detection_for({"agent": "bob"}, 8000)
        np.testing.assert_allclose(other, untrained_model.enrollment_for(8000))
        assert other_threshold == untrained_model.threshold
        assert build_context(store, untrained_model, settings).detection_for({"agent": "alice"}, 8000)[1] == settings.threshold
    finally:
        store.close()
    # Only alice's two calls were indexed before her enrollment: they alone are detected again.
    redo = index_archive([str(manifest)], settings, progress=False)
    assert (redo.indexed, redo.skipped) == (2, 1)
    assert index_archive([str(manifest)], settings, progress=False).skipped == 3


def test_removing_a_group_enrollment_detects_its_files_again_with_the_store_level_one(settings, archive, untrained_model):
    from indexer.errors import NotFoundError
    from indexer.enrollment import CLEAN_ENROLLMENT, MODEL_ENROLLMENT, EnrollmentGroup, remove_clean_enrollment
    from retrieval.store import Store

    manifest = archive[0].parent / "calls.csv"
    manifest.write_text("path,agent\n" + "".join(f"{p.name},{agent}\n" for p, agent in zip(archive, ("alice", "alice", "bob"))))
    alice = EnrollmentGroup("agent", "alice")
    store_ref = write_audio(archive[0].parent / "line_good.wav", call_signal(2.0, seed=6), 8000)
    alice_ref = write_audio(archive[0].parent / "alice_good.wav", call_signal(2.0, seed=7), 8000)
    store = Store.open(settings)
    try:
        set_clean_enrollment(store, untrained_model, [store_ref])
        set_clean_enrollment(store, untrained_model, [alice_ref], group=alice)
    finally:
        store.close()
    assert index_archive([str(manifest)], settings, progress=False).indexed == 3
    detected_with = {Path(p).name: r["detected_with"] for p, r in recordings(settings).items()}
    assert {detected_with[p.name].split("#")[0] for p in archive} == {alice.name, CLEAN_ENROLLMENT}
    store = Store.open(settings)
    try:
        set_clean_enrollment(store, untrained_model, [alice_ref], group=alice)  # the same clips again: nothing to redo
    finally:
        store.close()
    assert index_archive([str(manifest)], settings, progress=False).skipped == 3
    store = Store.open(settings)
    try:
        remove_clean_enrollment(store, untrained_model.model_id, alice)
        with pytest.raises(NotFoundError, match="agent=alice"):
            remove_clean_enrollment(store, untrained_model.model_id, alice)
    finally:
        store.close()
    # Listed as plain paths this time: the files keep their stored agent, so alice's two calls
    # alone are detected again, now against the store-level enrollment.
    redo = index_archive([str(p) for p in archive], settings, progress=False)
    assert (redo.indexed, redo.skipped) == (2, 1)
    rows = recordings(settings)
    assert [rows[str(p)]["attributes"]["agent"] for p in archive] == ["alice", "alice", "bob"]
    assert len({rows[str(p)]["detected_with"] for p in archive}) == 1
    store = Store.open(settings)
    try:
        remove_clean_enrollment(store, untrained_model.model_id)  # the store-level one: every file falls back to the model's
    finally:
        store.close()
    assert index_archive([str(manifest)], settings, progress=False).indexed == 3
    assert {r["detected_with"].split("@")[0] for r in recordings(settings).values()} == {MODEL_ENROLLMENT}


def test_changing_a_detection_setting_makes_every_file_due_again_and_keeping_it_does_not(settings, archive):
    assert index_archive([str(p) for p in archive], settings, progress=False).indexed == 3
    assert index_archive([str(p) for p in archive], settings, progress=False).skipped == 3
    unmerged = settings.model_copy(update={"merge_gap_s": 0.0})
    assert index_archive([str(p) for p in archive], unmerged, progress=False).indexed == 3
    assert index_archive([str(p) for p in archive], unmerged, progress=False).skipped == 3
    keys = {r["detected_with"] for r in recordings(settings).values()}
    assert len(keys) == 1 and next(iter(keys)).endswith("@" + detection_key(unmerged))


def test_files_indexed_before_enrollments_were_recorded_are_detected_again_only_after_a_newer_enrollment(settings, archive, untrained_model):
    from sqlalchemy import update

    from retrieval.models import Recording
    from retrieval.store import Store

    index_archive([str(p) for p in archive], settings, progress=False)
    store = Store.open(settings)
    try:
        with store.write_session() as session:  # as migration 0003 leaves a store's older rows
            session.execute(update(Recording).values(detected_with=None))
    finally:
        store.close()
    assert index_archive([str(p) for p in archive], settings, progress=False).skipped == 3
    store = Store.open(settings)
    try:
        with store.write_session() as session:
            session.execute(update(Recording).values(detected_with=None))
        set_clean_enrollment(store, untrained_model, [write_audio(archive[0].parent / "reference.wav", call_signal(2.0, seed=5), 8000)])
    finally:
        store.close()
    assert index_archive([str(p) for p in archive], settings, progress=False).indexed == 3


def test_remove_enrollment_command_reports_what_it_removed(settings, archive):
    from typer.testing import CliRunner

    from api.cli import app

    reference = write_audio(archive[0].parent / "bob_good.wav", call_signal(2.0, seed=9), 8000)
    common = ["--store-dir", str(settings.store_dir), "--model", str(settings.model)]
    assert CliRunner().invoke(app, ["enroll-clean", str(reference), "--group", "agent=bob", *common]).exit_code == 0
    result = CliRunner().invoke(app, ["remove-enrollment", "--group", "agent=bob", *common])
    assert result.exit_code == 0, result.output
    assert "removed the clean enrollment of the files with agent=bob" in result.output
    listed = CliRunner().invoke(app, ["enrollments", "--store-dir", str(settings.store_dir)])
    assert "no clean enrollment set" in listed.output
    missing = CliRunner().invoke(app, ["remove-enrollment", *common])
    assert missing.exit_code != 0 and "no clean enrollment of the store" in str(missing.exception)


@pytest.mark.parametrize("text", ["agent", "=alice", "agent=", "agent=" + "x" * 200])
def test_enrollment_group_must_be_key_equals_value(text):
    from indexer.enrollment import EnrollmentGroup

    with pytest.raises(ConfigError, match="group"):
        EnrollmentGroup.parse(text)


def test_enroll_clean_command_with_group_reports_its_scope(settings, archive):
    from typer.testing import CliRunner

    from api.cli import app

    reference = write_audio(archive[0].parent / "bob_good.wav", call_signal(2.0, seed=9), 8000)
    result = CliRunner().invoke(app, ["enroll-clean", str(reference), "--group", "agent=bob", "--store-dir", str(settings.store_dir),
                                      "--model", str(settings.model)])
    assert result.exit_code == 0, result.output
    assert "of the files with agent=bob" in result.output
    assert "only 4 s of reference audio" in result.output  # 2 s x 2 channels: under a minute, the user is told
    listed = CliRunner().invoke(app, ["enrollments", "--store-dir", str(settings.store_dir)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "files with agent=bob" in listed.output and "4 s (short)" in listed.output and "every file" not in listed.output
    bad = CliRunner().invoke(app, ["enroll-clean", str(reference), "--group", "bob", "--store-dir", str(settings.store_dir),
                                   "--model", str(settings.model)])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError) and "KEY=VALUE" in str(bad.exception)


def test_a_store_indexed_with_a_shipped_model_keeps_it_when_no_model_is_asked_for(tmp_path, untrained_checkpoint, monkeypatch):
    import indexer.model as im
    from indexer.model.checkpoint import file_model_id
    from indexer.pipeline import model_spec
    from indexer.settings import DEFAULT_MODEL, get_settings

    monkeypatch.setitem(im.SHIPPED, "fast", untrained_checkpoint)  # the untrained checkpoint plays the shipped 'fast'
    monkeypatch.delenv("DEGSEARCH_MODEL", raising=False)
    store_dir = tmp_path / "store"
    assert model_spec(get_settings(store_dir=store_dir)) == DEFAULT_MODEL  # a new store gets the default
    calls = write_archive(tmp_path / "archive", n=2, seconds=2.0)
    assert index_archive([str(calls[0])], get_settings(store_dir=store_dir, model="fast"), progress=False).failed == 0
    assert model_spec(get_settings(store_dir=store_dir)) == "fast"  # indexed before the default changed: kept
    assert model_spec(get_settings(store_dir=store_dir, model="telephone")) == "telephone"  # asked for: obeyed
    monkeypatch.setenv("DEGSEARCH_MODEL", "telephone")
    assert model_spec(get_settings(store_dir=store_dir)) == "telephone"
    monkeypatch.delenv("DEGSEARCH_MODEL")
    summary = index_archive([str(calls[1])], get_settings(store_dir=store_dir), progress=False)
    assert summary.failed == 0 and summary.indexed == 1 and summary.model_id == file_model_id(untrained_checkpoint)
