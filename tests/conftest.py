"""Shared fixtures: an untrained checkpoint as the frame model (tests never depend on shipped
weights), stores for the API and retrieval tests, SQLite and PostgreSQL settings. The helpers they
use live in ``tests.audio_factory`` and ``tests.store_factory``."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.audio_factory import write_speechlike_wav
from tests.store_factory import ApiStore, PlantedStore, build_planted_store, populate_api_store


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """An untrained (randomly initialised, deterministic) checkpoint file, used as settings.model."""
    from indexer.model.checkpoint import build_untrained_checkpoint

    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    build_untrained_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def untrained_model(untrained_checkpoint):
    """The untrained checkpoint loaded (one torch thread: the tests run beside each other's work)."""
    import torch

    from indexer.model import load_model

    torch.set_num_threads(1)

    return load_model(str(untrained_checkpoint))


@pytest.fixture(scope="session")
def api_store_template(tmp_path_factory, untrained_checkpoint, untrained_model) -> ApiStore:
    """Built once per session: 3 recordings x 3 segments (schema migration + writes take ~0.5 s)."""
    from indexer.settings import get_settings

    root = tmp_path_factory.mktemp("api-store-template")
    settings = get_settings(store_dir=root / "store", model=str(untrained_checkpoint))
    settings.store_dir.mkdir(parents=True, exist_ok=True)
    return populate_api_store(settings, untrained_model, root / "audio")


@pytest.fixture
def api_store(tmp_path, api_store_template) -> ApiStore:
    """A private copy of the template store (database + FAISS files) for one test.

    The WAV files stay shared with the template (the database holds their absolute paths): tests
    must not modify them.
    """
    from indexer.settings import get_settings

    template = api_store_template
    store_dir = tmp_path / "store"
    shutil.copytree(template.settings.store_dir, store_dir)
    settings = get_settings(store_dir=store_dir, model=template.settings.model)
    segments = [dict(seg) for seg in template.segments]
    return ApiStore(settings, template.model, template.audio_dir, list(template.recording_ids), segments)


@pytest.fixture
def api_clip(tmp_path) -> Path:
    """A 2 s mono 8 kHz clipped speech-like clip to upload as a query."""
    return write_speechlike_wav(tmp_path / "query.wav", seconds=2.0, channels=1, seed=99, clip_level=0.3)


@pytest.fixture
def planted_store(tmp_path) -> PlantedStore:
    """30 recordings, 4 planted clusters (~130 segments), no audio files."""
    return build_planted_store(tmp_path / "store")


@pytest.fixture
def indexer_settings(tmp_path, untrained_checkpoint):
    """Settings for a fresh store under tmp_path using the untrained checkpoint."""
    from indexer.settings import get_settings

    return get_settings(store_dir=tmp_path / "store", model=str(untrained_checkpoint), chunk_s=20.0)


@pytest.fixture
def store_settings(tmp_path):
    """Settings for a fresh SQLite store in tmp_path (the directory does not exist yet)."""
    from indexer.settings import get_settings

    return get_settings(store_dir=tmp_path / "store")


def _postgres_admin_url() -> str:
    return os.environ.get("DEGSEARCH_TEST_POSTGRES_URL") or "postgresql://postgres@localhost/postgres"


@pytest.fixture
def postgres_settings(tmp_path):
    """Settings for a fresh PostgreSQL database (dropped afterwards), or skip saying why."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from indexer.settings import get_settings

    admin_url = make_url(_postgres_admin_url())
    if admin_url.get_backend_name() != "postgresql":
        pytest.skip(f"DEGSEARCH_TEST_POSTGRES_URL is not a PostgreSQL URL: {admin_url!r}")
    if not admin_url.database:
        admin_url = admin_url.set(database="postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means skip
        admin.dispose()
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        pytest.skip(f"no PostgreSQL server reachable at {admin_url.render_as_string(hide_password=True)} "
                    f"(set DEGSEARCH_TEST_POSTGRES_URL): {reason}")
    name = f"degsearch_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        yield get_settings(store_dir=tmp_path / "store", database_url=url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
