"""Query vectors and filtered nearest-segment search.

A query (an *enrollment*) is turned into one L2-normalised vector by :func:`resolve_query`: audio
clips (their detected degraded frames, or all frames with ``whole=True``; several clips are
averaged), a stored segment, a named or cluster prototype, or a raw vector.

:func:`search` then returns the ``k`` most similar stored segments. Filters are resolved against the
database (the source of truth) to an id set first, and the top-k is computed *exactly* over that
set, so a filtered search always returns ``min(k, n_matching)`` hits, however selective the
filter (graph ANN indexes silently return fewer under selective filters; see FIELD_NOTES).
Without filters the FAISS index answers (approximate when the factory is approximate, e.g. HNSW),
unless ``exact=True``.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from indexer.errors import ConfigError, ModelError, NotFoundError
from retrieval.models import IndexState, ModelRecord, Prototype, Recording, Segment, SegmentVector, bytes_to_vector

if TYPE_CHECKING:  # imported lazily at run time: torch comes with the model
    from indexer.model import FrameModel
    from retrieval.store import Store

# SQLite's default limit on bound parameters is 32766 (999 before 3.32): stay well below it.
_IN_CHUNK = 900


@dataclass
class SearchFilters:
    """Metadata conditions on search hits, combined with AND; ``None`` means "no condition".

    ``path_glob`` is a shell glob matched against the whole stored recording path with
    :func:`fnmatch.fnmatchcase` (``*`` also matches ``/``). ``attributes`` must all equal the
    recording's manifest attributes (JSON values; a string matches a number or bool by its text).
    ``start_*`` bound the segment's start time within its recording; ``duration_*`` its length;
    ``indexed_after`` is inclusive, ``indexed_before`` exclusive (naive datetimes are UTC).
    """

    path_glob: str | None = None
    attributes: dict[str, Any] | None = None
    channel: int | None = None
    start_min_s: float | None = None
    start_max_s: float | None = None
    mos_min: float | None = None
    mos_max: float | None = None
    duration_min_s: float | None = None
    duration_max_s: float | None = None
    label: str | None = None
    indexed_after: datetime | None = None
    indexed_before: datetime | None = None

    def is_empty(self) -> bool:
        """True when no condition is set (an empty ``attributes`` dict counts as none)."""
        return all(getattr(self, f.name) in (None, {}) for f in fields(self))

    def validate(self) -> None:
        """Raise :class:`ConfigError` for contradictory or non-finite bounds."""
        for lo, hi in (("start_min_s", "start_max_s"), ("mos_min", "mos_max"), ("duration_min_s", "duration_max_s")):
            for name in (lo, hi):
                value = getattr(self, name)
                if value is not None and not math.isfinite(float(value)):
                    raise ConfigError(f"filter {name}={value} is not a finite number", "give a finite bound or leave it out")
            low, high = getattr(self, lo), getattr(self, hi)
            if low is not None and high is not None and low > high:
                raise ConfigError(f"filter {lo}={low} is above {hi}={high}", f"swap the bounds or drop one of {lo}/{hi}")
        if self.channel is not None and self.channel < 0:
            raise ConfigError(f"filter channel={self.channel} is negative", "channels are numbered from 0")


@dataclass
class SearchHit:
    """One nearest segment, with what a listener needs to find it in the archive."""

    segment_id: int
    recording_id: int
    path: str
    channel: int
    start_s: float
    end_s: float
    similarity: float
    mos: float | None
    label: str | None
    label_score: float | None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


# --- queries ---------------------------------------------------------------------------------


def normalize_vector(vector: Sequence[float] | np.ndarray, dim: int | None = None) -> np.ndarray:
    """Validate a raw query vector (1-D, finite, non-zero, ``dim`` long if given) and L2-normalise it."""
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ConfigError(f"a query vector must be one non-empty list of numbers (got shape {v.shape})", "pass a 1-D vector")
    if dim is not None and v.size != dim:
        raise ConfigError(f"query vector has {v.size} dimensions but the store holds {dim}-d embeddings",
                          f"pass a {dim}-d vector made by the same model")
    if not np.all(np.isfinite(v)):
        raise ConfigError("query vector has NaN or infinite entries", "pass finite numbers")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ConfigError("query vector is all zeros", "pass a non-zero vector")
    return (v / norm).astype(np.float32)


def store_dim(store: Store) -> int | None:
    """Embedding dimension of the store (index state, else the stored models); None when empty."""
    with store.session() as session:
        dim = session.scalar(select(IndexState.dim).where(IndexState.id == 1))
        if dim:
            return int(dim)
        dim = session.scalar(select(SegmentVector.dim).limit(1))
        if dim:
            return int(dim)
        dim = session.scalar(select(ModelRecord.dim).order_by(ModelRecord.created_at.desc()).limit(1))
        return int(dim) if dim else None


def find_prototype(store: Store, name: str, model_id: str | None = None) -> Prototype:
    """The prototype called ``name`` (for ``model_id`` when given, else the newest of that name)."""
    with store.session() as session:
        stmt = select(Prototype).where(Prototype.name == name)
        if model_id is not None:
            stmt = stmt.where(Prototype.model_id == model_id)
        row = session.scalars(stmt.order_by(Prototype.created_at.desc(), Prototype.id.desc()).limit(1)).first()
        if row is None:
            known = session.scalars(select(Prototype.name).distinct().order_by(Prototype.name)).all()
            raise NotFoundError(
                f"no prototype named {name!r}" + (f" for model {model_id}" if model_id else ""),
                f"known prototypes: {', '.join(known) or 'none'}; run `degsearch prototypes --recluster` "
                "or `degsearch prototype add NAME CLIP`",
            )
        session.expunge(row)
        return row


def resolve_query(
    store: Store,
    model: FrameModel | None,
    *,
    clips: Sequence[str | Path | np.ndarray] | None = None,
    segment_id: int | None = None,
    prototype: str | None = None,
    vector: Sequence[float] | np.ndarray | None = None,
    whole: bool = False,
) -> np.ndarray:
    """Turn exactly one kind of enrollment into an L2-normalised float32 query vector.

    ``clips``: paths (or mono 16 kHz arrays) embedded by ``model`` with
    :func:`indexer.query.embed_clip` (their detected degraded frames, or every frame with
    ``whole=True``); several clips are averaged, then normalised. ``segment_id``: that stored
    segment's embedding. ``prototype``: a named or cluster prototype's vector. ``vector``: a raw
    vector, validated (dimension, finite, non-zero) and normalised here.
    """
    given = [n for n, v in (("clips", clips), ("segment_id", segment_id), ("prototype", prototype), ("vector", vector))
             if v is not None and not (n == "clips" and len(v) == 0)]
    if len(given) != 1:
        raise ConfigError(f"give exactly one query: clips, segment_id, prototype or vector (got {given or 'none'})",
                          "pass one clip (or several), a segment id, a prototype name or a vector")
    dim = store_dim(store)
    if vector is not None:
        return normalize_vector(vector, dim)
    if segment_id is not None:
        ids, vecs = store.segment_vectors([int(segment_id)])
        if len(ids) == 0:
            raise NotFoundError(f"no segment with id {segment_id}", "take ids from `degsearch search` output or /v1/segments")
        return normalize_vector(vecs[0])
    if prototype is not None:
        row = find_prototype(store, prototype, _model_id_if_known(store, model))
        return normalize_vector(bytes_to_vector(row.vector))
    if model is None:
        raise ModelError("a clip query needs the frame model", "load it with indexer.model.load_model(settings.model)")
    if dim is not None and model.dim != dim:
        raise ModelError(f"model {model.name} makes {model.dim}-d embeddings but the store holds {dim}-d ones",
                         "use the model the archive was indexed with (--model)")
    from indexer.query import embed_clip

    assert clips is not None
    vecs = np.stack([np.asarray(embed_clip(model, c, whole=whole, store=store), dtype=np.float64) for c in clips])
    return normalize_vector(vecs.mean(axis=0))


def _model_id_if_known(store: Store, model: FrameModel | None) -> str | None:
    """The model's id if it has prototypes in this store (prefer its own), else None (any model)."""
    if model is None:
        return None
    with store.session() as session:
        n = session.scalar(select(func.count()).select_from(Prototype).where(Prototype.model_id == model.model_id))
    return model.model_id if n else None


