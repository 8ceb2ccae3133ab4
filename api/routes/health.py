"""Operations: liveness/readiness (`/healthz`) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import AppState, StateDep, require_read
from api.schemas import HealthResponse

router = APIRouter(tags=["operations"])


def _index_state(state: AppState) -> tuple[int | None, int | None]:
    """(stored segments, FAISS generation), or Nones while the store is not open.

    Segments are counted in the database (the truth, also while a writer has not persisted FAISS yet).
    """
    from sqlalchemy import func, select

    from retrieval.models import IndexState, Segment

    store = state.try_open_store()
    if store is None:
        return None, None
    with store.session() as session:
        count = session.scalar(select(func.count()).select_from(Segment)) or 0
        generation = session.scalar(select(IndexState.generation).where(IndexState.id == 1)) or 0
        return int(count), int(generation)


@router.get(
    "/healthz",
    response_model=HealthResponse,
    summary="Liveness and store readiness (503 while degraded)",
    responses={503: {"model": HealthResponse, "description": "Running, but the store is not usable yet"}},
)
def healthz(request: Request, state: StateDep) -> JSONResponse:
    count, generation = _index_state(state)
    ok = state.store_is_open
    body = HealthResponse(
        status="ok" if ok else "degraded",
        store_open=ok,
        segments=count,
        generation=generation,
        model_loaded=state.model_loaded,
        detail=None if ok else state.store_error,
        version=request.app.version,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    dependencies=[Depends(require_read)],
)
def metrics(state: StateDep) -> Response:
    count, _ = _index_state(state)
    if count is not None:
        state.metrics.index_size.set(count)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
