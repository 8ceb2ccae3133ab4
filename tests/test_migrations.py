"""Schema migrations and bad input at open: each refusal is one line with a fix, and modifies nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from indexer.errors import ConfigError, StoreError
from indexer.settings import get_settings
from retrieval.models import Base
from retrieval.store import NewerDatabaseError, Store, alembic_config, head_revision
from retrieval.vectors import sidecar_path
from tests.store_factory import fill_store

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "degsearch"
TABLES = {"models", "index_runs", "recordings", "segments", "segment_vectors", "prototypes", "enrollments", "index_state"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "(fix:" in lines[0], result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def backend_settings(store_settings):
    """The database backend under test (overridden in test_store_postgres.py)."""
    return store_settings


def test_migrations_go_from_empty_to_head_to_base_and_back(backend_settings):
    backend_settings.store_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(backend_settings.resolved_database_url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "head")
            assert TABLES <= set(inspect(conn).get_table_names())
            command.downgrade(cfg, "base")
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
            command.upgrade(cfg, "head")
            assert TABLES <= set(inspect(conn).get_table_names())
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()
    finally:
        engine.dispose()


def test_head_schema_matches_the_orm_models(backend_settings):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with Store.open(backend_settings) as store:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_store_opens_by_upgrading_and_db_upgrade_command_works(tmp_path):
    result = _cli("db", "upgrade", "--store-dir", str(tmp_path / "s"))
    assert result.returncode == 0 and head_revision() in result.stdout
    with Store.open(get_settings(store_dir=tmp_path / "s"), readonly=True) as store:
        assert store.check().db_revision == head_revision()


def test_database_from_a_newer_migration_is_refused_and_untouched(store_settings):
    with Store.open(store_settings) as store:
        fill_store(store, 2)
    engine = create_engine(store_settings.resolved_database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    before = _snapshot(store_settings.store_dir)
    for readonly in (False, True):
        with pytest.raises(NewerDatabaseError, match="newer degsearch") as info:
            Store.open(store_settings, readonly=readonly)
        assert "upgrade degsearch" in info.value.fix
    _assert_one_line_error(_cli("db", "upgrade", "--store-dir", str(store_settings.store_dir)), StoreError.exit_code,
                           "newer degsearch", "upgrade degsearch")
    _assert_one_line_error(_cli("db", "check", "--store-dir", str(store_settings.store_dir)), StoreError.exit_code,
                           "newer degsearch")
    assert _snapshot(store_settings.store_dir) == before


@pytest.mark.parametrize("url", ["not a url", "postgresql://user@host:notaport/db", "nosuchdb://x/y", "sqlite://"])
def test_malformed_database_url_is_a_config_error_and_creates_nothing(tmp_path, url):
    settings = get_settings(store_dir=tmp_path / "s", database_url=url)
    with pytest.raises(ConfigError, match="URL"):
        Store.open(settings)
    _assert_one_line_error(_cli("db", "check", "--store-dir", str(tmp_path / "s"), "--database-url", url),
                           ConfigError.exit_code, "URL")
    assert not (tmp_path / "s").exists()


def test_unwritable_store_dir_names_the_directory_and_the_fix(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    store_dir = blocker / "store"
    with pytest.raises(StoreError, match=str(store_dir)) as info:
        Store.open(get_settings(store_dir=store_dir))
    assert "--store-dir" in info.value.fix
    _assert_one_line_error(_cli("db", "upgrade", "--store-dir", str(store_dir)), StoreError.exit_code, str(store_dir),
                           "writable --store-dir")
    assert blocker.read_text() == "not a directory"


def test_unwritable_store_dir_by_permissions(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: directory permissions do not stop writes")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="writable"):
            Store.open(get_settings(store_dir=parent / "store"))
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_faiss_file_of_another_dimension_is_reported_then_rebuilt(tmp_path):
    good = get_settings(store_dir=tmp_path / "good")
    other = get_settings(store_dir=tmp_path / "other")
    with Store.open(good) as store:
        fill_store(store, 3, dim=16)
    with Store.open(other) as store:
        fill_store(store, 3, dim=8)
    # Both stores are at generation 1: only the dimension differs.
    for src in (other.index_path, sidecar_path(other.index_path)):
        shutil.copy(src, good.store_dir / src.name)
    before = _snapshot(good.store_dir)
    result = _cli("db", "check", "--store-dir", str(good.store_dir))
    assert result.returncode == 1
    assert "dimension 8 != database vectors 16" in result.stdout and "rebuild-index" in result.stdout
    assert _snapshot(good.store_dir) == before
    rebuilt = _cli("db", "rebuild-index", "--store-dir", str(good.store_dir))
    assert rebuilt.returncode == 0 and "9 vectors" in rebuilt.stdout
    with Store.open(good, readonly=True) as store:
        report = store.check()
    assert report.consistent and report.dims == [16] and report.faiss_file_count == 9


def test_readonly_open_of_a_missing_store_says_how_to_create_it(tmp_path):
    with pytest.raises(StoreError, match="no degsearch store") as info:
        Store.open(get_settings(store_dir=tmp_path / "none"), readonly=True)
    assert "degsearch index" in info.value.fix
    assert not (tmp_path / "none").exists()


def test_unreachable_database_or_non_database_file_is_a_store_error(tmp_path):
    unreachable = get_settings(store_dir=tmp_path / "pg", database_url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="cannot use database") as info:
        Store.open(unreachable)
    assert "--database-url" in info.value.fix
    store_dir = tmp_path / "junk"
    store_dir.mkdir()
    (store_dir / "degsearch.db").write_bytes(b"this is not a database" * 100)
    before = _snapshot(store_dir)
    _assert_one_line_error(_cli("db", "check", "--store-dir", str(store_dir)), StoreError.exit_code, "cannot use database")
    _assert_one_line_error(_cli("db", "upgrade", "--store-dir", str(store_dir)), StoreError.exit_code, "cannot use database")
    assert _snapshot(store_dir) == before


def test_readonly_open_of_an_unmigrated_database_asks_for_db_upgrade(tmp_path):
    settings = get_settings(store_dir=tmp_path / "s")
    settings.store_dir.mkdir()
    create_engine(settings.resolved_database_url).connect().close()  # an empty SQLite file
    with pytest.raises(StoreError, match="schema revision none") as info:
        Store.open(settings, readonly=True)
    assert "db upgrade" in info.value.fix
