"""The store: a SQL database (source of truth, via SQLAlchemy + Alembic) plus a FAISS accelerator.

Guarantees:

* ``Store.open`` creates the store directory, upgrades the schema to head (never touching a
  database written by a newer degsearch), and makes the in-memory FAISS index equal to the
  database: it loads ``segments.faiss`` when its sidecar (generation, dimension, count, factory,
  checksum) agrees, syncs ids that differ, and otherwise rebuilds from ``segment_vectors``.
* One writer, many readers: writers hold an exclusive ``flock`` on ``<store_dir>/degsearch.lock``;
  readers (``readonly=True``, e.g. the API) never take it, never write, and see new segments
  through :meth:`Store.refresh`. SQLite runs in WAL mode, so readers see consistent snapshots.
* :meth:`Store.write_recording` commits a recording, its segments and their vectors in one
  transaction (replacing the path's old ones), then updates FAISS in memory. The FAISS file is
  persisted by :meth:`flush_index`, at :meth:`close`, and at most every ``persist_interval_s``
  during a run — not per recording. A writer killed at any point leaves committed segments with
  exactly one vector each; the next open syncs FAISS to the database.
* Segment ids are never reused (SQLite AUTOINCREMENT, PostgreSQL sequences) and vectors are never
  updated in place, so an id set difference is enough to sync FAISS with the database.

Failed re-index of a file that already has good segments (:meth:`record_failure`): the old
segments stay searchable and the row keeps ``status='done'``, with ``error``/``error_stage`` set
to the latest failure (the changed content hash is not stored, so the next run retries it). A
path with no good row gets a ``status='failed'`` row without segments.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from sqlalchemy import Engine, create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session

from indexer.errors import ConfigError, NotFoundError, StoreError
from indexer.records import RecordingFailure, RecordingResult
from retrieval.models import IndexRun, IndexState, ModelRecord, Recording, Segment, SegmentVector, utcnow
from retrieval.vectors import IndexFileError, IndexMeta, VectorIndex, load_index, sidecar_path

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger("degsearch.store")

def _migrations_dir() -> Path:
    """``migrations/`` of this installation (a package next to ``retrieval/``, source tree or wheel)."""
    import migrations

    return Path(migrations.__file__).resolve().parent


MIGRATIONS_DIR = _migrations_dir()
LOCK_NAME = "degsearch.lock"
# Rows per IN (...) / per chunk when reading vectors: under every backend's parameter limit.
_CHUNK = 5000
# Filtered searches over at most this many ids are answered by numpy over the database vectors.
_SMALL_SUBSET = 4096


class NewerDatabaseError(StoreError):
    """The database carries an Alembic revision this degsearch does not know."""


# --- Alembic ---------------------------------------------------------------------------------


def alembic_config(connection: Any = None, url: str | None = None):
    """An Alembic ``Config`` for ``migrations/`` that works from a source tree or an installed package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration revision this degsearch ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def database_revision(conn) -> str | None:
    """The revision stamped in the database (None: empty database); raise if it is newer than ours."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    heads = MigrationContext.configure(conn).get_current_heads()
    script = ScriptDirectory.from_config(alembic_config())
    for rev in heads:
        try:
            known = script.get_revision(rev)
        except CommandError:
            known = None
        if known is None:
            raise NewerDatabaseError(
                f"database was written by a newer degsearch (schema revision {rev!r}; this one knows up to {head_revision()!r})",
                "upgrade degsearch (pip install -U degsearch), or point --store-dir/--database-url at another store",
            )
    return heads[0] if heads else None


# --- engine ----------------------------------------------------------------------------------


def validate_database_url(url: str):
    """Parse a SQLAlchemy URL; :class:`ConfigError` naming the fix when it is malformed."""
    fix = "use a SQLAlchemy URL such as sqlite:////abs/path/degsearch.db or postgresql://user:pass@host/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"malformed database URL {url!r}", fix) from exc
    try:
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise ConfigError(f"unknown database in URL {url!r} ({parsed.drivername})", fix) from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(f"database URL {url!r} names no file", "give SQLite a file path, or omit --database-url")
    return parsed


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """Engine with the store's connection settings (SQLite: WAL, busy timeout, foreign keys)."""
    parsed = validate_database_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Readers get one snapshot per session (like SQLite WAL) while a writer commits.
        options: dict[str, Any] = {}
        if readonly and parsed.get_backend_name() == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        return create_engine(parsed, pool_pre_ping=True, **options)
    engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy (not the sqlite3 module) emit BEGIN, so reads get a real snapshot.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        if not readonly:
            cur.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a killed process never loses a commit (only power loss can).
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(parsed.database)
    return None


