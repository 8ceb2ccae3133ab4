"""Recordings: one indexed (or failed) recording by id, with its segment ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import selectinload

from api.deps import StateDep, require_read
from api.schemas import ErrorResponse, RecordingOut
from indexer.errors import NotFoundError

router = APIRouter(prefix="/v1/recordings", tags=["recordings"], dependencies=[Depends(require_read)])


@router.get(
    "/{recording_id}",
    response_model=RecordingOut,
    summary="One recording and its segment ids",
    responses={404: {"model": ErrorResponse, "description": "Unknown recording id"}},
)
def get_recording(recording_id: Annotated[int, Path(ge=1, le=2**62)], state: StateDep) -> RecordingOut:
    from retrieval.models import Recording

    with state.store().session() as session:
        recording = session.get(Recording, recording_id, options=[selectinload(Recording.segments)])
        if recording is None:
            raise NotFoundError(f"recording {recording_id} does not exist", "take ids from /v1/search results")
        return RecordingOut.from_row(recording)
