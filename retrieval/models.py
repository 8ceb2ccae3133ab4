"""SQLAlchemy 2.0 ORM tables: the source of truth for everything degsearch stores.

The FAISS index is derived from ``segment_vectors`` and can always be rebuilt from it.
Schema changes go through Alembic migrations in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime


def utcnow() -> datetime:
    """Timezone-aware now, used for every timestamp column."""
    return datetime.now(timezone.utc)


def vector_to_bytes(vector: np.ndarray) -> bytes:
    """Serialise a 1-D vector as little-endian float32 bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def bytes_to_vector(blob: bytes) -> np.ndarray:
    """Inverse of :func:`vector_to_bytes`."""
    return np.frombuffer(blob, dtype="<f4").copy()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[int]: JSON}


class ModelRecord(Base):
    """A frame model that produced segments (checkpoint id, frame rate, dimension, threshold)."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    frame_rate: Mapped[float] = mapped_column(Float)
    dim: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Float)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexRun(Base):
    """One `degsearch index` invocation and its summary."""

    __tablename__ = "index_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | done | interrupted
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    files_indexed: Mapped[int] = mapped_column(Integer, default=0)
    files_skipped: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class Recording(Base):
    """One audio file of the archive. ``status`` is done | failed; failed rows carry ``error``."""

    __tablename__ = "recordings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), unique=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    sample_rate: Mapped[int | None] = mapped_column(Integer, nullable=True)
    channels: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="done")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_stage: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    index_run_id: Mapped[int | None] = mapped_column(ForeignKey("index_runs.id", ondelete="SET NULL"), nullable=True)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The clean enrollment the recording was detected against (indexer.enrollment.enrollment_key);
    # NULL for recordings indexed before migration 0003.
    detected_with: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # Denominators for statistics, summed over channels.
    analysed_s: Mapped[float] = mapped_column(Float, default=0.0)
    degraded_s: Mapped[float] = mapped_column(Float, default=0.0)
    mean_mos: Mapped[float | None] = mapped_column(Float, nullable=True)

    segments: Mapped[list[Segment]] = relationship(back_populates="recording", cascade="all, delete-orphan", passive_deletes=True)


class Segment(Base):
    """One degraded stretch of one channel of a recording."""

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    channel: Mapped[int] = mapped_column(Integer, default=0)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    n_frames: Mapped[int] = mapped_column(Integer)
    mos: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)  # mean detection score (1 - cosine to clean enrollment)
    label: Mapped[str] = mapped_column(String(200), default="unknown")
    label_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    recording: Mapped[Recording] = relationship(back_populates="segments")
    vector: Mapped[SegmentVector] = relationship(cascade="all, delete-orphan", passive_deletes=True, uselist=False)

    __table_args__ = (Index("ix_segments_recording", "recording_id"), Index("ix_segments_label", "label"))

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class SegmentVector(Base):
    """The segment's L2-normalised embedding (float32 bytes): what FAISS is rebuilt from."""

    __tablename__ = "segment_vectors"
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class Prototype(Base):
    """A cluster prototype (kind='cluster') or a user-named enrollment (kind='named')."""

    __tablename__ = "prototypes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    model_id: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer, default=0)
    total_duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    mean_mos: Mapped[float | None] = mapped_column(Float, nullable=True)
    example_segment_ids: Mapped[list[int]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("name", "model_id", name="uq_prototype_name_model"),)


class Enrollment(Base):
    """A store-level clean enrollment set by `degsearch enroll-clean` (overrides the model's)."""

    __tablename__ = "enrollments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="clean")
    model_id: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    sources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Detection threshold calibrated on the reference clips (None: use the model's).
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("name", "model_id", name="uq_enrollment_name_model"),)


class IndexState(Base):
    """Single row (id=1): what the FAISS file on disk must match."""

    __tablename__ = "index_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    factory: Mapped[str] = mapped_column(String(200), default="Flat")
    # Bumped by every transaction that adds or removes segment vectors, so a reader notices
    # writes the writer has not flushed to the FAISS file yet with one single-row SELECT.
    changes: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