def _masked(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _db_unusable(url: str, exc: Exception) -> StoreError:
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return StoreError(f"cannot use database {_masked(url)}: {detail}",
                      "check --database-url / DEGSEARCH_DATABASE_URL and that the server or file is reachable")


# --- store directory and writer lock -----------------------------------------------------------


def ensure_store_dir(store_dir: Path) -> Path:
    """Create the store directory; :class:`StoreError` naming it when it cannot be written."""
    fix = "choose a writable --store-dir (or DEGSEARCH_STORE_DIR), or fix the directory's permissions"
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create store directory {store_dir}: {exc.strerror or exc}", fix) from exc
    if not store_dir.is_dir():
        raise StoreError(f"store directory {store_dir} is not a directory", fix)
    if not os.access(store_dir, os.W_OK | os.X_OK):
        raise StoreError(f"store directory {store_dir} is not writable", fix)
    return store_dir


class WriterLock:
    """Exclusive ``flock`` on ``<store_dir>/degsearch.lock``: one writer per store at a time."""

    def __init__(self, store_dir: Path) -> None:
        self.path = store_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create lock file {self.path}: {exc.strerror or exc}",
                             "choose a writable --store-dir or fix its permissions") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StoreError(f"another degsearch process is writing to this store (lock {self.path} is held)",
                             "wait for it to finish or stop it; readers such as `degsearch serve` need no lock") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def writer_active(store_dir: Path) -> bool:
    """True when another process holds the writer lock (checked without creating or writing anything)."""
    path = store_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if we got it
    return False


def upgrade_database(settings: Settings) -> str:
    """Migrate the settings' database to head under the writer lock; returns the revision."""
    url = settings.resolved_database_url
    validate_database_url(url)
    ensure_store_dir(settings.store_dir)
    engine = make_engine(url)
    lock: WriterLock | None = None
    try:
        try:
            with engine.connect() as conn:
                database_revision(conn)  # a newer database is refused before the lock file is touched
        except DBAPIError as exc:  # unreachable server, not a database file, ...
            raise _db_unusable(url, exc) from exc
        lock = WriterLock(settings.store_dir).acquire()
        _upgrade(engine, url)
        return head_revision()
    finally:
        engine.dispose()
        if lock is not None:
            lock.release()


def store_model_ids(settings: Settings) -> list[str]:
    """Ids of the models the settings' store indexed its recordings with, read without opening the
    store (no lock, no FAISS); empty when there is no store yet or its database cannot be read
    (:meth:`Store.open` then says why)."""
    url = settings.resolved_database_url
    validate_database_url(url)
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.exists():
        return []
    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            done = select(Recording.model_id).where(Recording.status == "done", Recording.model_id.is_not(None)).distinct()
            return sorted(conn.execute(done).scalars())
    except DBAPIError:
        return []
    finally:
        engine.dispose()


def _upgrade(engine: Engine, url: str) -> None:
    from alembic import command

    try:
        with engine.connect() as conn:
            current = database_revision(conn)
            conn.rollback()
            if current == head_revision():
                return
            log.info("upgrading database %s from %s to %s", _masked(url), current or "empty", head_revision())
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
    except DBAPIError as exc:  # unreachable server, not a database file, ...
        raise _db_unusable(url, exc) from exc


def _load_index_settled(path: Path, *, readonly: bool, params: str) -> tuple[VectorIndex, IndexMeta]:
    """:func:`load_index`, retried briefly for readers: a writer replaces the file, then its
    sidecar, so a reader can catch one new and one old for a moment."""
    attempts = 3 if readonly else 1
    for attempt in range(attempts):
        try:
            return load_index(path, params)
        except IndexFileError:
            if attempt == attempts - 1 or not writer_active(path.parent):
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


# --- report ----------------------------------------------------------------------------------


@dataclass
class StoreReport:
    """What ``degsearch db check`` prints; ``consistent`` is False when ``problems`` is not empty."""

    store_dir: str
    database_url: str
    db_revision: str | None
    head_revision: str
    recordings: int
    failed_recordings: int
    segments: int
    vectors: int
    dims: list[int]
    faiss_file: str
    faiss_file_status: str
    faiss_file_count: int | None
    faiss_file_generation: int | None
    faiss_count: int
    generation: int
    factory: str
    consistent: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the store -------------------------------------------------------------------------------


