"""Small serialisable records passed from stage to stage: audio -> frames -> segments -> store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FrameOutput:
    """What the frame model gives for one mono 16 kHz signal.

    ``embeddings`` is (T, D) float32, each row L2-normalised; ``mos`` is (T,) in 1..5; frame ``t``
    covers ``[t * hop_s, (t + 1) * hop_s)`` seconds from the start of the signal.
    """

    embeddings: np.ndarray
    mos: np.ndarray
    hop_s: float

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class DetectedSegment:
    """One degraded stretch found by detection.

    >>> s = DetectedSegment(channel=0, start_s=1.0, end_s=1.5, n_frames=25,
    ...                     embedding=np.ones(4, np.float32) / 2, mos=2.1, score=0.4)
    >>> s.duration_s
    0.5
    """

    channel: int
    start_s: float
    end_s: float
    n_frames: int
    embedding: np.ndarray  # (D,) float32, L2-normalised mean of the segment's frames
    mos: float  # mean frame MOS
    score: float  # mean detection score (1 - cosine to the clean enrollment)
    label: str = "unknown"
    label_score: float | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class RecordingResult:
    """Everything the store needs to commit one recording in one transaction."""

    path: str
    content_hash: str
    duration_s: float
    sample_rate: int
    channels: int
    model_id: str
    segments: list[DetectedSegment]
    analysed_s: float  # audio seconds analysed, summed over channels
    degraded_s: float  # seconds inside segments, summed over channels
    mean_mos: float | None
    attributes: dict[str, Any] = field(default_factory=dict)
    detected_with: str | None = None  # clean enrollment key @ detection settings digest (IndexContext.detected_with)


@dataclass
class RecordingFailure:
    """A file that could not be indexed, with the stage and a readable reason."""

    path: str
    stage: str  # decode | model | store
    error: str
    content_hash: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
