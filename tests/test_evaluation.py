"""The metric functions of retrieval.evaluation on hand-made cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval import evaluation as ev


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- EER / minDCF --------------------------------------------------------------------------------


def test_perfectly_separable_scores_give_zero_eer_and_zero_min_dcf():
    scores = np.r_[np.linspace(0.6, 1.0, 50), np.linspace(0.0, 0.4, 500)]
    targets = np.r_[np.ones(50, bool), np.zeros(500, bool)]
    assert ev.equal_error_rate(scores, targets) == 0.0
    assert ev.min_dcf(scores, targets) == 0.0


def test_inverted_scores_give_eer_of_one():
    assert ev.equal_error_rate([0.0, 0.1, 0.9, 1.0], [True, True, False, False]) == 1.0


def test_eer_of_known_overlap_is_the_crossing_rate():
    # Targets 2..5, non-targets 0..3 in unit steps: at threshold 2.5 miss = 1/4 (score 2) and
    # false alarm = 1/4 (score 3), so the rates cross at 25 %.
    scores = np.r_[[2, 3, 4, 5], [0, 1, 2.0001, 3.0001]]
    targets = np.r_[np.ones(4, bool), np.zeros(4, bool)]
    assert ev.equal_error_rate(scores, targets) == pytest.approx(0.25)


def test_eer_threshold_is_where_false_alarms_and_misses_meet():
    rng = np.random.default_rng(1)
    targets = rng.random(20000) < 0.3
    scores = rng.normal(size=20000) + 1.5 * targets
    thr = ev.eer_threshold(scores, targets)
    false_alarms, misses = (scores[~targets] >= thr).mean(), (scores[targets] < thr).mean()
    assert false_alarms == pytest.approx(misses, abs=0.01)
    assert false_alarms == pytest.approx(ev.equal_error_rate(scores, targets), abs=0.01)
    assert math.isnan(ev.eer_threshold([0.1, 0.2], [True, True]))


def test_random_scores_give_eer_near_half():
    rng = np.random.default_rng(0)
    scores = rng.random(20000)
    targets = rng.random(20000) < 0.3
    assert ev.equal_error_rate(scores, targets) == pytest.approx(0.5, abs=0.02)


def test_min_dcf_of_useless_scores_is_one_at_p_target_one_percent():
    # A constant score cannot beat "always clean", whose normalised cost is exactly 1.
    assert ev.min_dcf(np.zeros(100), np.r_[np.ones(10, bool), np.zeros(90, bool)]) == pytest.approx(1.0)


def test_min_dcf_with_one_false_alarm_matches_hand_computation():
    # Ranked: 0.9 T, 0.8 F, 0.7 T, then non-targets. Normalised costs (norm 0.01):
    # accept none -> 1.0; accept 0.9 -> miss 1/2 -> 0.5; accept down to 0.7 -> fa 1/4 -> 24.75.
    scores = [0.9, 0.7, 0.8, 0.1, 0.2, 0.3]
    targets = [True, True, False, False, False, False]
    assert ev.min_dcf(scores, targets) == pytest.approx(0.5)


def test_detection_metrics_are_nan_without_one_class():
    assert math.isnan(ev.equal_error_rate([0.1, 0.2], [True, True]))
    assert math.isnan(ev.min_dcf([0.1, 0.2], [False, False]))


def test_mismatched_lengths_raise_evaluation_error():
    with pytest.raises(ev.EvaluationError):
        ev.equal_error_rate([0.1, 0.2, 0.3], [True, False])


# --- frames and oracle segments --------------------------------------------------------------------


def test_frame_targets_use_frame_centres():
    t = ev.frame_targets([(0.05, 0.11), (0.19, 0.2)], 10, 0.02)
    # centres 0.01, 0.03, ..., 0.19: 0.05, 0.07, 0.09 fall in the first event, 0.19 in the second
    assert np.flatnonzero(t).tolist() == [2, 3, 4, 9]


def test_segment_embeddings_average_the_event_frames():
    frames = np.zeros((10, 2), np.float32)
    frames[:5] = [1, 0]
    frames[5:] = [0, 1]
    emb, valid = ev.segment_embeddings(frames, 0.1, [(0.0, 0.5), (0.3, 0.7), (0.52, 0.53), (5.0, 6.0)])
    assert valid.tolist() == [True, True, True, False]
    np.testing.assert_allclose(emb[0], [1, 0], atol=1e-6)
    np.testing.assert_allclose(emb[1], _unit(np.array([1.0, 1.0])), atol=1e-6)
    np.testing.assert_allclose(emb[2], [0, 1], atol=1e-6)  # shorter than a frame: the frame holding it


def test_merge_intervals_joins_touching_and_drops_empty():
    assert ev.merge_intervals([(2, 3), (0, 1), (1, 1.5), (4, 4)]) == [(0.0, 1.5), (2.0, 3.0)]


# --- intersection-based AUC ------------------------------------------------------------------------


def test_i_auc_is_one_for_a_perfect_detector_and_zero_when_it_fires_elsewhere():
    hop = 0.02
    events = {"a": [(1.0, 2.0)], "b": []}
    durations = {"a": 3.0, "b": 3.0}
    perfect = {"a": np.r_[np.zeros(50), np.ones(50), np.zeros(50)], "b": np.zeros(150)}
    assert ev.intersection_auc(perfect, events, durations, hop) == pytest.approx(1.0)
    # fires on the wrong third of file a: the event is never covered at any threshold
    wrong = {"a": np.r_[np.zeros(100), np.ones(50)], "b": np.zeros(150)}
    assert ev.intersection_auc(wrong, events, durations, hop) == pytest.approx(0.0)
    # A false alarm as strong as the hit costs 1 FP in 6 s = 600 / hour > max_efpr (100 / hour):
    # the true positive comes only at an unaffordable false-positive rate.
    with_fa = {"a": perfect["a"], "b": np.r_[np.ones(50), np.zeros(100)]}
    assert ev.intersection_auc(with_fa, events, durations, hop) == pytest.approx(0.0)
    # the same false alarm scored lower than the hit is ranked after it: perfect again
    with_weak_fa = {"a": perfect["a"], "b": np.r_[0.5 * np.ones(50), np.zeros(100)]}
    assert ev.intersection_auc(with_weak_fa, events, durations, hop) == pytest.approx(1.0)


def test_i_auc_needs_detections_covering_seventy_percent_of_the_event():
    hop = 0.02
    events = {"a": [(1.0, 2.0)]}
    durations = {"a": 3.0}
    # detection covers 60 % of the event only (1.0-1.6 s): rho_GTC = 0.7 is not met
    partial = {"a": np.r_[np.zeros(50), np.ones(30), np.zeros(70)]}
    assert ev.intersection_auc(partial, events, durations, hop) == pytest.approx(0.0)
    covered = {"a": np.r_[np.zeros(50), np.ones(40), np.zeros(60)]}  # 80 %
    assert ev.intersection_auc(covered, events, durations, hop) == pytest.approx(1.0)


def test_i_auc_rejects_files_missing_from_the_ground_truth():
    with pytest.raises(ev.EvaluationError):
        ev.intersection_auc({"a": np.zeros(10)}, {}, {"a": 1.0}, 0.02)


# --- verification, prototypes, clustering ----------------------------------------------------------


def _planted(n_per: int = 20, labels=("a", "b", "c"), noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.eye(8, dtype=np.float32)[: len(labels)]
    emb = np.concatenate([c + noise * rng.standard_normal((n_per, 8)) for c in centres]).astype(np.float32)
    lab = [name for name in labels for _ in range(n_per)]
    return _unit(emb), lab


def test_well_separated_clusters_give_zero_verification_eer_and_ari_one():
    emb, lab = _planted()
    assert ev.verification_eer(emb, lab) == 0.0
    assert ev.clustering_ari(emb, lab) == pytest.approx(1.0)
    per = ev.verification_eer_per_label(emb, lab)
    assert set(per) == {"a", "b", "c"} and all(v == 0.0 for v in per.values())


def test_clustering_ari_of_a_mixed_up_labelling_is_near_zero():
    emb, lab = _planted(n_per=30)
    rng = np.random.default_rng(1)
    shuffled = list(rng.permutation(lab))
    assert ev.clustering_ari(emb, shuffled) < 0.1


def test_prototype_accuracy_of_a_known_confusion():
    protos = np.array([[1, 0], [0, 1]], np.float32)
    # four items truly "a": three point at prototype a, one at b; two truly "b" both at b
    emb = np.array([[1, 0.1], [1, 0], [0.9, 0.2], [0.1, 1], [0, 1], [0.2, 1]], np.float32)
    lab = ["a", "a", "a", "a", "b", "b"]
    assert ev.prototype_accuracy(emb, lab, protos, ["a", "b"]) == pytest.approx(5 / 6)
    pred = ev.nearest_prototype(emb, protos, ["a", "b"])
    cm, names = ev.confusion_matrix(lab, pred)
    assert names == ["a", "b"] and cm.tolist() == [[3, 1], [0, 2]]


def test_class_prototypes_are_normalised_means():
    protos, names = ev.class_prototypes(np.array([[1, 0], [0, 1], [0, 1]], np.float32), ["x", "y", "y"])
    assert names == ["x", "y"]
    np.testing.assert_allclose(protos, [[1, 0], [0, 1]], atol=1e-6)


# --- interval detection and retrieval ---------------------------------------------------------------


def test_detection_f1_counts_overlap_of_half_the_shorter_interval():
    events = {"f": [(1.0, 2.0), (5.0, 5.4)], "g": [(0.0, 1.0)]}
    detections = {
        "f": [(1.4, 3.0),   # overlaps event 1 by 0.6 >= 0.5 * min(1.6, 1.0): counts
              (5.25, 7.0)],  # overlaps event 2 by 0.15 < 0.5 * 0.4: does not count
        "g": [(0.0, 0.3)],   # overlaps by 0.3 >= 0.5 * 0.3: counts (the detection is the shorter)
        "h": [(0.0, 1.0)],   # file without events: a false alarm
    }
    score = ev.detection_f1(detections, events)
    assert (score.n_detections, score.detections_ok, score.n_events, score.events_found) == (4, 2, 3, 2)
    assert score.precision == pytest.approx(0.5)
    assert score.recall == pytest.approx(2 / 3)
    assert score.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_matching_is_one_to_one_so_flagging_everything_finds_one_event():
    det_ok, found = ev.match_intervals([(0.0, 8.0)], [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)])
    assert det_ok.tolist() == [True] and found.sum() == 1


def test_matching_finds_the_assignment_that_matches_most_pairs():
    # Detection A could take either event, B only the second: the maximum matching pairs A with
    # the first event and B with the second.
    det_ok, found = ev.match_intervals([(0.0, 3.0), (2.2, 3.2)], [(0.0, 1.0), (2.0, 3.0)])
    assert det_ok.tolist() == [True, True] and found.tolist() == [True, True]


def test_majority_label_and_precision_at_k():
    events = [(0.0, 1.0, "clip"), (1.0, 1.5, "noise")]
    assert ev.majority_label((0.2, 1.2), events) == "clip"
    assert ev.majority_label((1.0, 3.0), events) is None  # mostly clean
    p = ev.precision_at_k([["clip"] * 7 + ["noise", None, "clip"], ["noise"]], ["clip", "noise"], k=10)
    assert p.tolist() == [0.8, 0.1]


def test_recall_at_k_against_exact_ids():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[0, 1, 9, 3], [7, 6, 5, -1]])
    assert ev.recall_at_k(approx, exact, k=4) == pytest.approx(6 / 8)
    assert ev.recall_at_k(exact, exact) == 1.0
