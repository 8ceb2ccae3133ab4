"""Crash safety: a SIGKILLed writer, and corrupted, truncated or deleted FAISS files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.store import Store
from retrieval.vectors import sidecar_path
from tests.store_factory import fill_store, store_invariants, store_recording

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "degsearch"

# The writer: many small recordings, every 5th one re-indexing an earlier path (delete + insert
# in one transaction), FAISS persisted every ~20 ms so the kill can land inside a file write too.
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from indexer.records import DetectedSegment, RecordingResult
    from indexer.settings import get_settings
    from retrieval.store import Store

    store = Store.open(get_settings())
    store.persist_interval_s = 0.02
    store.ensure_model("m", "test", 50.0, 16, 0.3, {})
    first = int(sys.argv[1])
    rng = np.random.default_rng(first)
    for i in range(first, first + 100000):
        path = f"/archive/{(i // 5) if i % 5 == 4 else i}.wav"
        segs = []
        for j in range(int(rng.integers(1, 6))):
            v = rng.standard_normal(16).astype(np.float32)
            segs.append(DetectedSegment(channel=0, start_s=j, end_s=j + 0.5, n_frames=25,
                                        embedding=v / np.linalg.norm(v), mos=2.0, score=0.4))
        store.write_recording(RecordingResult(path=path, content_hash=str(i), duration_s=9.0, sample_rate=8000,
                                              channels=1, model_id="m", segments=segs, analysed_s=9.0,
                                              degraded_s=0.5 * len(segs), mean_mos=3.0))
        print(i, flush=True)
""")


@pytest.fixture
def backend_settings(store_settings):
    """The database backend under test (overridden in test_store_postgres.py)."""
    return store_settings


def _env(settings) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DEGSEARCH_STORE_DIR=str(settings.store_dir), OMP_NUM_THREADS="1")
    if settings.database_url:
        env["DEGSEARCH_DATABASE_URL"] = settings.database_url
    return env


def _assert_store_consistent(settings) -> Store:
    inv = store_invariants(settings)
    assert inv["no_vector"] == 0 and inv["orphans"] == 0 and inv["max_vectors_per_segment"] <= 1, inv
    store = Store.open(settings)
    db_ids, _ = store.segment_vectors()
    assert np.array_equal(store._vectors.ids() if store._vectors else np.empty(0, np.int64), db_ids)
    report = store.check()
    assert report.consistent, report.problems
    assert report.faiss_count == report.vectors == report.segments == inv["segments"]
    return store


