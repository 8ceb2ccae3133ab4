"""Score a frame model (and the baselines) on any benchmark in the format of BENCHMARK.md.

:func:`evaluate_benchmark` runs everything ``degsearch evaluate`` reports:

1. read ``manifest.jsonl``; decode every file at 16 kHz (channel 0);
2. run the frame model over both splits; the clean enrollment is the normalised mean of every
   frame of the enroll split's ``clean: true`` files (the model's own enrollment only if there is
   none); frame score = ``1 - cosine(frame, enrollment)``; frame targets from the events at the
   model's frame rate -> ``frame_eer``, ``frame_min_dcf``, ``i_auc`` (and ``mos_i_auc`` with
   ``5 - MOS``); where manifest lines name a ``speaker``, ``per_speaker`` (each test speaker's
   frame EER, and its clean frames flagged / degraded frames missed at the pooled EER threshold),
   ``by_level`` (the same two shares per band of frame level against the file's loud speech)
   and, where every test speaker has clean enroll files, ``own_speaker_enrollment``: the frame EER
   with each test file scored against its own speaker's clean enroll files instead (what
   ``degsearch enroll-clean --group speaker=...`` does for an archive's agents), and in step 4
   the indexer's detection F1 / precision / recall with those group enrollments;
3. oracle segments = the events, embedded as the normalised mean of their frames; prototypes =
   per-label means of the enroll split's oracle segments -> ``verification_eer``,
   ``prototype_accuracy``, ``ari`` on the test split;
4. index the test split with the real indexer (:func:`indexer.pipeline.index_archive`) into a
   temporary store whose clean enrollment is set from the same clean files -> ``index_rtf``,
   ``detection_f1`` (detected segments of channel 0 vs events, matched one-to-one) and ``retrieval_p_at_10`` (each
   test event's audio as a query clip through :func:`retrieval.search.resolve_query`, exact top-10
   over the segments of *other* files, a hit counting when its majority label is the query's);
5. the same embedding metrics (and, for DNSMOS, the detection metrics) for the baselines.

Nothing depends on label names: labels are whatever strings the manifest carries.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval import evaluation as ev
from retrieval.evaluation import EvaluationError

if TYPE_CHECKING:
    from indexer.model import FrameModel
    from indexer.pipeline import IndexSummary
    from indexer.settings import Settings
    from retrieval.store import Store

#: Bumped whenever a metric's definition or the report layout changes (reports carry it).
EVALUATION_VERSION = 4  # 2: per_speaker; 3: own_speaker_enrollment's detection through the indexer; 4: by_level
SR = 16000
#: Pairwise verification and clustering are O(n^2): larger test sets are subsampled (seeded).
MAX_PAIRWISE_SEGMENTS = 3000
#: Detection curves kept for the DET plot (points), and points of the t-SNE map.
DET_POINTS = 2000
MAP_POINTS = 1000


@dataclass
class BenchmarkEvent:
    """One annotated degraded region."""

    start: float
    end: float
    label: str


@dataclass
class BenchmarkFile:
    """One manifest line."""

    id: str
    audio: Path
    split: str
    clean: bool
    events: list[BenchmarkEvent]
    speaker: str | None = None  # optional manifest field: reports then break frame detection down per speaker


def read_manifest(bench_dir: str | Path) -> list[BenchmarkFile]:
    """Parse and check ``BENCH_DIR/manifest.jsonl``; :class:`EvaluationError` names the bad line."""
    bench = Path(bench_dir)
    path = bench / "manifest.jsonl"
    if not path.is_file():
        raise EvaluationError(f"{path} not found", "pass a benchmark directory holding manifest.jsonl (see BENCHMARK.md)")
    files: list[BenchmarkFile] = []
    seen: set[str] = set()
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{no}"
        try:
            row = json.loads(line)
            fid = str(row["id"])
            audio = bench / str(row["audio"])
            split = str(row["split"])
            clean = bool(row.get("clean", False))
            events = [BenchmarkEvent(float(e["start"]), float(e["end"]), str(e["label"])) for e in row.get("events") or []]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EvaluationError(f"{where}: not a valid manifest line ({type(exc).__name__}: {exc})",
                                  "each line needs id, audio, split, clean and events (start, end, label)") from exc
        if fid in seen:
            raise EvaluationError(f"{where}: duplicate id {fid!r}", "give every file a unique id")
        seen.add(fid)
        if split not in ("enroll", "test"):
            raise EvaluationError(f"{where}: split {split!r}", "split must be 'enroll' or 'test'")
        if not audio.is_file():
            raise EvaluationError(f"{where}: audio {audio} not found", "audio paths are relative to the benchmark directory")
        for e in events:
            if not (e.end > e.start >= 0 and math.isfinite(e.end)):
                raise EvaluationError(f"{where}: event {e} has end <= start", "events need 0 <= start < end")
        if clean and events:
            raise EvaluationError(f"{where}: clean file with events", "set clean: false or drop the events")
        speaker = None if row.get("speaker") is None else str(row["speaker"])
        files.append(BenchmarkFile(fid, audio, split, clean, sorted(events, key=lambda e: (e.start, e.end)), speaker))
    if not any(f.split == "test" for f in files):
        raise EvaluationError(f"{path}: no test files", "put the files to score in split 'test'")
    return files


def benchmark_fingerprint(bench_dir: str | Path, files: list[BenchmarkFile]) -> str:
    """16 hex digits of SHA-256 over ``manifest.jsonl`` and each audio file's content hash (the
    indexer's, :func:`indexer.audio.content_hash`), in manifest order.

    Two reports with the same fingerprint scored the same audio and labels. A benchmark rebuilt with
    the same command and seed can still differ (other codec or sox builds, another catalog
    version), and its figures then are not comparable: the fingerprint shows it."""
    from indexer.audio import content_hash

    digest = hashlib.sha256((Path(bench_dir) / "manifest.jsonl").read_bytes())
    for f in files:
        digest.update(content_hash(f.audio).encode())
    return digest.hexdigest()[:16]


def version_string() -> str:
    """``degsearch <package version> / evaluation <EVALUATION_VERSION>``."""
    try:
        pkg = importlib.metadata.version("degsearch")
    except importlib.metadata.PackageNotFoundError:
        pkg = "unknown"
    return f"degsearch {pkg} / evaluation {EVALUATION_VERSION}"


# --- per-file analysis --------------------------------------------------------------------------


@dataclass
class _FileData:
    meta: BenchmarkFile
    duration_s: float
    orig_sr: int
    embeddings: np.ndarray  # (T, D)
    mos: np.ndarray  # (T,)
    hop_s: float
    seg_emb: np.ndarray  # (n_events, D) oracle segment embeddings
    seg_valid: np.ndarray  # (n_events,)
    clips: list[np.ndarray]  # event audio (16 kHz mono) for retrieval queries (test split)
    level_db: np.ndarray | None = None  # (T,) test split: each frame's level against the file's loud speech
    dnsmos_frame_mos: np.ndarray | None = None
    dnsmos_seg: np.ndarray | None = None
    logmel_stats: np.ndarray | None = None


@dataclass
class EvaluationResult:
    """The JSON report plus the arrays the plots need."""

    report: dict[str, Any]
    det_curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    confusion: tuple[np.ndarray, list[str]] | None = None
    embedding_map: tuple[np.ndarray, list[str]] | None = None


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _pct(x: float) -> float:
    return 100.0 * x if math.isfinite(x) else math.nan


def _subsample_det(fpr: np.ndarray, fnr: np.ndarray, n: int = DET_POINTS) -> tuple[np.ndarray, np.ndarray]:
    if fpr.size <= n:
        return fpr, fnr
    idx = np.unique(np.linspace(0, fpr.size - 1, n).astype(np.int64))
    return fpr[idx], fnr[idx]


def _embedding_metrics(test_emb: np.ndarray, test_labels: list[str], proto: np.ndarray, proto_names: list[str],
                       pair_idx: np.ndarray) -> tuple[dict[str, Any], dict[str, dict[str, float]], list[str]]:
    """verification_eer, prototype_accuracy, ari (+ per label) for one embedding of the oracle segments."""
    labels = np.asarray(test_labels, dtype=object)
    out: dict[str, Any] = {}
    per: dict[str, dict[str, float]] = {str(name): {} for name in sorted(set(test_labels))}
    sub_emb, sub_lab = test_emb[pair_idx], labels[pair_idx].tolist()
    out["verification_eer"] = _pct(ev.verification_eer(sub_emb, sub_lab))
    for name, value in ev.verification_eer_per_label(sub_emb, sub_lab).items():
        per[name]["verification_eer"] = _pct(value)
    out["ari"] = ev.clustering_ari(sub_emb, sub_lab) if len(sub_lab) >= 2 else math.nan
    has_proto = np.isin(labels, np.asarray(proto_names, dtype=object)) if proto_names else np.zeros(labels.size, bool)
    predicted: list[str] = []
    if proto_names and has_proto.any():
        predicted = ev.nearest_prototype(test_emb, proto, proto_names)
        correct = np.asarray(predicted, dtype=object) == labels
        out["prototype_accuracy"] = _pct(float(correct[has_proto].mean()))
        for name in per:
            mask = labels == name
            per[name]["prototype_accuracy"] = _pct(float(correct[mask].mean())) if has_proto[mask].any() else math.nan
    else:
        out["prototype_accuracy"] = math.nan
        for name in per:
            per[name]["prototype_accuracy"] = math.nan
    return out, per, predicted


def _single_only(test_emb: np.ndarray, test_labels: list[str], proto: np.ndarray, proto_names: list[str],
                 pair_idx: np.ndarray) -> dict[str, Any]:
    """The segment metrics restricted to single degradations (labels without ``+``, in the test
    segments and the prototypes), as paper 003's Table 5 "Single" columns."""
    keep = np.asarray([("+" not in lab) for lab in test_labels], dtype=bool)
    p_keep = [k for k, name in enumerate(proto_names) if "+" not in name]
    sub_pairs = np.flatnonzero(keep[pair_idx]) if keep.any() else np.arange(0)
    idx = np.flatnonzero(keep)
    out, _, _ = _embedding_metrics(test_emb[idx], [test_labels[i] for i in idx], proto[p_keep] if p_keep else proto[:0],
                                   [proto_names[k] for k in p_keep], np.searchsorted(idx, pair_idx[sub_pairs]))
    out["n_events"] = int(idx.size)
    out["labels"] = len({test_labels[i] for i in idx})
    return out


