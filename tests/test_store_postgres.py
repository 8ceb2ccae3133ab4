"""The store suite of tests/test_store.py (plus the crash and migration tests) against PostgreSQL.

Runs when a server is reachable at DEGSEARCH_TEST_POSTGRES_URL (default
postgresql://postgres@localhost/postgres); otherwise every test skips, saying why. Each test gets
a fresh database, dropped afterwards.
"""

from __future__ import annotations

import pytest

from tests.test_store import *  # noqa: F401,F403 - the same tests, collected again with the fixture below
from tests.test_migrations import test_head_schema_matches_the_orm_models  # noqa: F401
from tests.test_migrations import test_migrations_go_from_empty_to_head_to_base_and_back  # noqa: F401
from tests.test_store_crash import test_sigkilled_writer_leaves_every_committed_segment_with_one_vector  # noqa: F401


@pytest.fixture
def backend_settings(postgres_settings):
    """PostgreSQL instead of SQLite for every imported test."""
    return postgres_settings
