"""Retrieval commands: `search`, `prototypes`, `prototype add|remove`, `stats`, `export-segments`.

Each command parses flags, builds settings, calls one library function from ``retrieval/`` and
prints the result with Rich. Heavy imports (torch, faiss, sklearn) happen inside the bodies.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from indexer.errors import ConfigError
from indexer.settings import MODEL_CHOICES

# --- shared options --------------------------------------------------------------------------

StoreDir = Annotated[Optional[Path], typer.Option(help="Store directory (database + FAISS index).")]
DatabaseUrl = Annotated[Optional[str], typer.Option(help="SQLAlchemy URL instead of the SQLite file in --store-dir.")]
ModelOpt = Annotated[Optional[str], typer.Option(help=f"Model for clip queries: {MODEL_CHOICES}.")]
Clips = Annotated[Optional[list[Path]], typer.Argument(help="Query clip(s): audio of the degradation to find; several are averaged.")]
K = Annotated[int, typer.Option("-k", "--k", min=1, max=100000, help="How many segments to return.")]
LikeSegment = Annotated[Optional[int], typer.Option("--like-segment", help="Query with this stored segment's embedding instead of a clip.")]
ProtoQuery = Annotated[Optional[str], typer.Option("--prototype", help="Query with this prototype (cluster-NN or a named one).")]
Whole = Annotated[bool, typer.Option("--whole", help="Embed the whole clip, not only its detected degraded frames.")]
Exact = Annotated[bool, typer.Option("--exact", help="Brute-force search even without filters (approximate indexes).")]
PathGlob = Annotated[Optional[str], typer.Option("--path", help="Recording path glob, e.g. '*/2024-05-*'.")]
Attr = Annotated[Optional[list[str]], typer.Option("--attr", help="Recording attribute KEY=VALUE (repeatable, all must match).")]
Channel = Annotated[Optional[int], typer.Option(min=0, help="Only this channel (0 = left/agent, 1 = right).")]
StartMin = Annotated[Optional[float], typer.Option(min=0, help="Segment starts at or after this many seconds into the recording.")]
StartMax = Annotated[Optional[float], typer.Option(min=0, help="Segment starts at or before this many seconds.")]
MosMin = Annotated[Optional[float], typer.Option(help="Segment MOS at least this.")]
MosMax = Annotated[Optional[float], typer.Option(help="Segment MOS at most this.")]
MinDur = Annotated[Optional[float], typer.Option("--min-duration", min=0, help="Segment at least this many seconds long.")]
MaxDur = Annotated[Optional[float], typer.Option("--max-duration", min=0, help="Segment at most this many seconds long.")]
LabelOpt = Annotated[Optional[str], typer.Option("--label", help="Only segments with this prototype label.")]
After = Annotated[Optional[datetime], typer.Option(help="Recording indexed at or after this time (ISO; UTC if no zone).")]
Before = Annotated[Optional[datetime], typer.Option(help="Recording indexed before this time.")]


def _parse_attrs(pairs: list[str] | None) -> dict[str, Any] | None:
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--attr {pair!r} is not KEY=VALUE", "e.g. --attr agent=A17")
        out[key.strip()] = value
    return out


def _filters(**values: Any):  # -> retrieval.search.SearchFilters | None
    from retrieval.search import SearchFilters

    filters = SearchFilters(**values)
    return None if filters.is_empty() else filters


def _settings(**overrides: Any):
    from indexer.settings import get_settings

    return get_settings(**overrides)


def _open(settings: Any, *, readonly: bool):
    from retrieval.store import Store

    return Store.open(settings, readonly=readonly)


def _query(store: Any, settings: Any, clips: list[Path] | None, like_segment: int | None, prototype: str | None, whole: bool):
    """The query vector from exactly one of clips / --like-segment / --prototype."""
    from retrieval.search import resolve_query

    model = None
    if clips:
        from indexer.pipeline import load_store_model

        model = load_store_model(settings)
    return resolve_query(store, model, clips=[str(c) for c in clips] if clips else None, segment_id=like_segment,
                         prototype=prototype, whole=whole)


def _console():
    import sys

    from rich.console import Console

    # Piped output (logs, files) gets a wide page so paths and labels are not cut.
    return Console(width=None if sys.stdout.isatty() else 160)


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    try:
        if value != value:  # NaN
            return "-"
    except TypeError:
        pass
    return format(value, spec)


def _print_hits(hits: list[Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col, justify in (("#", "right"), ("sim", "right"), ("segment", "right"), ("ch", "right"), ("start", "right"),
                         ("end", "right"), ("MOS", "right"), ("label (score)", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("recording", overflow="fold")
    for rank, h in enumerate(hits, start=1):
        table.add_row(str(rank), _fmt(h.similarity, ".3f"), str(h.segment_id), str(h.channel), f"{h.start_s:.2f}",
                      f"{h.end_s:.2f}", _fmt(h.mos), f"{h.label or '-'} ({_fmt(h.label_score)})", h.path)
    _console().print(table)


def _print_prototypes(infos: list[Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("name", "kind", "segments", "duration (s)", "mean MOS", "examples"):
        table.add_column(col)
    for p in infos:
        table.add_row(p.name, p.kind, str(p.size), f"{p.total_duration_s:.1f}", _fmt(p.mean_mos),
                      ", ".join(str(i) for i in p.example_segment_ids))
    _console().print(table)


def _hit_dict(h: Any) -> dict[str, Any]:
    return {"segment_id": h.segment_id, "recording_id": h.recording_id, "path": h.path, "channel": h.channel,
            "start_s": h.start_s, "end_s": h.end_s, "similarity": h.similarity, "mos": h.mos, "label": h.label,
            "label_score": h.label_score}


# --- commands --------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the retrieval commands to the CLI."""

    @app.command()
    def search(
        clips: Clips = None,
        k: K = 10,
        like_segment: LikeSegment = None,
        prototype: ProtoQuery = None,
        whole: Whole = False,
        exact: Exact = False,
        path: PathGlob = None,
        attr: Attr = None,
        channel: Channel = None,
        start_min: StartMin = None,
        start_max: StartMax = None,
        mos_min: MosMin = None,
        mos_max: MosMax = None,
        min_duration: MinDur = None,
        max_duration: MaxDur = None,
        label: LabelOpt = None,
        indexed_after: After = None,
        indexed_before: Before = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines instead of a table.")] = False,
        export: Annotated[Optional[Path], typer.Option(help="Also cut the hits to WAV files in this directory.")] = None,
        pad: Annotated[float, typer.Option(min=0, help="Seconds of context around exported segments.")] = 0.5,
        store_dir: StoreDir = None,
        database_url: DatabaseUrl = None,
        model: ModelOpt = None,
    ) -> None:
        """Find stored segments that sound like CLIP (or a segment / prototype), with optional filters."""
        from retrieval.export import export_segments
        from retrieval.search import search as run_search

        settings = _settings(store_dir=store_dir, database_url=database_url, model=model)
        filters = _filters(path_glob=path, attributes=_parse_attrs(attr), channel=channel, start_min_s=start_min,
                           start_max_s=start_max, mos_min=mos_min, mos_max=mos_max, duration_min_s=min_duration,
                           duration_max_s=max_duration, label=label, indexed_after=indexed_after, indexed_before=indexed_before)
        store = _open(settings, readonly=True)
        try:
            query = _query(store, settings, clips, like_segment, prototype, whole)
            hits = run_search(store, query, k, filters, exact=exact)
            if as_json:
                for h in hits:
                    typer.echo(json.dumps(_hit_dict(h)))
            else:
                _print_hits(hits, f"{len(hits)} nearest segments" + (" (filtered)" if filters else ""))
            if export is not None:
                files = export_segments(store, hits, export, pad_s=pad)
                _console().print(f"wrote {len(files)} WAV files and segments.csv to {export}")
        finally:
            store.close()

    @app.command()
    def prototypes(
        recluster: Annotated[bool, typer.Option("--recluster", help="Cluster all segments again (replaces cluster prototypes, keeps named ones) and relabel.")] = False,
        n_clusters: Annotated[Optional[int], typer.Option(min=1, help="Number of clusters.")] = None,
        distance_threshold: Annotated[Optional[float], typer.Option(min=0.0, max=2.0, help="Cosine distance at which merging stops (default 0.4).")] = None,
        label_threshold: Annotated[Optional[float], typer.Option(help="Cosine below which a segment is labelled 'unknown'.")] = None,
        knn: Annotated[Optional[int], typer.Option(min=1, help="Refine labels by a vote of each segment's K nearest segments.")] = None,
        max_agglomerative: Annotated[int, typer.Option(min=2, help="Above this many segments use FAISS k-means.")] = 20000,
        relabel: Annotated[bool, typer.Option("--relabel", help="Relabel segments with the current prototypes (no reclustering).")] = False,
        store_dir: StoreDir = None,
        database_url: DatabaseUrl = None,
    ) -> None:
        """List prototypes; with --recluster, cluster the archive's segments into new ones first."""
        from retrieval.prototypes import label_segments, list_prototypes
        from retrieval.prototypes import recluster as run_recluster

        settings = _settings(store_dir=store_dir, database_url=database_url, label_threshold=label_threshold)
        if (n_clusters is not None or distance_threshold is not None) and not recluster:
            raise ConfigError("--n-clusters/--distance-threshold only apply with --recluster", "add --recluster")
        store = _open(settings, readonly=not (recluster or relabel))
        try:
            if recluster:
                infos = run_recluster(store, n_clusters=n_clusters, distance_threshold=distance_threshold,
                                      max_agglomerative=max_agglomerative, knn=knn)
                _console().print(f"{len(infos)} clusters; segments relabelled (threshold {settings.label_threshold})")
            elif relabel:
                n = label_segments(store, threshold=settings.label_threshold, knn=knn)
                _console().print(f"{n} segments labelled with a prototype (threshold {settings.label_threshold})")
            _print_prototypes(list_prototypes(store), "prototypes")
        finally:
            store.close()

    proto_app = typer.Typer(help="Named prototypes: degradations you enroll from example clips.", no_args_is_help=True)
    app.add_typer(proto_app, name="prototype")

    @proto_app.command("add")
    def prototype_add(
        name: Annotated[str, typer.Argument(help="Name, e.g. gsm-codec.")],
        clips: Annotated[list[Path], typer.Argument(help="Example clips of the degradation.")],
        whole: Whole = False,
        store_dir: StoreDir = None,
        database_url: DatabaseUrl = None,
        model: ModelOpt = None,
    ) -> None:
        """Enroll NAME from example clips and relabel the archive."""
        from indexer.pipeline import load_store_model
        from retrieval.prototypes import add_named_prototype

        settings = _settings(store_dir=store_dir, database_url=database_url, model=model)
        frame_model = load_store_model(settings)
        store = _open(settings, readonly=False)
        try:
            info = add_named_prototype(store, frame_model, name, [str(c) for c in clips], whole=whole)
            _print_prototypes([info], f"enrolled {info.name!r} from {len(clips)} clip(s)")
        finally:
            store.close()

    @proto_app.command("remove")
    def prototype_remove(
        name: Annotated[str, typer.Argument(help="Named prototype to delete.")],
        store_dir: StoreDir = None,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Delete a named prototype and relabel the archive without it."""
        from indexer.errors import NotFoundError
        from retrieval.prototypes import delete_prototype, label_segments

        settings = _settings(store_dir=store_dir, database_url=database_url)
        store = _open(settings, readonly=False)
        try:
            if delete_prototype(store, name) == 0:
                raise NotFoundError(f"no named prototype {name!r}", "list them with `degsearch prototypes`")
            label_segments(store, threshold=settings.label_threshold)
            _console().print(f"removed {name!r}; segments relabelled")
        finally:
            store.close()

    @app.command()
    def stats(
        format: Annotated[str, typer.Option("--format", help="table | csv | json | parquet.")] = "table",
        by: Annotated[Optional[str], typer.Option(help="Break down by channel, day, month, indexed_day or a recording attribute.")] = None,
        group: Annotated[str, typer.Option(help="Group segments by label or by nearest cluster.")] = "label",
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write csv/json/parquet here (csv/json print to stdout without it).")] = None,
        plot: Annotated[Optional[Path], typer.Option(help="Also write a PNG: degraded seconds and MOS per group.")] = None,
        map_png: Annotated[Optional[Path], typer.Option("--map", help="Also write a PNG t-SNE map of segment embeddings by cluster.")] = None,
        store_dir: StoreDir = None,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Degradation statistics per label or cluster: segments, degraded time, share, recordings, MOS."""
        from retrieval.stats import compute_stats, export_stats, plot_map, plot_stats

        fmt = format.lower()
        if fmt not in ("table", "csv", "json", "parquet"):
            raise ConfigError(f"unknown --format {format!r}", "use table, csv, json or parquet")
        if fmt == "parquet" and output is None:
            raise ConfigError("parquet is binary and needs a file", "add --output stats.parquet")
        settings = _settings(store_dir=store_dir, database_url=database_url)
        store = _open(settings, readonly=True)
        try:
            df = compute_stats(store, by=by, group=group)
            if fmt == "table":
                _print_stats(df, by, group)
                if output is not None:
                    export_stats(df, output)
            elif output is not None:
                export_stats(df, output, fmt)
                _console().print(f"wrote {len(df)} rows to {output}")
            elif fmt == "csv":
                typer.echo(df.to_csv(index=False), nl=False)
            else:
                typer.echo(json.dumps(json.loads(df.to_json(orient="records")), indent=1))
            if plot is not None:
                plot_stats(store, plot, group=group)
                _console().print(f"wrote {plot}")
            if map_png is not None:
                plot_map(store, map_png)
                _console().print(f"wrote {map_png}")
        finally:
            store.close()

    @app.command("export-segments")
    def export_segments_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the WAV files and segments.csv.")],
        clips: Clips = None,
        segment: Annotated[Optional[list[int]], typer.Option("--segment", help="Export this segment id (repeatable).")] = None,
        label: Annotated[Optional[str], typer.Option("--label", help="Export segments labelled this (worst MOS first), or filter a search by it.")] = None,
        like_segment: LikeSegment = None,
        prototype: ProtoQuery = None,
        k: K = 10,
        whole: Whole = False,
        path: PathGlob = None,
        attr: Attr = None,
        channel: Channel = None,
        mos_max: MosMax = None,
        pad: Annotated[float, typer.Option(min=0, help="Seconds of context before and after each segment.")] = 0.5,
        store_dir: StoreDir = None,
        database_url: DatabaseUrl = None,
        model: ModelOpt = None,
    ) -> None:
        """Cut segments to WAV files for listening: given ids, a label, or the hits of a search."""
        from retrieval.export import export_segments, hits_for_ids, hits_for_label
        from retrieval.search import search as run_search

        settings = _settings(store_dir=store_dir, database_url=database_url, model=model)
        is_search = bool(clips) or like_segment is not None or prototype is not None
        if sum([bool(segment), is_search, label is not None and not is_search]) != 1:
            raise ConfigError("say what to export: --segment IDs, --label NAME, or a query (CLIP, --like-segment, --prototype)",
                              "e.g. degsearch export-segments --label cluster-00 -k 20 --out listen/")
        store = _open(settings, readonly=True)
        try:
            if segment:
                hits = hits_for_ids(store, segment)
            elif is_search:
                query = _query(store, settings, clips, like_segment, prototype, whole)
                filters = _filters(path_glob=path, attributes=_parse_attrs(attr), channel=channel, mos_max=mos_max, label=label)
                hits = run_search(store, query, k, filters)
            else:
                hits = hits_for_label(store, str(label), limit=k)
            files = export_segments(store, hits, out, pad_s=pad)
            _console().print(f"wrote {len(files)} WAV files and segments.csv to {out}")
        finally:
            store.close()


def _print_stats(df: Any, by: str | None, group: str) -> None:
    from rich.table import Table

    totals = df.attrs.get("totals", {})
    caption = (f"{totals.get('recordings', 0)} recordings, {totals.get('analysed_s', 0.0) / 60:.1f} min analysed, "
               f"{totals.get('segments', 0)} segments, {totals.get('degraded_s', 0.0) / 60:.1f} min degraded")
    table = Table(title=f"degradations per {group}" + (f" by {by}" if by else ""), caption=caption, title_justify="left")
    cols = ([by] if by else []) + [group, "segments", "degraded s", "share", "recordings", "MOS", "p10", "p50", "p90"]
    for col in cols:
        table.add_column(col, justify="left" if col in (by, group) else "right", no_wrap=True)
    for row in df.to_dict(orient="records"):
        share = row["share"]
        cells = ([str(row[by])] if by else []) + [
            str(row[group]), str(row["segments"]), f"{row['degraded_s']:.1f}", f"{100 * share:.2f}%" if share == share else "-",
            str(row["recordings"]), _fmt(row["mean_mos"]), _fmt(row["p10_mos"]), _fmt(row["p50_mos"]), _fmt(row["p90_mos"]),
        ]
        table.add_row(*cells)
    _console().print(table)
