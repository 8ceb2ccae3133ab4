"""The degsearch HTTP API: ``create_app(settings)`` builds a FastAPI app over the shared store.

Routes live in ``api/routes/`` (one router per resource) and stay thin: parse the request, make one
library call from ``retrieval``/``indexer``, convert the result with ``api.schemas``. Errors are
always JSON ``{code, message, fix}``; library exceptions map to HTTP statuses in ``STATUS_BY_ERROR``.

Run it with ``degsearch serve`` or ``uvicorn --factory api.app:app_from_env``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import (
    APIKeyInvalidError,
    APIKeyMissingError,
    AppState,
    WRITE_MARK,
    ServiceUnavailableError,
    UploadTooLargeError,
)
from api.schemas import ErrorResponse
from indexer.errors import AudioDecodeError, ConfigError, DegsearchError, ModelError, NotFoundError, StoreError
from indexer.settings import Settings, get_settings

log = logging.getLogger("degsearch.api")

STATIC_DIR = Path(__file__).parent / "static"
# Multipart framing around the uploaded bytes (boundaries, part headers, small form fields).
MULTIPART_OVERHEAD = 64 * 1024

# Most specific class first: the first isinstance match decides the status.
STATUS_BY_ERROR: tuple[tuple[type[DegsearchError], int], ...] = (
    (APIKeyMissingError, 401),
    (APIKeyInvalidError, 403),
    (NotFoundError, 404),
    (UploadTooLargeError, 413),
    (AudioDecodeError, 415),
    (ConfigError, 422),
    (ModelError, 422),  # e.g. a query vector whose dimension does not fit the model
    (ServiceUnavailableError, 503),
    (StoreError, 503),
)

_HTTP_CODES = {
    400: "bad_request",
    401: "missing_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (401, "API key missing"),
        (403, "API key not accepted"),
        (422, "Invalid parameters"),
        (503, "Store or model not usable yet"),
    )
}


def _package_version() -> str:
    try:
        return version("degsearch")
    except PackageNotFoundError:
        return "0+unknown"


def _error(status: int, code: str, message: str, fix: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(code=code, message=message, fix=fix).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """Reject request bodies over the upload limit with 413 before they are parsed.

    Checks ``Content-Length`` up front, then counts streamed bytes (chunked uploads have no length).
    Pure ASGI so the body is never buffered here.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False  # h11/uvicorn already reject malformed lengths
                if too_large:
                    response = _error(413, "upload_too_large", f"request body is larger than {self.max_bytes} bytes",
                                      "send a smaller upload or raise DEGSEARCH_MAX_UPLOAD_BYTES")
                    await response(scope, receive, send)
                    return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing; our handler makes it JSON.
                    raise StarletteHTTPException(413, f"request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)


class MetricsMiddleware:
    """Observe every request's latency under its route template (bounded label cardinality)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def capture_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if template.startswith("/static"):
                template = "/static"
            self.state.metrics.request_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API over the store in ``settings.store_dir`` (opened read-only at startup).

    Startup never fails because of the store: if it cannot be opened yet, ``/healthz`` says
    ``degraded`` and store-backed routes answer 503 until it can.
    """
    settings = settings or get_settings()
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.try_open_store()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="degsearch",
        version=_package_version(),
        summary="Search speech archives by what is wrong with the audio.",
        description=(
            "Nearest degraded segments to a clip, a stored segment, a prototype or a vector; "
            "segment audio; prototypes; statistics. Errors are JSON `{code, message, fix}`."
        ),
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse, "description": "Malformed request body"},
            422: {"model": ErrorResponse, "description": "Invalid parameters"},
            503: {"model": ErrorResponse, "description": "Store or model not usable yet"},
        },
    )
    app.state.degsearch = state

    _install_error_handlers(app)

    from api.routes import health, prototypes, recordings, search, segments, stats

    for module in (search, segments, recordings, prototypes, stats, health):
        app.include_router(module.router)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    _document_auth_as_configured(app, settings)

    # Order: the last added runs first. Metrics sees everything, including 413s from the limiter.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, state=state)
    return app


def _document_auth_as_configured(app: FastAPI, settings: Settings) -> None:
    """Make the schema's ``security`` say what this server enforces.

    Every route declares the X-API-Key scheme; operations that do not need a key under the current
    settings (no keys configured; reads when ``require_key_for_reads`` is off) drop it.
    """
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if not isinstance(operation, dict):
                    continue
                responses = operation.setdefault("responses", {})
                if operation.get("requestBody"):  # the body limit applies to every request with a body
                    responses.setdefault("413", _error_doc("Request body larger than max_upload_bytes"))
                if "security" not in operation:
                    continue
                write = bool(operation.get(WRITE_MARK))
                if not settings.api_keys or not (write or settings.require_key_for_reads):
                    del operation["security"]
                    for status in ("401", "403"):
                        responses.pop(status, None)
                else:
                    responses.setdefault("401", _error_doc("API key missing"))
                    responses.setdefault("403", _error_doc("API key not accepted"))
        if not settings.api_keys:
            schema.get("components", {}).pop("securitySchemes", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error_doc(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as JSON ``{code, message, fix}`` with a meaningful status."""

    @app.exception_handler(DegsearchError)
    async def degsearch_error(request: Request, exc: DegsearchError) -> JSONResponse:
        status = next((s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls)), 400)
        headers = {"WWW-Authenticate": "APIKey"} if status == 401 else None
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(status, exc.code, exc.message, exc.fix, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:10]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return _error(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", f"internal error: {type(exc).__name__}", "see the server log")


def set_compute_threads(n: int) -> None:
    """Limit FAISS (OpenMP) and torch intra-op threads per request.

    A server runs many requests at once; one query is too small to gain from several threads, and
    OpenMP/torch thread pools fighting over the cores cost 5-10x latency under load (measured:
    FAISS flat search on 20k vectors 0.3 ms with 1 thread vs 4 ms with 2 on a busy 2-core host).
    """
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory api.app:app_from_env`` (settings from DEGSEARCH_* variables)."""
    return create_app(get_settings())
