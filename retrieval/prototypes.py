"""Prototypes: clusters of the archive's segment embeddings, user-named enrollments, and labels.

* :func:`recluster` groups every stored segment embedding of a model: agglomerative clustering
  (cosine distance, average linkage, as in paper 003) by a number of clusters or a distance
  threshold; above ``max_agglomerative`` segments (the pairwise distance matrix no longer fits
  comfortably in memory), spherical FAISS k-means followed by a reassignment pass. Each cluster is
  stored as a prototype (``kind='cluster'``, name ``cluster-NN``, largest first): its normalised mean
  vector, size, total duration, mean MOS and its five members closest to the mean as examples.
  Re-clustering replaces the old cluster prototypes of that model and keeps the named ones.
* :func:`add_named_prototype` enrolls a degradation a user cares about from example clips
  (``kind='named'``).
* :func:`label_segments` gives every segment its nearest prototype's name and cosine score.
  **Named prototypes take precedence**: a segment whose best named prototype scores at least the
  threshold gets that name even if a cluster prototype is closer, because named prototypes are
  the user's vocabulary and clusters are only the archive's own structure. Otherwise the nearest
  cluster if it scores at least the threshold, else ``'unknown'``. With ``knn=K`` the labels are
  then refined by a similarity-weighted vote among each segment's K nearest other segments
  (the kNN classifier of paper 000), which follows clusters that a single mean describes badly.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from indexer.errors import ConfigError, StoreError
from retrieval.models import Prototype, Recording, Segment, bytes_to_vector, vector_to_bytes

if TYPE_CHECKING:
    from indexer.model import FrameModel
    from retrieval.store import Store

# Cosine distance at which average-linkage merging stops when neither a number of clusters nor a
# threshold is given: segments of one degradation sit well within it on the trained models.
DEFAULT_DISTANCE_THRESHOLD = 0.4
# Members closest to the prototype kept as listenable examples.
N_EXAMPLES = 5
UNKNOWN = "unknown"
CLUSTER_PREFIX = "cluster-"
_NAME_RE = re.compile(r"^[\w][\w .:+-]{0,199}$")
# Segment rows updated per statement when writing labels.
_UPDATE_BATCH = 5000


@dataclass
class PrototypeInfo:
    """A stored prototype; ``vector`` is its L2-normalised float32 embedding."""

    id: int | None
    name: str
    kind: str  # 'cluster' | 'named'
    model_id: str
    size: int
    total_duration_s: float
    mean_mos: float | None
    example_segment_ids: list[int] = field(default_factory=list)
    vector: np.ndarray | None = field(default=None, repr=False)
    created_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Prototype) -> PrototypeInfo:
        return cls(id=row.id, name=row.name, kind=row.kind, model_id=row.model_id, size=int(row.size or 0),
                   total_duration_s=float(row.total_duration_s or 0.0), mean_mos=row.mean_mos,
                   example_segment_ids=[int(i) for i in (row.example_segment_ids or [])],
                   vector=bytes_to_vector(row.vector), created_at=row.created_at)


# --- store access ----------------------------------------------------------------------------


@contextmanager
def write_session(store: Store) -> Iterator[Session]:
    """One write transaction: the Store's own writer session if it has one, else one on its engine."""
    own = getattr(store, "write_session", None)
    if callable(own):
        with own() as session:
            yield session
        return
    if getattr(store, "readonly", False):
        raise StoreError("the store is open read-only", "open it with Store.open(settings) to write prototypes")
    with Session(store.engine, expire_on_commit=False) as session, session.begin():
        yield session


def _segments_table(store: Store, model_id: str | None = None) -> dict[str, np.ndarray]:
    """Columns of the done recordings' segments (optionally one model's): id, model, duration, mos, ..."""
    stmt = (select(Segment.id, Segment.model_id, Segment.start_s, Segment.end_s, Segment.mos, Segment.recording_id)
            .join(Recording, Recording.id == Segment.recording_id).where(Recording.status == "done")
            .order_by(Segment.id))
    if model_id is not None:
        stmt = stmt.where(Segment.model_id == model_id)
    with store.session() as session:
        rows = session.execute(stmt).all()
    return {
        "id": np.array([r[0] for r in rows], dtype=np.int64),
        "model_id": np.array([r[1] for r in rows], dtype=object),
        "duration": np.array([r[3] - r[2] for r in rows], dtype=np.float64),
        "mos": np.array([np.nan if r[4] is None else r[4] for r in rows], dtype=np.float64),
        "recording_id": np.array([r[5] for r in rows], dtype=np.int64),
    }


