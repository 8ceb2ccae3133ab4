"""Prototypes: list them, enroll a named one from uploaded clips, re-cluster the store."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Form, UploadFile

from api.deps import WRITE_MARK, StateDep, decode_uploads, require_read, require_write, save_uploads, upload_dir
from api.schemas import ErrorResponse, PrototypeList, PrototypeOut, ReclusterRequest

router = APIRouter(prefix="/v1/prototypes", tags=["prototypes"])

_WRITE_ERRORS = {
    401: {"model": ErrorResponse, "description": "API key missing"},
    403: {"model": ErrorResponse, "description": "API key not accepted"},
}
# Clips per named enrollment: enough to average out one speaker/codec, bounded for the request size.
MAX_CLIPS = 32


@router.get("", response_model=PrototypeList, summary="All prototypes", dependencies=[Depends(require_read)])
def get_prototypes(state: StateDep) -> PrototypeList:
    from retrieval.prototypes import list_prototypes

    return PrototypeList(prototypes=[PrototypeOut.from_info(p) for p in list_prototypes(state.store())])


@router.post(
    "",
    response_model=PrototypeOut,
    status_code=201,
    summary="Enroll a named prototype from example clips",
    dependencies=[Depends(require_write)],
    openapi_extra={WRITE_MARK: True},
    responses={
        **_WRITE_ERRORS,
        413: {"model": ErrorResponse, "description": "Uploads too large or too long"},
        415: {"model": ErrorResponse, "description": "An upload is not decodable audio"},
    },
)
def create_prototype(
    state: StateDep,
    name: Annotated[str, Form(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_ .:+-]*$", description="Prototype name, e.g. 'gsm-codec' (letters, digits, space . : + - _).")],
    files: Annotated[list[UploadFile], File(description="One or more example clips of the degradation.")],
) -> PrototypeOut:
    """Embed the clips' degraded frames and store their mean as prototype ``name`` (replacing one of that name)."""
    from retrieval.prototypes import add_named_prototype

    if len(files) > MAX_CLIPS:
        from indexer.errors import ConfigError

        raise ConfigError(f"at most {MAX_CLIPS} clips per prototype (got {len(files)})", "send fewer, representative clips")
    model = state.model()
    with upload_dir() as tmp:
        paths = save_uploads(files, tmp, state.settings)
        decode_uploads(paths, state.settings)
        with state.writer() as store:
            info = add_named_prototype(store, model, name, paths)
    return PrototypeOut.from_info(info)


@router.post(
    "/recluster",
    response_model=PrototypeList,
    summary="Re-cluster all stored segments into prototypes and relabel them",
    dependencies=[Depends(require_write)],
    openapi_extra={WRITE_MARK: True},
    responses=_WRITE_ERRORS,
)
def recluster_prototypes(state: StateDep, body: Annotated[ReclusterRequest, Body()]) -> PrototypeList:
    """Send ``{}`` for the default distance threshold."""
    from retrieval.prototypes import recluster

    with state.writer() as store:
        infos = recluster(store, n_clusters=body.n_clusters, distance_threshold=body.distance_threshold)
    return PrototypeList(prototypes=[PrototypeOut.from_info(p) for p in infos])