class Store:
    """SQL metadata + FAISS vectors of one degsearch store. Open with :meth:`Store.open`."""

    #: A writer persists the FAISS file at most this often during a run (plus at flush/close).
    persist_interval_s: float = 30.0

    def __init__(self, settings: Settings, engine: Engine, *, readonly: bool, lock: WriterLock | None) -> None:
        self.settings = settings
        self.engine = engine
        self.readonly = readonly
        self._lock = lock
        self._vectors: VectorIndex | None = None
        self._seen: tuple[int, int] = (-1, -1)  # (generation, changes) the in-memory index reflects
        self._dirty = False  # in-memory index differs from the file
        self._needs_sync = False  # an in-memory update failed: re-sync from the database at flush
        self._last_persist = time.monotonic()
        self._closed = False

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, *, readonly: bool = False) -> Store:
        """Open (creating and upgrading if needed) the store; verify or rebuild the FAISS index.

        Raises :class:`ConfigError` for a malformed URL or unusable FAISS factory and
        :class:`StoreError` for an unwritable directory, a held writer lock, a database written by
        a newer degsearch or (read-only) a missing or outdated database; nothing is modified then.
        """
        url = settings.resolved_database_url
        validate_database_url(url)
        sqlite_file = _sqlite_file(url)
        if readonly:
            if sqlite_file is not None and not sqlite_file.exists():
                raise StoreError(f"no degsearch store at {settings.store_dir} (database {sqlite_file} does not exist)",
                                 "index some audio with `degsearch index`, or run `degsearch db upgrade`")
        else:
            ensure_store_dir(settings.store_dir)
        engine = make_engine(url, readonly=readonly)
        lock: WriterLock | None = None
        try:
            try:
                with engine.connect() as conn:
                    current = database_revision(conn)  # raises before anything is modified
            except DBAPIError as exc:  # unreachable server, not a database file, ...
                raise _db_unusable(url, exc) from exc
            if readonly:
                if current != head_revision():
                    raise StoreError(
                        f"the database of {settings.store_dir} is at schema revision {current or 'none'}, not {head_revision()}",
                        "run `degsearch db upgrade` (or any writing command) once")
            else:
                lock = WriterLock(settings.store_dir).acquire()
                _upgrade(engine, url)
            store = cls(settings, engine, readonly=readonly, lock=lock)
            store._load_vectors()
            return store
        except BaseException:
            engine.dispose()
            if lock is not None:
                lock.release()
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sessions ------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (one snapshot; nothing is committed)."""
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """One write transaction (writers only); commits on success, rolls back on error.

        For metadata (prototypes, labels, enrollments). Add or remove segments and their vectors
        only through :meth:`write_recording` / :meth:`delete_recording`, which keep FAISS in step.
        """
        self._require_writer()
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def _require_writer(self) -> None:
        if self._closed:
            raise StoreError("the store is closed", "open it again with Store.open(settings)")
        if self.readonly:
            raise StoreError("the store is open read-only", "open it with Store.open(settings) to write")

    # --- FAISS <-> database ----------------------------------------------------------------------
    def _state(self, session: Session) -> IndexState | None:
        return session.get(IndexState, 1)

    def _effective_factory(self, state: IndexState | None) -> str:
        """An explicit setting (flag/env) wins; otherwise the store keeps the factory it was built with."""
        if "faiss_factory" in self.settings.model_fields_set or state is None:
            return self.settings.faiss_factory
        return state.factory

    def _db_ids(self, session: Session) -> np.ndarray:
        """All vector ids, sorted (raw driver rows: ~5x faster than ORM scalars for 1M ids)."""
        rows = session.connection().exec_driver_sql("SELECT segment_id FROM segment_vectors ORDER BY segment_id").fetchall()
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    def _db_dim(self, session: Session) -> int | None:
        return session.scalar(select(SegmentVector.dim).limit(1))

    def _load_vectors(self) -> None:
        """Make the in-memory index equal to the database: load+verify, sync, or rebuild."""
        if not self.readonly:
            # A writer killed inside a persist leaves a temp file; the real files are intact.
            for tmp in (self.settings.index_path, sidecar_path(self.settings.index_path)):
                tmp.with_name(tmp.name + ".tmp").unlink(missing_ok=True)
            with self.write_session() as session:
                if self._state(session) is None:
                    session.add(IndexState(id=1, generation=0, dim=None, count=0, factory=self.settings.faiss_factory,
                                           changes=0))
        with self.session() as session:
            state = self._state(session)
            seen = (state.generation, state.changes) if state else (0, 0)
            db_ids = self._db_ids(session)
            db_dim = self._db_dim(session)
        factory = self._effective_factory(state)
        path = self.settings.index_path
        vectors: VectorIndex | None = None
        reason: str | None = None
        if db_ids.size == 0:
            if path.exists() and state is not None and state.count > 0:
                reason = "database has no vectors"
        else:
            try:
                loaded, meta = _load_index_settled(path, readonly=self.readonly, params=self.settings.faiss_params)
                if state is not None and meta.generation != state.generation:
                    reason = f"generation {meta.generation} of {path} differs from the database's {state.generation}"
                elif loaded.factory != factory:
                    reason = f"factory changed from {loaded.factory!r} to {factory!r}"
                elif loaded.dim != db_dim:
                    reason = f"{path} has dimension {loaded.dim} but the database's vectors have {db_dim}"
                else:
                    vectors = loaded
            except IndexFileError as exc:
                reason = exc.message
        changed = False
        if vectors is not None:
            changed = self._sync(vectors, db_ids) > 0
        elif db_ids.size:
            log.warning("rebuilding FAISS index from the database: %s", reason)
            vectors = self._build_from_db(int(db_dim), factory)
            changed = True
        elif reason:
            log.warning("dropping FAISS file: %s", reason)
            changed = True
        self._vectors = vectors
        self._seen = seen
        self._dirty = changed
        if changed and not self.readonly:
            self.flush_index()

    def _read_vectors(self, session: Session, ids: Sequence[int] | None = None,
                      after: int | None = None, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        stmt = select(SegmentVector.segment_id, SegmentVector.dim, SegmentVector.vector).order_by(SegmentVector.segment_id)
        if ids is not None:
            stmt = stmt.where(SegmentVector.segment_id.in_([int(i) for i in ids]))
        if after is not None:
            stmt = stmt.where(SegmentVector.segment_id > after)
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = session.execute(stmt).all()
        if not rows:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        dims = {int(r[1]) for r in rows}
        if len(dims) != 1:
            raise StoreError(f"the database holds segment vectors of several dimensions {sorted(dims)}",
                             "index each model into its own --store-dir; run `degsearch db check`")
        dim = dims.pop()
        ids_out = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        blob = b"".join(bytes(r[2]) for r in rows)
        if len(blob) != 4 * dim * len(rows):
            raise StoreError("a stored segment vector has the wrong byte length", "run `degsearch db check`")
        return ids_out, np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32)

    def _build_from_db(self, dim: int, factory: str) -> VectorIndex:
        vectors = VectorIndex(dim, factory, params=self.settings.faiss_params)
        last = -1
        with self.session() as session:
            while True:
                ids, vecs = self._read_vectors(session, after=last, limit=50_000)
                if ids.size == 0:
                    break
                vectors.add(ids, vecs)
                last = int(ids[-1])
        return vectors

    def _sync(self, vectors: VectorIndex, db_ids: np.ndarray) -> int:
        """Add database ids missing from ``vectors`` and remove extra ones; returns how many changed."""
        have = vectors.ids()
        missing = np.setdiff1d(db_ids, have, assume_unique=True)
        extra = np.setdiff1d(have, db_ids, assume_unique=True)
        if extra.size:
            vectors.remove(extra)
        if missing.size:
            with self.session() as session:
                for start in range(0, missing.size, _CHUNK):
                    ids, vecs = self._read_vectors(session, missing[start:start + _CHUNK].tolist())
                    vectors.add(ids, vecs)
        if missing.size or extra.size:
            log.info("synced FAISS with the database: %d added, %d removed", missing.size, extra.size)
        return int(missing.size + extra.size)

    def _catch_up(self, vectors: VectorIndex) -> int:
        """Cheap reader sync: add ids above the largest known one (ids only grow); a full id diff
        only when the segment count still disagrees afterwards (segments were deleted)."""
        ids = vectors.ids()
        last = int(ids[-1]) if ids.size else -1
        added = 0
        with self.session() as session:
            while True:
                new_ids, vecs = self._read_vectors(session, after=last, limit=_CHUNK)
                if new_ids.size == 0:
                    break
                vectors.add(new_ids, vecs)
                added += int(new_ids.size)
                last = int(new_ids[-1])
            # segments' count is answered from a small covering index; it equals the vector count.
            db_count = int(session.scalar(select(func.count()).select_from(Segment)) or 0)
        if db_count == vectors.ntotal:
            return added
        with self.session() as session:
            db_ids = self._db_ids(session)
        return added + self._sync(vectors, db_ids)

    # --- models and runs -----------------------------------------------------------------------
    def ensure_model(self, model_id: str, name: str, frame_rate: float, dim: int, threshold: float, meta: dict) -> None:
        """Insert or update the model row."""
        with self.write_session() as session:
            row = session.get(ModelRecord, model_id)
            if row is None:
                session.add(ModelRecord(id=model_id, name=name, frame_rate=float(frame_rate), dim=int(dim),
                                        threshold=float(threshold), meta=dict(meta or {})))
            else:
                row.name, row.frame_rate, row.dim, row.threshold = name, float(frame_rate), int(dim), float(threshold)
                row.meta = dict(meta or {})

    def start_run(self, model_id: str, args: dict) -> int:
        """Record the start of an index run; returns its id."""
        with self.write_session() as session:
            run = IndexRun(model_id=model_id, args=dict(args or {}), status="running", files_indexed=0, files_skipped=0,
                           files_failed=0, audio_seconds=0.0, wall_seconds=0.0)
            session.add(run)
            session.flush()
            return int(run.id)

    def finish_run(self, run_id: int, *, status: str, files_indexed: int, files_skipped: int, files_failed: int,
                   audio_seconds: float, wall_seconds: float) -> None:
        """Record an index run's outcome (status: done | interrupted | failed)."""
        with self.write_session() as session:
            run = session.get(IndexRun, run_id)
            if run is None:
                raise NotFoundError(f"index run {run_id} does not exist", "pass the id returned by start_run")
            run.status, run.finished_at = status, utcnow()
            run.files_indexed, run.files_skipped, run.files_failed = int(files_indexed), int(files_skipped), int(files_failed)
            run.audio_seconds, run.wall_seconds = float(audio_seconds), float(wall_seconds)

    # --- recordings ----------------------------------------------------------------------------
    def recording_state(self, path: str) -> tuple[str | None, str | None, str] | None:
        """(content_hash, model_id, status) of a path, or None if it was never seen."""
        with self.session() as session:
            row = session.execute(select(Recording.content_hash, Recording.model_id, Recording.status)
                                  .where(Recording.path == str(path))).first()
        return None if row is None else (row[0], row[1], row[2])

    def _store_dim(self, session: Session) -> int | None:
        """Dimension of the stored vectors (None: empty store, the next recording sets it)."""
        return self._db_dim(session)

    def write_recording(self, result: RecordingResult, run_id: int | None = None) -> int:
        """Commit a recording, its segments and vectors in one transaction; returns the recording id.

        Replaces the path's previous segments and vectors (deleted in the same transaction).
        """
        self._require_writer()
        vecs = _segment_matrix(result)
        if vecs.shape[0] and (self._vectors is None or (self._vectors.ntotal == 0 and self._vectors.dim != vecs.shape[1])):
            # First vectors of the store: build the index now so a factory that cannot work for
            # this dimension fails (ConfigError) before anything is committed.
            self._vectors = VectorIndex(vecs.shape[1], self._effective_factory(self._state_row()), params=self.settings.faiss_params)
        with self.write_session() as session:
            dim = self._store_dim(session)
            if vecs.shape[0] and dim is not None and vecs.shape[1] != dim:
                raise StoreError(
                    f"{result.path}: segment vectors have dimension {vecs.shape[1]}, the store holds {dim}-dimensional ones",
                    "index with the store's model, or use a separate --store-dir for this model")
            rec = session.scalar(select(Recording).where(Recording.path == result.path))
            old_ids: list[int] = []
            if rec is None:
                rec = Recording(path=result.path)
                session.add(rec)
            else:
                old_ids = list(session.scalars(select(Segment.id).where(Segment.recording_id == rec.id)))
                if old_ids:
                    for start in range(0, len(old_ids), _CHUNK):
                        chunk = old_ids[start:start + _CHUNK]
                        session.execute(delete(SegmentVector).where(SegmentVector.segment_id.in_(chunk)))
                        session.execute(delete(Segment).where(Segment.id.in_(chunk)))
            rec.content_hash, rec.duration_s = result.content_hash, float(result.duration_s)
            rec.sample_rate, rec.channels = int(result.sample_rate), int(result.channels)
            rec.attributes = dict(result.attributes or {})
            rec.status, rec.error, rec.error_stage = "done", None, None
            rec.model_id, rec.index_run_id, rec.indexed_at = result.model_id, run_id, utcnow()
            rec.detected_with = result.detected_with
            rec.analysed_s, rec.degraded_s = float(result.analysed_s), float(result.degraded_s)
            rec.mean_mos = None if result.mean_mos is None else float(result.mean_mos)
            session.flush()
            segs = [Segment(recording_id=rec.id, channel=int(s.channel), start_s=float(s.start_s), end_s=float(s.end_s),
                            n_frames=int(s.n_frames), mos=float(s.mos), score=float(s.score), label=s.label or "unknown",
                            label_score=None if s.label_score is None else float(s.label_score), model_id=result.model_id)
                    for s in result.segments]
            session.add_all(segs)
            session.flush()
            new_ids = np.asarray([s.id for s in segs], dtype=np.int64)
            if segs:
                session.execute(insert(SegmentVector), [
                    {"segment_id": int(i), "dim": int(vecs.shape[1]), "vector": vecs[j].astype("<f4").tobytes()}
                    for j, i in enumerate(new_ids)])
            if segs or old_ids:
                session.execute(update(IndexState).where(IndexState.id == 1).values(changes=IndexState.changes + 1))
            rec_id = int(rec.id)
        if segs or old_ids:
            self._apply(np.asarray(old_ids, np.int64), new_ids, vecs)
        return rec_id

    def _apply(self, removed: np.ndarray, added: np.ndarray, vecs: np.ndarray) -> None:
        """Mirror a committed change in the in-memory index; persist if the last flush is old."""
        try:
            if self._vectors is not None and removed.size:
                self._vectors.remove(removed)
            if added.size:
                if self._vectors is None:
                    factory = self._effective_factory(self._state_row())
                    self._vectors = VectorIndex(vecs.shape[1], factory, params=self.settings.faiss_params)
                self._vectors.add(added, vecs)
        except Exception:
            # The database has the truth; the next flush/open re-syncs FAISS from it.
            log.exception("FAISS update failed; it will be re-synced from the database")
            self._needs_sync = True
        self._dirty = True
        if time.monotonic() - self._last_persist >= self.persist_interval_s:
            self.flush_index()

    def _state_row(self) -> IndexState | None:
        with self.session() as session:
            return self._state(session)

    def record_failure(self, failure: RecordingFailure, run_id: int | None = None) -> int:
        """Record a file that could not be indexed; returns the recording id (see module docstring)."""
        self._require_writer()
        with self.write_session() as session:
            rec = session.scalar(select(Recording).where(Recording.path == failure.path))
            if rec is not None and rec.status == "done":
                # Keep the good segments searchable; note the failed attempt.
                rec.error, rec.error_stage, rec.index_run_id = failure.error, failure.stage, run_id
                return int(rec.id)
            if rec is None:
                rec = Recording(path=failure.path)
                session.add(rec)
            rec.status, rec.error, rec.error_stage = "failed", failure.error, failure.stage
            rec.content_hash, rec.attributes = failure.content_hash, dict(failure.attributes or {})
            rec.index_run_id, rec.indexed_at = run_id, utcnow()
            rec.analysed_s, rec.degraded_s, rec.mean_mos = 0.0, 0.0, None
            session.flush()
            return int(rec.id)

    def delete_recording(self, path: str) -> None:
        """Delete a recording with its segments and vectors (NotFoundError if the path is unknown)."""
        self._require_writer()
        with self.write_session() as session:
            rec_id = session.scalar(select(Recording.id).where(Recording.path == str(path)))
            if rec_id is None:
                raise NotFoundError(f"no recording with path {path}", "list recordings with `degsearch stats` or the API")
            old_ids = list(session.scalars(select(Segment.id).where(Segment.recording_id == rec_id)))
            for start in range(0, len(old_ids), _CHUNK):
                chunk = old_ids[start:start + _CHUNK]
                session.execute(delete(SegmentVector).where(SegmentVector.segment_id.in_(chunk)))
                session.execute(delete(Segment).where(Segment.id.in_(chunk)))
            session.execute(delete(Recording).where(Recording.id == rec_id))
            if old_ids:
                session.execute(update(IndexState).where(IndexState.id == 1).values(changes=IndexState.changes + 1))
        if old_ids:
            self._apply(np.asarray(old_ids, np.int64), np.empty(0, np.int64), np.empty((0, 0), np.float32))

    # --- vectors -------------------------------------------------------------------------------
    def segment_vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 sorted, vectors (n, D) float32) from the database; unknown ids are skipped."""
        with self.session() as session:
            if ids is None:
                got_ids, got_vecs = self._read_vectors(session)
            else:
                wanted = np.unique(np.asarray(list(ids), dtype=np.int64))
                parts = [self._read_vectors(session, wanted[s:s + _CHUNK].tolist()) for s in range(0, wanted.size, _CHUNK)]
                parts = [p for p in parts if p[0].size]
                if not parts:
                    got_ids, got_vecs = np.empty(0, np.int64), np.empty((0, 0), np.float32)
                else:
                    got_ids, got_vecs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if got_ids.size == 0:
            dim = self._vectors.dim if self._vectors is not None else 0
            return got_ids, np.empty((0, dim), np.float32)
        return got_ids, got_vecs

    def search_vectors(self, query: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (segment ids, cosine similarities), best first; ties by id.

        Without ``ids``: the FAISS index (approximate if its factory is). With ``ids``: exact over
        those ids (FAISS ``IDSelectorBatch`` on a flat index, else numpy over the database
        vectors); returns exactly ``min(k, n)`` hits, n = how many of ``ids`` are stored.
        """
        if self._vectors is None and ids is None:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        dim = self._vectors.dim if self._vectors is not None else q.size
        if q.size != dim:
            raise StoreError(f"query vector has dimension {q.size}, the store holds {dim}-dimensional vectors",
                             "embed the query with the store's model")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0:
            raise StoreError("query vector is zero or not finite", "use a non-silent query clip or a valid vector")
        q = q / norm
        k = int(k)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if ids is None:
            return self._vectors.search(q, k)
        subset = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if subset.size == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if subset.size > _SMALL_SUBSET and self._vectors is not None and self._vectors.is_exact:
            got, sims = self._vectors.search_subset(q, k, subset)
            if got.size == min(k, subset.size):
                return got, sims
            # The index lacks some of these ids (a reader behind the writer): go to the database.
        return self._brute_force(q, k, subset)

    def _brute_force(self, q: np.ndarray, k: int, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best_ids, best_sims = np.empty(0, np.int64), np.empty(0, np.float32)
        with self.session() as session:
            for start in range(0, subset.size, _CHUNK):
                ids, vecs = self._read_vectors(session, subset[start:start + _CHUNK].tolist())
                if ids.size == 0:
                    continue
                sims = (vecs @ q).astype(np.float32)
                ids, sims = np.concatenate([best_ids, ids]), np.concatenate([best_sims, sims])
                order = np.lexsort((ids, -sims))[:k]
                best_ids, best_sims = ids[order], sims[order]
        return best_ids, best_sims

    def refresh(self) -> bool:
        """Reader: catch up with the writer (reload the file / sync ids) if the database moved; True if so."""
        if self._closed or not self.readonly:
            return False
        with self.session() as session:
            state = self._state(session)
            seen = (state.generation, state.changes) if state else (0, 0)
            if seen == self._seen:
                return False
            db_dim = self._db_dim(session)
        vectors = self._vectors
        if seen[0] != self._seen[0]:
            try:
                loaded, meta = _load_index_settled(self.settings.index_path, readonly=True, params=self.settings.faiss_params)
                if meta.generation == seen[0] and (db_dim is None or loaded.dim == db_dim):
                    vectors = loaded
            except IndexFileError as exc:
                log.info("FAISS file not reloadable (%s); syncing from the database", exc.message)
        if db_dim is None:
            vectors = None
        elif vectors is None or vectors.dim != db_dim:
            vectors = self._build_from_db(int(db_dim), self._effective_factory(state))
        else:
            # The current index is mutated in place, under its own lock, while searches go on.
            self._catch_up(vectors)
        self._vectors = vectors
        self._seen = seen
        return True

    def flush_index(self) -> None:
        """Writer: persist the FAISS index atomically and bump the generation in the database."""
        self._require_writer()
        path = self.settings.index_path
        if self._needs_sync:
            with self.session() as session:
                db_ids, db_dim = self._db_ids(session), self._db_dim(session)
            if db_ids.size and (self._vectors is None or self._vectors.dim != db_dim):
                self._vectors = self._build_from_db(int(db_dim), self._effective_factory(self._state_row()))
            elif self._vectors is not None:
                self._sync(self._vectors, db_ids)
            self._needs_sync = False
        with self.write_session() as session:
            state = self._state(session)
            generation = state.generation + 1
            with self.session() as read:
                model_ids = sorted(read.scalars(select(ModelRecord.id)))
            if self._vectors is None:
                for p in (path, sidecar_path(path)):
                    p.unlink(missing_ok=True)
                state.dim, state.count = None, 0
            else:
                meta = self._vectors.save(path, IndexMeta(generation=generation, dim=self._vectors.dim, count=0,
                                                          factory=self._vectors.factory, model_ids=model_ids))
                state.dim, state.count, state.factory = meta.dim, meta.count, meta.factory
            state.generation, state.updated_at = generation, utcnow()
            self._seen = (generation, state.changes)
        self._dirty = False
        self._last_persist = time.monotonic()

    def rebuild_index(self) -> int:
        """Rebuild FAISS from ``segment_vectors`` (and persist it, for a writer); returns the count."""
        with self.session() as session:
            state = self._state(session)
            db_dim = self._db_dim(session)
        self._vectors = None if db_dim is None else self._build_from_db(int(db_dim), self._effective_factory(state))
        self._needs_sync = False
        if not self.readonly:
            self.flush_index()
        return 0 if self._vectors is None else self._vectors.ntotal

    # --- check ---------------------------------------------------------------------------------
    def check(self) -> StoreReport:
        """Compare the database, the FAISS file on disk and the in-memory index; list problems with fixes."""
        url = self.settings.resolved_database_url
        problems: list[str] = []
        notes: list[str] = []
        with self.session() as session:
            revision = database_revision(session.connection())
            state = self._state(session)
            recordings = session.scalar(select(func.count()).select_from(Recording)) or 0
            failed = session.scalar(select(func.count()).select_from(Recording).where(Recording.status == "failed")) or 0
            segments = session.scalar(select(func.count()).select_from(Segment)) or 0
            vectors = session.scalar(select(func.count()).select_from(SegmentVector)) or 0
            dims = sorted(int(d) for d in session.scalars(select(SegmentVector.dim).distinct()))
            no_vector = session.scalar(select(func.count()).select_from(Segment).outerjoin(
                SegmentVector, SegmentVector.segment_id == Segment.id).where(SegmentVector.segment_id.is_(None))) or 0
            orphans = session.scalar(select(func.count()).select_from(SegmentVector).outerjoin(
                Segment, Segment.id == SegmentVector.segment_id).where(Segment.id.is_(None))) or 0
            db_ids = self._db_ids(session)
        head = head_revision()
        fix_rebuild = "run `degsearch db rebuild-index`"
        if revision != head:
            problems.append(f"database revision {revision} is not head {head}: run `degsearch db upgrade`")
        if no_vector:
            problems.append(f"{no_vector} segments have no vector: re-index their recordings")
        if orphans:
            problems.append(f"{orphans} vectors belong to no segment: {fix_rebuild}")
        if len(dims) > 1:
            problems.append(f"vectors of several dimensions {dims}: use one store per model")
        generation = state.generation if state else 0
        path = self.settings.index_path
        file_count = file_generation = None
        if db_ids.size == 0 and not path.exists():
            file_status = "absent (store has no vectors)"
        else:
            try:
                loaded, meta = load_index(path)
                file_count, file_generation = loaded.ntotal, meta.generation
                file_status = "ok"
                if meta.generation != generation:
                    file_status = f"generation {meta.generation} != database {generation}"
                elif dims and loaded.dim != dims[0]:
                    file_status = f"dimension {loaded.dim} != database vectors {dims[0]}"
                elif not np.array_equal(loaded.ids(), db_ids):
                    file_status = f"holds {loaded.ntotal} vectors, database {db_ids.size} (ids differ)"
            except IndexFileError as exc:
                file_status = exc.message
            lagging = file_status.startswith(("generation", "holds"))
            if file_status != "ok" and lagging and self._lock is None and writer_active(self.settings.store_dir):
                # A running writer persists FAISS every ~30 s and at its end: a lag is expected.
                notes.append(f"FAISS file: {file_status} (a writer is running; it persists the file periodically)")
            elif file_status != "ok":
                problems.append(f"FAISS file: {file_status}: {fix_rebuild}")
        mem_count = 0 if self._vectors is None else self._vectors.ntotal
        if mem_count != db_ids.size:
            problems.append(f"in-memory FAISS holds {mem_count} vectors, database {db_ids.size}: {fix_rebuild}")
        return StoreReport(
            store_dir=str(self.settings.store_dir), database_url=_masked(url), db_revision=revision, head_revision=head,
            recordings=int(recordings), failed_recordings=int(failed), segments=int(segments), vectors=int(vectors),
            dims=dims, faiss_file=str(path), faiss_file_status=file_status, faiss_file_count=file_count,
            faiss_file_generation=file_generation, faiss_count=mem_count, generation=int(generation),
            factory=self._vectors.kind if self._vectors is not None else self._effective_factory(state),
            consistent=not problems, problems=problems, notes=notes)

    # --- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Writer: persist FAISS if it changed; release the lock; dispose the engine. Idempotent."""
        if self._closed:
            return
        try:
            if not self.readonly and (self._dirty or self._needs_sync):
                self.flush_index()
        finally:
            self._closed = True
            self.engine.dispose()
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def _segment_matrix(result: RecordingResult) -> np.ndarray:
    """The segments' embeddings as an (n, D) float32 matrix, L2-normalised; StoreError if unusable."""
    if not result.segments:
        return np.empty((0, 0), np.float32)
    try:
        vecs = np.stack([np.asarray(s.embedding, dtype=np.float32).reshape(-1) for s in result.segments])
    except ValueError as exc:
        raise StoreError(f"{result.path}: segment embeddings have different dimensions",
                         "all segments of a recording must come from one model") from exc
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    if not np.all(np.isfinite(vecs)) or np.any(norms == 0):
        raise StoreError(f"{result.path}: a segment embedding is zero or not finite", "check the model output")
    return (vecs / norms).astype(np.float32)
