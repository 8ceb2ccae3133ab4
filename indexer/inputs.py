"""What to index: folders, files, glob patterns and CSV/JSONL manifests -> one task per audio file."""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.audio import AUDIO_EXTENSIONS
from indexer.errors import ConfigError


MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl", ".ndjson"})


@dataclass
class FileTask:
    """One file to index: its absolute path, the manifest attributes, and its stored state."""

    path: str
    attributes: dict[str, Any] = field(default_factory=dict)
    state: tuple[str | None, str | None, str] | None = None  # (content_hash, model_id, status)
    size: int = 0
    stale: bool = False  # detected against another clean enrollment than it would get now: detect again


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _scan_dir(root: Path) -> list[Path]:
    found = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir()]
    return sorted(found)


def _read_manifest(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Rows of a CSV/JSONL manifest: (file path resolved against the manifest's folder, attributes)."""
    rows: list[dict[str, Any]] = []
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or "path" not in reader.fieldnames:
                    raise ConfigError(f"manifest {path} has no 'path' column (columns: {reader.fieldnames})",
                                      "add a header row with a 'path' column; other columns become attributes")
                rows = [dict(r) for r in reader]
        else:
            with path.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"manifest {path} line {i} is not JSON: {exc.msg}", "write one JSON object per line") from exc
                    if not isinstance(row, dict) or "path" not in row:
                        raise ConfigError(f"manifest {path} line {i} has no 'path' field", 'write objects like {"path": "a.wav", ...}')
                    rows.append(row)
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc.strerror or exc}", "check the manifest path and permissions") from exc
    out = []
    for row in rows:
        rel = str(row.pop("path") or "").strip()
        if not rel:
            raise ConfigError(f"manifest {path} has a row with an empty path", "fill in or remove that row")
        attrs = {str(k): v for k, v in row.items() if k is not None and v not in (None, "")}
        out.append(((path.parent / rel), attrs))
    return out


def resolve_inputs(inputs: Sequence[str | Path]) -> list[FileTask]:
    """Expand directories (recursive, audio extensions), globs and manifests into unique file tasks.

    A plain file is indexed whatever its extension (a mislabelled file is decoded by content).
    A later occurrence of a path adds its manifest attributes to the earlier one.
    """
    tasks: dict[str, FileTask] = {}

    def add(p: Path, attrs: dict[str, Any] | None = None) -> None:
        key = str(Path(os.path.abspath(p)))
        if key in tasks:
            tasks[key].attributes.update(attrs or {})
        else:
            tasks[key] = FileTask(path=key, attributes=dict(attrs or {}))

    for item in inputs:
        text = str(item)
        p = Path(text).expanduser()
        if p.is_dir():
            for f in _scan_dir(p):
                add(f)
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            for f, attrs in _read_manifest(p):
                add(f, attrs)
        elif p.exists():
            add(p)
        elif _has_glob(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = [m for m in matches if m.is_file()]
            for m in matches:
                if m.is_dir():
                    files.extend(_scan_dir(m))
            if not files:
                raise ConfigError(f"the pattern {text!r} matches no files", "check the pattern; quote it so the shell does not expand it")
            for f in files:
                add(f)
        else:
            raise ConfigError(f"input {text!r} does not exist", "pass folders, files, glob patterns or CSV/JSONL manifests")
    for task in tasks.values():
        try:
            task.size = os.stat(task.path).st_size
        except OSError:
            task.size = 0
    return list(tasks.values())
