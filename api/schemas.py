"""Pydantic models for every request and response of the HTTP API.

They are the OpenAPI schema: keep field descriptions accurate, clients are generated from them.
Conversions to and from library types (``SearchFilters``, ``SearchHit``, ORM rows, ``PrototypeInfo``)
live here so the routes stay one library call each.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

# Largest k a client may ask for: bounds the response size and the FAISS work per request.
MAX_K = 1000
# Longest query vector accepted; the shipped models use 64 or 128 dimensions, this only bounds the payload.
MAX_VECTOR_DIM = 1024
# Padding around a segment when serving its audio.
MAX_PAD_S = 10.0


class ErrorResponse(BaseModel):
    """Every error the API returns: a stable machine-readable ``code`` and a readable ``message``."""

    code: str = Field(description="Stable error code, e.g. not_found, invalid_request, upload_too_large.")
    message: str = Field(description="What went wrong.")
    fix: str | None = Field(None, description="What the client or operator can do about it, when known.")


class SearchFiltersIn(BaseModel):
    """Metadata filters applied to search hits (all optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid")

    path_glob: str | None = Field(None, max_length=4096, description="Shell glob on the recording path, e.g. '*/2024-*'.")
    attributes: dict[str, str | int | float | bool] | None = Field(
        None, description="Recording attributes that must match exactly, e.g. {'site': 'paris'}."
    )
    channel: int | None = Field(None, ge=0, le=255, description="Only segments from this channel.")
    start_min_s: float | None = Field(None, ge=0, description="Segment starts at or after this time (s).")
    start_max_s: float | None = Field(None, ge=0, description="Segment starts at or before this time (s).")
    mos_min: float | None = Field(None, ge=0, le=6, description="Segment mean MOS at least this.")
    mos_max: float | None = Field(None, ge=0, le=6, description="Segment mean MOS at most this.")
    duration_min_s: float | None = Field(None, ge=0, description="Segment at least this long (s).")
    duration_max_s: float | None = Field(None, ge=0, description="Segment at most this long (s).")
    label: str | None = Field(None, max_length=200, description="Only segments with this prototype label.")
    indexed_after: datetime | None = Field(None, description="Recording indexed at or after this time (ISO 8601).")
    indexed_before: datetime | None = Field(None, description="Recording indexed before this time (ISO 8601).")

    @field_validator("start_min_s", "start_max_s", "mos_min", "mos_max", "duration_min_s", "duration_max_s")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def to_library(self) -> Any:
        """The equivalent :class:`retrieval.search.SearchFilters` (``None`` when no filter is set)."""
        from retrieval.search import SearchFilters

        values = self.model_dump(exclude_none=True)
        return SearchFilters(**values) if values else None


def _reject_explicit_nulls(data: Any, fields: tuple[str, ...]) -> Any:
    """Optional-but-not-nullable fields: leaving one out is fine, sending ``null`` is not (as documented)."""
    if isinstance(data, dict):
        nulls = [f for f in fields if f in data and data[f] is None]
        if nulls:
            raise ValueError(f"{', '.join(nulls)} must not be null (leave the field out instead)")
    return data


_QUERY_FIELDS = ("segment_id", "prototype", "vector")


class SearchRequest(BaseModel):
    """Nearest segments to a query given by exactly one of segment_id, prototype or vector."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # "Exactly one of" in the schema itself, so generated clients and fuzzers know it.
            "oneOf": [{"required": [name]} for name in _QUERY_FIELDS],
            "examples": [{"segment_id": 1, "k": 10}, {"prototype": "clipping", "k": 5}],
        },
    )

    segment_id: Annotated[int, Field(ge=1, le=2**62, description="Use this stored segment's embedding as the query.")] | SkipJsonSchema[None] = None
    prototype: Annotated[str, Field(min_length=1, max_length=200, description="Use this prototype (cluster or named) as the query.")] | SkipJsonSchema[None] = None
    vector: Annotated[list[float], Field(min_length=1, max_length=MAX_VECTOR_DIM, description="A raw query embedding (normalised by the server).")] | SkipJsonSchema[None] = None
    k: int = Field(10, ge=1, le=MAX_K, description="How many hits to return.")
    filters: SearchFiltersIn | None = None
    exact: bool = Field(False, description="Exact (brute-force) search instead of the approximate FAISS index.")

    @model_validator(mode="before")
    @classmethod
    def _no_null_queries(cls, data: Any) -> Any:
        return _reject_explicit_nulls(data, _QUERY_FIELDS)

    @field_validator("vector")
    @classmethod
    def _finite_vector(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            if not all(math.isfinite(x) for x in value):
                raise ValueError("vector entries must be finite numbers")
            if not any(x != 0 for x in value):
                raise ValueError("vector must not be all zeros")
        return value

    @model_validator(mode="after")
    def _exactly_one_query(self) -> SearchRequest:
        given = [name for name in _QUERY_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of segment_id, prototype, vector (got {len(given)}: {given})")
        return self


class SearchHitOut(BaseModel):
    """One nearest segment."""

    segment_id: int
    recording_id: int
    path: str = Field(description="Recording path as stored by the indexer.")
    channel: int
    start_s: float
    end_s: float
    similarity: float = Field(description="Cosine similarity to the query (1 = identical).")
    mos: float | None = Field(None, description="Mean frame MOS of the segment (1..5).")
    label: str | None = None
    label_score: float | None = None
    attributes: dict[str, Any] = Field(default_factory=dict, description="The recording's manifest attributes.")
    audio_url: str = Field(description="Where to fetch the segment's audio as WAV.")

    @classmethod
    def from_hit(cls, hit: Any) -> SearchHitOut:
        """Build from a :class:`retrieval.search.SearchHit`."""
        return cls(
            segment_id=int(hit.segment_id),
            recording_id=int(hit.recording_id),
            path=str(hit.path),
            channel=int(hit.channel),
            start_s=float(hit.start_s),
            end_s=float(hit.end_s),
            similarity=_finite_or_none(hit.similarity) or 0.0,
            mos=_finite_or_none(hit.mos),
            label=hit.label,
            label_score=_finite_or_none(hit.label_score),
            attributes=dict(getattr(hit, "attributes", None) or {}),
            audio_url=f"/v1/segments/{int(hit.segment_id)}/audio",
        )


class SearchResponse(BaseModel):
    """Hits sorted by decreasing similarity."""

    hits: list[SearchHitOut]
    k: int
    took_ms: float = Field(description="Server time for the query, milliseconds.")


class SegmentOut(BaseModel):
    """A stored degraded segment with its recording's path."""

    id: int
    recording_id: int
    path: str
    channel: int
    start_s: float
    end_s: float
    duration_s: float
    n_frames: int
    mos: float | None
    score: float | None = Field(None, description="Mean detection score (1 - cosine to the clean enrollment).")
    label: str | None
    label_score: float | None
    model_id: str
    created_at: datetime | None
    audio_url: str

    @classmethod
    def from_row(cls, segment: Any) -> SegmentOut:
        """Build from a :class:`retrieval.models.Segment` row (its recording loaded)."""
        return cls(
            id=segment.id,
            recording_id=segment.recording_id,
            path=segment.recording.path,
            channel=segment.channel,
            start_s=segment.start_s,
            end_s=segment.end_s,
            duration_s=segment.end_s - segment.start_s,
            n_frames=segment.n_frames,
            mos=_finite_or_none(segment.mos),
            score=_finite_or_none(segment.score),
            label=segment.label,
            label_score=_finite_or_none(segment.label_score),
            model_id=segment.model_id,
            created_at=segment.created_at,
            audio_url=f"/v1/segments/{segment.id}/audio",
        )


class RecordingOut(BaseModel):
    """An indexed (or failed) recording and the ids of its segments."""

    id: int
    path: str
    status: str = Field(description="done | failed")
    content_hash: str | None
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    attributes: dict[str, Any]
    error: str | None
    error_stage: str | None
    model_id: str | None
    indexed_at: datetime | None
    analysed_s: float
    degraded_s: float
    mean_mos: float | None
    segment_ids: list[int]

    @classmethod
    def from_row(cls, recording: Any) -> RecordingOut:
        """Build from a :class:`retrieval.models.Recording` row (segments loaded)."""
        return cls(
            id=recording.id,
            path=recording.path,
            status=recording.status,
            content_hash=recording.content_hash,
            duration_s=recording.duration_s,
            sample_rate=recording.sample_rate,
            channels=recording.channels,
            attributes=dict(recording.attributes or {}),
            error=recording.error,
            error_stage=recording.error_stage,
            model_id=recording.model_id,
            indexed_at=recording.indexed_at,
            analysed_s=recording.analysed_s or 0.0,
            degraded_s=recording.degraded_s or 0.0,
            mean_mos=_finite_or_none(recording.mean_mos),
            segment_ids=sorted(s.id for s in recording.segments),
        )


class PrototypeOut(BaseModel):
    """A cluster prototype or a named enrollment."""

    id: int | None = None
    name: str
    kind: str = Field(description="cluster | named")
    size: int = Field(0, description="Segments assigned to it.")
    total_duration_s: float = 0.0
    mean_mos: float | None = None
    example_segment_ids: list[int] = Field(default_factory=list, description="Representative segments (play them via /v1/segments/{id}/audio).")

    @classmethod
    def from_info(cls, info: Any) -> PrototypeOut:
        """Build from a ``retrieval.prototypes.PrototypeInfo`` (or a ``Prototype`` row)."""
        return cls(
            id=getattr(info, "id", None),
            name=info.name,
            kind=info.kind,
            size=int(getattr(info, "size", 0) or 0),
            total_duration_s=float(getattr(info, "total_duration_s", 0.0) or 0.0),
            mean_mos=_finite_or_none(getattr(info, "mean_mos", None)),
            example_segment_ids=[int(i) for i in (getattr(info, "example_segment_ids", None) or [])],
        )


class PrototypeList(BaseModel):
    prototypes: list[PrototypeOut]


class ReclusterRequest(BaseModel):
    """Re-cluster all stored segments into prototypes (give at most one of the two)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"not": {"required": ["n_clusters", "distance_threshold"]}}
    )

    n_clusters: Annotated[int, Field(ge=1, le=1000, description="Fixed number of clusters.")] | SkipJsonSchema[None] = None
    distance_threshold: Annotated[float, Field(gt=0, le=2, description="Agglomerative cosine-distance threshold.")] | SkipJsonSchema[None] = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        return _reject_explicit_nulls(data, ("n_clusters", "distance_threshold"))

    @model_validator(mode="after")
    def _at_most_one(self) -> ReclusterRequest:
        if self.n_clusters is not None and self.distance_threshold is not None:
            raise ValueError("give n_clusters or distance_threshold, not both")
        return self


StatsFormat = Literal["json", "csv", "parquet"]
StatsGroup = Literal["label", "cluster"]


class StatsResponse(BaseModel):
    """Degradation statistics; one row per (breakdown key, group)."""

    by: str | None
    group: str
    columns: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, float] = Field(default_factory=dict, description="Store-wide recordings, segments, analysed_s, degraded_s.")


class HealthResponse(BaseModel):
    """Liveness and store state. ``status`` is ``ok`` or ``degraded`` (store not usable yet)."""

    status: Literal["ok", "degraded"]
    store_open: bool
    segments: int | None = Field(None, description="Stored segments, when the store is open.")
    generation: int | None = None
    model_loaded: bool
    detail: str | None = Field(None, description="Why the service is degraded.")
    version: str


def _finite_or_none(value: Any) -> float | None:
    """JSON cannot carry NaN/inf: map them (and None) to None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
