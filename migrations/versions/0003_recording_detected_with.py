"""Recordings record the clean enrollment they were detected against.

``recordings.detected_with`` holds the enrollment's key (its name and a digest of its vector and
threshold, or ``model`` for the model's own), so the indexer detects a file again whenever the
enrollment it would now get differs: a group or store enrollment set, replaced or removed. Rows
written before this revision keep NULL and fall back to the old rule (detected again when indexed
before the enrollment that applies was set).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("detected_with", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("detected_with")