# --- filters ---------------------------------------------------------------------------------


def _as_utc(value: datetime | None) -> datetime | None:
    """Aware UTC datetime; naive values (SQLite returns them) are taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _like_prefix(glob: str) -> str | None:
    """The literal prefix of a glob, escaped for ``LIKE ... ESCAPE '\\'`` (None if it starts with a wildcard)."""
    cut = len(glob)
    for i, ch in enumerate(glob):
        if ch in "*?[":
            cut = i
            break
    prefix = glob[:cut]
    if not prefix:
        return None
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _attributes_match(attrs: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Every wanted attribute present and equal: as JSON values (``1 == 1.0``, ``true`` is not ``1``),
    or by text when one side is a string, so a CLI ``--attr agent=12`` matches a stored ``12``."""
    attrs = attrs or {}
    for key, value in wanted.items():
        if key not in attrs:
            return False
        have = attrs[key]
        if isinstance(have, str) or isinstance(value, str):
            if _canonical(have) != _canonical(value):
                return False
        elif isinstance(have, bool) != isinstance(value, bool) or have != value:
            return False
    return True


def _recording_ids(store: Store, filters: SearchFilters) -> np.ndarray | None:
    """Ids of done recordings passing the recording-level filters; None when there are none of those.

    Path globs and JSON attribute equality are checked in Python: it is exact and identical on
    SQLite and PostgreSQL (JSON operators differ); the glob's literal prefix narrows the SQL first.
    """
    if not (filters.path_glob or filters.attributes or filters.indexed_after or filters.indexed_before):
        return None
    stmt = select(Recording.id, Recording.path, Recording.attributes, Recording.indexed_at).where(Recording.status == "done")
    if filters.path_glob and (prefix := _like_prefix(filters.path_glob)):
        stmt = stmt.where(Recording.path.like(prefix, escape="\\"))
    after, before = _as_utc(filters.indexed_after), _as_utc(filters.indexed_before)
    keep: list[int] = []
    with store.session() as session:
        for rec_id, path, attrs, indexed_at in session.execute(stmt):
            if filters.path_glob and not fnmatch.fnmatchcase(path, filters.path_glob):
                continue
            if filters.attributes and not _attributes_match(attrs, filters.attributes):
                continue
            when = _as_utc(indexed_at)
            if after is not None and (when is None or when < after):
                continue
            if before is not None and (when is None or when >= before):
                continue
            keep.append(int(rec_id))
    return np.asarray(keep, dtype=np.int64)


