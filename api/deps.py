"""Shared state and FastAPI dependencies: the store, the model, auth, uploads and metrics.

One :class:`AppState` per app (``app.state.degsearch``). The store is opened read-only once and
re-checked per request (``Store.refresh`` is a cheap generation check) so segments written by an
index run in another process show up without a restart. If the store cannot be opened (missing,
or its FAISS index needs a rebuild) the app still starts: ``/healthz`` reports ``degraded`` and
store-backed routes answer 503 until it opens.
"""

from __future__ import annotations

import hmac
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request, Security, UploadFile
from fastapi.security import APIKeyHeader
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from indexer.errors import DegsearchError, ModelError, StoreError
from indexer.settings import Settings

if TYPE_CHECKING:  # heavy imports (faiss, torch) stay out of module import time
    from indexer.model import FrameModel
    from retrieval.store import Store

log = logging.getLogger("degsearch.api")

API_KEY_HEADER = "X-API-Key"
# OpenAPI extension on write operations (they need a key whenever api_keys is set).
WRITE_MARK = "x-degsearch-write"
# Seconds between retries of a failed store open, so a broken store is not re-opened per request.
STORE_RETRY_S = 2.0
# Copy uploads in chunks of this size while counting bytes.
UPLOAD_CHUNK = 1 << 16
# Extensions kept on the temp file (decoders sniff content anyway; this only helps them).
_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")


# --- errors raised by the HTTP layer ----------------------------------------------------------


class APIKeyMissingError(DegsearchError):
    """No X-API-Key header on a request that needs one (HTTP 401)."""

    code = "missing_api_key"


class APIKeyInvalidError(DegsearchError):
    """An X-API-Key header that is not one of ``settings.api_keys`` (HTTP 403)."""

    code = "invalid_api_key"


class UploadTooLargeError(DegsearchError):
    """An upload over ``max_upload_bytes`` or longer than ``max_upload_seconds`` (HTTP 413)."""

    code = "upload_too_large"


class ServiceUnavailableError(StoreError):
    """The store or model cannot be used right now (HTTP 503)."""

    code = "unavailable"


# --- metrics ---------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry owned by one app (tests create many apps per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "degsearch_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.queries = Counter(
            "degsearch_queries_total",
            "Search queries by kind of query (segment, prototype, vector, clip).",
            ["kind"],
            registry=self.registry,
        )
        self.index_size = Gauge(
            "degsearch_index_segments", "Stored segments (searchable vectors).", registry=self.registry
        )
        self.store_reloads = Counter(
            "degsearch_store_reloads_total",
            "Times the FAISS index was reloaded because another process wrote to the store.",
            registry=self.registry,
        )


# --- application state -----------------------------------------------------------------------


class AppState:
    """Everything a request needs, created by ``create_app`` and closed by its lifespan."""

    def __init__(self, settings: Settings, *, refresh_interval_s: float = 0.0) -> None:
        self.settings = settings
        # 0: check the store generation on every request (one small SELECT); raise to throttle.
        self.refresh_interval_s = refresh_interval_s
        self.store_retry_s = STORE_RETRY_S
        self.metrics = Metrics()
        self._store: Store | None = None
        self._store_error: str | None = None
        self._store_failed_at = 0.0
        self._store_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self._model: FrameModel | None = None
        self._model_lock = threading.Lock()
        # Writes (prototypes) go through one writer at a time.
        self.write_lock = threading.Lock()

    # store -------------------------------------------------------------------------------------
    def try_open_store(self) -> Store | None:
        """Open the store read-only if it is not open; on failure remember why and return None."""
        if self._store is not None:
            return self._store
        with self._store_lock:
            if self._store is not None:
                return self._store
            if self._store_error and time.monotonic() - self._store_failed_at < self.store_retry_s:
                return None
            try:
                from retrieval.store import Store

                self._store = Store.open(self.settings, readonly=True)
                self._store_error = None
                self._last_refresh = time.monotonic()
                log.info("store opened read-only at %s", self.settings.store_dir)
            except Exception as exc:  # noqa: BLE001 - whatever breaks the store, the API stays up, degraded
                self._store_error = str(exc) if isinstance(exc, DegsearchError) else f"{type(exc).__name__}: {exc}"
                self._store_failed_at = time.monotonic()
                log.warning("store not usable yet (API runs degraded): %s", exc)
            return self._store

    @property
    def store_error(self) -> str | None:
        """Why the store could not be opened (None when open or not tried)."""
        return self._store_error

    @property
    def store_is_open(self) -> bool:
        return self._store is not None

    def store(self) -> Store:
        """The read-only store, refreshed if another process moved its generation."""
        store = self.try_open_store()
        if store is None:
            raise ServiceUnavailableError(
                f"the store at {self.settings.store_dir} is not usable: {self._store_error}",
                "index some audio (`degsearch index`) or run `degsearch db check --repair`; the API retries by itself",
            )
        now = time.monotonic()
        if now - self._last_refresh >= self.refresh_interval_s and self._refresh_lock.acquire(blocking=False):
            # One thread reloads; the others keep serving the index they have.
            try:
                self._last_refresh = now
                if store.refresh():
                    self.metrics.store_reloads.inc()
            finally:
                self._refresh_lock.release()
        return store

    @contextmanager
    def writer(self) -> Iterator[Store]:
        """A writable store for one write request, closed afterwards (writes are rare)."""
        from retrieval.store import Store

        with self.write_lock:
            store = Store.open(self.settings)
            try:
                yield store
            finally:
                store.close()
        # Make the reader see the write on the next request.
        self._last_refresh = 0.0

    # model -------------------------------------------------------------------------------------
    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def model(self) -> FrameModel:
        """The store's frame model (:func:`indexer.pipeline.model_spec`), loaded once on first use."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from indexer.model import load_model
                    from indexer.pipeline import model_spec

                    spec = model_spec(self.settings)
                    try:
                        self._model = load_model(spec)
                    except ModelError as exc:
                        raise ServiceUnavailableError(f"model {spec!r} cannot be loaded: {exc.message}", exc.fix) from exc
        return self._model

    def model_if_available(self) -> FrameModel | None:
        """The model, or None when it cannot be loaded (for queries that only prefer it)."""
        try:
            return self.model()
        except ServiceUnavailableError:
            return None

    def close(self) -> None:
        """Close the store (called once at shutdown)."""
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def get_state(request: Request) -> AppState:
    """The app's :class:`AppState`."""
    return request.app.state.degsearch


