"""`degsearch serve`: run the HTTP API and web page with uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from indexer.settings import MODEL_CHOICES


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the CLI."""

    @app.command()
    def serve(
        host: Annotated[Optional[str], typer.Option(help="Interface to bind (default 127.0.0.1: loopback only).")] = None,
        port: Annotated[Optional[int], typer.Option(help="TCP port (default 8000).")] = None,
        store_dir: Annotated[Optional[Path], typer.Option(help="Store directory (database + FAISS index).")] = None,
        database_url: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL instead of the SQLite file in --store-dir.")] = None,
        model: Annotated[Optional[str], typer.Option(help=f"Model for clip queries: {MODEL_CHOICES}.")] = None,
        api_key: Annotated[Optional[list[str]], typer.Option(help="Accepted X-API-Key value (repeatable); none: no auth.")] = None,
        require_key_for_reads: Annotated[Optional[bool], typer.Option("--require-key-for-reads/--open-reads", help="Also require a key for reads.")] = None,
        cors_origin: Annotated[Optional[list[str]], typer.Option(help="Allowed CORS origin (repeatable); none: CORS off.")] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
        threads: Annotated[int, typer.Option(min=1, help="Compute threads per request (FAISS/torch); concurrency comes from parallel requests.")] = 1,
    ) -> None:
        """Serve the query API and the web page (http://HOST:PORT/)."""
        import uvicorn
        from rich.console import Console

        from api.app import create_app, set_compute_threads
        from indexer.settings import get_settings

        settings = get_settings(
            host=host,
            port=port,
            store_dir=store_dir,
            database_url=database_url,
            model=model,
            api_keys=api_key or None,
            require_key_for_reads=require_key_for_reads,
            cors_origins=cors_origin or None,
        )
        set_compute_threads(threads)
        Console(stderr=True).print(f"degsearch API on http://{settings.host}:{settings.port}/ (store: {settings.store_dir})")
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)