def evaluate_benchmark(bench_dir: str | Path, *, model: str | None = None, settings: Settings | None = None,
                       baselines: bool = True, work_dir: str | Path | None = None, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Compute every key of BENCHMARK.md for ``model`` (name or checkpoint path; default: the
    settings' model) on the benchmark at ``bench_dir``; see the module docstring for each step.

    ``work_dir`` holds the temporary store (default: a fresh temp directory, removed afterwards).
    ``log`` receives one line per stage (the CLI prints them).
    """
    import torch

    # One intra-op thread, as the indexer does: on a shared 2-core machine more threads
    # oversubscribe and run many times slower (measured ~20x under load).
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evaluate(bench_dir, model=model, settings=settings, baselines=baselines, work_dir=work_dir, seed=seed,
                         log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate(bench_dir: str | Path, *, model: str | None, settings: Settings | None, baselines: bool,
              work_dir: str | Path | None, seed: int, log: Callable[[str], None] | None) -> EvaluationResult:
    from indexer.audio import load_audio
    from indexer.model import load_model
    from indexer.settings import get_settings

    say = log or (lambda _msg: None)
    t_total = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    settings = settings or get_settings()
    model_spec = str(model or settings.model)
    bench = Path(bench_dir)
    files = read_manifest(bench)

    t0 = time.perf_counter()
    frame_model = load_model(model_spec)
    timings["load_model"] = time.perf_counter() - t0

    dnsmos = logmel = None
    if baselines:
        from retrieval.baselines import DNSMOSBaseline, LogMelBaseline

        dnsmos, logmel = DNSMOSBaseline(), LogMelBaseline()

    # 1-2. decode, embed, baseline features -------------------------------------------------------
    data: list[_FileData] = []
    t_model = t_base = t_decode = 0.0
    for n, meta in enumerate(files, 1):
        t0 = time.perf_counter()
        audio = load_audio(meta.audio, target_sr=SR)
        x = np.ascontiguousarray(audio.samples[0], dtype=np.float32)
        t1 = time.perf_counter()
        out = frame_model.embed(x)
        t2 = time.perf_counter()
        intervals = [(e.start, e.end) for e in meta.events]
        seg_emb, seg_valid = ev.segment_embeddings(out.embeddings, out.hop_s, intervals) if intervals else \
            (np.zeros((0, out.embeddings.shape[1]), np.float32), np.zeros(0, bool))
        clips = [x[int(e.start * SR): int(e.end * SR)] for e in meta.events] if meta.split == "test" else []
        fd = _FileData(meta, audio.duration_s, audio.orig_sr, out.embeddings, np.asarray(out.mos, np.float32), out.hop_s,
                       seg_emb, seg_valid, clips,
                       frame_levels_db(x, len(out.embeddings), int(round(out.hop_s * SR))) if meta.split == "test" else None)
        t3 = time.perf_counter()
        if dnsmos is not None and logmel is not None and (meta.split == "test" or intervals):
            # (clean enroll files feed no baseline: DNSMOS detects on the test split only)
            fmap = dnsmos.analyse(x)
            if meta.split == "test":
                fd.dnsmos_frame_mos = dnsmos.frame_mos(fmap, len(out), out.hop_s)
            fd.dnsmos_seg = dnsmos.segment_embeddings(fmap, intervals)
            fd.logmel_stats = logmel.segment_stats(logmel.features(x), intervals)
        t4 = time.perf_counter()
        t_decode += t1 - t0
        t_model += t2 - t1
        t_base += t4 - t3
        data.append(fd)
        if n % 50 == 0 or n == len(files):
            say(f"analysed {n}/{len(files)} files")
    timings.update(decode=t_decode, model=t_model, baselines_features=t_base)

    test = [d for d in data if d.meta.split == "test"]
    enroll = [d for d in data if d.meta.split == "enroll"]
    hop_s = test[0].hop_s

    # clean enrollment -----------------------------------------------------------------------------
    from indexer.enrollment import enrollment_for, mean_direction

    clean_files = [d for d in enroll if d.meta.clean]
    if clean_files:
        enrollment = mean_direction([d.embeddings for d in clean_files])
        enrollment_source = f"{len(clean_files)} clean enroll files"
    else:
        enrollment = enrollment_for(dict(frame_model.enrollments), int(np.median([d.orig_sr for d in test])))
        enrollment_source = "the model's own (the enroll split has no clean files)"
        notes.append("no clean enroll files: the model's built-in clean enrollment was used")

    # frame-level detection ------------------------------------------------------------------------
    t0 = time.perf_counter()
    scores = {d.meta.id: 1.0 - d.embeddings @ enrollment for d in test}
    targets = {d.meta.id: ev.frame_targets([(e.start, e.end) for e in d.meta.events], len(d.embeddings), d.hop_s) for d in test}
    gt = {d.meta.id: [(e.start, e.end) for e in d.meta.events] for d in test}
    durations = {d.meta.id: d.duration_s for d in test}
    hops = {d.meta.id: d.hop_s for d in test}
    all_scores = np.concatenate([scores[k] for k in scores])
    all_targets = np.concatenate([targets[k] for k in targets])
    all_mos_scores = np.concatenate([5.0 - d.mos for d in test])
    report: dict[str, Any] = {
        "frame_eer": _pct(ev.equal_error_rate(all_scores, all_targets)),
        "frame_min_dcf": ev.min_dcf(all_scores, all_targets, p_target=0.01),
    }
    det_curves = {"model (1 - cos)": _subsample_det(*ev.det_curve(all_scores, all_targets)[:2]),
                  "model MOS": _subsample_det(*ev.det_curve(all_mos_scores, all_targets)[:2])}
    eer_threshold = ev.eer_threshold(all_scores, all_targets)
    if any(d.meta.speaker is not None for d in test):
        report["per_speaker"] = _per_speaker(test, scores, targets, eer_threshold)
        own = _own_speaker_enrollment_eer(test, clean_files, all_targets)
        if own is not None:
            report["own_speaker_enrollment"] = own
    report["by_level"] = _by_level(test, scores, targets, eer_threshold)
    timings["frame_metrics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report["i_auc"] = ev.intersection_auc(scores, gt, durations, hops)
    report["mos_i_auc"] = ev.intersection_auc({d.meta.id: 5.0 - d.mos for d in test}, gt, durations, hops)
    timings["i_auc"] = time.perf_counter() - t0
    say(f"frame detection: EER {report['frame_eer']:.2f} %, I-AUC {report['i_auc']:.3f}")

    # oracle segments ------------------------------------------------------------------------------
    t0 = time.perf_counter()

    def segments_of(group: list[_FileData], attr: str = "seg_emb") -> tuple[np.ndarray, list[str], list[tuple[int, int]]]:
        rows, labels, where = [], [], []
        for fi, d in enumerate(group):
            arr = getattr(d, attr)
            for k, e in enumerate(d.meta.events):
                if d.seg_valid[k]:
                    rows.append(arr[k])
                    labels.append(e.label)
                    where.append((fi, k))
        dim = getattr(group[0], attr).shape[1] if group and getattr(group[0], attr) is not None else 0
        return (np.stack(rows) if rows else np.zeros((0, dim), np.float32)), labels, where

    test_emb, test_labels, _ = segments_of(test)
    enroll_emb, enroll_labels, _ = segments_of(enroll)
    proto, proto_names = ev.class_prototypes(enroll_emb, enroll_labels) if enroll_labels else (np.zeros((0, 1)), [])
    missing = sorted(set(test_labels) - set(proto_names))
    if missing:
        notes.append(f"{len(missing)} test labels have no enroll events (no prototype; left out of prototype_accuracy): "
                     + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    rng = np.random.default_rng(seed)
    pair_idx = np.arange(len(test_labels))
    if len(test_labels) > MAX_PAIRWISE_SEGMENTS:
        pair_idx = np.sort(rng.choice(len(test_labels), MAX_PAIRWISE_SEGMENTS, replace=False))
        notes.append(f"verification EER and ARI on a seeded subsample of {MAX_PAIRWISE_SEGMENTS} of {len(test_labels)} test segments")
    seg_metrics, per_label, predicted = _embedding_metrics(test_emb, test_labels, proto, proto_names, pair_idx)
    report.update(seg_metrics)
    report["single_degradations"] = _single_only(test_emb, test_labels, proto, proto_names, pair_idx)
    for name in per_label:
        per_label[name]["n_events"] = int(sum(1 for lab in test_labels if lab == name))
    for name, miss in _frame_miss_per_label(test, scores, eer_threshold).items():
        per_label.setdefault(name, {})["frame_miss"] = miss
    timings["segment_metrics"] = time.perf_counter() - t0
    say(f"oracle segments: verification EER {report['verification_eer']:.2f} %, "
        f"prototype accuracy {report['prototype_accuracy']:.1f} %, ARI {report['ari']:.3f}")
    confusion = None
    if predicted:
        keep = [i for i, lab in enumerate(test_labels) if lab in proto_names]
        confusion = ev.confusion_matrix([test_labels[i] for i in keep], [predicted[i] for i in keep], proto_names)
    map_idx = np.sort(rng.choice(len(test_labels), min(MAP_POINTS, len(test_labels)), replace=False)) if test_labels else np.arange(0)
    embedding_map = (test_emb[map_idx], [test_labels[i] for i in map_idx])

    # the real indexer -------------------------------------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="degsearch-eval-", dir=work_dir) as tmp:
        idx_report, idx_per_label, idx_timings = _index_and_query(
            test, clean_files, model_spec, frame_model, settings, Path(tmp), say)
        if "own_speaker_enrollment" in report:
            t0 = time.perf_counter()
            report["own_speaker_enrollment"].update(
                _own_speaker_detection(test, clean_files, model_spec, frame_model, settings, Path(tmp)))
            idx_timings["index_own_speaker"] = time.perf_counter() - t0
    report.update(idx_report)
    timings.update(idx_timings)
    for name, values in idx_per_label.items():
        per_label.setdefault(name, {}).update(values)
    report["per_label"] = per_label

    # baselines -----------------------------------------------------------------------------------------
    if dnsmos is not None and logmel is not None:
        t0 = time.perf_counter()
        base: dict[str, Any] = {}
        d_scores = {d.meta.id: 5.0 - d.dnsmos_frame_mos for d in test}  # type: ignore[operator]
        d_all = np.concatenate([d_scores[k] for k in d_scores])
        dn: dict[str, Any] = {
            "frame_eer": _pct(ev.equal_error_rate(d_all, all_targets)),
            "frame_min_dcf": ev.min_dcf(d_all, all_targets, p_target=0.01),
            "i_auc": ev.intersection_auc(d_scores, gt, durations, hops),
        }
        det_curves["DNSMOS MOS"] = _subsample_det(*ev.det_curve(d_all, all_targets)[:2])
        d_test, _, _ = segments_of(test, "dnsmos_seg")
        d_enroll, d_enroll_labels, _ = segments_of(enroll, "dnsmos_seg")
        d_proto, d_names = ev.class_prototypes(d_enroll, d_enroll_labels) if d_enroll_labels else (np.zeros((0, 1)), [])
        seg, per, _ = _embedding_metrics(d_test, test_labels, d_proto, d_names, pair_idx)
        dn.update(seg)
        dn["single_degradations"] = _single_only(d_test, test_labels, d_proto, d_names, pair_idx)
        dn["per_label"] = per
        base["dnsmos"] = dn
        l_test_raw, _, _ = segments_of(test, "logmel_stats")
        l_enroll_raw, l_enroll_labels, _ = segments_of(enroll, "logmel_stats")
        lm: dict[str, Any] = {}
        if len(l_enroll_raw):
            logmel.fit(l_enroll_raw)
            l_test, l_enroll = logmel.embed(l_test_raw), logmel.embed(l_enroll_raw)
            l_proto, l_names = ev.class_prototypes(l_enroll, l_enroll_labels)
        else:  # no enroll events: z-score on the test split itself, no prototypes
            logmel.fit(l_test_raw)
            l_test, l_proto, l_names = logmel.embed(l_test_raw), np.zeros((0, 1)), []
        seg, per, _ = _embedding_metrics(l_test, test_labels, l_proto, l_names, pair_idx)
        lm.update(seg)
        lm["single_degradations"] = _single_only(l_test, test_labels, l_proto, l_names, pair_idx)
        lm["per_label"] = per
        base["logmel"] = lm
        report["baselines"] = base
        timings["baselines_metrics"] = time.perf_counter() - t0
        say(f"baselines: DNSMOS EER {dn['frame_eer']:.2f} %, I-AUC {dn['i_auc']:.3f}; "
            f"log-mel verification EER {lm['verification_eer']:.2f} %")

    # size, identity -----------------------------------------------------------------------------------
    def size(group: list[_FileData]) -> dict[str, Any]:
        labels = {e.label for d in group for e in d.meta.events}
        return {"files": len(group), "seconds": round(sum(d.duration_s for d in group), 3),
                "events": sum(len(d.meta.events) for d in group), "labels": len(labels)}

    timings["total"] = time.perf_counter() - t_total
    header = {
        "version": version_string(),
        "model": {"id": frame_model.model_id, "name": frame_model.name, "spec": model_spec,
                  "frame_rate": float(frame_model.frame_rate), "dim": int(frame_model.dim),
                  "threshold": float(settings.threshold if settings.threshold is not None else frame_model.threshold)},
        "benchmark": {"path": str(bench.resolve()), "fingerprint": benchmark_fingerprint(bench, files), **size(data), "test": size(test), "enroll": size(enroll),
                      "test_labels": sorted(set(test_labels)), "enrollment": enrollment_source,
                      "hop_s": hop_s},
    }
    ordered = {**header, **{k: report[k] for k in (
        "frame_eer", "frame_min_dcf", "i_auc", "mos_i_auc", "verification_eer", "prototype_accuracy", "ari",
        "retrieval_p_at_10", "detection_f1", "index_rtf")}}
    ordered.update({k: v for k, v in report.items() if k not in ordered})
    ordered["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    ordered["notes"] = notes
    return EvaluationResult(report=_nan_to_none(ordered), det_curves=det_curves, confusion=confusion, embedding_map=embedding_map)


def _per_speaker(test: list[_FileData], scores: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                 threshold: float) -> dict[str, dict[str, float]]:
    """Frame detection per test speaker (files without one count as "unknown"): the frame EER of
    their frames alone, and at the pooled EER ``threshold`` the share (%) of their clean frames
    flagged and of their degraded frames missed. One speaker whose clean speech sits far from the
    enrollment can carry much of the pooled EER; this shows who."""
    groups: dict[str, list[_FileData]] = {}
    for d in test:
        groups.setdefault(d.meta.speaker if d.meta.speaker is not None else "unknown", []).append(d)
    out = {}
    for speaker, files in sorted(groups.items()):
        s = np.concatenate([scores[d.meta.id] for d in files])
        t = np.concatenate([targets[d.meta.id] for d in files]).astype(bool)
        degraded_s = sum(float(np.count_nonzero(targets[d.meta.id])) * d.hop_s for d in files)
        total_s = sum(len(targets[d.meta.id]) * d.hop_s for d in files)
        out[speaker] = {"files": len(files), "clean_s": round(total_s - degraded_s, 1), "degraded_s": round(degraded_s, 1),
                        "frame_eer": _pct(ev.equal_error_rate(s, t)),
                        "clean_false_alarm": 100.0 * float((s[~t] >= threshold).mean()) if (~t).any() else math.nan,
                        "miss": 100.0 * float((s[t] < threshold).mean()) if t.any() else math.nan}
    return out


# Frame level bands (dB against the file's loud speech) for ``by_level``: pauses, quiet, normal, loud.
LEVEL_BANDS_DB = ((-math.inf, -40.0), (-40.0, -25.0), (-25.0, -10.0), (-10.0, math.inf))


def frame_levels_db(x: np.ndarray, n: int, hop: int) -> np.ndarray:
    """Each of ``n`` frames' mean power (``hop`` samples each) in dB against the file's loud speech:
    the 95th percentile of its frames' levels, or -70 dBFS where that is lower, so a file of
    near-silence reads as quiet rather than as its own reference."""
    from indexer.features import frame_power_db

    level = frame_power_db(x, n, hop)
    return level - max(float(np.percentile(level, 95)), -70.0)


def _by_level(test: list[_FileData], scores: dict[str, np.ndarray], targets: dict[str, np.ndarray],
              threshold: float) -> list[dict[str, Any]]:
    """Frame detection per level band (:data:`LEVEL_BANDS_DB`): at the pooled EER ``threshold``, the
    share (%) of degraded frames missed and of clean frames flagged. A degradation that changes
    the voice leaves nothing in a pause, so misses there say little about the model; clean speech
    flagged at full level is what a listener would call a false alarm."""
    s = np.concatenate([scores[d.meta.id] for d in test])
    t = np.concatenate([targets[d.meta.id] for d in test]).astype(bool)
    level = np.concatenate([d.level_db for d in test])
    rows = []
    for lo, hi in LEVEL_BANDS_DB:
        band = (level >= lo) & (level < hi)
        degraded, clean = band & t, band & ~t
        rows.append({"from_db": None if math.isinf(lo) else lo, "to_db": None if math.isinf(hi) else hi,
                     "degraded_frames": int(degraded.sum()), "clean_frames": int(clean.sum()),
                     "missed": 100.0 * float((s[degraded] < threshold).mean()) if degraded.any() else math.nan,
                     "clean_flagged": 100.0 * float((s[clean] >= threshold).mean()) if clean.any() else math.nan})
    return rows


def _clean_files_by_speaker(clean_files: list[_FileData]) -> dict[str, list[_FileData]]:
    """The clean enroll files of each named speaker (files naming none are left out)."""
    by_speaker: dict[str, list[_FileData]] = {}
    for d in clean_files:
        if d.meta.speaker is not None:
            by_speaker.setdefault(d.meta.speaker, []).append(d)
    return by_speaker


def _own_speaker_enrollment_eer(test: list[_FileData], clean_files: list[_FileData],
                                all_targets: np.ndarray) -> dict[str, float] | None:
    """The frame EER (%) when each test file is scored against an enrollment made from its own
    speaker's clean enroll files only (``all_targets``: the test files' frame targets, concatenated
    in order); None unless every test file names a speaker that has some."""
    by_speaker = _clean_files_by_speaker(clean_files)
    if not by_speaker or any(d.meta.speaker not in by_speaker for d in test):
        return None
    from indexer.enrollment import mean_direction

    vectors = {spk: mean_direction([d.embeddings for d in files]) for spk, files in by_speaker.items()}
    own = np.concatenate([1.0 - d.embeddings @ vectors[d.meta.speaker] for d in test])
    return {"frame_eer": _pct(ev.equal_error_rate(own, all_targets)), "speakers": len({d.meta.speaker for d in test})}


def _frame_miss_per_label(test: list[_FileData], scores: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """Per event label, the share (%) of its frames scored under the pooled frame-EER ``threshold``:
    which degradations the frame EER's misses come from (a frame in two overlapping events counts
    for both)."""
    missed: dict[str, list[int]] = {}
    for d in test:
        s = scores[d.meta.id]
        for e in d.meta.events:
            idx = ev.frame_indices((e.start, e.end), len(s), d.hop_s)
            tally = missed.setdefault(e.label, [0, 0])
            tally[0] += int(np.count_nonzero(s[idx] < threshold))
            tally[1] += idx.size
    return {name: 100.0 * m / n for name, (m, n) in sorted(missed.items()) if n}


def _index_test_split(test: list[_FileData], clean_files: list[_FileData], model_spec: str, model: FrameModel,
                      settings: Settings, store_dir: Path, *, speaker_groups: bool = False) -> tuple[Settings, IndexSummary]:
    """Index the test split with the real indexer into a new store at ``store_dir`` whose clean
    enrollment is set from ``clean_files``, as ``degsearch enroll-clean`` would. With
    ``speaker_groups`` each speaker of ``clean_files`` also gets a group enrollment from its own
    files (``enroll-clean --group speaker=...``) and the test split is indexed from a manifest
    naming each file's speaker. Returns the store's settings and the indexing summary."""
    from indexer.enrollment import EnrollmentGroup, set_clean_enrollment
    from indexer.pipeline import index_archive
    from indexer.settings import Settings as _Settings
    from retrieval.store import Store

    # A fresh Settings (not model_copy: that would carry a cached database URL of the original).
    idx_settings = _Settings(**{**settings.model_dump(), "store_dir": store_dir, "database_url": None, "model": model_spec})
    idx_settings.store_dir.mkdir(parents=True, exist_ok=True)
    groups = _clean_files_by_speaker(clean_files) if speaker_groups else {}
    if clean_files:
        store = Store.open(idx_settings)
        try:
            store.ensure_model(model.model_id, model.name, model.frame_rate, model.dim, model.threshold,
                               {"enrollments": sorted(model.enrollments)})
            set_clean_enrollment(store, model, [str(d.meta.audio) for d in clean_files],
                                 quantile=idx_settings.clean_quantile, smooth_frames=idx_settings.smooth_frames)
            for speaker, files in sorted(groups.items()):
                set_clean_enrollment(store, model, [str(d.meta.audio) for d in files], quantile=idx_settings.clean_quantile,
                                     smooth_frames=idx_settings.smooth_frames, group=EnrollmentGroup("speaker", speaker))
        finally:
            store.close()
    if speaker_groups:
        manifest = store_dir / "test-split.jsonl"
        manifest.write_text("".join(json.dumps({"path": str(d.meta.audio.resolve()), "speaker": d.meta.speaker}) + "\n"
                                    for d in test))
        inputs = [str(manifest)]
    else:
        inputs = [str(d.meta.audio.resolve()) for d in test]
    summary = index_archive(inputs, idx_settings, progress=False)
    if summary.failed:
        raise EvaluationError(f"the indexer failed on {summary.failed} test files: "
                              + "; ".join(f"{f.path}: {f.error}" for f in summary.failures[:3]),
                              "fix or drop those files from the benchmark")
    return idx_settings, summary


def _channel0_segments(store: Store, test: list[_FileData]) -> list[tuple[int, _FileData, float, float]]:
    """(segment id, test file, start s, end s) of every stored segment of channel 0, the channel
    a benchmark's events annotate."""
    from sqlalchemy import select

    from retrieval.models import Recording, Segment

    by_path = {str(d.meta.audio.resolve()): d for d in test}
    with store.session() as session:
        rows = session.execute(select(Segment.id, Recording.path, Segment.channel, Segment.start_s, Segment.end_s)
                               .join(Recording, Recording.id == Segment.recording_id)).all()
    out = []
    for seg_id, path, channel, start, end in rows:
        d = by_path.get(str(Path(path).resolve()))
        if d is not None and int(channel) == 0:
            out.append((int(seg_id), d, float(start), float(end)))
    return out