StateDep = Annotated[AppState, Depends(get_state)]


def get_store(state: StateDep) -> Store:
    """Dependency: the refreshed read-only store (503 while unusable)."""
    return state.store()


def get_model(state: StateDep) -> FrameModel:
    """Dependency: the loaded frame model (503 if it cannot be loaded)."""
    return state.model()


# --- auth ------------------------------------------------------------------------------------

_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Required for writes when api_keys is configured, and for reads when require_key_for_reads is set.",
)


def _check_key(settings: Settings, key: str | None) -> None:
    if not settings.api_keys:
        return
    if not key:
        raise APIKeyMissingError(f"this endpoint needs an API key in the {API_KEY_HEADER} header", "send one of the configured api_keys")
    # Constant-time comparison against every key so timing does not reveal a prefix match.
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
        raise APIKeyInvalidError(f"the {API_KEY_HEADER} header does not hold an accepted key", "check the key against DEGSEARCH_API_KEYS")


def require_read(state: StateDep, key: Annotated[str | None, Security(_api_key_scheme)] = None) -> None:
    """Dependency for read endpoints: a key only if ``require_key_for_reads``."""
    if state.settings.require_key_for_reads:
        _check_key(state.settings, key)


def require_write(state: StateDep, key: Annotated[str | None, Security(_api_key_scheme)] = None) -> None:
    """Dependency for write endpoints: a key whenever ``api_keys`` is set."""
    _check_key(state.settings, key)


# --- uploads ---------------------------------------------------------------------------------


@contextmanager
def upload_dir() -> Iterator[Path]:
    """A private temporary directory for one request's uploads, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="degsearch-upload-") as tmp:
        yield Path(tmp)


def save_uploads(uploads: list[UploadFile], dest: Path, settings: Settings) -> list[Path]:
    """Copy uploads into ``dest`` under server-chosen names, counting bytes against the limit.

    The client's filename only contributes a sanitised extension; it never becomes a path.
    """
    budget = settings.max_upload_bytes
    paths: list[Path] = []
    for i, upload in enumerate(uploads):
        ext = Path(upload.filename or "").suffix.lower()
        path = dest / f"clip{i}{ext if _SAFE_EXT.match(ext) else ''}"
        written = 0
        with path.open("wb") as out:
            while chunk := upload.file.read(UPLOAD_CHUNK):
                written += len(chunk)
                if written > budget:
                    raise UploadTooLargeError(
                        f"upload exceeds the limit of {settings.max_upload_bytes} bytes",
                        "send a shorter clip or raise DEGSEARCH_MAX_UPLOAD_BYTES",
                    )
                out.write(chunk)
        if written == 0:
            from indexer.errors import AudioDecodeError

            raise AudioDecodeError(upload.filename or f"clip{i}", "the uploaded file is empty", "upload a WAV, FLAC, MP3 or OGG file")
        budget -= written
        paths.append(path)
    return paths


def decode_uploads(paths: list[Path], settings: Settings) -> list[Any]:
    """Decode each upload with ``indexer.audio.load_audio`` and enforce ``max_upload_seconds``.

    Returns the :class:`indexer.audio.AudioData` of each clip. Decoding is bounded to just over the
    limit, so a long file costs no more than a file of the allowed length. Undecodable files raise
    :class:`AudioDecodeError` (HTTP 415).
    """
    from indexer.audio import load_audio

    limit = settings.max_upload_seconds
    decoded = []
    for path in paths:
        audio = load_audio(path, duration=limit + 1.0)
        if audio.duration_s > limit + 1e-3:
            raise UploadTooLargeError(
                f"uploaded clip is longer than the limit of {limit:g} s",
                "trim the clip or raise DEGSEARCH_MAX_UPLOAD_SECONDS",
            )
        decoded.append(audio)
    return decoded
