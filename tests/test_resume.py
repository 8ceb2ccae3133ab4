"""An index run killed with SIGKILL midway resumes to exactly the segments of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.pipeline import index_archive
from tests.audio_factory import write_archive
from tests.store_factory import derive_settings, quantile_threshold, stored_segments

ROOT = Path(__file__).resolve().parents[1]
N_FILES = 10


def done_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from recordings where status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet, or locked
        return 0


def test_sigkill_midway_then_rerun_equals_uninterrupted_run(tmp_path, indexer_settings, untrained_model):
    files = write_archive(tmp_path / "archive", n=N_FILES, seconds=6.0)
    threshold = quantile_threshold(untrained_model, files[1])
    killed = derive_settings(indexer_settings, store_dir=tmp_path / "killed", threshold=threshold)
    killed.store_dir.mkdir()
    code = ("import sys; from indexer.pipeline import index_archive; from indexer.settings import get_settings; "
            f"index_archive([{str(files[0].parent)!r}], get_settings(store_dir={str(killed.store_dir)!r}, "
            f"model={str(killed.model)!r}, threshold={threshold!r}, chunk_s=2.0), progress=False)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = killed.store_dir / "degsearch.db"
    deadline = time.monotonic() + 120
    while done_count(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the index run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = done_count(db)
    assert 2 <= partial < N_FILES, "the kill must land midway"

    resumed = index_archive([str(files[0].parent)], derive_settings(killed, chunk_s=2.0), progress=False)
    assert resumed.skipped >= partial and resumed.indexed == N_FILES - resumed.skipped and resumed.failed == 0

    clean = derive_settings(killed, store_dir=tmp_path / "clean", chunk_s=2.0)
    clean.store_dir.mkdir()
    index_archive([str(files[0].parent)], clean, progress=False)
    got, want = stored_segments(killed), stored_segments(clean)
    assert sum(len(v) for v in want.values()) > N_FILES  # several segments per file: a meaningful comparison
    assert got == want  # same count, boundaries, frames, MOS and vector bytes per recording