def _own_speaker_detection(test: list[_FileData], clean_files: list[_FileData], model_spec: str, model: FrameModel,
                           settings: Settings, tmp: Path) -> dict[str, float]:
    """Detection F1, precision and recall of the real indexer when every speaker has its own group
    enrollment (``enroll-clean --group speaker=...``) made from its clean enroll files."""
    from retrieval.store import Store

    idx_settings, _ = _index_test_split(test, clean_files, model_spec, model, settings, tmp / "own-speaker-store",
                                        speaker_groups=True)
    store = Store.open(idx_settings, readonly=True)
    try:
        detections: dict[str, list[tuple[float, float]]] = {d.meta.id: [] for d in test}
        for _, d, start, end in _channel0_segments(store, test):
            detections[d.meta.id].append((start, end))
    finally:
        store.close()
    det = ev.detection_f1(detections, {d.meta.id: [(e.start, e.end) for e in d.meta.events] for d in test})
    return {"detection_f1": det.f1, "detection_precision": det.precision, "detection_recall": det.recall}


def _index_and_query(test: list[_FileData], clean_files: list[_FileData], model_spec: str, model: FrameModel,
                     settings: Settings, tmp: Path, say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, dict[str, float]], dict[str, float]]:
    """Index the test split into a temporary store; score detection, retrieval and speed."""
    from indexer.audio import MIN_DURATION_S
    from retrieval.search import resolve_query
    from retrieval.store import Store

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    idx_settings, summary = _index_test_split(test, clean_files, model_spec, model, settings, tmp / "store")
    timings["index"] = time.perf_counter() - t0
    say(f"indexed {summary.indexed} files, {summary.segments} segments, {summary.realtime_factor:.1f}x real time")

    store = Store.open(idx_settings, readonly=True)
    try:
        seg_ids: list[int] = []
        seg_file: list[str] = []
        seg_label: list[str | None] = []
        detections: dict[str, list[tuple[float, float]]] = {d.meta.id: [] for d in test}
        for seg_id, d, start, end in _channel0_segments(store, test):
            seg_ids.append(seg_id)
            seg_file.append(d.meta.id)
            detections[d.meta.id].append((start, end))
            seg_label.append(ev.majority_label((start, end), [(e.start, e.end, e.label) for e in d.meta.events]))
        events = {d.meta.id: [(e.start, e.end) for e in d.meta.events] for d in test}
        det = ev.detection_f1(detections, events)
        per_label: dict[str, dict[str, float]] = {}
        found_by_label: dict[str, list[bool]] = {}
        for d in test:
            _, found = ev.match_intervals(detections[d.meta.id], events[d.meta.id])
            for e, f in zip(d.meta.events, found):
                found_by_label.setdefault(e.label, []).append(bool(f))
        for name, flags in found_by_label.items():
            per_label.setdefault(name, {})["detection_recall"] = float(np.mean(flags))

        # retrieval: every test event's audio as a query clip, hits from other files only
        t0 = time.perf_counter()
        ids_arr = np.asarray(seg_ids, dtype=np.int64)
        file_arr = np.asarray(seg_file, dtype=object)
        label_of = dict(zip(seg_ids, seg_label))
        allowed_cache: dict[str, np.ndarray] = {}
        p_all: list[float] = []
        p_by_label: dict[str, list[float]] = {}
        skipped = 0
        for d in test:
            allowed = allowed_cache.setdefault(d.meta.id, ids_arr[file_arr != d.meta.id])
            for e, clip in zip(d.meta.events, d.clips):
                if clip.size < int(MIN_DURATION_S * SR):
                    skipped += 1
                    continue
                if allowed.size:
                    q = resolve_query(store, model, clips=[clip])
                    hit_ids, _ = store.search_vectors(q, min(10, allowed.size), allowed)
                    got = [label_of.get(int(i)) for i in hit_ids]
                else:
                    got = []
                p = float(ev.precision_at_k([got], [e.label], k=10)[0])
                p_all.append(p)
                p_by_label.setdefault(e.label, []).append(p)
        for name, values in p_by_label.items():
            per_label.setdefault(name, {})["retrieval_p_at_10"] = float(np.mean(values))
        timings["retrieval"] = time.perf_counter() - t0
    finally:
        store.close()
    report = {
        "retrieval_p_at_10": float(np.mean(p_all)) if p_all else math.nan,
        "detection_f1": det.f1,
        "index_rtf": summary.realtime_factor,
        "detection": {"precision": det.precision, "recall": det.recall, "n_detections": det.n_detections,
                      "n_events": det.n_events, "detections_ok": det.detections_ok, "events_found": det.events_found,
                      # share of the test audio flagged vs share truly degraded: shows over-detection at a glance
                      "flagged_fraction": det.detected_s / max(sum(d.duration_s for d in test), 1e-9),
                      "degraded_fraction": sum(iv[1] - iv[0] for d in test for iv in ev.merge_intervals(events[d.meta.id]))
                      / max(sum(d.duration_s for d in test), 1e-9)},
        "index": {"files": summary.indexed, "segments": summary.segments, "audio_s": summary.audio_s,
                  "wall_s": summary.wall_s, "stage_s": summary.stage_s, "queries": len(p_all), "queries_too_short": skipped},
    }
    return report, per_label, timings