def filter_segment_ids(store: Store, filters: SearchFilters | None) -> np.ndarray:
    """Sorted ids of the stored segments (of done recordings) that pass ``filters``."""
    filters = filters or SearchFilters()
    filters.validate()
    rec_ids = _recording_ids(store, filters)
    if rec_ids is not None and rec_ids.size == 0:
        return np.empty(0, dtype=np.int64)
    stmt = select(Segment.id, Segment.recording_id).join(Recording, Recording.id == Segment.recording_id)
    stmt = stmt.where(Recording.status == "done")
    if filters.channel is not None:
        stmt = stmt.where(Segment.channel == int(filters.channel))
    if filters.start_min_s is not None:
        stmt = stmt.where(Segment.start_s >= float(filters.start_min_s))
    if filters.start_max_s is not None:
        stmt = stmt.where(Segment.start_s <= float(filters.start_max_s))
    if filters.mos_min is not None:
        stmt = stmt.where(Segment.mos >= float(filters.mos_min))
    if filters.mos_max is not None:
        stmt = stmt.where(Segment.mos <= float(filters.mos_max))
    if filters.duration_min_s is not None:
        stmt = stmt.where(Segment.end_s - Segment.start_s >= float(filters.duration_min_s))
    if filters.duration_max_s is not None:
        stmt = stmt.where(Segment.end_s - Segment.start_s <= float(filters.duration_max_s))
    if filters.label is not None:
        stmt = stmt.where(Segment.label == filters.label)
    if rec_ids is not None and rec_ids.size <= _IN_CHUNK:
        stmt = stmt.where(Segment.recording_id.in_(rec_ids.tolist()))
    with store.session() as session:
        rows = np.asarray(session.execute(stmt).all(), dtype=np.int64).reshape(-1, 2)
    seg_ids, seg_recs = rows[:, 0], rows[:, 1]
    if rec_ids is not None and rec_ids.size > _IN_CHUNK:
        seg_ids = seg_ids[np.isin(seg_recs, rec_ids)]
    return np.sort(seg_ids)


