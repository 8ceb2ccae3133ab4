"""Search: nearest stored segments to a segment, prototype, vector (JSON) or uploaded clip."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import StateDep, decode_uploads, require_read, save_uploads, upload_dir
from api.schemas import MAX_K, ErrorResponse, SearchFiltersIn, SearchHitOut, SearchRequest, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_read)])

_UPLOAD_ERRORS = {
    413: {"model": ErrorResponse, "description": "Upload larger than max_upload_bytes or longer than max_upload_seconds"},
    415: {"model": ErrorResponse, "description": "The upload is not decodable audio"},
}


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Nearest segments to a stored segment, a prototype or a vector",
    responses={404: {"model": ErrorResponse, "description": "Unknown segment id or prototype name"}},
)
def search_json(body: SearchRequest, state: StateDep) -> SearchResponse:
    """Resolve the query to a vector, then return the ``k`` most similar stored segments."""
    from retrieval.search import resolve_query, search

    start = time.perf_counter()
    store = state.store()
    kind = "segment" if body.segment_id is not None else "prototype" if body.prototype is not None else "vector"
    state.metrics.queries.labels(kind).inc()
    # Only prototype lookups use the model (to prefer its own prototypes); ids and vectors do not load it.
    model = state.model_if_available() if kind == "prototype" else None
    query = resolve_query(store, model, segment_id=body.segment_id, prototype=body.prototype, vector=body.vector)
    filters = body.filters.to_library() if body.filters else None
    hits = search(store, query, body.k, filters, exact=body.exact)
    return SearchResponse(hits=[SearchHitOut.from_hit(h) for h in hits], k=body.k, took_ms=(time.perf_counter() - start) * 1e3)


@router.post(
    "/search/clip",
    response_model=SearchResponse,
    summary="Nearest segments to an uploaded audio clip",
    responses=_UPLOAD_ERRORS,
)
def search_clip(
    state: StateDep,
    file: Annotated[UploadFile, File(description="Audio clip (WAV, FLAC, OGG, MP3, ...).")],
    k: Annotated[int, Form(ge=1, le=MAX_K, description="How many hits to return.")] = 10,
    filters: Annotated[str | None, Form(max_length=10_000, description="SearchFiltersIn as a JSON object.")] = None,
    whole: Annotated[bool, Form(description="Embed the whole clip instead of its detected degraded frames.")] = False,
    exact: Annotated[bool, Form(description="Exact (brute-force) search.")] = False,
) -> SearchResponse:
    """Decode the clip, embed its degraded frames (or all of it), and search like ``/v1/search``."""
    from retrieval.search import resolve_query, search

    start = time.perf_counter()
    parsed = _parse_filters(filters)
    store = state.store()
    model = state.model()
    state.metrics.queries.labels("clip").inc()
    with upload_dir() as tmp:
        paths = save_uploads([file], tmp, state.settings)
        decode_uploads(paths, state.settings)  # 415 / 413 (too long) before any model work
        query = resolve_query(store, model, clips=paths, whole=whole)
    hits = search(store, query, k, parsed.to_library() if parsed else None, exact=exact)
    return SearchResponse(hits=[SearchHitOut.from_hit(h) for h in hits], k=k, took_ms=(time.perf_counter() - start) * 1e3)


def _parse_filters(raw: str | None) -> SearchFiltersIn | None:
    """Multipart forms carry filters as a JSON string; invalid JSON or fields are a 422."""
    if raw is None or not raw.strip():
        return None
    try:
        return SearchFiltersIn.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "filters", *e.get("loc", ()))} for e in exc.errors(include_url=False, include_context=False)]
        ) from exc
