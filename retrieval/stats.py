"""Degradation statistics: aggregates per label (or cluster), breakdowns, exports and plots.

One row of :func:`compute_stats` describes one degradation group (a segment ``label``, or the
nearest ``cluster`` prototype) within one breakdown value (``by``: any recording attribute from
the manifest, ``channel``, ``day``/``month``, ``indexed_day``/``indexed_month``):

* ``segments``, ``degraded_s`` (seconds inside segments), ``recordings`` (recordings affected),
* ``analysed_s``: the denominator, the audio analysed in that breakdown value (sum of
  ``recordings.analysed_s``, which counts every channel; per channel it is ``analysed_s /
  channels``), and ``share = degraded_s / analysed_s``,
* ``mean_mos``, ``p10_mos``, ``p50_mos``, ``p90_mos`` over the group's segments (segment MOS is
  the mean MOS of its frames; each segment counts once).

A breakdown value whose recordings have no segment still gets one row (group
:data:`NO_SEGMENTS`, zero segments), so ``degraded_s`` sums to the indexed degraded time and the
distinct ``analysed_s`` values sum to the indexed analysed time. ``df.attrs['totals']`` holds the
store-wide totals.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from indexer.errors import ConfigError, StoreError
from retrieval.models import Recording, Segment

if TYPE_CHECKING:
    from retrieval.store import Store

GROUPS = ("label", "cluster")
FORMATS = ("csv", "json", "parquet")
NO_SEGMENTS = "(no segments)"
MISSING = "(missing)"
# Recording attributes read as the recording's date for by='day'/'month' (else indexed_at).
DATE_ATTRIBUTES = ("date", "recorded_at", "timestamp", "datetime", "start_time", "call_date")
STAT_COLUMNS = ["segments", "degraded_s", "analysed_s", "share", "recordings", "mean_mos", "p10_mos", "p50_mos", "p90_mos"]


def _load(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(recordings, segments) of done recordings as DataFrames."""
    with store.session() as session:
        recs = session.execute(
            select(Recording.id, Recording.path, Recording.attributes, Recording.channels, Recording.analysed_s,
                   Recording.degraded_s, Recording.indexed_at).where(Recording.status == "done")).all()
        segs = session.execute(
            select(Segment.id, Segment.recording_id, Segment.channel, Segment.start_s, Segment.end_s, Segment.mos, Segment.label)
            .join(Recording, Recording.id == Segment.recording_id).where(Recording.status == "done")).all()
    recordings = pd.DataFrame(recs, columns=["id", "path", "attributes", "channels", "analysed_s", "degraded_s", "indexed_at"])
    segments = pd.DataFrame(segs, columns=["id", "recording_id", "channel", "start_s", "end_s", "mos", "label"])
    recordings["analysed_s"] = recordings["analysed_s"].fillna(0.0).astype(float)
    recordings["channels"] = recordings["channels"].fillna(1).astype(int).clip(lower=1)
    segments["duration_s"] = (segments["end_s"] - segments["start_s"]).astype(float)
    segments["mos"] = pd.to_numeric(segments["mos"], errors="coerce")
    return recordings, segments


def _as_date(value: Any) -> date | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo is None else value.astimezone(timezone.utc)).date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).date()
        except ValueError:
            return None
    return None


def _recording_keys(recordings: pd.DataFrame, by: str) -> pd.Series:
    """The breakdown value of each recording (strings), for any ``by`` except ``channel``."""
    attrs = recordings["attributes"].map(lambda a: a or {})
    has_attr = attrs.map(lambda a: by in a)
    if has_attr.any():
        return attrs.map(lambda a: MISSING if a.get(by) is None else str(a.get(by)))
    if by in ("day", "month", "indexed_day", "indexed_month"):
        date_key = next((k for k in DATE_ATTRIBUTES if attrs.map(lambda a, k=k: k in a).any()), None)
        if by.startswith("indexed_") or date_key is None:
            dates = recordings["indexed_at"].map(_as_date)
        else:
            dates = attrs.map(lambda a: _as_date(a.get(date_key)))
        fmt = "%Y-%m-%d" if by.endswith("day") else "%Y-%m"
        return dates.map(lambda d: MISSING if d is None else d.strftime(fmt))
    known = sorted({k for a in attrs for k in a})
    raise ConfigError(f"no recording has an attribute {by!r}",
                      f"use channel, day, month, indexed_day, indexed_month or an attribute: {', '.join(known) or 'none stored'}")


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan


