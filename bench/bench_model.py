"""The model card's benchmark table: frame models scored on six held-out real-speaker benchmarks.

    .venv/bin/python bench/bench_model.py [--model fast] [--model data/models/fast.pt] [--bench-dir data/bench] [--source tts]

Builds (once) the 30-minute benchmarks of MODEL_CARD.md from the held-out speakers of a
prepared corpus (`degsearch prepare-data data/train`): wideband and telephone, training and
held-out catalog, seeds 1-4; and two whole-file ones (training catalog, seeds 5-6), where each
degraded file is degraded from start to end, so that a change which only finds degradations
against the rest of the same recording shows as a loss there. Then evaluates each ``--model`` on all six and prints one row per
model and benchmark, then the share of each held-out speaker's clean frames flagged at the
benchmark's frame-EER threshold (one speaker can carry much of the EER), the single
degradations with the most frames under that threshold, the degraded frames missed and clean
frames flagged per band of frame level (pauses apart from speech), and one table per model of every single
degradation's missed frames and prototype accuracy on each benchmark; each report is kept
under ``--out``. Compare recipes with it, not with the training loss or TTS figures.
``--source tts`` builds the same six from the held-out TTS voices instead (default under
``data/bench_tts``), for the model card's real-against-synthetic comparison.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from indexer.settings import DEFAULT_MODEL, MODEL_CHOICES, get_settings
from indexer.training.benchmark import make_benchmark
from retrieval.benchmark_eval import evaluate_benchmark
from retrieval.report import KEYS, format_metric, level_band, write_report

# (name, channel, catalog, seed, whole_file): the seeds fix the benchmarks the model card reports.
BENCHMARKS = [
    ("wideband-train", "wideband", "train", 1, False),
    ("wideband-heldout", "wideband", "heldout", 2, False),
    ("telephone-train", "telephone", "train", 3, False),
    ("telephone-heldout", "telephone", "heldout", 4, False),
    ("wideband-whole", "wideband", "train", 5, True),
    ("telephone-whole", "telephone", "train", 6, True),
]
MOST_MISSED = 6  # single degradations listed per benchmark, most-missed first
SHORT_NAMES = {"wideband-train": "wb-train", "wideband-heldout": "wb-heldout", "telephone-train": "tel-train",
               "telephone-heldout": "tel-heldout", "wideband-whole": "wb-whole", "telephone-whole": "tel-whole"}


def _row(report: dict) -> list[str]:
    """The report's BENCHMARK.md metrics in ``KEYS`` order, single-degradation prototype accuracy after them."""
    return ([format_metric(report.get(key), unit) for key, unit, _ in KEYS]
            + [format_metric(report["single_degradations"]["prototype_accuracy"], "%")])


def _pct(value: float | None) -> str:
    """A whole percentage, or "-" for a missing or undefined figure."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.0f}"


def per_label_table(reports: dict[str, dict]) -> list[str]:
    """Markdown rows: each single degradation (rows) on each benchmark (columns), as the share of its
    frames under the benchmark's pooled frame-EER threshold and its prototype accuracy, % (with the
    number of test events); "-" where a benchmark's catalog lacks the label."""
    labels = sorted({label for r in reports.values() for label in (r.get("per_label") or {}) if "+" not in label})
    lines = ["| degradation | " + " | ".join(f"{SHORT_NAMES.get(n, n)} missed / proto % (events)" for n in reports) + " |",
             "|" + " --- |" * (len(reports) + 1)]
    for label in labels:
        cells = []
        for report in reports.values():
            v = (report.get("per_label") or {}).get(label)
            cells.append("-" if v is None else f"{_pct(v.get('frame_miss'))} / {_pct(v.get('prototype_accuracy'))} ({v.get('n_events')})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help=f"{MODEL_CHOICES} (repeatable; default: the shipped default)")
    parser.add_argument("--data-dir", default="data/train", help="corpus from `degsearch prepare-data`")
    parser.add_argument("--bench-dir", help="where the benchmarks are built (kept for reuse; default data/bench, data/bench_tts for --source tts)")
    parser.add_argument("--source", choices=("real", "tts"), default="real", help="held-out speakers: real people (the model card's figures) or TTS voices")
    parser.add_argument("--minutes", type=float, default=30.0, help="length of each benchmark")
    parser.add_argument("--out", default="data/eval", help="reports go to OUT/<model id>-<benchmark>/report.json")
    args = parser.parse_args()
    bench_dir = Path(args.bench_dir or ("data/bench" if args.source == "real" else "data/bench_tts"))
    for name, channel, catalog, seed, whole_file in BENCHMARKS:
        bench = bench_dir / name
        if not (bench / "manifest.jsonl").is_file():
            make_benchmark(bench, seed=seed, data_dir=args.data_dir, channel=channel, catalog=catalog, source=args.source,
                           minutes=args.minutes, whole_file=whole_file, log=lambda _msg: None)
    columns = [f"{key} ({unit})" if unit else key for key, unit, _ in KEYS] + ["single-degradation prototype_accuracy (%)"]
    print("| model | benchmark | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 2))
    speaker_lines, miss_lines, level_lines, label_tables = [], [], [], []
    for model in args.model or [DEFAULT_MODEL]:
        settings = get_settings(model=model)
        reports = {}
        for name, *_ in BENCHMARKS:
            result = evaluate_benchmark(bench_dir / name, model=model, settings=settings, baselines=False)
            reports[name] = result.report
            tag = name if args.source == "real" else f"tts-{name}"
            write_report(result, Path(args.out) / f"{result.report['model']['id']}-{tag}" / "report.json")
            print(f"| {model} ({result.report['model']['id']}) | {name} ({result.report['benchmark']['fingerprint']}) | " + " | ".join(_row(result.report)) + " |",
                  flush=True)
            speakers = result.report.get("per_speaker") or {}
            own = result.report.get("own_speaker_enrollment")
            speaker_lines.append(f"- {model} / {name}: " + ", ".join(
                f"{spk} {format_metric(v['clean_false_alarm'], '%')}" for spk, v in speakers.items())
                + (f"; with each speaker's own enrollment: frame EER {format_metric(own['frame_eer'], '%')}, "
                   f"detection F1 {format_metric(own['detection_f1'], '')}" if own else ""))
            missed = sorted(((v["frame_miss"], label) for label, v in (result.report.get("per_label") or {}).items()
                             if v.get("frame_miss") is not None and "+" not in label), reverse=True)
            miss_lines.append(f"- {model} / {name}: " + ", ".join(f"{label} {miss:.0f}" for miss, label in missed[:MOST_MISSED]))
            level_lines.append(f"- {model} / {name}: " + ", ".join(
                f"{level_band(r)}: {_pct(r['missed'])} / {_pct(r['clean_flagged'])}"
                for r in result.report.get("by_level") or []))
        label_tables += [f"\n{model}:", *per_label_table(reports)]
    print("\nClean test frames flagged at each benchmark's pooled frame-EER threshold, per held-out speaker (%):")
    print("\n".join(speaker_lines))
    print(f"\nThe {MOST_MISSED} single degradations with the most frames under each benchmark's pooled frame-EER threshold (% of their frames):")
    print("\n".join(miss_lines))
    print("\nDegraded frames missed / clean frames flagged (%) at each benchmark's pooled frame-EER threshold, "
          "by frame level against the file's loud speech (dB):")
    print("\n".join(level_lines))
    print("\nEach single degradation: its frames under the benchmark's pooled frame-EER threshold and its oracle "
          "segments' prototype accuracy (%), test events in brackets:")
    print("\n".join(label_tables))


if __name__ == "__main__":
    main()
