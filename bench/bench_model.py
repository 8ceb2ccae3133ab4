"""The model card's benchmark table: frame models scored on four held-out real-speaker benchmarks.

    .venv/bin/python bench/bench_model.py [--model fast] [--model data/models/fast.pt] [--bench-dir data/bench]

Builds (once) the four 30-minute benchmarks of MODEL_CARD.md from the held-out speakers of a
prepared corpus (`degsearch prepare-data data/train`): wideband and telephone, training and
held-out catalog, seeds 1-4; and two whole-file ones (training catalog, seeds 5-6), where each
degraded file is degraded from start to end, so that a change which only finds degradations
against the rest of the same recording shows as a loss there. Then evaluates each ``--model`` on all six and prints one row per
model and benchmark, then the share of each held-out speaker's clean frames flagged at the
benchmark's frame-EER threshold (one speaker can carry much of the EER) and the single
degradations with the most frames under that threshold; each report is kept
under ``--out``. Compare recipes with it, not with the training loss or TTS figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from indexer.settings import DEFAULT_MODEL, MODEL_CHOICES, get_settings
from indexer.training.benchmark import make_benchmark
from retrieval.benchmark_eval import evaluate_benchmark
from retrieval.report import KEYS, format_metric, write_report

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


def _row(report: dict) -> list[str]:
    """The report's BENCHMARK.md metrics in ``KEYS`` order, single-degradation prototype accuracy after them."""
    return ([format_metric(report.get(key), unit) for key, unit, _ in KEYS]
            + [format_metric(report["single_degradations"]["prototype_accuracy"], "%")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help=f"{MODEL_CHOICES} (repeatable; default: the shipped default)")
    parser.add_argument("--data-dir", default="data/train", help="corpus from `degsearch prepare-data`")
    parser.add_argument("--bench-dir", default="data/bench", help="where the benchmarks are built (kept for reuse)")
    parser.add_argument("--minutes", type=float, default=30.0, help="length of each benchmark")
    parser.add_argument("--out", default="data/eval", help="reports go to OUT/<model id>-<benchmark>/report.json")
    args = parser.parse_args()
    for name, channel, catalog, seed, whole_file in BENCHMARKS:
        bench = Path(args.bench_dir) / name
        if not (bench / "manifest.jsonl").is_file():
            make_benchmark(bench, seed=seed, data_dir=args.data_dir, channel=channel, catalog=catalog,
                           minutes=args.minutes, whole_file=whole_file, log=lambda _msg: None)
    columns = [f"{key} ({unit})" if unit else key for key, unit, _ in KEYS] + ["single-degradation prototype_accuracy (%)"]
    print("| model | benchmark | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 2))
    speaker_lines, miss_lines = [], []
    for model in args.model or [DEFAULT_MODEL]:
        settings = get_settings(model=model)
        for name, *_ in BENCHMARKS:
            result = evaluate_benchmark(Path(args.bench_dir) / name, model=model, settings=settings, baselines=False)
            write_report(result, Path(args.out) / f"{result.report['model']['id']}-{name}" / "report.json")
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
    print("\nClean test frames flagged at each benchmark's pooled frame-EER threshold, per held-out speaker (%):")
    print("\n".join(speaker_lines))
    print(f"\nThe {MOST_MISSED} single degradations with the most frames under each benchmark's pooled frame-EER threshold (% of their frames):")
    print("\n".join(miss_lines))


if __name__ == "__main__":
    main()
