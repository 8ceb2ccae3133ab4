"""Write an evaluation as JSON, a markdown report and three plots (matplotlib, Agg backend).

For ``--output DIR/name.json`` the files are ``name.json``, ``name.md``, ``name_det.png`` (DET
curves of frame detection), ``name_confusion.png`` (prototype assignment per label, row-normalised)
and ``name_map.png`` (t-SNE map of a subsample of the oracle test segment embeddings).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.benchmark_eval import EvaluationResult

#: BENCHMARK.md keys in report order, with their unit and a short description.
KEYS: tuple[tuple[str, str, str], ...] = (
    ("frame_eer", "%", "frame EER, 1 - cos to clean enrollment (lower is better)"),
    ("frame_min_dcf", "", "frame minDCF, p_target 0.01 (lower is better)"),
    ("i_auc", "", "intersection-based AUC, rho 0.7/0.7"),
    ("mos_i_auc", "", "I-AUC with frame MOS as score"),
    ("verification_eer", "%", "oracle segments, same-label EER (lower is better)"),
    ("prototype_accuracy", "%", "oracle segment -> nearest enroll prototype"),
    ("ari", "", "agglomerative clustering of oracle segments"),
    ("retrieval_p_at_10", "", "indexed segments, event clip queries"),
    ("detection_f1", "", "indexer's segments vs events"),
    ("index_rtf", "x", "audio seconds indexed per wall second"),
)

#: Paper 003 (best model CON1, bottleneck embedding z_scl) on LibriAugmented, degradations unseen
#: in training (Table 3, Table 5 "All", Table 6 oracle ARI^dist) -- another test set, for scale only.
PAPER_003 = {
    "frame_eer": 4.88, "frame_min_dcf": 0.62, "i_auc": 0.92, "mos_i_auc": 0.77,
    "verification_eer": 19.7, "prototype_accuracy": 65.0, "ari": 0.28,
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_metric(value: Any, unit: str) -> str:
    """A BENCHMARK.md metric for a table: 2 decimals for %, 1 for real-time factors, 3 otherwise."""
    return _fmt(value, 2 if unit == "%" else (1 if unit.startswith("x") else 3))


def level_band(row: dict) -> str:
    """A ``by_level`` row's band in words: "under -40", "-40 to -25", "over -10" (dB)."""
    lo, hi = row.get("from_db"), row.get("to_db")
    return f"under {hi:g}" if lo is None else f"over {lo:g}" if hi is None else f"{lo:g} to {hi:g}"


def output_paths(json_path: str | Path) -> dict[str, Path]:
    """Where each artefact of a report goes, derived from the JSON path."""
    p = Path(json_path)
    stem = p.with_suffix("")
    return {"json": p, "markdown": stem.with_suffix(".md"), "det": Path(f"{stem}_det.png"),
            "confusion": Path(f"{stem}_confusion.png"), "map": Path(f"{stem}_map.png")}