def _run_and_kill(settings, first: int, after: int) -> int:
    """Start the writer at recording ``first``, SIGKILL it once ``after`` more commits were reported."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(first)], env=_env(settings), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed = first - 1
    try:
        deadline = time.monotonic() + 60
        while committed < first + after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed = int(line)
        assert committed >= first + after, f"writer did not get going: {proc.stderr.read() if proc.poll() is not None else ''}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return committed


def test_sigkilled_writer_leaves_every_committed_segment_with_one_vector(backend_settings):
    first = 0
    # Three kills at different points of the batch (inside a commit, a FAISS persist, or between).
    for after in (60, 23, 41):
        committed = _run_and_kill(backend_settings, first, after)
        # The kill released the flock; reopening syncs FAISS with the database (and drops temp files).
        store = _assert_store_consistent(backend_settings)
        assert not list(backend_settings.store_dir.glob("*.tmp"))
        try:
            # Every recording reported as written is there (path i for non-rewrite steps).
            assert all(store.recording_state(f"/archive/{i}.wav") for i in range(first, committed + 1) if i % 5 != 4)
        finally:
            store.close()
        first = committed + 1
    # The store is usable for further writes after the crashes.
    with Store.open(backend_settings) as store:
        fill_store(store, 2)
    _assert_store_consistent(backend_settings).close()


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "sidecar":
        sidecar_path(path).write_text("{not json")
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["deleted", "truncated", "corrupted", "sidecar"])
def test_damaged_faiss_file_is_reported_then_rebuilt_on_open(store_settings, how, caplog):
    with Store.open(store_settings) as store:
        fill_store(store, 6, n_segments=4)
        q = np.ones(16, np.float32)
        before = store.search_vectors(q, 5)
    index_path = store_settings.index_path
    _damage(index_path, how)
    # A read-only check notices and changes nothing on disk.
    snapshot = {p.name: p.read_bytes() for p in store_settings.store_dir.iterdir() if p.is_file() and "degsearch.db" not in p.name}
    with Store.open(store_settings, readonly=True) as reader:
        report = reader.check()
        assert not report.consistent and any("FAISS file" in p for p in report.problems)
        # The reader still answers from an in-memory rebuild.
        assert np.array_equal(reader.search_vectors(q, 5)[0], before[0])
    after = {p.name: p.read_bytes() for p in store_settings.store_dir.iterdir() if p.is_file() and "degsearch.db" not in p.name}
    assert after == snapshot
    # A writer rebuilds the file from the database and logs why.
    with caplog.at_level("WARNING", logger="degsearch.store"):
        store = Store.open(store_settings)
    try:
        assert any("rebuilding FAISS index" in r.message for r in caplog.records)
        assert store.check().consistent
        assert np.array_equal(store.search_vectors(q, 5)[0], before[0])
    finally:
        store.close()


def test_cli_check_exits_nonzero_on_a_damaged_index_and_repair_fixes_it(store_settings):
    with Store.open(store_settings) as store:
        fill_store(store, 3)
    _damage(store_settings.index_path, "truncated")
    args = [str(CLI), "db", "check", "--store-dir", str(store_settings.store_dir)]
    bad = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "problem:" in bad.stdout and "rebuild-index" in bad.stdout
    fixed = subprocess.run(args + ["--repair"], capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert subprocess.run(args, capture_output=True, text=True, timeout=60).returncode == 0


def test_writes_after_the_last_flush_are_synced_into_faiss_on_reopen(store_settings):
    store = Store.open(store_settings)
    fill_store(store, 3)
    store.flush_index()
    store.write_recording(store_recording("/late.wav", 4, seed=7))
    store.delete_recording("/archive/call_0000.wav")
    # Simulate a crash: drop the lock and engine without the final flush.
    store._dirty = False
    store.close()
    with Store.open(store_settings, readonly=True) as reader:
        assert not reader.check().consistent  # the file lags behind the database
        assert reader._vectors.ntotal == 3 * 3 - 3 + 4  # but the reader synced in memory
    _assert_store_consistent(store_settings).close()


def test_check_while_a_writer_runs_notes_the_lagging_file_instead_of_failing(store_settings):
    with Store.open(store_settings) as writer:
        fill_store(writer, 2)
        writer.flush_index()
        writer.write_recording(store_recording("/w.wav", 2))
        with Store.open(store_settings, readonly=True) as reader:
            report = reader.check()
        assert report.consistent and report.notes and "writer is running" in report.notes[0]
    # Once the writer is gone, the same lag would be a problem (here it flushed at close: none).
    with Store.open(store_settings, readonly=True) as reader:
        assert reader.check().consistent and not reader.check().notes


def test_reader_keeps_answering_and_catches_up_while_a_writer_runs(store_settings):
    with Store.open(store_settings) as store:
        fill_store(store, 3)
    reader = Store.open(store_settings, readonly=True)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, "1000"], env=_env(store_settings), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The first line is printed after the first commit: the clock starts once the writer runs,
        # not while a loaded machine is still importing its modules.
        assert proc.stdout.readline(), proc.stderr.read()
        q = np.ones(16, np.float32)
        reloads = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            reloads += reader.refresh()
            ids, sims = reader.search_vectors(q, 5)
            assert len(ids) == 5 and np.all(np.diff(sims) <= 1e-6)
            time.sleep(0.05)
        assert reloads > 0, proc.stderr.read() if proc.poll() is not None else "writer made no visible progress"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    try:
        reader.refresh()
        db_ids, _ = reader.segment_vectors()
        assert np.array_equal(reader._vectors.ids(), db_ids)
    finally:
        reader.close()
