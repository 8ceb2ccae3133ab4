"""Segments: metadata by id, and the segment's audio cut from its recording as a streamed WAV."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path as FsPath
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import joinedload

from api.deps import StateDep, require_read
from api.schemas import MAX_PAD_S, ErrorResponse, SegmentOut
from indexer.errors import AudioDecodeError, NotFoundError

router = APIRouter(prefix="/v1/segments", tags=["segments"], dependencies=[Depends(require_read)])

SegmentId = Annotated[int, Path(ge=1, le=2**62, description="Segment id.")]
_NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown segment id (or its audio file is gone)"}}
# Samples per streamed chunk (one second at 64 kHz, less at telephone rates).
_CHUNK_SAMPLES = 1 << 16


class SegmentAudioUnavailableError(NotFoundError):
    """The segment exists but its recording's audio can no longer be read."""

    code = "audio_unavailable"


def _load_segment(state: StateDep, segment_id: int):  # -> retrieval.models.Segment (detached, recording loaded)
    from retrieval.models import Segment

    with state.store().session() as session:
        segment = session.get(Segment, segment_id, options=[joinedload(Segment.recording)])
        if segment is None:
            raise NotFoundError(f"segment {segment_id} does not exist", "take ids from /v1/search results")
        session.expunge(segment)
        return segment


@router.get("/{segment_id}", response_model=SegmentOut, summary="One stored segment", responses=_NOT_FOUND)
def get_segment(segment_id: SegmentId, state: StateDep) -> SegmentOut:
    return SegmentOut.from_row(_load_segment(state, segment_id))


@router.get(
    "/{segment_id}/audio",
    summary="The segment's audio as 16-bit PCM WAV (its channel, at the recording's sample rate)",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}}, **_NOT_FOUND},
)
def get_segment_audio(
    segment_id: SegmentId,
    state: StateDep,
    pad: Annotated[float, Query(ge=0, le=MAX_PAD_S, description="Seconds of context added before and after.")] = 0.0,
) -> StreamingResponse:
    """Cut ``[start - pad, end + pad]`` of the segment's channel from the recording in the database.

    The file path comes only from the database row, never from the request.
    """
    from indexer.audio import load_audio

    segment = _load_segment(state, segment_id)
    recording = segment.recording
    path = FsPath(recording.path)
    if recording.status != "done" or not path.is_file():
        raise SegmentAudioUnavailableError(
            f"the audio of segment {segment_id} is not available ({recording.path} is missing)",
            "re-index the archive if files moved",
        )
    offset = max(0.0, segment.start_s - pad)
    end = segment.end_s + pad
    if recording.duration_s:
        end = min(end, recording.duration_s)
    sample_rate = int(recording.sample_rate or 16000)
    try:
        audio = load_audio(path, target_sr=sample_rate, offset=offset, duration=max(end - offset, 0.0))
    except AudioDecodeError as exc:
        raise SegmentAudioUnavailableError(f"the audio of segment {segment_id} cannot be read: {exc.reason}", "re-index the archive") from exc
    samples = audio.samples
    channel = segment.channel if segment.channel < samples.shape[0] else 0
    pcm = (np.clip(samples[channel], -1.0, 1.0) * 32767.0).astype("<i2")
    headers = {
        "Content-Disposition": f'inline; filename="segment-{segment_id}.wav"',
        "Content-Length": str(44 + pcm.nbytes),
        "Cache-Control": "private, max-age=60",
    }
    return StreamingResponse(_wav_stream(pcm, audio.sr), media_type="audio/wav", headers=headers)


def _wav_stream(pcm: np.ndarray, sample_rate: int) -> Iterator[bytes]:
    """A mono 16-bit PCM RIFF/WAVE header followed by the samples in chunks."""
    data_bytes = pcm.nbytes
    yield struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16, b"data", data_bytes,
    )
    for start in range(0, len(pcm), _CHUNK_SAMPLES):
        yield pcm[start : start + _CHUNK_SAMPLES].tobytes()