def compute_stats(store: Store, *, by: str | None = None, group: str = "label") -> pd.DataFrame:
    """Per-group degradation statistics, optionally broken down ``by`` a recording attribute,
    ``channel`` or a date (see the module docstring for columns and denominators)."""
    if group not in GROUPS:
        raise ConfigError(f"unknown group {group!r}", f"use one of {', '.join(GROUPS)}")
    recordings, segments = _load(store)
    if group == "cluster" and len(segments):
        from retrieval.prototypes import cluster_assignments

        ids, names = cluster_assignments(store, segments["id"].to_numpy())
        segments["cluster"] = pd.Series(names, index=ids).reindex(segments["id"]).to_numpy()
    segments[group] = segments[group].fillna("unknown").astype(str)

    # Denominators: analysed seconds per breakdown value.
    if by is None:
        segments["_key"] = ""
        denominators = pd.Series({"": float(recordings["analysed_s"].sum())})
    elif by == "channel":
        segments["_key"] = segments["channel"].astype(int).astype(str)
        per_channel: dict[str, float] = {}
        for n_ch, analysed in zip(recordings["channels"], recordings["analysed_s"]):
            for c in range(int(n_ch)):
                per_channel[str(c)] = per_channel.get(str(c), 0.0) + float(analysed) / int(n_ch)
        denominators = pd.Series(per_channel, dtype=float)
    else:
        keys = _recording_keys(recordings, by) if len(recordings) else pd.Series(dtype=str)
        recordings["_key"] = keys.to_numpy() if len(recordings) else []
        segments["_key"] = segments["recording_id"].map(dict(zip(recordings["id"], recordings["_key"])))
        denominators = recordings.groupby("_key")["analysed_s"].sum()

    rows: list[dict[str, Any]] = []
    for (key, name), part in segments.groupby(["_key", group], sort=False):
        mos = part["mos"].dropna().to_numpy(dtype=float)
        analysed = float(denominators.get(key, 0.0))
        degraded = float(part["duration_s"].sum())
        rows.append({"_key": key, group: name, "segments": int(len(part)), "degraded_s": degraded, "analysed_s": analysed,
                     "share": degraded / analysed if analysed > 0 else math.nan,
                     "recordings": int(part["recording_id"].nunique()),
                     "mean_mos": float(mos.mean()) if mos.size else math.nan, "p10_mos": _percentile(mos, 10),
                     "p50_mos": _percentile(mos, 50), "p90_mos": _percentile(mos, 90)})
    seen = set(segments["_key"].unique()) if len(segments) else set()
    for key, analysed in denominators.items():
        if key not in seen:
            rows.append({"_key": key, group: NO_SEGMENTS, "segments": 0, "degraded_s": 0.0, "analysed_s": float(analysed),
                         "share": 0.0 if analysed > 0 else math.nan, "recordings": 0, "mean_mos": math.nan,
                         "p10_mos": math.nan, "p50_mos": math.nan, "p90_mos": math.nan})
    df = pd.DataFrame(rows, columns=["_key", group, *STAT_COLUMNS])
    df = df.sort_values(["_key", "degraded_s", group], ascending=[True, False, True], kind="stable").reset_index(drop=True)
    df = df.rename(columns={"_key": by}) if by is not None else df.drop(columns="_key")
    df = df.astype({"segments": "int64", "recordings": "int64"})
    df.attrs["totals"] = {
        "recordings": int(len(recordings)), "segments": int(len(segments)),
        "analysed_s": float(recordings["analysed_s"].sum()), "degraded_s": float(segments["duration_s"].sum()),
    }
    return df


