"""The metrics of ``BENCHMARK.md`` (paper 003, Section 6) as plain array functions.

Every function here takes numpy arrays, lists of intervals or dicts of them and returns numbers:
no model, no store, no files. :mod:`retrieval.benchmark_eval` feeds them from a benchmark.

Conventions:

* detection scores are "higher = more likely degraded" (``1 - cosine`` to the clean enrollment,
  or ``5 - MOS``); ``targets`` are booleans, True for degraded frames / same-label pairs;
* rates are returned as fractions in ``[0, 1]``; the benchmark report multiplies EERs and
  accuracies by 100 because BENCHMARK.md gives them in percent;
* a metric that is undefined for its input (one class missing, fewer than two items) returns
  ``nan`` rather than raising, so per-label breakdowns can carry ``null`` for rare labels;
  malformed input (mismatched lengths, non-finite scores) raises :class:`EvaluationError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from indexer.errors import DegsearchError

Interval = tuple[float, float]
LabelledInterval = tuple[float, float, str]

#: Class name used for the single "degraded" class in intersection-based detection.
DEGRADED = "degraded"


class EvaluationError(DegsearchError):
    """Evaluation input is malformed (mismatched shapes, non-finite scores, unreadable benchmark)."""

    code = "evaluation_error"
    exit_code = 2


# --- score-based detection: DET, EER, minDCF ---------------------------------------------------


def _scores_targets(scores: np.ndarray | Sequence[float], targets: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).astype(bool).ravel()
    if s.shape != t.shape:
        raise EvaluationError(f"{s.size} scores but {t.size} targets", "pass one target flag per score")
    if s.size and not np.all(np.isfinite(s)):
        raise EvaluationError("scores contain NaN or infinity", "check the embeddings/MOS fed to the metric")
    return s, t


def det_curve(scores: np.ndarray | Sequence[float], targets: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-alarm and miss rates for every decision threshold ("degraded" when ``score >= thr``).

    Returns ``(fpr, fnr, thresholds)``, ordered by decreasing threshold; the first point is the
    threshold ``+inf`` (nothing accepted: fpr 0, fnr 1). Vectorised: one sort, O(n log n).

    >>> fpr, fnr, thr = det_curve([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
    >>> fpr.tolist(), fnr.tolist()
    ([0.0, 0.0, 0.0, 0.5, 1.0], [1.0, 0.5, 0.0, 0.0, 0.0])
    """
    s, t = _scores_targets(scores, targets)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        nan = np.array([np.nan])
        return nan, nan, np.array([np.inf])
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    tp = np.cumsum(t_sorted)
    fp = np.cumsum(~t_sorted)
    # Tied scores share one threshold: keep the last index of each run of equal scores.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.r_[0, tp[last]]
    fp = np.r_[0, fp[last]]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fp / n_neg, 1.0 - tp / n_pos, thresholds


def equal_error_rate(scores: np.ndarray | Sequence[float], targets: np.ndarray | Sequence[bool]) -> float:
    """EER as a fraction: the rate where misses and false alarms are equal (linear interpolation).

    ``nan`` when either class is absent.

    >>> equal_error_rate([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
    0.0
    >>> equal_error_rate([0.9, 0.1], [False, True])
    1.0
    """
    fpr, fnr, _ = det_curve(scores, targets)
    if np.isnan(fpr[0]):
        return math.nan
    d = fpr - fnr  # goes from -1 (threshold +inf) up to +1; non-decreasing
    i = int(np.argmax(d >= 0))
    if d[i] == 0 or i == 0:
        return float(fpr[i])
    alpha = -d[i - 1] / (d[i] - d[i - 1])
    return float(fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1]))


def eer_threshold(scores: np.ndarray | Sequence[float], targets: np.ndarray | Sequence[bool]) -> float:
    """The decision threshold ("degraded" when ``score >= thr``) of the first DET point where false
    alarms reach misses: the operating point :func:`equal_error_rate` reports. ``nan`` when a class
    is absent.

    >>> eer_threshold([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
    0.8
    """
    fpr, fnr, thresholds = det_curve(scores, targets)
    if np.isnan(fpr[0]):
        return math.nan
    return float(thresholds[int(np.argmax(fpr - fnr >= 0))])