def render_markdown(report: dict[str, Any], images: dict[str, Path] | None = None) -> str:
    """The markdown report for a report dict (as written to JSON)."""
    bench = report.get("benchmark", {})
    model = report.get("model", {})
    base = report.get("baselines") or {}
    lines = [
        "# degsearch evaluation",
        "",
        f"- version: {report.get('version')}",
        f"- model: `{model.get('name')}` id `{model.get('id')}` ({model.get('frame_rate')} frames/s, threshold {_fmt(model.get('threshold'))})",
        f"- benchmark: `{bench.get('path')}` (fingerprint `{bench.get('fingerprint')}`): {bench.get('files')} files, {_fmt(bench.get('seconds'), 1)} s, "
        f"{bench.get('events')} events, {bench.get('labels')} labels "
        f"(test: {bench.get('test', {}).get('files')} files, {_fmt(bench.get('test', {}).get('seconds'), 1)} s, "
        f"{bench.get('test', {}).get('events')} events, {bench.get('test', {}).get('labels')} labels)",
        f"- clean enrollment: {bench.get('enrollment')}",
        "",
        "## Metrics",
        "",
        "| key | model | DNSMOS | log-mel stats | paper 003 (CON1 z_scl, LibriAugmented) | meaning |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, unit, meaning in KEYS:
        row = [format_metric(v, unit) for v in (report.get(key), (base.get("dnsmos") or {}).get(key),
                                                (base.get("logmel") or {}).get(key), PAPER_003.get(key))]
        lines.append(f"| `{key}`{' (' + unit + ')' if unit else ''} | " + " | ".join(row) + f" | {meaning} |")
    single = report.get("single_degradations") or {}
    if single.get("n_events"):
        lines += ["", f"Single degradations only ({single.get('n_events')} test events, {single.get('labels')} labels; "
                      "paper 003 Table 5 'Single', CON1 z_scl: EER 19.4 %, accuracy 77.5 %):", "",
                  "| key | model | DNSMOS | log-mel stats |", "| --- | ---: | ---: | ---: |"]
        for key, unit in (("verification_eer", "%"), ("prototype_accuracy", "%"), ("ari", "")):
            vals = [single.get(key), ((base.get("dnsmos") or {}).get("single_degradations") or {}).get(key),
                    ((base.get("logmel") or {}).get("single_degradations") or {}).get(key)]
            lines.append(f"| `{key}`{' (' + unit + ')' if unit else ''} | " + " | ".join(format_metric(v, unit) for v in vals) + " |")
    det = report.get("detection") or {}
    if det:
        lines += ["", f"Detection: precision {_fmt(det.get('precision'))}, recall {_fmt(det.get('recall'))} "
                      f"({det.get('events_found')}/{det.get('n_events')} events found, "
                      f"{det.get('detections_ok')}/{det.get('n_detections')} detections on an event; "
                      f"{_fmt(100 * det['flagged_fraction'] if det.get('flagged_fraction') is not None else None, 1)} % of the "
                      f"test audio flagged, {_fmt(100 * det['degraded_fraction'] if det.get('degraded_fraction') is not None else None, 1)} % "
                      "truly degraded)."]
    lines += ["", "Paper 003's figures come from a different test set (LibriAugmented test-clean partial mix-up) "
                  "and are given for scale only. DNSMOS detects with its window MOS and embeds with its "
                  "penultimate layer (paper 000); the log-mel baseline only embeds."]

    per = report.get("per_label") or {}
    if per:
        lines += ["", "## Per label (model)", "",
                  "Frames missed: the share of the label's frames scored under the pooled frame-EER threshold.", "",
                  "| label | events | frames missed (%) | verification EER (%) | prototype acc. (%) | P@10 | detection recall | DNSMOS proto acc. (%) | log-mel proto acc. (%) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        dn_per = (base.get("dnsmos") or {}).get("per_label") or {}
        lm_per = (base.get("logmel") or {}).get("per_label") or {}
        for name in sorted(per):
            v = per[name]
            lines.append(f"| {name} | {v.get('n_events', '–')} | {_fmt(v.get('frame_miss'), 1)} | {_fmt(v.get('verification_eer'), 2)} | "
                         f"{_fmt(v.get('prototype_accuracy'), 1)} | {_fmt(v.get('retrieval_p_at_10'))} | "
                         f"{_fmt(v.get('detection_recall'))} | {_fmt((dn_per.get(name) or {}).get('prototype_accuracy'), 1)} | "
                         f"{_fmt((lm_per.get(name) or {}).get('prototype_accuracy'), 1)} |")
    speakers = report.get("per_speaker") or {}
    if speakers:
        lines += ["", "## Frame detection per test speaker (model)", "",
                  "At the pooled frame-EER threshold: the share of each speaker's clean frames flagged and of "
                  "their degraded frames missed.", "",
                  "| speaker | files | clean s | degraded s | frame EER (%) | clean flagged (%) | degraded missed (%) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, v in speakers.items():
            lines.append(f"| {name} | {v.get('files')} | {_fmt(v.get('clean_s'), 1)} | {_fmt(v.get('degraded_s'), 1)} | "
                         f"{_fmt(v.get('frame_eer'), 2)} | {_fmt(v.get('clean_false_alarm'), 1)} | {_fmt(v.get('miss'), 1)} |")
        own = report.get("own_speaker_enrollment")
        if own:
            lines += ["", f"With each test file scored against its own speaker's clean enroll files instead of all of them "
                          f"(`degsearch enroll-clean --group`), the frame EER is {_fmt(own.get('frame_eer'), 2)} % "
                          f"(pooled enrollment: {_fmt(report.get('frame_eer'), 2)} %), and the indexer's detection F1 "
                          f"{_fmt(own.get('detection_f1'))} (pooled: {_fmt(report.get('detection_f1'))})."]
    levels = report.get("by_level") or []
    if levels:
        lines += ["", "## Frame detection by level (model)", "",
                  "At the pooled frame-EER threshold, per band of frame level against the file's loud speech "
                  "(its 95th-percentile frame): degradations that change the voice leave nothing in a pause, "
                  "so misses under -40 dB say little; clean frames flagged at full level are false alarms a "
                  "listener would hear.", "",
                  "| level (dB) | degraded frames | missed (%) | clean frames | clean flagged (%) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for row in levels:
            lines.append(f"| {level_band(row)} | {row.get('degraded_frames')} | {_fmt(row.get('missed'), 1)} | "
                         f"{row.get('clean_frames')} | {_fmt(row.get('clean_flagged'), 1)} |")
    if images:
        lines += ["", "## Plots", ""]
        for title, key in (("DET curves of frame detection", "det"), ("Prototype assignment (row-normalised)", "confusion"),
                           ("t-SNE map of oracle test segments", "map")):
            if key in images:
                lines.append(f"![{title}]({images[key].name})")
                lines.append("")
    timings = report.get("timings_s") or {}
    if timings:
        lines += ["", "## Timings (s)", "", " · ".join(f"{k} {_fmt(v, 1)}" for k, v in timings.items())]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot_det(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """DET curves (probit axes) of the frame detectors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, fnr) in curves.items():
        if fpr.size < 2 or not np.all(np.isfinite(fpr)):
            continue
        ax.plot(norm.ppf(np.clip(fpr, 1e-4, 1 - 1e-4)), norm.ppf(np.clip(fnr, 1e-4, 1 - 1e-4)), label=name)
    ax.plot(norm.ppf([1e-4, 1 - 1e-4]), norm.ppf([1e-4, 1 - 1e-4]), ls=":", c="grey", lw=0.8, label="EER line")
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}" for t in ticks])
    lim = norm.ppf([5e-4, 0.995])  # curves are clipped to 1e-4 at the ends; keep those out of view
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title("Frame detection (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> None:
    """Row-normalised confusion matrix of nearest-prototype assignment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(axis=1, keepdims=True)
    norm_cm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    size = max(4.0, 0.32 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm_cm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("nearest prototype")
    ax.set_ylabel("true label")
    if len(labels) <= 25:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm_cm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Prototype assignment")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def embedding_map_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates: t-SNE (cosine) for 10+ points, PCA below that (t-SNE needs neighbours)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.shape[0] < 10:
        from sklearn.decomposition import PCA

        n = min(2, x.shape[0], x.shape[1])
        coords = PCA(n_components=n).fit_transform(x) if x.shape[0] >= 2 else np.zeros((x.shape[0], n))
        return np.pad(coords, ((0, 0), (0, 2 - n)))
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (x.shape[0] - 1) / 3.0))
    return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def plot_map(embeddings: np.ndarray, labels: list[str], path: Path) -> None:
    """Scatter of the 2-D embedding map, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords = embedding_map_2d(embeddings)
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    markers = "os^vD<>"
    fig, ax = plt.subplots(figsize=(7.5, 6))
    lab = np.asarray(labels, dtype=object)
    for k, name in enumerate(names):
        m = lab == name
        ax.scatter(coords[m, 0], coords[m, 1], s=10, color=cmap(k % cmap.N), marker=markers[(k // cmap.N) % len(markers)],
                   label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Oracle test segments ({len(labels)} shown)")
    if len(names) <= 40:
        ax.legend(fontsize=6, markerscale=1.2, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1 if len(names) <= 20 else 2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: EvaluationResult, json_path: str | Path) -> dict[str, Path]:
    """Write the JSON, the markdown report and the plots; returns the paths written."""
    paths = output_paths(json_path)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if result.det_curves:
        plot_det(result.det_curves, paths["det"])
        written["det"] = paths["det"]
    if result.confusion is not None and len(result.confusion[1]):
        plot_confusion(result.confusion[0], result.confusion[1], paths["confusion"])
        written["confusion"] = paths["confusion"]
    if result.embedding_map is not None and len(result.embedding_map[1]) >= 2:
        plot_map(result.embedding_map[0], result.embedding_map[1], paths["map"])
        written["map"] = paths["map"]
    paths["json"].write_text(json.dumps(result.report, indent=2) + "\n", encoding="utf-8")
    written["json"] = paths["json"]
    paths["markdown"].write_text(render_markdown(result.report, written), encoding="utf-8")
    written["markdown"] = paths["markdown"]
    return written
