"""`degsearch index` (index an archive), `degsearch enroll-clean` (set the store's or a group's clean
enrollment) and `degsearch enrollments` (list them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from indexer.settings import MODEL_CHOICES

if TYPE_CHECKING:
    from rich.console import Console

    from indexer.pipeline import IndexSummary

# Failed files listed in full at the end of a run; the rest are counted.
MAX_FAILURES_SHOWN = 50


def print_summary(console: Console, summary: IndexSummary) -> None:
    """The end-of-run report: counts, audio hours, real-time factor, stage split, failed files."""
    from rich.table import Table

    table = Table(title=f"index run {summary.run_id} ({summary.engine}, {summary.workers} worker(s)): {summary.status}",
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("files", str(summary.files_total))
    table.add_row("indexed", str(summary.indexed))
    table.add_row("skipped (unchanged)", str(summary.skipped - len(summary.previously_failed)))
    if summary.previously_failed:
        table.add_row("skipped (failed before)", f"{len(summary.previously_failed)}  (--retry-failed retries them)")
    table.add_row("failed", f"[red]{summary.failed}[/]" if summary.failed else "0")
    table.add_row("segments", str(summary.segments))
    table.add_row("audio indexed", f"{summary.audio_hours:.3f} h")
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    table.add_row("real-time factor", f"{summary.realtime_factor:.0f}x" if summary.audio_s else "-")
    busy = {k: v for k, v in summary.stage_s.items() if v > 0}
    if busy:
        total = sum(busy.values())
        table.add_row("time per stage", ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in busy.items()))
    console.print(table)
    if summary.failures:
        failed = Table(title="failed files", title_justify="left")
        failed.add_column("file", overflow="fold")
        failed.add_column("stage")
        failed.add_column("error", overflow="fold")
        for f in summary.failures[:MAX_FAILURES_SHOWN]:
            failed.add_row(f.path, f.stage, f.error)
        console.print(failed)
        if len(summary.failures) > MAX_FAILURES_SHOWN:
            console.print(f"... and {len(summary.failures) - MAX_FAILURES_SHOWN} more (see `degsearch db check`)")


def register(app: typer.Typer) -> None:
    """Add ``index`` and ``enroll-clean`` to the CLI."""

    @app.command()
    def index(
        inputs: Annotated[list[str], typer.Argument(help="Folders (recursive), files, glob patterns or CSV/JSONL manifests (column 'path').")],
        store_dir: Annotated[Optional[Path], typer.Option(help="Store directory (database + FAISS index).")] = None,
        database_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL instead of the SQLite file in --store-dir.")] = None,
        model: Annotated[Optional[str], typer.Option(help=f"{MODEL_CHOICES}.")] = None,
        workers: Annotated[Optional[int], typer.Option(min=1, help="Decode+inference worker processes (default 1).")] = None,
        engine: Annotated[str, typer.Option(help="local (process pool) or ray (Ray Data, for clusters).")] = "local",
        retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Retry files that failed in earlier runs.")] = False,
        threshold: Annotated[Optional[float], typer.Option(help="Detection threshold on 1 - cosine (default: the model's).")] = None,
        smooth_frames: Annotated[Optional[int], typer.Option(min=1, help="Median smoothing of frame scores, in frames (default 5).")] = None,
        bridge_gap_s: Annotated[Optional[float], typer.Option(min=0, help="Bridge gaps shorter than this (s, default 0.2).")] = None,
        min_segment_s: Annotated[Optional[float], typer.Option(min=0, help="Drop segments shorter than this (s, default 0.3).")] = None,
        merge_gap_s: Annotated[Optional[float], typer.Option(min=0, help="Merge alike segments closer than this (s, default 1.0; 0: off).")] = None,
        merge_similarity: Annotated[Optional[float], typer.Option(min=-1, max=1, help="Cosine between two close segments' embeddings above which they merge (default 0.8).")] = None,
        chunk_s: Annotated[Optional[float], typer.Option(help="Streaming chunk length in seconds (default 60).")] = None,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    ) -> None:
        """Index an archive: every degraded stretch becomes a searchable segment."""
        from rich.console import Console

        from indexer.pipeline import index_archive
        from indexer.settings import get_settings

        settings = get_settings(store_dir=store_dir, database_url=database_url, model=model, workers=workers, threshold=threshold,
                                smooth_frames=smooth_frames, bridge_gap_s=bridge_gap_s, min_segment_s=min_segment_s,
                                merge_gap_s=merge_gap_s, merge_similarity=merge_similarity, chunk_s=chunk_s)
        if settings.database_url is None:
            settings.store_dir.mkdir(parents=True, exist_ok=True)
        summary = index_archive(list(inputs), settings, engine=engine, retry_failed=retry_failed, progress=not no_progress)
        print_summary(Console(), summary)

    @app.command("enroll-clean")
    def enroll_clean(
        clips: Annotated[list[Path], typer.Argument(help="Clean recordings of the archive's kind (same channel type, same codec).")],
        store_dir: Annotated[Optional[Path], typer.Option(help="Store directory (database + FAISS index).")] = None,
        database_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL instead of the SQLite file in --store-dir.")] = None,
        model: Annotated[Optional[str], typer.Option(help=f"{MODEL_CHOICES}.")] = None,
        group: Annotated[Optional[str], typer.Option(
            help="KEY=VALUE: enroll only the files whose manifest column KEY is VALUE (e.g. agent=alice), "
                 "with these clips; other files keep the store's enrollment.")] = None,
    ) -> None:
        """Set this store's clean enrollment and detection threshold from clean clips of your own lines.

        The threshold leaves DEGSEARCH_CLEAN_QUANTILE (0.98) of the clips' frames below it; an explicit
        --threshold / DEGSEARCH_THRESHOLD still wins. A clip that the other clips' enrollment calls
        mostly degraded (a noisy one, a lone odd voice) is set aside and named, so that it cannot
        raise the threshold for all. With --group, the enrollment applies to the
        files indexed from a CSV/JSONL manifest whose column KEY equals VALUE: one per agent, say,
        from each agent's own good calls (a file matching several groups takes the first by KEY, then
        VALUE). The next `degsearch index` run detects the files indexed before this again.
        """
        from rich.console import Console

        from indexer.enrollment import MIN_REFERENCE_S, OUTLIER_SHARE, EnrollmentGroup, set_clean_enrollment
        from indexer.pipeline import load_store_model
        from indexer.settings import get_settings
        from retrieval.store import Store

        enrollment_group = EnrollmentGroup.parse(group) if group is not None else None
        settings = get_settings(store_dir=store_dir, database_url=database_url, model=model)
        if settings.database_url is None:
            settings.store_dir.mkdir(parents=True, exist_ok=True)
        frame_model = load_store_model(settings)
        store = Store.open(settings)
        try:
            store.ensure_model(frame_model.model_id, frame_model.name, frame_model.frame_rate, frame_model.dim,
                               frame_model.threshold, {"enrollments": sorted(frame_model.enrollments)})
            enrollment = set_clean_enrollment(store, frame_model, [str(c) for c in clips], quantile=settings.clean_quantile,
                                              smooth_frames=settings.smooth_frames, group=enrollment_group)
        finally:
            store.close()
        default = frame_model.enrollments.get("narrowband")
        note = ""
        if default is not None:
            note = f"; cosine to the model's narrowband enrollment {float(enrollment.vector @ default):.3f}"
        scope = f" of the files with {enrollment_group.key}={enrollment_group.value}" if enrollment_group is not None else ""
        Console().print(f"clean enrollment{scope} set from {len(clips)} clip(s) for model {frame_model.name} ({frame_model.model_id[:12]}){note}; "
                      f"detection threshold {enrollment.threshold:.3f} (the model's: {frame_model.threshold:.3f})")
        if enrollment.outliers:
            Console().print(f"[yellow]warning:[/] set aside {len(enrollment.outliers)} clip(s) unlike the rest (the other clips' "
                            f"enrollment flags over {OUTLIER_SHARE:.0%} of their frames as degraded): "
                            + ", ".join(enrollment.outliers)
                            + ". If they are degraded, leave them out; if they are clean, their speaker or line wants its own "
                              "enrollment (--group KEY=VALUE).")
        if enrollment.seconds < MIN_REFERENCE_S:
            Console().print(f"[yellow]warning:[/] only {enrollment.seconds:.0f} s of reference audio; with less than "
                            f"{MIN_REFERENCE_S:.0f} s the threshold fits these clips too tightly and flags more of the "
                            "line's other clean speech: add more good calls")

    @app.command("remove-enrollment")
    def remove_enrollment(
        store_dir: Annotated[Optional[Path], typer.Option(help="Store directory (database + FAISS index).")] = None,
        database_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL instead of the SQLite file in --store-dir.")] = None,
        model: Annotated[Optional[str], typer.Option(help=f"{MODEL_CHOICES}.")] = None,
        group: Annotated[Optional[str], typer.Option(help="KEY=VALUE: remove that group's enrollment instead of the store-level one.")] = None,
    ) -> None:
        """Remove the store's clean enrollment (or one group's) set by `degsearch enroll-clean`.

        Its files fall back to what applies to them now (the store-level enrollment for a group's
        files, the model's own for the store's); the next `degsearch index` run over them detects
        them again. `degsearch enrollments` lists what is set.
        """
        from rich.console import Console

        from indexer.enrollment import EnrollmentGroup, remove_clean_enrollment
        from indexer.pipeline import load_store_model
        from indexer.settings import get_settings
        from retrieval.store import Store

        enrollment_group = EnrollmentGroup.parse(group) if group is not None else None
        settings = get_settings(store_dir=store_dir, database_url=database_url, model=model)
        frame_model = load_store_model(settings)
        store = Store.open(settings)
        try:
            remove_clean_enrollment(store, frame_model.model_id, enrollment_group)
        finally:
            store.close()
        scope = f"of the files with {enrollment_group.key}={enrollment_group.value}" if enrollment_group is not None else "of the store"
        Console().print(f"removed the clean enrollment {scope} for model {frame_model.name} ({frame_model.model_id[:12]}); "
                        "the next `degsearch index` run detects its files again")

    @app.command("enrollments")
    def enrollments(
        store_dir: Annotated[Optional[Path], typer.Option(help="Store directory (database + FAISS index).")] = None,
        database_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL instead of the SQLite file in --store-dir.")] = None,
    ) -> None:
        """List the store's clean enrollments: the store-level one and each group's, per model."""
        from rich.console import Console
        from rich.table import Table

        from indexer.enrollment import MIN_REFERENCE_S, list_enrollments
        from indexer.settings import get_settings
        from retrieval.store import Store

        store = Store.open(get_settings(store_dir=store_dir, database_url=database_url), readonly=True)
        try:
            rows = list_enrollments(store)
        finally:
            store.close()
        console = Console()
        if not rows:
            console.print("no clean enrollment set: detection uses the model's own (set one with `degsearch enroll-clean`)")
            return
        table = Table(title="clean enrollments", title_justify="left")
        for column in ("model", "applies to", "clips", "reference audio", "threshold", "set at"):
            table.add_column(column)
        grouped = {e.model_id for e in rows if e.scope != "store"}
        for e in rows:
            if e.scope == "store":
                applies = "files in no group" if e.model_id in grouped else "every file"
            else:
                applies = f"files with {e.scope}"
            seconds = f"{e.seconds:.0f} s" + (" [yellow](short)[/]" if e.seconds < MIN_REFERENCE_S else "")
            clips = f"{e.clips}" + (f" ({e.set_aside} set aside)" if e.set_aside else "")
            table.add_row(e.model_id[:12], applies, clips,
                          seconds, "-" if e.threshold is None else f"{e.threshold:.3f}", f"{e.created_at:%Y-%m-%d %H:%M}")
        console.print(table)