def export_stats(df: pd.DataFrame, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``df`` as CSV, JSON (a list of records; NaN as null) or Parquet (pyarrow).

    ``fmt`` defaults to the file suffix. Returns the path written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)} (or a file ending in one)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "json":
        records = json.loads(df.to_json(orient="records", date_format="iso"))
        path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        totals = df.attrs.get("totals")
        if totals:  # keep the store totals next to the rows
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"degsearch.totals": json.dumps(totals).encode()})
        pq.write_table(table, path)
    return path


# --- plots -----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: str | Path) -> Path:  # noqa: ANN001 - a matplotlib figure
    """Write ``fig`` to ``path`` (parent folders made), close it and return the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_stats(store: Store, path: str | Path, *, group: str = "label", max_groups: int = 20) -> Path:
    """PNG: degraded seconds per group (bars, with the share of analysed audio) and the MOS
    distribution of each group's segments (box plots). The ``max_groups`` largest groups are shown."""
    df = compute_stats(store, group=group)
    df = df[df[group] != NO_SEGMENTS].head(max_groups)
    if df.empty:
        raise StoreError("no segments to plot", "index some audio first (`degsearch index AUDIO...`)")
    _, segments = _load(store)
    if group == "cluster":
        from retrieval.prototypes import cluster_assignments

        ids, names = cluster_assignments(store, segments["id"].to_numpy())
        segments["cluster"] = pd.Series(names, index=ids).reindex(segments["id"]).to_numpy()
    names = df[group].tolist()
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(names) + 4), 4.8))
    bars = ax1.bar(range(len(names)), df["degraded_s"], color="#c0504d")
    for bar, share in zip(bars, df["share"]):
        ax1.annotate(f"{100 * share:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                     ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax1.set_ylabel("degraded seconds")
    ax1.set_title(f"Degraded audio per {group} (% of analysed)")
    mos = [segments.loc[segments[group] == n, "mos"].dropna().to_numpy() for n in names]
    ax2.boxplot([m if m.size else np.array([np.nan]) for m in mos], showfliers=False)
    ax2.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right")
    ax2.set_ylabel("segment MOS")
    ax2.set_title(f"MOS per {group}")
    return _save_png(fig, path)


def plot_map(store: Store, path: str | Path, *, max_points: int = 3000, seed: int = 0) -> Path:
    """PNG: a 2-D t-SNE map of (up to ``max_points`` randomly chosen) segment embeddings,
    coloured by nearest cluster prototype, or by label when no clusters exist."""
    from sklearn.manifold import TSNE

    from retrieval.prototypes import cluster_assignments

    ids, vectors = store.segment_vectors(None)
    if len(ids) < 3:
        raise StoreError(f"a map needs at least 3 segments (the store has {len(ids)})", "index more audio first")
    rng = np.random.default_rng(seed)
    if len(ids) > max_points:
        pick = np.sort(rng.choice(len(ids), size=max_points, replace=False))
        ids, vectors = ids[pick], vectors[pick]
    seg_ids, names = cluster_assignments(store, ids)
    colour_of = dict(zip(seg_ids.tolist(), names))
    title = "segment embeddings (t-SNE), coloured by cluster"
    if all(n == "unknown" for n in names):
        _, segments = _load(store)
        colour_of = dict(zip(segments["id"].tolist(), segments["label"].fillna("unknown").tolist()))
        title = "segment embeddings (t-SNE), coloured by label"
    colours = [colour_of.get(int(i), "unknown") for i in ids]
    xy = TSNE(n_components=2, metric="cosine", init="pca", perplexity=min(30.0, (len(ids) - 1) / 3),
              max_iter=500, random_state=seed).fit_transform(vectors)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    names = sorted(set(colours))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")  # tab20 pairs look alike; avoid when few
    for j, name in enumerate(names):
        mask = np.array([c == name for c in colours])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=cmap(j % cmap.N), label=f"{name} ({mask.sum()})")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save_png(fig, path)
