"""`degsearch demo`: generate the demo call archive, index it, and show what was found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from indexer.settings import MODEL_CHOICES


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the CLI."""

    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Folder for the demo archive and its store.")] = Path("degsearch-demo"),
        model: Annotated[Optional[str], typer.Option(help=f"{MODEL_CHOICES}.")] = None,
        workers: Annotated[Optional[int], typer.Option(min=1, help="Decode+inference worker processes.")] = None,
        regenerate: Annotated[bool, typer.Option("--regenerate", help="Rebuild the archive even if it exists.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    ) -> None:
        """Make a small call archive with planted degradations (offline), index it, report per degradation."""
        from rich.console import Console
        from rich.table import Table

        from api.commands.indexing import print_summary
        from indexer.demo import run_demo
        from indexer.settings import get_settings

        console = Console()
        settings = get_settings(store_dir=out / "store", model=model, workers=workers)
        report = run_demo(out, settings, progress=not no_progress, force=regenerate)
        print_summary(console, report.summary)

        table = Table(title=f"what degsearch found in {report.manifest.parent} (planted degradations vs. detected segments)",
                      title_justify="left")
        for col, justify in (("degradation", "left"), ("planted", "right"), ("segments", "right"), ("seconds found", "right"),
                             ("share found", "right"), ("mean MOS", "right")):
            table.add_column(col, justify=justify)
        for row in report.rows:
            if row.kind == "none":
                table.add_row("[dim]none (false alarms)[/]", f"{row.planted_s:.0f} s", str(row.segments), f"{row.detected_s:.1f} s",
                              f"{100 * row.share:.1f}%", "-" if row.mean_mos is None else f"{row.mean_mos:.2f}")
            else:
                table.add_row(row.kind, f"{row.events} x, {row.planted_s:.0f} s", str(row.segments), f"{row.detected_s:.1f} s",
                              f"{100 * row.share:.0f}%", "-" if row.mean_mos is None else f"{row.mean_mos:.2f}")
        t = report.total
        share = t["degraded_s"] / t["analysed_s"] if t["analysed_s"] else 0.0
        table.add_row("[bold]all audio[/]", f"{t['analysed_s']:.0f} s", str(int(t["segments"])), f"{t['degraded_s']:.1f} s",
                      f"{100 * share:.0f}%", "-" if t["mean_mos"] != t["mean_mos"] else f"{t['mean_mos']:.2f}")
        console.print(table)

        hits = Table(title=f"more like this: {report.query_clip} (planted {report.query_kind})", title_justify="left")
        for col in ("#", "file", "ch", "start-end (s)", "similarity", "MOS", "planted there"):
            hits.add_column(col)
        for i, h in enumerate(report.hits, 1):
            style = "green" if h.planted == report.query_kind else ""
            hits.add_row(str(i), h.path, str(h.channel), f"{h.start_s:.2f}-{h.end_s:.2f}", f"{h.similarity:.3f}",
                         "-" if h.mos is None else f"{h.mos:.2f}", f"[{style}]{h.planted}[/]" if style else h.planted)
        if report.hits:
            console.print(hits)
        else:
            console.print("no segments were detected, so there is nothing to query")
        model_flag = "" if model is None else f" --model {model}"
        console.print(f"store: {settings.store_dir}  -  try: degsearch search {report.query_clip} --store-dir {settings.store_dir}{model_flag}")
