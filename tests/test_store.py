"""Store behaviour on SQLite (tests/test_store_postgres.py runs this same suite on PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from indexer.errors import NotFoundError, StoreError
from indexer.records import RecordingFailure
from retrieval.models import IndexRun, ModelRecord, Recording, Segment
from retrieval.store import Store
from tests.store_factory import STORE_DIM, STORE_MODEL_ID, fill_store, store_invariants, store_recording


@pytest.fixture
def backend_settings(store_settings):
    """The database backend under test (overridden in test_store_postgres.py)."""
    return store_settings


def _brute_force(store: Store, q: np.ndarray, k: int, ids=None):
    got_ids, vecs = store.segment_vectors(ids)
    sims = vecs @ (q / np.linalg.norm(q))
    order = np.lexsort((got_ids, -sims))[:k]
    return got_ids[order], sims[order]


def test_write_recording_commits_segments_and_one_vector_each(backend_settings):
    with Store.open(backend_settings) as store:
        rec_ids = fill_store(store, 4, n_segments=3)
        assert len(set(rec_ids)) == 4
        assert store.recording_state("/archive/call_0002.wav") == ("hash-/archive/call_0002.wav-2", STORE_MODEL_ID, "done")
        assert store.recording_state("/nowhere.wav") is None
        with store.session() as session:
            assert session.scalar(select(ModelRecord.dim).where(ModelRecord.id == STORE_MODEL_ID)) == STORE_DIM
            run = session.scalars(select(IndexRun)).one()
            assert (run.status, run.files_indexed) == ("done", 4)
    inv = store_invariants(backend_settings)
    assert inv == {"segments": 12, "vectors": 12, "no_vector": 0, "orphans": 0, "max_vectors_per_segment": 1}


def test_rewriting_a_path_replaces_its_segments_and_vectors(backend_settings):
    with Store.open(backend_settings) as store:
        fill_store(store, 3, n_segments=3)
        old_ids, _ = store.segment_vectors()
        new = store_recording("/archive/call_0001.wav", n_segments=2, seed=99)
        store.write_recording(new)
        ids, vecs = store.segment_vectors()
        assert ids.size == 3 + 3 + 2
        assert store._vectors.ntotal == ids.size
        # New ids never reuse old ones (FAISS ids stay unambiguous after a crash).
        assert set(ids) - set(old_ids) and max(ids) > max(old_ids)
        # The new vectors are found, the replaced ones are gone from FAISS and the database.
        hit, sim = store.search_vectors(new.segments[0].embedding, 1)
        assert sim[0] == pytest.approx(1.0, abs=1e-5) and hit[0] in set(ids) - set(old_ids)
        assert np.array_equal(store._vectors.ids(), ids)
    assert store_invariants(backend_settings)["orphans"] == 0


def test_filtered_search_is_exact_and_returns_min_k_and_subset_size(backend_settings):
    with Store.open(backend_settings) as store:
        fill_store(store, 20, n_segments=5)
        all_ids, _ = store.segment_vectors()
        rng = np.random.default_rng(1)
        q = rng.standard_normal(STORE_DIM).astype(np.float32)
        subset = rng.choice(all_ids, 17, replace=False)
        for k in (5, 17, 50):
            got, sims = store.search_vectors(q, k, subset)
            want_ids, want_sims = _brute_force(store, q, k, subset)
            assert len(got) == min(k, subset.size)
            assert np.array_equal(got, want_ids)
            np.testing.assert_allclose(sims, want_sims, rtol=1e-5, atol=1e-6)
        # Unknown ids are simply not returned.
        got, _ = store.search_vectors(q, 10, np.array([all_ids[0], 10**9]))
        assert list(got) == [all_ids[0]]
        # Unfiltered search of a flat index equals brute force too.
        got, sims = store.search_vectors(q, 10)
        want_ids, want_sims = _brute_force(store, q, 10)
        assert np.array_equal(got, want_ids)


def test_record_failure_marks_new_paths_failed_and_keeps_good_segments(backend_settings):
    with Store.open(backend_settings) as store:
        fill_store(store, 2, n_segments=3)
        store.record_failure(RecordingFailure(path="/archive/broken.wav", stage="decode", error="not audio",
                                              content_hash="abc"))
        assert store.recording_state("/archive/broken.wav") == ("abc", None, "failed")
        before, _ = store.segment_vectors()
        rec_id = store.record_failure(RecordingFailure(path="/archive/call_0000.wav", stage="model", error="boom"))
        after, _ = store.segment_vectors()
        assert np.array_equal(before, after)
        with store.session() as session:
            rec = session.get(Recording, rec_id)
            assert (rec.status, rec.error, rec.error_stage) == ("done", "boom", "model")
            broken = session.scalars(select(Recording).where(Recording.path == "/archive/broken.wav")).one()
            assert session.scalar(select(Segment.id).where(Segment.recording_id == broken.id)) is None
        # A later successful index of the broken path turns it into a normal recording.
        store.write_recording(store_recording("/archive/broken.wav", 2, seed=5))
        assert store.recording_state("/archive/broken.wav")[2] == "done"


def test_delete_recording_removes_segments_from_database_and_faiss(backend_settings):
    with Store.open(backend_settings) as store:
        fill_store(store, 3, n_segments=4)
        store.delete_recording("/archive/call_0001.wav")
        ids, _ = store.segment_vectors()
        assert ids.size == 8 and np.array_equal(store._vectors.ids(), ids)
        assert store.recording_state("/archive/call_0001.wav") is None
        with pytest.raises(NotFoundError):
            store.delete_recording("/archive/call_0001.wav")
    assert store_invariants(backend_settings)["segments"] == 8


def test_reader_sees_new_segments_via_refresh_without_reopening(backend_settings):
    writer = Store.open(backend_settings)
    try:
        fill_store(writer, 2)
        writer.flush_index()
        reader = Store.open(backend_settings, readonly=True)
        try:
            assert reader._vectors.ntotal == 6
            assert reader.refresh() is False
            # Unflushed writes: the reader syncs the new ids from the database.
            writer.write_recording(store_recording("/archive/new.wav", 3, seed=42))
            assert reader.refresh() is True
            assert reader._vectors.ntotal == 9
            q = store_recording("/archive/new.wav", 3, seed=42).segments[1].embedding
            _, sims = reader.search_vectors(q, 1)
            assert sims[0] == pytest.approx(1.0, abs=1e-5)
            # Unflushed deletion: the segment count moved, the reader drops the ids.
            writer.delete_recording("/archive/new.wav")
            assert reader.refresh() is True
            assert np.array_equal(reader._vectors.ids(), writer._vectors.ids())
            # Flushed writes (new generation): the reader reloads the file.
            writer.delete_recording("/archive/call_0000.wav")
            writer.flush_index()
            assert reader.refresh() is True
            assert reader._vectors.ntotal == 3
            assert np.array_equal(reader._vectors.ids(), writer._vectors.ids())
            with pytest.raises(StoreError, match="read-only"):
                reader.write_recording(store_recording("/archive/x.wav"))
        finally:
            reader.close()
    finally:
        writer.close()


def test_second_writer_is_refused_with_the_lock_path_but_readers_are_not(backend_settings):
    with Store.open(backend_settings) as writer:
        fill_store(writer, 1)
        with pytest.raises(StoreError, match="degsearch.lock"):
            Store.open(backend_settings)
        with Store.open(backend_settings, readonly=True) as reader:
            assert reader.check().segments == 3
    # Released at close: a new writer can open.
    Store.open(backend_settings).close()


def test_vectors_of_another_dimension_are_refused_and_nothing_is_written(backend_settings):
    with Store.open(backend_settings) as store:
        fill_store(store, 1)
        with pytest.raises(StoreError, match="dimension 8"):
            store.write_recording(store_recording("/archive/other.wav", 2, dim=8))
        assert store.recording_state("/archive/other.wav") is None
    assert store_invariants(backend_settings)["segments"] == 3


def test_check_reports_counts_and_consistency(backend_settings):
    with Store.open(backend_settings) as store:
        fill_store(store, 3, n_segments=2)
        store.record_failure(RecordingFailure(path="/archive/bad.wav", stage="decode", error="x"))
        store.flush_index()
        report = store.check()
    assert report.consistent, report.problems
    assert (report.recordings, report.failed_recordings, report.segments, report.vectors) == (4, 1, 6, 6)
    assert (report.faiss_count, report.faiss_file_count, report.dims) == (6, 6, [STORE_DIM])
    assert report.generation == report.faiss_file_generation >= 1
    assert report.db_revision == report.head_revision
