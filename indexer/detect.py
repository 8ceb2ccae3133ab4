"""Degraded-stretch detection: frame embeddings in, merged segments out (pure numpy).

For each frame, ``score = 1 - cosine(frame embedding, clean enrollment)``. Scores are median-
smoothed over ``smooth_frames`` frames (edges repeat the first/last score), thresholded
(``score > threshold`` is degraded), runs of degraded frames separated by gaps shorter than
``bridge_gap_s`` are merged, and merged stretches shorter than ``min_segment_s`` are dropped.

A segment covers every frame from its first to its last degraded frame, bridged gap frames
included, and summarises them: ``embedding`` = L2-normalised mean of their embeddings, ``mos`` =
mean frame MOS, ``score`` = mean raw (unsmoothed) score, ``n_frames`` = their number.

Then consecutive segments less than ``merge_gap_s`` apart whose embeddings' cosine exceeds
``merge_similarity`` become one: a call compressed or noisy throughout is cut at every speech
pause (silence through a codec scores clean), and those pieces are one degradation. The merged
segment spans both; its summaries are over the frames of the two (the frames between them,
scored clean, are in its span but not in its means). Segments of different degradations, however
close, stay apart.

:class:`SegmentDetector` does this incrementally, so a 10 h recording can be fed chunk by chunk
with memory bounded by one chunk; it gives the same segments as one call on the whole array
(:func:`detect_segments` is that one call).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.records import DetectedSegment, FrameOutput

# Tolerance (seconds) for comparing frame-multiple durations with the configured ones, so that
# e.g. 15 frames x 20 ms counts as exactly 0.3 s.
_EPS = 1e-9


def frame_scores(embeddings: np.ndarray, enrollment: np.ndarray) -> np.ndarray:
    """``1 - cosine`` of each (already L2-normalised) row with the enrollment vector."""
    e = np.asarray(enrollment, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(e))
    if embeddings.shape[0] and embeddings.shape[1] != e.size:
        raise ValueError(f"enrollment has dimension {e.size} but frames have {embeddings.shape[1]}")
    if norm == 0 or not np.isfinite(norm):
        raise ValueError("enrollment vector is zero or not finite")
    return (1.0 - embeddings.astype(np.float32, copy=False) @ (e / norm)).astype(np.float32)


@dataclass(frozen=True)
class DetectionParams:
    """How frame scores become segments, besides the enrollment and threshold (module docstring).
    Its defaults are the settings' (``indexer.settings``)."""

    smooth_frames: int = 5
    bridge_gap_s: float = 0.2
    min_segment_s: float = 0.3
    merge_gap_s: float = 1.0
    merge_similarity: float = 0.8

    def __post_init__(self) -> None:
        if self.smooth_frames < 1:
            raise ValueError(f"smooth_frames must be >= 1 (got {self.smooth_frames})")


