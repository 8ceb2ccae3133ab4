"""Store maintenance: `degsearch db upgrade`, `degsearch db check`, `degsearch db rebuild-index`.

Also the store options every command shares, for other command modules to import::

    from api.commands.db import StoreDirOpt, DatabaseUrlOpt, FaissFactoryOpt, open_store_from_flags, settings_from_flags
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from indexer.errors import ConfigError

if TYPE_CHECKING:
    from indexer.settings import Settings
    from retrieval.store import Store, StoreReport

# --- shared store options ----------------------------------------------------------------------

StoreDirOpt = Annotated[Optional[Path], typer.Option("--store-dir", help="Store directory (database + FAISS index). Env: DEGSEARCH_STORE_DIR.")]
DatabaseUrlOpt = Annotated[Optional[str], typer.Option("--database-url", help="SQLAlchemy URL instead of the SQLite file in --store-dir (PostgreSQL works). Env: DEGSEARCH_DATABASE_URL.")]
FaissFactoryOpt = Annotated[Optional[str], typer.Option("--faiss-factory", help="FAISS index factory: Flat (exact, default), HNSW32, IVF1024,PQ16 ... Env: DEGSEARCH_FAISS_FACTORY.")]


def settings_from_flags(store_dir: Path | None = None, database_url: str | None = None, faiss_factory: str | None = None,
                        **overrides: Any) -> Settings:
    """``get_settings`` with the store flags (and any other overrides) on top; invalid values -> ConfigError."""
    from pydantic import ValidationError

    from indexer.settings import get_settings

    try:
        return get_settings(store_dir=store_dir, database_url=database_url, faiss_factory=faiss_factory, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        raise ConfigError(f"invalid setting {where}: {first.get('msg')}", "fix the flag or the DEGSEARCH_* variable") from exc


def open_store_from_flags(store_dir: Path | None = None, database_url: str | None = None, faiss_factory: str | None = None,
                          *, readonly: bool = False, **overrides: Any) -> Store:
    """Open the store the flags point at (writers take the store lock; ``readonly`` never writes)."""
    from retrieval.store import Store

    return Store.open(settings_from_flags(store_dir, database_url, faiss_factory, **overrides), readonly=readonly)


def print_report(report: StoreReport, console: Any = None) -> None:
    """Render a :class:`retrieval.store.StoreReport` as a Rich table plus its problems."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="degsearch store", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    rows = [
        ("store dir", report.store_dir),
        ("database", report.database_url),
        ("schema revision", f"{report.db_revision} (head {report.head_revision})"),
        ("recordings", f"{report.recordings} ({report.failed_recordings} failed)"),
        ("segments", str(report.segments)),
        ("segment vectors", f"{report.vectors} (dim {', '.join(map(str, report.dims)) or '-'})"),
        ("FAISS file", report.faiss_file),
        ("FAISS file status", report.faiss_file_status),
        ("FAISS file vectors", "-" if report.faiss_file_count is None else str(report.faiss_file_count)),
        ("generation", f"{report.generation} (file {report.faiss_file_generation if report.faiss_file_generation is not None else '-'})"),
        ("FAISS in memory", str(report.faiss_count)),
        ("index factory", report.factory),
        ("consistent", "[green]yes[/]" if report.consistent else "[red]no[/]"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}", highlight=False)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``db`` sub-app (upgrade, check, rebuild-index) to the CLI."""
    db = typer.Typer(help="Store maintenance: schema upgrade, consistency check, FAISS rebuild.", no_args_is_help=True)
    app.add_typer(db, name="db")

    @db.command("upgrade")
    def upgrade(store_dir: StoreDirOpt = None, database_url: DatabaseUrlOpt = None) -> None:
        """Create or migrate the database to the newest schema (stores also do this on first open)."""
        from rich.console import Console

        from retrieval.store import upgrade_database

        settings = settings_from_flags(store_dir, database_url)
        revision = upgrade_database(settings)
        Console().print(f"database at schema revision {revision}: {settings.store_dir}", highlight=False)

    @db.command("check")
    def check(
        store_dir: StoreDirOpt = None,
        database_url: DatabaseUrlOpt = None,
        faiss_factory: FaissFactoryOpt = None,
        repair: Annotated[bool, typer.Option("--repair", help="Fix what can be fixed (sync/rebuild the FAISS file) as the writer.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Compare database, FAISS file and index; exit 1 when they disagree. Without --repair nothing is modified."""
        import json

        from rich.console import Console

        store = open_store_from_flags(store_dir, database_url, faiss_factory, readonly=not repair)
        try:
            report = store.check()
            if repair and not report.consistent:
                store.rebuild_index()
                report = store.check()
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=1))
        else:
            print_report(report, Console())
        if not report.consistent:
            raise typer.Exit(1)

    @db.command("rebuild-index")
    def rebuild_index(store_dir: StoreDirOpt = None, database_url: DatabaseUrlOpt = None,
                      faiss_factory: FaissFactoryOpt = None) -> None:
        """Rebuild the FAISS index from the database's segment vectors (e.g. with a new --faiss-factory)."""
        import time

        from rich.console import Console

        start = time.perf_counter()
        store = open_store_from_flags(store_dir, database_url, faiss_factory)
        try:
            count = store.rebuild_index()
            kind = store.check().factory
        finally:
            store.close()
        Console().print(f"rebuilt FAISS index: {count} vectors, {kind}, {time.perf_counter() - start:.1f} s", highlight=False)