def _vectors_for(store: Store, ids: np.ndarray) -> np.ndarray:
    """Vectors of ``ids`` in that order (the store may return them in another order)."""
    got_ids, vecs = store.segment_vectors([int(i) for i in ids])
    if len(got_ids) != len(ids):
        raise StoreError(f"{len(ids) - len(got_ids)} segments have no stored vector", "run `degsearch db check --repair`")
    order = np.argsort(got_ids)
    pos = order[np.searchsorted(got_ids[order], ids)]
    return np.ascontiguousarray(vecs[pos], dtype=np.float32)


def default_model_id(store: Store) -> str | None:
    """The model with the most stored segments (the archive's model); None for an empty store."""
    with store.session() as session:
        row = session.execute(select(Segment.model_id, func.count()).group_by(Segment.model_id)
                              .order_by(func.count().desc()).limit(1)).first()
    return None if row is None else str(row[0])


# --- clustering ------------------------------------------------------------------------------


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _centroids(vectors: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, vectors)
    return _normalize_rows(sums)


def _agglomerative(vectors: np.ndarray, n_clusters: int | None, distance_threshold: float | None) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    if n_clusters is not None:
        n_clusters = min(n_clusters, len(vectors))
    model = AgglomerativeClustering(n_clusters=n_clusters, distance_threshold=distance_threshold,
                                    metric="cosine", linkage="average")
    return model.fit_predict(vectors).astype(np.int64)


def _kmeans(vectors: np.ndarray, k: int, init: np.ndarray | None, seed: int) -> np.ndarray:
    """Spherical FAISS k-means, then one reassignment pass to the final normalised means."""
    import faiss

    d = vectors.shape[1]
    km = faiss.Kmeans(d, k, niter=25, spherical=True, seed=seed, max_points_per_centroid=1 << 20, verbose=False)
    km.train(vectors, init_centroids=init)
    centroids = _normalize_rows(km.centroids)
    for _ in range(2):  # assign to the nearest centroid by cosine, recompute means, reassign
        labels = _assign(vectors, centroids)
        centroids = _centroids(vectors, labels, k)
    return _assign(vectors, centroids)


def _assign(vectors: np.ndarray, centroids: np.ndarray, batch: int = 65536) -> np.ndarray:
    out = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), batch):
        out[start:start + batch] = np.argmax(vectors[start:start + batch] @ centroids.T, axis=1)
    return out