class SegmentDetector:
    """Incremental detector for one channel; feed :meth:`push` with consecutive frame chunks, then
    call :meth:`finish`. Also keeps the per-channel totals a recording needs (frames, MOS sum)."""

    def __init__(self, enrollment: np.ndarray, threshold: float, *, channel: int, hop_s: float,
                 params: DetectionParams = DetectionParams(), offset_s: float = 0.0) -> None:
        if hop_s <= 0:
            raise ValueError(f"hop_s must be positive (got {hop_s})")
        self.enrollment = np.asarray(enrollment, dtype=np.float32).reshape(-1)
        self.threshold = float(threshold)
        self.channel = channel
        self.hop_s = float(hop_s)
        self.params = params
        self.offset_s = float(offset_s)
        # Median window: `left` past and `right` future frames around each frame.
        self._left = (params.smooth_frames - 1) // 2
        self._right = params.smooth_frames - 1 - self._left
        self._k = params.smooth_frames
        # Frames received but not yet decided (waiting for `right` frames of look-ahead).
        self._p_score = np.zeros(0, np.float32)
        self._p_emb: np.ndarray | None = None
        self._p_mos = np.zeros(0, np.float64)
        self._ctx = np.zeros(0, np.float32)  # up to `left` decided raw scores before the pending ones
        self._next = 0  # global index of the first pending frame
        # The open segment: [start, end) frames and sums over them; `gap` sums frames after `end`.
        self._open: dict | None = None
        self._gap: tuple[np.ndarray, float, float] | None = None
        # The last closed segment (sums, as the open one), held while a similar one may still join it.
        self._held: dict | None = None
        self._segments: list[DetectedSegment] = []
        self.n_frames = 0
        self.mos_sum = 0.0

    # -- public -------------------------------------------------------------------------------
    def push(self, frames: FrameOutput) -> list[DetectedSegment]:
        """Add the next frames; returns segments that are now final (may be empty)."""
        n = len(frames)
        if n == 0:
            return self._take()
        if abs(frames.hop_s - self.hop_s) > 1e-9:
            raise ValueError(f"frame hop changed from {self.hop_s} to {frames.hop_s}")
        emb = np.asarray(frames.embeddings, dtype=np.float32)
        mos = np.asarray(frames.mos, dtype=np.float64).reshape(-1)
        if mos.shape[0] != n:
            raise ValueError(f"{n} embeddings but {mos.shape[0]} MOS values")
        self.n_frames += n
        self.mos_sum += float(mos.sum())
        score = frame_scores(emb, self.enrollment)
        self._p_score = np.concatenate([self._p_score, score])
        self._p_emb = emb if self._p_emb is None or len(self._p_emb) == 0 else np.concatenate([self._p_emb, emb])
        self._p_mos = np.concatenate([self._p_mos, mos])
        ready = len(self._p_score) - self._right
        if ready > 0:
            self._decide(ready, final=False)
        return self._take()

    def finish(self) -> list[DetectedSegment]:
        """Decide the remaining frames and close the open segment; returns the final segments."""
        if len(self._p_score):
            self._decide(len(self._p_score), final=True)
        self._close()
        self._release()
        return self._take()

    @property
    def mean_mos(self) -> float | None:
        """Mean frame MOS over everything pushed so far (None before any frame)."""
        return self.mos_sum / self.n_frames if self.n_frames else None

    # -- internals ------------------------------------------------------------------------------
    def _take(self) -> list[DetectedSegment]:
        if self._held is not None:
            # The next segment starts no earlier than the open one, or than the first undecided frame.
            next_start = self._open["start"] if self._open is not None else self._next
            if (next_start - self._held["end"]) * self.hop_s >= self.params.merge_gap_s - _EPS:
                self._release()
        out, self._segments = self._segments, []
        return out

    def _smoothed(self, ready: int, final: bool) -> np.ndarray:
        """Median-smoothed scores of the first ``ready`` pending frames."""
        p = self._p_score
        if self._k == 1:
            return p[:ready]
        left_ctx = self._ctx
        if len(left_ctx) < self._left:  # start of the recording: repeat the first score
            left_ctx = np.concatenate([np.full(self._left - len(left_ctx), (left_ctx[:1] if len(left_ctx) else p[:1])[0], np.float32), left_ctx])
        right = p[ready:ready + self._right]
        if final and len(right) < self._right:  # end of the recording: repeat the last score
            right = np.concatenate([right, np.full(self._right - len(right), p[-1], np.float32)])
        ext = np.concatenate([left_ctx, p[:ready], right])
        windows = np.lib.stride_tricks.sliding_window_view(ext, self._k)
        return np.median(windows, axis=1).astype(np.float32)[:ready]

    def _decide(self, ready: int, final: bool) -> None:
        smooth = self._smoothed(ready, final)
        mask = smooth > self.threshold
        emb = self._p_emb[:ready].astype(np.float64)
        mos = self._p_mos[:ready]
        raw = self._p_score[:ready].astype(np.float64)
        g0 = self._next
        self._runs(g0, mask, emb, mos, raw)
        # Keep `left` raw scores of context, drop the decided frames.
        self._ctx = np.concatenate([self._ctx, self._p_score[:ready]])[-self._left:] if self._left else self._ctx[:0]
        self._p_score = self._p_score[ready:]
        self._p_emb = self._p_emb[ready:]
        self._p_mos = self._p_mos[ready:]
        self._next = g0 + ready

    def _runs(self, g0: int, mask: np.ndarray, emb: np.ndarray, mos: np.ndarray, raw: np.ndarray) -> None:
        n = len(mask)
        zero = np.zeros((1, emb.shape[1]))
        c_emb = np.concatenate([zero, np.cumsum(emb, axis=0)])
        c_mos = np.concatenate([[0.0], np.cumsum(mos)])
        c_raw = np.concatenate([[0.0], np.cumsum(raw)])

        def sums(a: int, b: int) -> tuple[np.ndarray, float, float]:
            return c_emb[b] - c_emb[a], float(c_mos[b] - c_mos[a]), float(c_raw[b] - c_raw[a])

        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
        starts, ends = edges[0::2], edges[1::2]
        for a, b in zip(starts.tolist(), ends.tolist()):
            if self._open is not None:
                gap_start = max(self._open["end"] - g0, 0)
                gap_frames = g0 + a - self._open["end"]
                # A zero gap is the same run continuing across a chunk boundary.
                if gap_frames == 0 or gap_frames * self.hop_s < self.params.bridge_gap_s - _EPS:
                    parts = [sums(gap_start, b)]
                    if self._gap is not None:
                        parts.append(self._gap)
                    for e, m, r in parts:
                        self._open["emb"] += e
                        self._open["mos"] += m
                        self._open["raw"] += r
                    self._open["end"] = g0 + b
                    self._gap = None
                    continue
                self._close()
            e, m, r = sums(a, b)
            self._open = {"start": g0 + a, "end": g0 + b, "emb": e.copy(), "mos": m, "raw": r}
            self._gap = None
        if self._open is not None:
            # Frames after the open segment's end in this chunk may still be bridged later.
            gap_start = max(self._open["end"] - g0, 0)
            e, m, r = sums(gap_start, n)
            if self._gap is not None:
                e, m, r = e + self._gap[0], m + self._gap[1], r + self._gap[2]
            self._gap = (e, m, r)
            gap_frames = g0 + n - self._open["end"]
            if gap_frames > 0 and gap_frames * self.hop_s >= self.params.bridge_gap_s - _EPS:
                self._close()  # the gap is already too long to bridge

    def _close(self) -> None:
        seg, self._open, self._gap = self._open, None, None
        if seg is None:
            return
        seg["n"] = seg["end"] - seg["start"]
        if seg["n"] * self.hop_s < self.params.min_segment_s - _EPS:
            return
        held = self._held
        if held is not None and (seg["start"] - held["end"]) * self.hop_s < self.params.merge_gap_s - _EPS \
                and _cosine(held["emb"], seg["emb"]) > self.params.merge_similarity:
            self._held = {"start": held["start"], "end": seg["end"], "emb": held["emb"] + seg["emb"],
                          "mos": held["mos"] + seg["mos"], "raw": held["raw"] + seg["raw"], "n": held["n"] + seg["n"]}
            return
        self._release()
        self._held = seg

    def _release(self) -> None:
        seg, self._held = self._held, None
        if seg is None:
            return
        n = seg["n"]
        vec = seg["emb"]
        norm = float(np.linalg.norm(vec))
        vec = (vec / norm if norm > 0 else vec).astype(np.float32)
        self._segments.append(DetectedSegment(
            channel=self.channel,
            start_s=self.offset_s + seg["start"] * self.hop_s,
            end_s=self.offset_s + seg["end"] * self.hop_s,
            n_frames=int(n),
            embedding=vec,
            mos=seg["mos"] / n,
            score=seg["raw"] / n,
        ))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two (unnormalised) embedding sums."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0


def detect_segments(frames: FrameOutput, enrollment: np.ndarray, threshold: float, *, channel: int,
                    params: DetectionParams = DetectionParams(), offset_s: float = 0.0) -> list[DetectedSegment]:
    """Segments of ``frames`` whose smoothed score exceeds ``threshold`` (see the module docstring).

    Times are ``offset_s`` + frame index x ``frames.hop_s``.
    """
    det = SegmentDetector(enrollment, threshold, channel=channel, hop_s=frames.hop_s, params=params, offset_s=offset_s)
    return det.push(frames) + det.finish()