def min_dcf(scores: np.ndarray | Sequence[float], targets: np.ndarray | Sequence[bool], *, p_target: float = 0.01,
            c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost (NIST SRE definition) over all thresholds.

    ``DCF = c_miss * p_target * P_miss + c_fa * (1 - p_target) * P_fa``, divided by the cost of the
    best trivial system ``min(c_miss * p_target, c_fa * (1 - p_target))``, so 1.0 means "no better
    than always saying clean". Paper 003 uses ``p_target = 0.01``. ``nan`` when a class is absent.

    >>> min_dcf([0.9, 0.8, 0.2, 0.1], [True, True, False, False])
    0.0
    """
    if not 0.0 < p_target < 1.0:
        raise EvaluationError(f"p_target={p_target} is outside (0, 1)", "use a prior such as 0.01")
    fpr, fnr, _ = det_curve(scores, targets)
    if np.isnan(fpr[0]):
        return math.nan
    cost = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    return float(cost.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


# --- intervals and frames ------------------------------------------------------------------------


def merge_intervals(intervals: Sequence[Interval]) -> list[Interval]:
    """Union of intervals: overlapping or touching ones merged, empty ones dropped, sorted.

    >>> merge_intervals([(3, 4), (0, 1), (0.5, 2), (2, 2.5), (5, 5)])
    [(0.0, 2.5), (3.0, 4.0)]
    """
    merged: list[list[float]] = []
    for start, end in sorted((float(a), float(b)) for a, b in intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def frame_centres(n_frames: int, hop_s: float) -> np.ndarray:
    """Centre time of each frame; frame ``t`` covers ``[t * hop_s, (t + 1) * hop_s)``."""
    return (np.arange(int(n_frames), dtype=np.float64) + 0.5) * float(hop_s)


def frame_targets(events: Sequence[Interval] | Sequence[LabelledInterval], n_frames: int, hop_s: float) -> np.ndarray:
    """Boolean (T,) array: True where the frame centre lies inside any event ``[start, end)``.

    >>> frame_targets([(0.04, 0.08)], 5, 0.02).tolist()
    [False, False, True, True, False]
    """
    centres = frame_centres(n_frames, hop_s)
    out = np.zeros(int(n_frames), dtype=bool)
    for ev in events:
        lo, hi = np.searchsorted(centres, [float(ev[0]), float(ev[1])], side="left")
        out[lo:hi] = True
    return out


def frame_indices(interval: Interval, n_frames: int, hop_s: float) -> np.ndarray:
    """Indices of the frames whose centre lies in ``[start, end)``; at least the frame holding the
    interval's midpoint, so events shorter than a frame still get one frame (empty if outside)."""
    centres = frame_centres(n_frames, hop_s)
    lo, hi = np.searchsorted(centres, [float(interval[0]), float(interval[1])], side="left")
    if hi > lo:
        return np.arange(lo, hi)
    mid = int((float(interval[0]) + float(interval[1])) / 2.0 / float(hop_s))
    return np.arange(mid, mid + 1) if 0 <= mid < n_frames else np.arange(0)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def segment_embeddings(frame_embeddings: np.ndarray, hop_s: float, intervals: Sequence[Interval]) -> tuple[np.ndarray, np.ndarray]:
    """Oracle segment embeddings: the L2-normalised mean of each interval's frames.

    Returns ``(embeddings (n, D) float32, valid (n,) bool)``; an interval that covers no frame
    (entirely beyond the signal) gets a zero row and ``valid = False``.
    """
    emb = np.asarray(frame_embeddings, dtype=np.float32)
    n, dim = emb.shape
    out = np.zeros((len(intervals), dim), dtype=np.float32)
    valid = np.zeros(len(intervals), dtype=bool)
    # Cumulative sums make every interval mean O(1) whatever its length.
    csum = np.vstack([np.zeros((1, dim), np.float64), np.cumsum(emb, axis=0, dtype=np.float64)])
    for i, iv in enumerate(intervals):
        idx = frame_indices(iv, n, hop_s)
        if idx.size == 0:
            continue
        out[i] = (csum[idx[-1] + 1] - csum[idx[0]]) / idx.size
        valid[i] = True
    return normalize_rows(out), valid


# --- intersection-based detection (sed_scores_eval) ----------------------------------------------


def _sed_scores_eval():  # noqa: ANN202 - returns modules
    """Import sed_scores_eval once, quietly, and make it work with pandas >= 3.

    pandas 3 (copy-on-write) hands out read-only arrays from ``DataFrame.to_numpy()``, and the
    Cython ``onset_offset_curves`` of sed_scores_eval 0.0.4 declares writable memoryviews, so it
    raises "buffer source array is read-only". Wrapping it to pass writable copies fixes that
    without changing a number.
    """
    with warnings.catch_warnings():  # dcase_util, imported by sed_scores_eval, warns about pkg_resources
        warnings.simplefilter("ignore")
        from sed_scores_eval import intersection_based
        from sed_scores_eval.base_modules import statistics
        from sed_scores_eval.base_modules.scores import create_score_dataframe
    original = statistics.onset_offset_curves
    if not getattr(original, "_degsearch_writable", False):
        def onset_offset_curves(scores, timestamps, change_point_candidates=None):  # noqa: ANN001, ANN202
            return original(np.array(scores, dtype=np.float64), np.array(timestamps, dtype=np.float64),
                            None if change_point_candidates is None else np.array(change_point_candidates))

        onset_offset_curves._degsearch_writable = True  # type: ignore[attr-defined]
        statistics.onset_offset_curves = onset_offset_curves
    return intersection_based, create_score_dataframe


def intersection_auc(scores: Mapping[str, np.ndarray], events: Mapping[str, Sequence[Interval]], durations: Mapping[str, float],
                     hop_s: float | Mapping[str, float], *, dtc_threshold: float = 0.7, gtc_threshold: float = 0.7,
                     max_efpr: float = 100.0, unit_of_time: str = "hour", decimals: int | None = 4) -> float:
    """Area under the intersection-based ROC (I-AUC, the PSDS of Bilen et al. 2020) of one
    "degraded" class, computed by ``sed_scores_eval.intersection_based.psds``.

    ``scores[file]`` is a (T,) frame score (higher = degraded) on a grid of ``hop_s`` seconds;
    ``events[file]`` the ground-truth degraded intervals (merged here, clipped to the scored span);
    ``durations[file]`` the audio length in seconds (the eFPR is false positives per
    ``unit_of_time``; the area is taken up to ``max_efpr`` and normalised to ``[0, 1]``). Paper
    003 uses ``rho_DTC = rho_GTC = 0.7`` with ``alpha_ct = alpha_st = 0``. ``decimals`` rounds the
    scores first: sed_scores_eval evaluates every distinct score as a threshold, and 1e-4 steps
    keep 90k-frame benchmarks fast without visibly changing the curve (``None`` keeps all).
    ``nan`` when no file has an event.
    """
    keys = list(scores)
    if set(keys) != set(events) or set(keys) != set(durations):
        raise EvaluationError("scores, events and durations must have the same file ids",
                              "give every scored file an (possibly empty) event list and a duration")
    if not any(merge_intervals(events[k]) for k in keys):
        return math.nan
    intersection_based, create_score_dataframe = _sed_scores_eval()
    score_frames, ground_truth, audio_durations = {}, {}, {}
    for key in keys:
        s = np.asarray(scores[key], dtype=np.float64).ravel()
        if s.size == 0 or not np.all(np.isfinite(s)):
            raise EvaluationError(f"file {key!r}: scores are empty or not finite", "score every file with at least one frame")
        if decimals is not None:
            s = np.round(s, decimals)
        hop = float(hop_s[key] if isinstance(hop_s, Mapping) else hop_s)
        timestamps = np.round(np.arange(s.size + 1) * hop, 6)
        score_frames[str(key)] = create_score_dataframe(s[:, None], timestamps, [DEGRADED])
        span = float(timestamps[-1])
        gt = [(max(0.0, a), min(b, span)) for a, b in merge_intervals(events[key])]
        ground_truth[str(key)] = [(round(a, 6), round(b, 6), DEGRADED) for a, b in gt if b - a > 1e-6]
        audio_durations[str(key)] = max(float(durations[key]), span)
    psds_value, *_ = intersection_based.psds(
        score_frames, ground_truth, audio_durations, dtc_threshold=dtc_threshold, gtc_threshold=gtc_threshold,
        alpha_ct=0.0, alpha_st=0.0, unit_of_time=unit_of_time, max_efpr=max_efpr)
    return float(psds_value)


# --- embedding analysis: verification, prototypes, clustering ------------------------------------


def pairwise_verification(embeddings: np.ndarray, labels: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All unordered pairs ``i < j``: ``(cosine, same_label, i, j)`` (vectorised, O(n^2) memory)."""
    emb = normalize_rows(embeddings)
    lab = np.asarray(labels, dtype=object)
    if emb.shape[0] != lab.size:
        raise EvaluationError(f"{emb.shape[0]} embeddings but {lab.size} labels", "pass one label per embedding")
    _, codes = np.unique(lab.astype(str), return_inverse=True)
    i, j = np.triu_indices(emb.shape[0], k=1)
    sims = (emb @ emb.T)[i, j]
    return sims, codes[i] == codes[j], i, j


def verification_eer(embeddings: np.ndarray, labels: Sequence[Hashable]) -> float:
    """EER (fraction) of deciding "same label" from pairwise cosine similarity (paper 003, 6.3).

    >>> e = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], np.float32)
    >>> verification_eer(e, ["a", "a", "b", "b"])
    0.0
    """
    if len(labels) < 2:
        return math.nan
    sims, same, _, _ = pairwise_verification(embeddings, labels)
    return equal_error_rate(sims, same)


def verification_eer_per_label(embeddings: np.ndarray, labels: Sequence[Hashable]) -> dict[str, float]:
    """Per label L: EER over the pairs involving L (target: both are L; non-target: exactly one is)."""
    lab = np.asarray([str(x) for x in labels], dtype=object)
    if lab.size < 2:
        return {str(name): math.nan for name in np.unique(lab)}
    sims, same, i, j = pairwise_verification(embeddings, lab)
    out = {}
    for name in np.unique(lab):
        involved = (lab[i] == name) | (lab[j] == name)
        out[str(name)] = equal_error_rate(sims[involved], same[involved])
    return out


def class_prototypes(embeddings: np.ndarray, labels: Sequence[Hashable]) -> tuple[np.ndarray, list[str]]:
    """One prototype per label: the normalised mean of its embeddings. Returns ``(protos, names)``, names sorted."""
    emb = normalize_rows(embeddings)
    lab = np.asarray([str(x) for x in labels], dtype=object)
    names = sorted(set(lab.tolist()))
    protos = np.stack([emb[lab == n].mean(axis=0) for n in names]) if names else np.zeros((0, emb.shape[1]), np.float32)
    return normalize_rows(protos), names


def nearest_prototype(embeddings: np.ndarray, prototypes: np.ndarray, prototype_labels: Sequence[str]) -> list[str]:
    """Label of the most cosine-similar prototype for each embedding."""
    if len(prototype_labels) == 0:
        raise EvaluationError("no prototypes to assign to", "build prototypes from an enroll split with events")
    sims = normalize_rows(embeddings) @ normalize_rows(prototypes).T
    return [str(prototype_labels[k]) for k in np.argmax(sims, axis=1)]


def accuracy(true_labels: Sequence[Hashable], predicted_labels: Sequence[Hashable]) -> float:
    """Fraction of positions where the prediction equals the truth; ``nan`` for empty input.

    >>> accuracy(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    0.75
    """
    t = np.asarray([str(x) for x in true_labels], dtype=object)
    p = np.asarray([str(x) for x in predicted_labels], dtype=object)
    if t.shape != p.shape:
        raise EvaluationError(f"{t.size} true labels but {p.size} predictions", "predict one label per item")
    return float(np.mean(t == p)) if t.size else math.nan


def prototype_accuracy(embeddings: np.ndarray, labels: Sequence[Hashable], prototypes: np.ndarray,
                       prototype_labels: Sequence[str]) -> float:
    """Fraction of embeddings whose nearest prototype carries their own label (paper 003, 6.3)."""
    if len(labels) == 0:
        return math.nan
    return accuracy(labels, nearest_prototype(embeddings, prototypes, prototype_labels))


def confusion_matrix(true_labels: Sequence[Hashable], predicted_labels: Sequence[Hashable],
                     label_order: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Counts ``C[i, j]`` of items with true label ``i`` predicted as ``j``; returns ``(C, labels)``.

    >>> confusion_matrix(["a", "b", "b"], ["a", "a", "b"])[0].tolist()
    [[1, 0], [1, 1]]
    """
    t = [str(x) for x in true_labels]
    p = [str(x) for x in predicted_labels]
    names = list(label_order) if label_order is not None else sorted(set(t) | set(p))
    pos = {n: k for k, n in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=np.int64)
    for a, b in zip(t, p):
        if a in pos and b in pos:
            cm[pos[a], pos[b]] += 1
    return cm, names


def cluster_labels(embeddings: np.ndarray, n_clusters: int) -> np.ndarray:
    """Agglomerative clustering, cosine distance, average linkage (paper 003, Table 6)."""
    from sklearn.cluster import AgglomerativeClustering

    emb = normalize_rows(embeddings)
    n_clusters = max(1, min(int(n_clusters), emb.shape[0]))
    if n_clusters == emb.shape[0]:
        return np.arange(emb.shape[0])
    return AgglomerativeClustering(n_clusters=n_clusters, metric="cosine", linkage="average").fit_predict(emb)


def clustering_ari(embeddings: np.ndarray, labels: Sequence[Hashable], n_clusters: int | None = None) -> float:
    """Adjusted Rand index between the true labels and an agglomerative clustering of the
    embeddings into ``n_clusters`` (default: the number of distinct labels). ``nan`` below 2 items.

    >>> e = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], np.float32)
    >>> clustering_ari(e, ["a", "a", "b", "b"])
    1.0
    """
    from sklearn.metrics import adjusted_rand_score

    lab = [str(x) for x in labels]
    if len(lab) < 2:
        return math.nan
    k = n_clusters if n_clusters is not None else len(set(lab))
    return float(adjusted_rand_score(lab, cluster_labels(embeddings, k)))


# --- interval detection and retrieval --------------------------------------------------------------


def _overlap_matrix(a: Sequence[Interval], b: Sequence[Interval]) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a_arr = np.asarray([(float(x[0]), float(x[1])) for x in a])
    b_arr = np.asarray([(float(x[0]), float(x[1])) for x in b])
    lo = np.maximum(a_arr[:, None, 0], b_arr[None, :, 0])
    hi = np.minimum(a_arr[:, None, 1], b_arr[None, :, 1])
    return np.clip(hi - lo, 0.0, None)


def match_intervals(detections: Sequence[Interval], events: Sequence[Interval]) -> tuple[np.ndarray, np.ndarray]:
    """Which detections count and which events are found, in one file.

    A detection and an event *may* match when they overlap by at least half the length of the
    shorter of the two (BENCHMARK.md). Matching is one-to-one (a maximum matching over those
    pairs): a detection counts for one event only, so flagging a whole file cannot "find" every
    event in it. Returns ``(detection_ok (n_det,), event_found (n_ev,))``.
    """
    ov = _overlap_matrix(detections, events)
    det_ok, found = np.zeros(len(detections), bool), np.zeros(len(events), bool)
    if ov.size == 0:
        return det_ok, found
    from scipy.optimize import linear_sum_assignment

    d_len = np.asarray([float(e) - float(s) for s, e, *_ in detections])
    e_len = np.asarray([float(e) - float(s) for s, e, *_ in events])
    need = 0.5 * np.minimum(d_len[:, None], e_len[None, :])
    ok = (ov >= need - 1e-9) & (ov > 0)
    # Maximum-cardinality matching (ties broken towards larger overlap).
    rows, cols = linear_sum_assignment(-(ok * (1.0 + 1e-3 * ov / max(float(ov.max()), 1e-9))))
    matched = ok[rows, cols]
    det_ok[rows[matched]] = True
    found[cols[matched]] = True
    return det_ok, found


@dataclass
class DetectionScore:
    """Interval detection counts and rates (fractions)."""

    precision: float
    recall: float
    f1: float
    n_detections: int
    n_events: int
    detections_ok: int
    events_found: int
    detected_s: float = 0.0  # total length of the detections


def detection_f1(detections: Mapping[str, Sequence[Interval]], events: Mapping[str, Sequence[Interval]]) -> DetectionScore:
    """Precision, recall and F1 of detected intervals against reference events, over files.

    Matching as in :func:`match_intervals` (one-to-one). Files present in only one mapping count
    with an empty list on the other side. Precision is
    ``nan`` with no detections, recall ``nan`` with no events, F1 ``0`` when either is 0.

    >>> detection_f1({"f": [(0.0, 1.0), (5.0, 6.0)]}, {"f": [(0.2, 1.4)]}).f1
    0.6666666666666666
    """
    n_det = n_ev = det_ok = ev_found = 0
    detected_s = 0.0
    for key in set(detections) | set(events):
        d = list(detections.get(key, []))
        e = list(events.get(key, []))
        detected_s += sum(float(iv[1]) - float(iv[0]) for iv in d)
        a, b = match_intervals(d, e)
        n_det += len(d)
        n_ev += len(e)
        det_ok += int(a.sum())
        ev_found += int(b.sum())
    precision = det_ok / n_det if n_det else math.nan
    recall = ev_found / n_ev if n_ev else math.nan
    if math.isnan(precision) or math.isnan(recall):
        f1 = 0.0 if (n_det or n_ev) else math.nan
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return DetectionScore(precision, recall, f1, n_det, n_ev, det_ok, ev_found, detected_s)


def majority_label(segment: Interval, events: Sequence[LabelledInterval]) -> str | None:
    """The label covering most of ``segment``; ``None`` when clean time (outside every event) wins.

    >>> majority_label((0.0, 1.0), [(0.0, 0.3, "a"), (0.3, 0.9, "b")])
    'b'
    >>> majority_label((0.0, 1.0), [(0.0, 0.3, "a")]) is None
    True
    """
    start, end = float(segment[0]), float(segment[1])
    per_label: dict[str, float] = {}
    for s, e, label in events:
        ov = min(end, float(e)) - max(start, float(s))
        if ov > 0:
            per_label[str(label)] = per_label.get(str(label), 0.0) + ov
    covered = sum(iv[1] - iv[0] for iv in merge_intervals(
        [(max(start, float(s)), min(end, float(e))) for s, e, _ in events]))
    clean = (end - start) - covered
    if not per_label:
        return None
    best = max(per_label, key=lambda k: (per_label[k], k))
    return best if per_label[best] > clean else None


def precision_at_k(retrieved_labels: Sequence[Sequence[str | None]], query_labels: Sequence[str], k: int = 10) -> np.ndarray:
    """Per query: the fraction of its first ``k`` results whose label equals the query's label.

    The denominator is always ``k``: a short result list counts its missing places as wrong.

    >>> precision_at_k([["a", "b", None, "a"]], ["a"], k=4).tolist()
    [0.5]
    """
    if len(retrieved_labels) != len(query_labels):
        raise EvaluationError(f"{len(retrieved_labels)} result lists for {len(query_labels)} queries", "one list per query")
    if k < 1:
        raise EvaluationError(f"k={k} must be at least 1", "use k=10 as in BENCHMARK.md")
    return np.asarray([sum(1 for r in list(res)[:k] if r is not None and r == q) / k
                       for res, q in zip(retrieved_labels, query_labels)], dtype=np.float64)


def recall_at_k(I_ann: np.ndarray, I_exact: np.ndarray, k: int | None = None) -> float:
    """Mean fraction of the exact top-``k`` ids that the approximate search also returned in its
    top-``k`` (faiss ``knn_intersection_measure``); ids < 0 (FAISS padding) never match.

    >>> recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[1, 2, 9], [6, 5, 4]]))
    0.8333333333333334
    """
    a = np.asarray(I_ann)
    b = np.asarray(I_exact)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise EvaluationError(f"id arrays of shapes {a.shape} and {b.shape} do not match", "pass (n_queries, k) arrays")
    k = int(k if k is not None else min(a.shape[1], b.shape[1]))
    if a.shape[0] == 0 or k == 0:
        return math.nan
    a, b = a[:, :k], b[:, :k]
    hits = ((a[:, :, None] == b[:, None, :]) & (b[:, None, :] >= 0)).any(axis=2)
    return float(hits.sum() / (a.shape[0] * k))