def cluster_vectors(
    vectors: np.ndarray,
    *,
    n_clusters: int | None = None,
    distance_threshold: float | None = None,
    max_agglomerative: int = 20000,
    seed: int = 0,
) -> np.ndarray:
    """Cluster L2-normalised rows; returns labels 0..K-1 numbered by decreasing cluster size.

    Up to ``max_agglomerative`` rows: agglomerative (cosine, average linkage). Beyond: spherical
    k-means over all rows; with a distance threshold, the number of clusters and the initial
    centroids come from agglomerative clustering of a random sample of ``max_agglomerative`` rows.
    """
    if (n_clusters is None) == (distance_threshold is None):
        raise ConfigError("give exactly one of n_clusters and distance_threshold",
                          "e.g. --n-clusters 8, or --distance-threshold 0.4 (cosine distance)")
    if n_clusters is not None and n_clusters < 1:
        raise ConfigError(f"n_clusters must be at least 1 (got {n_clusters})", "ask for one or more clusters")
    if distance_threshold is not None and not 0 < distance_threshold <= 2:
        raise ConfigError(f"distance_threshold must be in (0, 2] (got {distance_threshold})",
                          "it is a cosine distance: 0.2 is tight, 0.6 loose")
    x = _normalize_rows(np.asarray(vectors, dtype=np.float32))
    n = len(x)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if n <= max_agglomerative:
        labels = _agglomerative(x, n_clusters, distance_threshold)
    else:
        init = None
        if n_clusters is None:
            rng = np.random.default_rng(seed)
            sample = x[rng.choice(n, size=max_agglomerative, replace=False)]
            sample_labels = _agglomerative(sample, None, distance_threshold)
            n_clusters = int(sample_labels.max()) + 1
            init = _centroids(sample, sample_labels, n_clusters)
        labels = _kmeans(x, min(n_clusters, n), init, seed)
    # Renumber by decreasing size (dropping empty clusters) so cluster-00 is the most common.
    counts = np.bincount(labels)
    order = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    remap = np.full(counts.size, -1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[labels]


def _cluster_name(i: int, k: int) -> str:
    return f"{CLUSTER_PREFIX}{i:0{max(2, len(str(k - 1)))}d}"


def _examples(vectors: np.ndarray, ids: np.ndarray, prototype: np.ndarray) -> list[int]:
    sims = vectors @ prototype
    top = np.lexsort((ids, -sims))[:N_EXAMPLES]
    return [int(i) for i in ids[top]]


def _summary(durations: np.ndarray, mos: np.ndarray) -> tuple[float, float | None]:
    finite = mos[np.isfinite(mos)]
    return float(durations.sum()), (float(finite.mean()) if finite.size else None)


def recluster(
    store: Store,
    *,
    n_clusters: int | None = None,
    distance_threshold: float | None = None,
    max_agglomerative: int = 20000,
    model_id: str | None = None,
    label_threshold: float | None = None,
    knn: int | None = None,
) -> list[PrototypeInfo]:
    """Cluster the stored segments of ``model_id`` (default: the archive's model), replace that
    model's cluster prototypes, relabel every segment, and return the new cluster prototypes.

    Without ``n_clusters`` or ``distance_threshold``, :data:`DEFAULT_DISTANCE_THRESHOLD` is used.
    Labels use ``label_threshold`` (default ``settings.label_threshold``) and optional ``knn``.
    """
    if n_clusters is not None and distance_threshold is not None:
        raise ConfigError("give n_clusters or distance_threshold, not both", "drop one of --n-clusters/--distance-threshold")
    if n_clusters is None and distance_threshold is None:
        distance_threshold = DEFAULT_DISTANCE_THRESHOLD
    model_id = model_id or default_model_id(store)
    if model_id is None:
        raise StoreError("the store has no segments to cluster", "run `degsearch index AUDIO...` first")
    table = _segments_table(store, model_id)
    if table["id"].size == 0:
        raise StoreError(f"no segments of model {model_id} to cluster", "index audio with that model first")
    vectors = _vectors_for(store, table["id"])
    labels = cluster_vectors(vectors, n_clusters=n_clusters, distance_threshold=distance_threshold,
                             max_agglomerative=max_agglomerative)
    k = int(labels.max()) + 1
    centroids = _centroids(vectors, labels, k)
    rows = []
    for c in range(k):
        members = labels == c
        total, mean_mos = _summary(table["duration"][members], table["mos"][members])
        rows.append(Prototype(name=_cluster_name(c, k), kind="cluster", model_id=model_id, dim=int(vectors.shape[1]),
                              vector=vector_to_bytes(centroids[c]), size=int(members.sum()), total_duration_s=total,
                              mean_mos=mean_mos, example_segment_ids=_examples(vectors[members], table["id"][members], centroids[c])))
    with write_session(store) as session:
        session.execute(delete(Prototype).where(Prototype.kind == "cluster", Prototype.model_id == model_id))
        session.flush()
        session.add_all(rows)
    threshold = store.settings.label_threshold if label_threshold is None else label_threshold
    label_segments(store, threshold=threshold, knn=knn)
    return [p for p in list_prototypes(store, model_id=model_id) if p.kind == "cluster"]


# --- named prototypes ------------------------------------------------------------------------


def validate_name(name: str) -> str:
    """Check a user-given prototype name; ``cluster-*`` and ``unknown`` are reserved."""
    name = name.strip()
    if not _NAME_RE.match(name):
        raise ConfigError(f"invalid prototype name {name!r}",
                          "use letters, digits, spaces and . : + - _ (up to 200 characters), starting with a letter or digit")
    if name.lower() == UNKNOWN or name.lower().startswith(CLUSTER_PREFIX):
        raise ConfigError(f"prototype name {name!r} is reserved", f"'{UNKNOWN}' and '{CLUSTER_PREFIX}NN' are used by clustering; pick another")
    return name


def add_named_prototype(
    store: Store,
    model: FrameModel,
    name: str,
    clips: Sequence[str | Path | np.ndarray],
    *,
    whole: bool = False,
    label_threshold: float | None = None,
) -> PrototypeInfo:
    """Enroll ``name`` from example clips (their degraded frames, or all with ``whole``), replacing
    a named prototype of that name, then relabel the store. Size, duration, MOS and examples
    describe the segments that end up labelled ``name``.
    """
    from retrieval.search import resolve_query

    name = validate_name(name)
    if not clips:
        raise ConfigError("a named prototype needs at least one example clip", f"degsearch prototype add {name} CLIP...")
    vector = resolve_query(store, model, clips=list(clips), whole=whole)
    with write_session(store) as session:
        row = session.scalars(select(Prototype).where(Prototype.name == name, Prototype.model_id == model.model_id)).first()
        if row is not None and row.kind != "named":
            raise ConfigError(f"{name!r} is a cluster prototype", "pick another name")
        if row is None:
            row = Prototype(name=name, kind="named", model_id=model.model_id, dim=int(vector.size))
            session.add(row)
        row.vector = vector_to_bytes(vector)
        row.dim = int(vector.size)
    threshold = store.settings.label_threshold if label_threshold is None else label_threshold
    label_segments(store, threshold=threshold)
    return next(p for p in list_prototypes(store, model_id=model.model_id) if p.name == name)


def delete_prototype(store: Store, name: str, model_id: str | None = None) -> int:
    """Delete named prototype(s) ``name``; returns how many rows went. Segment labels are kept
    until the next :func:`label_segments`."""
    with write_session(store) as session:
        stmt = delete(Prototype).where(Prototype.name == name, Prototype.kind == "named")
        if model_id is not None:
            stmt = stmt.where(Prototype.model_id == model_id)
        return int(session.execute(stmt).rowcount or 0)


def list_prototypes(store: Store, *, model_id: str | None = None) -> list[PrototypeInfo]:
    """All prototypes (named first, then clusters), optionally of one model."""
    with store.session() as session:
        stmt = select(Prototype)
        if model_id is not None:
            stmt = stmt.where(Prototype.model_id == model_id)
        rows = session.scalars(stmt).all()
        infos = [PrototypeInfo.from_row(r) for r in rows]
    return sorted(infos, key=lambda p: (p.kind != "named", p.name))


# --- labelling -------------------------------------------------------------------------------


def _nearest_labels(vectors: np.ndarray, protos: list[PrototypeInfo], threshold: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """First-pass labels (named precedence), their scores, and the full (n, P) similarity matrix."""
    n = len(vectors)
    if not protos:
        return [UNKNOWN] * n, np.full(n, np.nan), np.empty((n, 0), np.float32)
    matrix = np.stack([p.vector for p in protos]).astype(np.float32)
    sims = vectors @ matrix.T
    named = np.array([p.kind == "named" for p in protos])
    names = [p.name for p in protos]
    rows = np.arange(n)
    pick = np.full(n, -1, dtype=np.int64)
    if named.any():
        best = np.argmax(np.where(named, sims, -np.inf), axis=1)
        ok = sims[rows, best] >= threshold
        pick[ok] = best[ok]
    if (~named).any():
        best = np.argmax(np.where(~named, sims, -np.inf), axis=1)
        ok = (pick < 0) & (sims[rows, best] >= threshold)
        pick[ok] = best[ok]
    # 'unknown' keeps the score of its nearest prototype, so users can see how far off it was.
    scores = np.where(pick >= 0, sims[rows, np.maximum(pick, 0)], sims.max(axis=1)).astype(np.float64)
    labels = [names[j] if j >= 0 else UNKNOWN for j in pick.tolist()]
    return labels, scores, sims


def _knn_vote(vectors: np.ndarray, labels: list[str], k: int) -> list[str]:
    """Similarity-weighted majority of each row's ``k`` nearest other rows' labels (ties: own label)."""
    import faiss

    n = len(vectors)
    if n < 2:
        return list(labels)
    k = min(k, n - 1)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    out = []
    batch = 4096
    for start in range(0, n, batch):
        sims, nbrs = index.search(vectors[start:start + batch], k + 1)
        for row, (srow, nrow) in enumerate(zip(sims, nbrs)):
            i = start + row
            votes: Counter[str] = Counter()
            taken = 0
            for s, j in zip(srow, nrow):
                if j < 0 or j == i or taken == k:
                    continue
                votes[labels[j]] += max(float(s), 0.0) + 1e-6
                taken += 1
            if not votes:
                out.append(labels[i])
                continue
            top = max(votes.values())
            winners = [lab for lab, v in votes.items() if v == top]
            out.append(labels[i] if labels[i] in winners else sorted(winners)[0])
    return out


def label_segments(store: Store, *, threshold: float, knn: int | None = None) -> int:
    """Label every segment with its nearest prototype (see the module docstring for precedence and
    ``knn``); ``label_score`` is the cosine to the chosen prototype (to the nearest one for
    ``unknown``). Also refreshes named prototypes' size, duration, MOS and examples. Returns the
    number of segments that got a label other than ``unknown``.
    """
    if knn is not None and knn < 1:
        raise ConfigError(f"knn must be at least 1 (got {knn})", "use e.g. --knn 10, or leave it out")
    table = _segments_table(store)
    labelled = 0
    updates: list[dict[str, Any]] = []
    named_stats: list[tuple[int, dict[str, Any]]] = []
    for model_id in sorted(set(table["model_id"].tolist())):
        mask = table["model_id"] == model_id
        ids = table["id"][mask]
        vectors = _vectors_for(store, ids)
        protos = [p for p in list_prototypes(store, model_id=model_id) if p.vector is not None and p.vector.size == vectors.shape[1]]
        labels, scores, sims = _nearest_labels(vectors, protos, threshold)
        if knn is not None and protos:
            labels = _knn_vote(vectors, labels, knn)
            index_of = {p.name: j for j, p in enumerate(protos)}
            scores = np.array([sims[i, index_of[lab]] if lab in index_of else (sims[i].max() if sims.shape[1] else np.nan)
                               for i, lab in enumerate(labels)])
        labels_arr = np.array(labels, dtype=object)
        labelled += int((labels_arr != UNKNOWN).sum())
        updates.extend({"id": int(i), "label": lab, "label_score": None if not np.isfinite(s) else float(s)}
                       for i, lab, s in zip(ids, labels, scores))
        for j, p in enumerate(protos):
            if p.kind != "named":
                continue
            members = labels_arr == p.name
            total, mean_mos = _summary(table["duration"][mask][members], table["mos"][mask][members])
            named_stats.append((int(p.id), {"size": int(members.sum()), "total_duration_s": total, "mean_mos": mean_mos,
                                            "example_segment_ids": _examples(vectors, ids, p.vector.astype(np.float32))}))
    with write_session(store) as session:
        for start in range(0, len(updates), _UPDATE_BATCH):
            session.execute(update(Segment), updates[start:start + _UPDATE_BATCH])
        for proto_id, values in named_stats:
            session.execute(update(Prototype).where(Prototype.id == proto_id).values(**values))
    return labelled


def cluster_assignments(store: Store, ids: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Nearest *cluster* prototype name of each segment (ignoring named ones and thresholds), for
    per-cluster statistics and maps. Returns (segment ids, names); names are 'unknown' when the
    segment's model has no clusters."""
    table = _segments_table(store)
    if ids is not None:
        keep = np.isin(table["id"], ids)
        table = {k: v[keep] for k, v in table.items()}
    names = np.full(table["id"].size, UNKNOWN, dtype=object)
    for model_id in sorted(set(table["model_id"].tolist())):
        mask = table["model_id"] == model_id
        protos = [p for p in list_prototypes(store, model_id=model_id) if p.kind == "cluster"]
        if not protos:
            continue
        vectors = _vectors_for(store, table["id"][mask])
        matrix = np.stack([p.vector for p in protos]).astype(np.float32)
        names[mask] = np.array([p.name for p in protos], dtype=object)[np.argmax(vectors @ matrix.T, axis=1)]
    return table["id"], names.tolist()