# --- search ----------------------------------------------------------------------------------


def search(
    store: Store,
    query: np.ndarray,
    k: int = 10,
    filters: SearchFilters | None = None,
    *,
    exact: bool = False,
) -> list[SearchHit]:
    """The ``min(k, n_matching)`` stored segments most similar (cosine) to ``query``, best first.

    With filters, the matching ids are resolved in the database and searched exactly. Without,
    the FAISS index answers (approximate if its factory is), or brute force with ``exact=True``.
    """
    if int(k) < 1:
        raise ConfigError(f"k must be at least 1 (got {k})", "ask for one or more hits")
    k = int(k)
    q = normalize_vector(query, store_dim(store))
    if filters is not None and not filters.is_empty():
        ids = filter_segment_ids(store, filters)
        if ids.size == 0:
            return []
        hit_ids, sims = store.search_vectors(q, min(k, ids.size), ids)
    elif exact:
        ids = filter_segment_ids(store, None)
        if ids.size == 0:
            return []
        hit_ids, sims = store.search_vectors(q, min(k, ids.size), ids)
    else:
        hit_ids, sims = store.search_vectors(q, k, None)
        if len(hit_ids) < k:
            # Short: either the store holds fewer than k segments, or an approximate index (HNSW/IVF)
            # came back short; only then count, and fall back to the exact path if needed.
            total = _segment_count(store)
            if len(hit_ids) < min(k, total):
                ids = filter_segment_ids(store, None)
                hit_ids, sims = store.search_vectors(q, min(k, ids.size), ids)
    return hydrate_hits(store, hit_ids, sims)


def _segment_count(store: Store) -> int:
    with store.session() as session:
        return int(session.scalar(
            select(func.count()).select_from(Segment).join(Recording, Recording.id == Segment.recording_id)
            .where(Recording.status == "done")) or 0)


def hydrate_hits(store: Store, ids: Iterable[int], sims: Iterable[float]) -> list[SearchHit]:
    """Join segment ids (in rank order) with their rows; ids missing from the database are dropped."""
    ids = [int(i) for i in ids]
    sims = [float(s) for s in sims]
    rows: dict[int, Any] = {}
    with store.session() as session:
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start:start + _IN_CHUNK]
            stmt = (select(Segment.id, Segment.recording_id, Recording.path, Segment.channel, Segment.start_s, Segment.end_s,
                           Segment.mos, Segment.label, Segment.label_score, Recording.attributes)
                    .join(Recording, Recording.id == Segment.recording_id).where(Segment.id.in_(chunk)))
            for row in session.execute(stmt):
                rows[int(row[0])] = row
    hits = []
    for seg_id, sim in zip(ids, sims):
        row = rows.get(seg_id)
        if row is None:  # deleted since the FAISS index was loaded
            continue
        hits.append(SearchHit(segment_id=seg_id, recording_id=int(row[1]), path=str(row[2]), channel=int(row[3]),
                              start_s=float(row[4]), end_s=float(row[5]), similarity=sim,
                              mos=None if row[6] is None else float(row[6]), label=row[7],
                              label_score=None if row[8] is None else float(row[8]), attributes=dict(row[9] or {})))
    return hits


def brute_force(store: Store, query: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k by numpy over the database vectors (tests, ``exact`` checks); ties by id."""
    seg_ids, vecs = store.segment_vectors(None if ids is None else [int(i) for i in ids])
    if len(seg_ids) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    sims = vecs @ normalize_vector(query, vecs.shape[1])
    order = np.lexsort((seg_ids, -sims))[:k]
    return seg_ids[order].astype(np.int64), sims[order].astype(np.float32)
