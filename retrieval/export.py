"""Cut found segments out of their recordings into WAV files, for listening.

Each file holds one segment's channel with ``pad_s`` seconds of context on both sides (clipped at
the recording's ends), at the recording's own sample rate. ``segments.csv`` next to them lists
what each file is (rank, segment, recording, times within the file and the recording).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from indexer.errors import AudioDecodeError, ConfigError, NotFoundError
from retrieval.models import Recording, Segment
from retrieval.search import SearchHit, hydrate_hits

if TYPE_CHECKING:
    from retrieval.store import Store

MANIFEST = "segments.csv"


def hits_for_label(store: Store, label: str, limit: int | None = None) -> list[SearchHit]:
    """Segments labelled ``label``, lowest MOS first (the worst examples first); ``similarity`` is
    the label score."""
    stmt = (select(Segment.id, Segment.label_score).join(Recording, Recording.id == Segment.recording_id)
            .where(Recording.status == "done", Segment.label == label).order_by(Segment.mos, Segment.id))
    if limit is not None:
        stmt = stmt.limit(int(limit))
    with store.session() as session:
        rows = session.execute(stmt).all()
    if not rows:
        raise NotFoundError(f"no segment is labelled {label!r}", "see `degsearch stats` for the labels in use")
    return hydrate_hits(store, [r[0] for r in rows], [np.nan if r[1] is None else r[1] for r in rows])


def hits_for_ids(store: Store, segment_ids: Sequence[int]) -> list[SearchHit]:
    """Hits for explicit segment ids, in the given order (similarity NaN)."""
    hits = hydrate_hits(store, segment_ids, [np.nan] * len(segment_ids))
    missing = sorted(set(int(i) for i in segment_ids) - {h.segment_id for h in hits})
    if missing:
        raise NotFoundError(f"no segment with id(s) {missing[:10]}", "take ids from `degsearch search` output")
    return hits


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_")[:60] or "rec"


def export_segments(store: Store, hits: Sequence[SearchHit], out_dir: str | Path, pad_s: float = 0.5) -> list[Path]:
    """Write one WAV per hit into ``out_dir`` (created), plus ``segments.csv``; returns the WAV paths.

    Files are named ``RANK_segID_RECORDING_chC_START.wav``. A recording that can no longer be
    decoded raises :class:`AudioDecodeError` naming the file.
    """
    import soundfile as sf

    from indexer.audio import load_audio

    if pad_s < 0:
        raise ConfigError(f"padding must be >= 0 s (got {pad_s})", "use e.g. --pad 0.5")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec_ids = sorted({h.recording_id for h in hits})
    with store.session() as session:
        rates = dict(session.execute(select(Recording.id, Recording.sample_rate).where(Recording.id.in_(rec_ids))).all()) if rec_ids else {}
    written: list[Path] = []
    manifest_rows = []
    width = max(3, len(str(len(hits))))
    for rank, hit in enumerate(hits, start=1):
        sr = int(rates.get(hit.recording_id) or 16000)
        offset = max(0.0, hit.start_s - pad_s)
        duration = (hit.end_s + pad_s) - offset
        audio = load_audio(hit.path, target_sr=sr, offset=offset, duration=duration)
        samples = np.asarray(audio.samples)
        if hit.channel >= samples.shape[0]:
            raise AudioDecodeError(hit.path, f"has {samples.shape[0]} channel(s) but segment {hit.segment_id} is on channel {hit.channel}",
                                   "the file changed since indexing: re-index it")
        name = f"{rank:0{width}d}_seg{hit.segment_id}_{_safe(Path(hit.path).stem)}_ch{hit.channel}_{hit.start_s:.2f}s.wav"
        target = out / name
        sf.write(str(target), samples[hit.channel], int(audio.sr), subtype="PCM_16")
        written.append(target)
        manifest_rows.append({
            "file": name, "rank": rank, "segment_id": hit.segment_id, "recording_id": hit.recording_id, "path": hit.path,
            "channel": hit.channel, "start_s": round(hit.start_s, 3), "end_s": round(hit.end_s, 3),
            "segment_start_in_file_s": round(hit.start_s - offset, 3), "segment_end_in_file_s": round(hit.end_s - offset, 3),
            "similarity": None if hit.similarity is None or not np.isfinite(hit.similarity) else round(hit.similarity, 4),
            "mos": None if hit.mos is None else round(hit.mos, 3), "label": hit.label,
        })
    with open(out / MANIFEST, "w", newline="", encoding="utf-8") as fh:
        fields = list(manifest_rows[0]) if manifest_rows else ["file", "rank", "segment_id", "path"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(manifest_rows)
    return written
