"""Evaluation command: `degsearch evaluate BENCH_DIR --output report.json`.

Scores the frame model (and, by default, the DNSMOS and log-mel baselines) on any benchmark in
the BENCHMARK.md format, prints a Rich table and writes the JSON, a markdown report and plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from indexer.settings import MODEL_CHOICES

BenchDir = Annotated[Path, typer.Argument(help="Benchmark directory (manifest.jsonl + audio/, see BENCHMARK.md).",
                                          exists=True, file_okay=False, dir_okay=True)]
Output = Annotated[Path, typer.Option("--output", "-o", help="Report JSON path; report .md and PNGs go next to it.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help=f"{MODEL_CHOICES} (default: settings).")]
Baselines = Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also score DNSMOS and log-mel statistics.")]
WorkDir = Annotated[Optional[Path], typer.Option("--work-dir", help="Where the temporary store goes (default: system temp).")]

# (key, heading, unit) rows of the printed table, in BENCHMARK.md order.
ROWS = (
    ("frame_eer", "frame EER", "%"), ("frame_min_dcf", "frame minDCF", ""), ("i_auc", "I-AUC (0.7/0.7)", ""),
    ("mos_i_auc", "MOS I-AUC", ""), ("verification_eer", "verification EER", "%"),
    ("prototype_accuracy", "prototype accuracy", "%"), ("ari", "ARI", ""), ("retrieval_p_at_10", "retrieval P@10", ""),
    ("detection_f1", "detection F1", ""), ("index_rtf", "index speed", "x real time"),
)


def register(app: typer.Typer) -> None:
    """Add `evaluate` to the CLI."""

    @app.command("evaluate")
    def evaluate(bench_dir: BenchDir, output: Output = Path("report.json"), model: ModelOpt = None,
                 baselines: Baselines = True, work_dir: WorkDir = None) -> None:
        """Compute every BENCHMARK.md metric on BENCH_DIR; write JSON + markdown + plots."""
        from rich.console import Console
        from rich.table import Table

        from indexer.settings import get_settings
        from retrieval.benchmark_eval import evaluate_benchmark
        from retrieval.report import format_metric, level_band, write_report

        console = Console()
        settings = get_settings(model=model)
        with console.status("evaluating…"):
            result = evaluate_benchmark(bench_dir, model=model, settings=settings, baselines=baselines, work_dir=work_dir,
                                        log=lambda msg: console.log(msg))
            written = write_report(result, output)
        rep = result.report
        bench = rep["benchmark"]
        table = Table(title=f"{bench['path']} · {bench['test']['files']} test files, {bench['test']['seconds']:.0f} s, "
                            f"{bench['test']['events']} events, {bench['test']['labels']} labels")
        table.add_column("metric")
        table.add_column("unit")
        table.add_column(f"model {rep['model']['name']}", justify="right")
        base = rep.get("baselines") or {}
        if base:
            table.add_column("DNSMOS", justify="right")
            table.add_column("log-mel", justify="right")
        for key, heading, unit in ROWS:
            cells = [heading, unit, format_metric(rep.get(key), unit)]
            if base:
                cells += [format_metric(base.get("dnsmos", {}).get(key), unit), format_metric(base.get("logmel", {}).get(key), unit)]
            table.add_row(*cells)
        console.print(table)
        own = rep.get("own_speaker_enrollment")
        if own:
            console.print(f"with each speaker's own clean enrollment (`enroll-clean --group`): frame EER "
                          f"{format_metric(own.get('frame_eer'), '%')} %, detection F1 {format_metric(own.get('detection_f1'), '')}")
        levels = rep.get("by_level") or []
        if levels:
            console.print("degraded frames missed / clean frames flagged at the frame-EER threshold, by level against "
                          "each file's loud speech: " + ", ".join(
                              f"{level_band(r)} dB {format_metric(r.get('missed'), '%')} / {format_metric(r.get('clean_flagged'), '%')} %"
                              for r in levels))
        console.print(f"model id {rep['model']['id']} · {rep['version']} · {rep['timings_s']['total']:.1f} s")
        for note in rep.get("notes") or []:
            console.print(f"[yellow]note:[/] {note}")
        for kind, path in written.items():
            console.print(f"wrote {kind}: {path}")
