"""Detection on hand-made frame arrays: smoothing, threshold, bridging, minimum length, summaries."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.detect import DetectionParams, SegmentDetector, detect_segments, frame_scores
from indexer.records import FrameOutput

HOP = 0.02
CLEAN = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
NOISE = np.array([0.0, 1.0, 0.0, 0.0], np.float32)  # score 1 - 0 = 1
HUM = np.array([0.0, 0.0, 1.0, 0.0], np.float32)


def frames_from(pattern: str, *, degraded=NOISE, mos_clean=4.5, mos_bad=2.0) -> FrameOutput:
    """'.' = clean frame, 'x' = degraded frame, 'h' = a frame of another degradation (hum)."""
    emb = np.stack([degraded if c == "x" else HUM if c == "h" else CLEAN for c in pattern]).astype(np.float32)
    mos = np.array([mos_clean if c == "." else mos_bad for c in pattern])
    return FrameOutput(embeddings=emb, mos=mos, hop_s=HOP)


def bare(**kw) -> DetectionParams:
    """Detection by the threshold alone (no smoothing, bridging, minimum length or merge) but for ``kw``."""
    return DetectionParams(**{"smooth_frames": 1, "bridge_gap_s": 0.0, "min_segment_s": 0.0, "merge_gap_s": 0.0, **kw})


def detect(pattern: str, *, channel: int = 0, offset_s: float = 0.0, **kw):
    return detect_segments(frames_from(pattern), CLEAN, 0.5, channel=channel, params=bare(**kw), offset_s=offset_s)


def test_single_stretch_gives_exact_boundaries_and_summaries():
    segs = detect("." * 10 + "x" * 20 + "." * 10)
    assert len(segs) == 1
    s = segs[0]
    assert s.start_s == pytest.approx(10 * HOP) and s.end_s == pytest.approx(30 * HOP)
    assert s.n_frames == 20
    np.testing.assert_allclose(s.embedding, NOISE, atol=1e-6)
    assert s.mos == pytest.approx(2.0) and s.score == pytest.approx(1.0)


def test_clean_recording_has_no_segments_and_fully_degraded_has_one():
    assert detect("." * 50) == []
    segs = detect("x" * 50)
    assert [(s.start_s, s.n_frames) for s in segs] == [(0.0, 50)]


def test_median_smoothing_removes_isolated_spikes_and_fills_single_holes():
    assert detect("." * 20 + "x" + "." * 20, smooth_frames=5) == []
    segs = detect("." * 10 + "x" * 10 + "." + "x" * 10 + "." * 10, smooth_frames=5)
    assert len(segs) == 1 and segs[0].n_frames == 21


def test_gaps_shorter_than_bridge_are_merged_and_longer_ones_split():
    pattern = "." * 5 + "x" * 20 + "." * 5 + "x" * 20 + "." * 20  # gap of 5 frames = 0.1 s
    merged = detect(pattern, bridge_gap_s=0.2)
    assert len(merged) == 1
    assert merged[0].n_frames == 45  # bridged gap frames belong to the segment
    # Mean over 40 degraded + 5 clean frames: MOS and score include the bridged frames.
    assert merged[0].mos == pytest.approx((40 * 2.0 + 5 * 4.5) / 45)
    assert merged[0].score == pytest.approx(40 / 45)
    split = detect(pattern, bridge_gap_s=0.1)  # the gap is exactly 0.1 s: not shorter, so no bridge
    assert [s.n_frames for s in split] == [20, 20]


def test_similar_segments_close_together_become_one_and_different_ones_stay_apart():
    gap = "." * 20  # 0.4 s: too long to bridge, short enough to merge
    same = detect("." * 5 + "x" * 20 + gap + "x" * 15 + "." * 60, merge_gap_s=1.0, bridge_gap_s=0.2)
    assert len(same) == 1
    assert same[0].start_s == pytest.approx(5 * HOP) and same[0].end_s == pytest.approx(60 * HOP)
    assert same[0].n_frames == 35  # the frames between them (scored clean) are not in its means
    assert same[0].mos == pytest.approx(2.0) and same[0].score == pytest.approx(1.0)
    different = detect("." * 5 + "x" * 20 + gap + "h" * 15 + "." * 60, merge_gap_s=1.0, bridge_gap_s=0.2)
    assert [s.n_frames for s in different] == [20, 15]
    apart = detect("." * 5 + "x" * 20 + "." * 50 + "x" * 15 + "." * 5, merge_gap_s=1.0)  # exactly 1 s: not shorter
    assert [s.n_frames for s in apart] == [20, 15]


def test_a_merge_reaches_across_chunks_as_in_one_call():
    pattern = "." * 5 + "x" * 20 + "." * 30 + "x" * 15 + "." * 10 + "h" * 20 + "." * 80
    whole = detect(pattern, merge_gap_s=1.0)
    frames = frames_from(pattern)
    det = SegmentDetector(CLEAN, 0.5, channel=0, hop_s=HOP, params=bare(merge_gap_s=1.0))
    got = []
    for a in range(0, len(pattern), 7):
        got += det.push(FrameOutput(embeddings=frames.embeddings[a:a + 7], mos=frames.mos[a:a + 7], hop_s=HOP))
    got += det.finish()
    assert [(s.start_s, s.end_s, s.n_frames) for s in got] == [(s.start_s, s.end_s, s.n_frames) for s in whole]
    assert [s.n_frames for s in whole] == [35, 20]


def test_a_held_segment_is_given_out_once_nothing_can_join_it_any_more():
    det = SegmentDetector(CLEAN, 0.5, channel=0, hop_s=HOP, params=bare(merge_gap_s=1.0))
    frames = frames_from("x" * 20 + "." * 45)  # 0.9 s after it: a similar segment could still join
    assert det.push(frames) == []
    more = frames_from("." * 10)  # now 1.1 s: it is final before the recording ends
    assert [s.n_frames for s in det.push(more)] == [20]
    assert det.finish() == []


def test_segments_shorter_than_minimum_are_dropped():
    pattern = "." * 5 + "x" * 14 + "." * 20 + "x" * 15 + "." * 5
    segs = detect(pattern, min_segment_s=0.3)  # 14 frames = 0.28 s dropped, 15 = 0.30 s kept
    assert [s.n_frames for s in segs] == [15]


def test_offset_and_channel_are_applied():
    segs = detect("." * 10 + "x" * 20, channel=1, offset_s=60.0)
    assert segs[0].channel == 1
    assert segs[0].start_s == pytest.approx(60.2) and segs[0].end_s == pytest.approx(60.6)


def test_segment_embedding_is_normalised_mean_of_its_frames():
    emb = np.stack([NOISE] * 10 + [HUM] * 30).astype(np.float32)
    frames = FrameOutput(embeddings=emb, mos=np.full(40, 3.0), hop_s=HOP)
    segs = detect_segments(frames, CLEAN, 0.5, channel=0, params=bare())
    expected = (10 * NOISE + 30 * HUM) / np.linalg.norm(10 * NOISE + 30 * HUM)
    np.testing.assert_allclose(segs[0].embedding, expected, atol=1e-6)
    assert np.linalg.norm(segs[0].embedding) == pytest.approx(1.0)


def test_threshold_is_on_one_minus_cosine():
    half = np.array([np.cos(np.pi / 3), np.sin(np.pi / 3), 0, 0], np.float32)  # cosine 0.5 -> score 0.5
    assert frame_scores(half[None], CLEAN)[0] == pytest.approx(0.5, abs=1e-6)
    frames = FrameOutput(embeddings=np.stack([half] * 20), mos=np.full(20, 3.0), hop_s=HOP)
    assert detect_segments(frames, CLEAN, 0.49, channel=0, params=bare())
    assert not detect_segments(frames, CLEAN, 0.51, channel=0, params=bare())


@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 333])
def test_chunked_detection_equals_one_shot_detection(chunk):
    rng = np.random.default_rng(chunk)
    n = 1000
    # Random walk between clean and degraded states with noisy embeddings.
    state = np.cumsum(rng.random(n) < 0.05) % 2
    emb = np.where(state[:, None] == 1, NOISE, CLEAN) + 0.4 * rng.standard_normal((n, 4))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    mos = rng.uniform(1, 5, n)
    kw = dict(channel=0, params=DetectionParams())  # the defaults: smoothing, bridging, minimum length, merge
    whole = detect_segments(FrameOutput(emb, mos, HOP), CLEAN, 0.5, **kw)
    det = SegmentDetector(CLEAN, 0.5, hop_s=HOP, **kw)
    parts = []
    for a in range(0, n, chunk):
        parts += det.push(FrameOutput(emb[a:a + chunk], mos[a:a + chunk], HOP))
    parts += det.finish()
    assert len(whole) > 3
    assert [(s.start_s, s.end_s, s.n_frames) for s in parts] == [(s.start_s, s.end_s, s.n_frames) for s in whole]
    for a, b in zip(parts, whole):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)
        assert a.mos == pytest.approx(b.mos) and a.score == pytest.approx(b.score)
    assert det.n_frames == n and det.mean_mos == pytest.approx(mos.mean())


def test_run_crossing_chunk_boundary_is_one_segment_even_without_bridging():
    det = SegmentDetector(CLEAN, 0.5, channel=0, hop_s=HOP, params=bare())
    segs = det.push(frames_from("." * 5 + "x" * 5)) + det.push(frames_from("x" * 5 + "." * 5)) + det.finish()
    assert [(s.n_frames, s.start_s) for s in segs] == [(10, pytest.approx(0.1))]


def test_wrong_enrollment_dimension_is_an_error():
    with pytest.raises(ValueError, match="dimension"):
        detect_segments(frames_from("xxx"), np.ones(8, np.float32), 0.5, channel=0)


def test_empty_frames_give_no_segments():
    frames = FrameOutput(embeddings=np.zeros((0, 4), np.float32), mos=np.zeros(0), hop_s=HOP)
    assert detect_segments(frames, CLEAN, 0.5, channel=0) == []
