"""The FAISS side of the store: an ``IndexIDMap2`` keyed by segment id, persisted atomically.

Vectors are float32 and L2-normalised, so inner product = cosine similarity. The database's
``segment_vectors`` table is the source of truth; everything here can be rebuilt from it.

Index kinds (``settings.faiss_factory``, any ``faiss.index_factory`` string, inner-product metric):

* ``Flat`` (default): exact search, supports removal.
* ``HNSW32`` etc.: approximate; HNSW cannot remove vectors, so removed ids are hidden from
  results (tombstones) and the graph is rebuilt without them when the index is persisted.
* ``IVF…``/``PQ…`` (needs training): until the store holds enough vectors to train on
  (:func:`min_training_points`, e.g. 39 x nlist), vectors live in an exact flat index; once
  enough are there the index is trained on them and rebuilt. Search is exact in the meantime.

Persistence (:meth:`VectorIndex.save`): write ``<file>.tmp``, fsync, ``os.replace``, fsync the
directory; then the same for the JSON sidecar ``<file>.json`` (generation, dim, count, factory,
model ids, sha256 of the index file). :func:`load_index` verifies all of these and raises
:class:`IndexFileError` with the reason when anything disagrees, so the store can rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ConfigError, StoreError

log = logging.getLogger("degsearch.store")

SIDECAR_VERSION = 1
# IVF probes per query unless ``params`` says otherwise: a recall/speed trade-off; small
# archives are exact anyway (fallback).
DEFAULT_NPROBE = 16


class IndexFileError(StoreError):
    """The FAISS file on disk is missing, unreadable or disagrees with its sidecar/the database."""


def _faiss():
    import faiss

    return faiss


def make_faiss_index(dim: int, factory: str):
    """``faiss.index_factory(dim, factory, METRIC_INNER_PRODUCT)`` with a clear error when it cannot work."""
    faiss = _faiss()
    if dim < 1:
        raise StoreError(f"cannot build a FAISS index for dimension {dim}", "the store's vectors must have dim >= 1")
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        first = text.split("failed: ", 1)[-1]  # drop FAISS's C++ location prefix
        raise ConfigError(
            f"FAISS factory {factory!r} cannot index {dim}-dimensional vectors ({first})",
            "choose a factory that fits the dimension, e.g. --faiss-factory Flat, HNSW32, or IVF<n>,PQ<m> with "
            f"m dividing {dim}",
        ) from exc
    return index


def min_training_points(dim: int, factory: str) -> int:
    """How many vectors a factory needs before it is trained (0: no training needed)."""
    index = make_faiss_index(dim, factory)
    if index.is_trained:
        return 0
    need = 256
    m = re.search(r"IVF(\d+)", factory)
    if m:
        need = max(need, 39 * int(m.group(1)))
    m = re.search(r"PQ\d+(?:x(\d+))?", factory)
    if m:
        nbits = int(m.group(1) or 8)
        need = max(need, 39 * (1 << nbits))
    return need


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves either the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def sidecar_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".json")


@dataclass
class IndexMeta:
    """The sidecar: what the FAISS file is supposed to contain."""

    generation: int
    dim: int
    count: int
    factory: str
    fallback: bool = False  # True: a flat index standing in for an untrained IVF/PQ factory
    model_ids: list[str] = field(default_factory=list)
    sha256: str = ""
    version: int = SIDECAR_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexMeta:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("sidecar is not a JSON object")
        return cls(generation=int(raw["generation"]), dim=int(raw["dim"]), count=int(raw["count"]),
                   factory=str(raw["factory"]), fallback=bool(raw.get("fallback", False)),
                   model_ids=[str(m) for m in raw.get("model_ids", [])], sha256=str(raw.get("sha256", "")),
                   version=int(raw.get("version", SIDECAR_VERSION)))


class VectorIndex:
    """Segment vectors in FAISS, keyed by segment id; thread-safe (one lock around the index)."""

    def __init__(self, dim: int, factory: str = "Flat", *, params: str = "", _index: Any = None,
                 fallback: bool | None = None) -> None:
        faiss = _faiss()
        self.dim = int(dim)
        self.factory = factory
        self.params = params  # FAISS ParameterSpace string applied once trained, e.g. "efSearch=256"
        self.min_train = min_training_points(self.dim, factory)  # also validates factory vs dim
        self._lock = threading.RLock()
        self._deleted: set[int] = set()  # tombstones for indexes that cannot remove (HNSW)
        if _index is not None:
            self._index = _index
            self.fallback = bool(fallback)
        elif self.min_train > 0:
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            self.fallback = True
        else:
            self._index = faiss.IndexIDMap2(make_faiss_index(self.dim, factory))
            self.fallback = False
        self._tune()

    # --- properties ----------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Number of live vectors (tombstoned ones excluded)."""
        with self._lock:
            return int(self._index.ntotal) - len(self._deleted)

    @property
    def is_exact(self) -> bool:
        """True when the index is a lossless flat one (search equals brute force)."""
        faiss = _faiss()
        inner = faiss.downcast_index(self._index.index)
        return isinstance(inner, faiss.IndexFlat)

    @property
    def kind(self) -> str:
        """Human-readable description, e.g. 'IVF64,Flat (exact flat until 2496 vectors to train on)'."""
        if self.fallback:
            return f"{self.factory} (exact flat until {self.min_train} vectors to train on)"
        return self.factory

    def ids(self) -> np.ndarray:
        """All live ids, sorted (int64)."""
        faiss = _faiss()
        with self._lock:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            if self._deleted:
                ids = ids[~np.isin(ids, np.fromiter(self._deleted, np.int64))]
        return np.sort(ids)

    # --- mutation ------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under ids (ids must not be present already)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return
        vectors = self._check_vectors(vectors, ids.size)
        with self._lock:
            if self._deleted:
                self._deleted.difference_update(int(i) for i in ids)
            self._index.add_with_ids(vectors, ids)
            if self.fallback and self._index.ntotal >= self.min_train:
                self._train()

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return 0
        with self._lock:
            try:
                return int(self._index.remove_ids(faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))))
            except RuntimeError:
                # HNSW and friends cannot remove: hide the ids until the next compaction.
                present = np.isin(ids, faiss.vector_to_array(self._index.id_map))
                fresh = {int(i) for i in ids[present]} - self._deleted
                self._deleted.update(fresh)
                return len(fresh)

    def compact(self) -> None:
        """Rebuild without tombstoned ids (only indexes that cannot remove have any)."""
        with self._lock:
            if not self._deleted:
                return
            ids, vecs = self.reconstruct_all()
            fresh = VectorIndex(self.dim, self.factory, params=self.params)
            fresh.add(ids, vecs)
            self._index, self.fallback, self._deleted = fresh._index, fresh.fallback, set()
            self._tune()

    def reconstruct_all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of all live entries, as stored (lossy for PQ)."""
        faiss = _faiss()
        with self._lock:
            all_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            n = all_ids.size
            inner = self._index.index
            vecs = inner.reconstruct_n(0, n) if n else np.empty((0, self.dim), np.float32)
            if self._deleted:
                keep = ~np.isin(all_ids, np.fromiter(self._deleted, np.int64))
                all_ids, vecs = all_ids[keep], vecs[keep]
        return all_ids, np.ascontiguousarray(vecs, dtype=np.float32)

    def _train(self) -> None:
        """Swap the exact fallback for the trained requested index, training on what it holds."""
        faiss = _faiss()
        ids, vecs = self.reconstruct_all()
        inner = make_faiss_index(self.dim, self.factory)
        log.info("training FAISS %s on %d vectors", self.factory, len(ids))
        inner.train(vecs)
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(vecs, ids)
        self._index, self.fallback, self._deleted = index, False, set()
        self._tune()

    def _tune(self) -> None:
        """Apply the search-time parameters: IVF ``nprobe`` 16 by default, then ``self.params``."""
        faiss = _faiss()
        if self.fallback:
            return
        inner = faiss.downcast_index(self._index.index)
        try:
            ivf = faiss.extract_index_ivf(inner)
            ivf.nprobe = min(int(ivf.nlist), DEFAULT_NPROBE)
        except RuntimeError:
            pass
        for item in filter(None, (p.strip() for p in self.params.split(","))):
            name, _, value = item.partition("=")
            try:
                faiss.ParameterSpace().set_index_parameter(inner, name.strip(), float(value))
            except (RuntimeError, ValueError):
                # Parameters are per kind (nprobe: IVF, efSearch: HNSW); a store whose index is of
                # another kind keeps working with its own defaults.
                log.warning("FAISS search parameter %r does not apply to index %r; ignored", item, self.factory)

    def _check_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (n, self.dim):
            raise StoreError(f"expected {n} vectors of dimension {self.dim}, got shape {vectors.shape}",
                             "all segment vectors of one store must come from models of the same dimension")
        return vectors

    # --- search --------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, similarities) over the whole index, best first (approximate if the index is)."""
        q = self._check_vectors(np.asarray(query, np.float32).reshape(1, -1), 1)
        with self._lock:
            live = int(self._index.ntotal) - len(self._deleted)
            k = min(int(k), live)
            if k <= 0:
                return np.empty(0, np.int64), np.empty(0, np.float32)
            want = min(k + len(self._deleted), int(self._index.ntotal))
            sims, ids = self._index.search(q, want)
            deleted = self._deleted
        ids, sims = ids[0], sims[0]
        keep = ids >= 0
        if deleted:
            keep &= ~np.isin(ids, np.fromiter(deleted, np.int64))
        ids, sims = ids[keep][:k], sims[keep][:k]
        return _order(ids.astype(np.int64), sims.astype(np.float32))

    def search_subset(self, query: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k restricted to ``ids`` using an ``IDSelectorBatch`` (only for exact flat indexes).

        Ids absent from the index are simply not returned; the caller tops up from the database.
        """
        faiss = _faiss()
        q = self._check_vectors(np.asarray(query, np.float32).reshape(1, -1), 1)
        ids = np.ascontiguousarray(np.unique(np.asarray(ids, np.int64)), dtype=np.int64)
        if not self.is_exact:
            raise StoreError("search_subset needs an exact flat index", "use Store.search_vectors")
        k = min(int(k), ids.size)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        sel = faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))
        params = faiss.SearchParameters(sel=sel)
        with self._lock:
            sims, got = self._index.search(q, k, params=params)
        got, sims = got[0], sims[0]
        keep = got >= 0
        return _order(got[keep].astype(np.int64), sims[keep].astype(np.float32))

    # --- persistence ---------------------------------------------------------------------------
    def save(self, path: Path, meta: IndexMeta) -> IndexMeta:
        """Persist atomically (temp file, fsync, rename, fsync dir), then the sidecar; returns the sidecar."""
        faiss = _faiss()
        self.compact()
        with self._lock:
            data = faiss.serialize_index(self._index).tobytes()
            count = int(self._index.ntotal)
        path = Path(path)
        atomic_write_bytes(path, data)
        meta.dim, meta.count, meta.factory, meta.fallback = self.dim, count, self.factory, self.fallback
        meta.sha256 = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(sidecar_path(path), meta.to_json().encode())
        return meta


def _order(ids: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by similarity descending, ties by id ascending (deterministic results)."""
    order = np.lexsort((ids, -sims))
    return ids[order], sims[order]


def load_index(path: Path, params: str = "") -> tuple[VectorIndex, IndexMeta]:
    """Read and verify an index file and its sidecar (search ``params`` as :class:`VectorIndex`);
    :class:`IndexFileError` says what is wrong."""
    faiss = _faiss()
    path = Path(path)
    side = sidecar_path(path)
    if not path.exists():
        raise IndexFileError(f"FAISS file {path} is missing")
    if not side.exists():
        raise IndexFileError(f"FAISS sidecar {side} is missing")
    try:
        meta = IndexMeta.from_json(side.read_text())
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise IndexFileError(f"FAISS sidecar {side} is unreadable ({exc})") from exc
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if meta.sha256 and digest != meta.sha256:
        raise IndexFileError(f"FAISS file {path} is corrupt or truncated (checksum differs from its sidecar)")
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise IndexFileError(f"FAISS file {path} is unreadable ({str(exc).strip().splitlines()[-1]})") from exc
    if not isinstance(index, faiss.IndexIDMap2):
        raise IndexFileError(f"FAISS file {path} does not hold an IndexIDMap2")
    if index.d != meta.dim:
        raise IndexFileError(f"FAISS file {path} has dimension {index.d}, its sidecar says {meta.dim}")
    if index.ntotal != meta.count:
        raise IndexFileError(f"FAISS file {path} holds {index.ntotal} vectors, its sidecar says {meta.count}")
    try:
        vi = VectorIndex(index.d, meta.factory, params=params, _index=index, fallback=meta.fallback)
    except ConfigError as exc:
        raise IndexFileError(f"FAISS file {path}: {exc.message}") from exc
    return vi, meta
