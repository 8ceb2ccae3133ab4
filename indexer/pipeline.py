"""The batch indexer: an audio archive in, degraded segments in the store out.

Flow per file (:func:`process_file`, run in worker processes or in-process):
hash -> skip if (hash, model id) are unchanged, the file is done and was detected against the
clean enrollment it would get now (:func:`enrollment_key`) -> stream-decode in chunks
(16 kHz, every channel) -> frame model in batches -> streaming detection per channel against the
clean enrollment -> nearest-prototype labels -> a :class:`RecordingResult`. The main process is the
single writer: each result is committed by ``Store.write_recording`` in one transaction (its old
segments and vectors replaced), failures by ``Store.record_failure``; the batch always goes on.

Resumability follows from that: an interrupted run has committed whole recordings only, and a
re-run skips them by content hash, so it ends with exactly the segments of one uninterrupted run.

Enrollment: a group's clean enrollment (``degsearch enroll-clean --group agent=alice``) for files
whose manifest attribute matches it, else a store-level one (``degsearch enroll-clean``) if one is
set for the model, else the model's own — ``narrowband`` for sources sampled at <= 8 kHz
(telephone band), ``wideband`` otherwise. Each stored enrollment has its own calibrated threshold.

Failed files stay failed on re-runs while their content is unchanged (they are counted as
skipped and listed); ``retry_failed=True`` (``--retry-failed``) tries them again.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.audio import AUDIO_EXTENSIONS, MIN_DURATION_S, TARGET_SR, AudioStream, content_hash, load_audio
from indexer.detect import SegmentDetector, frame_scores
from indexer.errors import AudioDecodeError, ConfigError, DegsearchError, ModelError, NotFoundError, StoreError
from indexer.records import DetectedSegment, FrameOutput, RecordingFailure, RecordingResult
from indexer.settings import Settings

if TYPE_CHECKING:
    from indexer.model import FrameModel
    from retrieval.store import Store

MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl", ".ndjson"})
# Sources at or below this sample rate use the model's narrowband enrollment.
NARROWBAND_MAX_SR = 8000
STAGES = ("hash", "decode", "resample", "model", "detect", "store")


# --- inputs ------------------------------------------------------------------------------------


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


# --- per-file work -------------------------------------------------------------------------------


CLEAN_ENROLLMENT = "clean"  # the store-level enrollment row's name; a group's is "clean:KEY=VALUE"
MODEL_ENROLLMENT = "model"  # Recording.detected_with of files detected against the model's own enrollment


def enrollment_key(name: str, vector: np.ndarray, threshold: float | None) -> str:
    """What ``Recording.detected_with`` records for a stored clean enrollment: its row name and a
    digest of its vector and calibrated threshold, so setting it from other clips, or removing
    it, makes the files detected against it due again (re-enrolling the same clips does not)."""
    import hashlib

    digest = hashlib.sha1(np.asarray(vector, dtype="<f4").tobytes() + repr(threshold).encode()).hexdigest()[:16]
    return f"{name}#{digest}"


@dataclass(frozen=True)
class EnrollmentGroup:
    """The recordings whose manifest attribute ``key`` equals ``value`` (one agent, one line, one site)."""

    key: str
    value: str

    @classmethod
    def parse(cls, text: str) -> EnrollmentGroup:
        """``"agent=alice"`` -> ``EnrollmentGroup("agent", "alice")``."""
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"group {text!r} is not KEY=VALUE", "name a manifest column and one of its values, e.g. --group agent=alice")
        group = cls(key, value)
        if len(group.name) > 200:  # the enrollments table's name column
            raise ConfigError(f"group {text!r} is too long ({len(group.name)} characters with its prefix)", "use a shorter column value")
        return group

    @property
    def name(self) -> str:
        """The name of this group's row in the store's enrollments table."""
        return f"{CLEAN_ENROLLMENT}:{self.key}={self.value}"

    def matches(self, attributes: dict[str, Any]) -> bool:
        """Whether a file with these manifest ``attributes`` belongs to the group (values compared as text)."""
        return self.key in attributes and str(attributes[self.key]) == self.value


@dataclass
class GroupDetection:
    """A group's clean enrollment, the detection threshold its files are scored with, and when it was
    set (files of the group indexed before then are detected again)."""

    group: EnrollmentGroup
    vector: np.ndarray
    threshold: float
    enrolled_at: Any
    key: str  # enrollment_key of the group's row


@dataclass
class IndexContext:
    """Everything a worker needs besides the model; picklable, sent once per worker."""

    model_ref: str
    model_id: str
    threshold: float
    enrollments: dict[str, np.ndarray]  # 'narrowband' / 'wideband' (a store-level one replaces both)
    prototypes: list[Any]  # retrieval.prototypes.PrototypeInfo of this model
    label_threshold: float
    smooth_frames: int
    bridge_gap_s: float
    min_segment_s: float
    chunk_s: float
    batch_frames: int
    retry_failed: bool = False
    # Group enrollments, sorted by (key, value): a file takes the first whose attribute it matches.
    groups: list[GroupDetection] = field(default_factory=list)
    # enrollment_key of the store-level enrollment (MODEL_ENROLLMENT: none, the model's own is used).
    store_key: str = MODEL_ENROLLMENT

    def group_for(self, attributes: dict[str, Any]) -> GroupDetection | None:
        """The group enrollment a file with these manifest ``attributes`` takes, if any."""
        return next((g for g in self.groups if g.group.matches(attributes)), None)

    def detection_for(self, attributes: dict[str, Any], sample_rate: int) -> tuple[np.ndarray, float]:
        """The (enrollment, threshold) a file with these manifest ``attributes`` is detected against."""
        group = self.group_for(attributes)
        if group is not None:
            return group.vector, group.threshold
        return enrollment_for(self.enrollments, sample_rate), self.threshold

    def detected_with(self, attributes: dict[str, Any]) -> str:
        """The key of the clean enrollment a file with these manifest ``attributes`` is detected against."""
        group = self.group_for(attributes)
        return group.key if group is not None else self.store_key


@dataclass
class FileOutcome:
    """What processing one file gave: ``kind`` is indexed | skipped | failed."""

    kind: str
    path: str
    result: RecordingResult | None = None
    failure: RecordingFailure | None = None
    note: str = ""
    audio_s: float = 0.0  # audio seconds analysed (one channel's duration)
    size: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def enrollment_for(enrollments: dict[str, np.ndarray], sample_rate: int) -> np.ndarray:
    """The enrollment vector for a source sampled at ``sample_rate``."""
    if "store" in enrollments:
        return enrollments["store"]
    key = "narrowband" if sample_rate <= NARROWBAND_MAX_SR else "wideband"
    if key not in enrollments:
        key = next(iter(enrollments))
    return enrollments[key]


def label_detected(segments: list[DetectedSegment], prototypes: list[Any], threshold: float) -> None:
    """Give each segment its nearest prototype's name (same rule as ``retrieval.prototypes.label_segments``:
    a named prototype at >= threshold wins, else the nearest cluster at >= threshold, else 'unknown')."""
    if not segments or not prototypes:
        return
    vectors = np.stack([s.embedding for s in segments]).astype(np.float32)
    usable = [p for p in prototypes if p.vector is not None and p.vector.size == vectors.shape[1]]
    if not usable:
        return
    try:
        from retrieval.prototypes import _nearest_labels
    except ImportError:  # pragma: no cover - retrieval is part of the package
        _nearest_labels = None
    if _nearest_labels is not None:
        labels, scores, _ = _nearest_labels(vectors, usable, threshold)
    else:  # nearest prototype regardless of kind
        sims = vectors @ np.stack([p.vector for p in usable]).T
        best = sims.argmax(axis=1)
        scores = sims[np.arange(len(best)), best]
        labels = [usable[j].name if s >= threshold else "unknown" for j, s in zip(best, scores)]
    for seg, lab, score in zip(segments, labels, scores):
        seg.label = lab
        seg.label_score = float(score) if np.isfinite(score) else None


def _embed_chunk(model: FrameModel, chunk: np.ndarray, batch_frames: int) -> list[FrameOutput]:
    """Frames of every channel of a (C, n) 16 kHz chunk, in model batches of ~``batch_frames`` frames.

    Frame t of a channel covers [t, t+1) hops from the chunk start; the frame count is cut to the
    whole hops the chunk holds so consecutive chunks tile the recording exactly. A final chunk
    shorter than the model's minimum is zero-padded and its frames cut back to the real length.
    """
    hop_samples = TARGET_SR / model.frame_rate
    n = chunk.shape[1]
    want = max(int(n // hop_samples), 1)
    min_n = int(round(MIN_DURATION_S * TARGET_SR))
    signals = [np.pad(ch, (0, max(min_n - n, 0))) for ch in chunk]
    per_batch = max(1, int(batch_frames // max(want, 1)))
    outs: list[FrameOutput] = []
    for a in range(0, len(signals), per_batch):
        outs.extend(model.embed_batch(signals[a:a + per_batch]))
    trimmed = []
    for out in outs:
        if len(out) < want - 1 or len(out) == 0:
            raise ModelError(f"the model returned {len(out)} frames for {n} samples (expected {want})",
                             "the checkpoint's frame rate does not match its encoder; rebuild it")
        emb, mos = out.embeddings[:want], np.asarray(out.mos)[:want]
        if len(emb) < want:  # an encoder that drops a partial last frame: repeat it so chunks still tile
            emb = np.concatenate([emb, np.repeat(emb[-1:], want - len(emb), axis=0)])
            mos = np.concatenate([mos, np.repeat(mos[-1:], want - len(mos))])
        trimmed.append(FrameOutput(embeddings=emb, mos=mos, hop_s=1.0 / model.frame_rate))
    return trimmed


def process_file(ctx: IndexContext, model: FrameModel, task: FileTask) -> FileOutcome:
    """Index one file (no store access): an indexed result, a skip, or a failure with its stage."""
    timings = {s: 0.0 for s in STAGES}
    t0 = time.perf_counter()
    try:
        digest = content_hash(task.path)
    except AudioDecodeError as exc:
        failure = RecordingFailure(path=task.path, stage="decode", error=exc.reason, attributes=task.attributes)
        if task.state is not None and task.state[0] is None and task.state[2] == "failed" and not ctx.retry_failed:
            return FileOutcome("skipped", task.path, note=f"failed before: {exc.reason}", size=task.size)
        return FileOutcome("failed", task.path, failure=failure, size=task.size)
    timings["hash"] = time.perf_counter() - t0
    if task.state is not None:
        old_hash, old_model, status = task.state
        if old_hash == digest and status == "done" and old_model == ctx.model_id and not task.stale:
            return FileOutcome("skipped", task.path, note="unchanged", size=task.size, timings=timings)
        if old_hash == digest and status == "failed" and not ctx.retry_failed:
            return FileOutcome("skipped", task.path, note="failed before (use --retry-failed)", size=task.size, timings=timings)
    stage = "decode"
    try:
        stream = AudioStream(task.path)
        enrollment, threshold = ctx.detection_for(task.attributes, stream.orig_sr)
        hop_s = 1.0 / model.frame_rate
        detectors = [SegmentDetector(enrollment, threshold, channel=c, hop_s=hop_s, smooth_frames=ctx.smooth_frames,
                                     bridge_gap_s=ctx.bridge_gap_s, min_segment_s=ctx.min_segment_s)
                     for c in range(stream.channels)]
        segments: list[DetectedSegment] = []
        n_samples = 0
        for offset, chunk in stream.chunks(ctx.chunk_s, TARGET_SR, timings=timings):
            expected = int(round(offset * TARGET_SR))
            if expected != n_samples:  # chunks must tile the file: frames are placed by count
                raise AudioDecodeError(task.path, f"decoder produced a gap at {offset:.2f} s", "re-export the file")
            n_samples += chunk.shape[1]
            stage = "model"
            t1 = time.perf_counter()
            frames = _embed_chunk(model, chunk, ctx.batch_frames)
            t2 = time.perf_counter()
            timings["model"] += t2 - t1
            for det, fr in zip(detectors, frames):
                segments.extend(det.push(fr))
            timings["detect"] += time.perf_counter() - t2
            stage = "decode"
        duration_s = n_samples / TARGET_SR
        if duration_s < MIN_DURATION_S:
            raise AudioDecodeError(task.path, f"too short ({duration_s * 1000:.0f} ms; at least {MIN_DURATION_S * 1000:.0f} ms is needed)",
                                   "the frame model cannot analyse clips this short; drop or merge them")
        t3 = time.perf_counter()
        for det in detectors:
            segments.extend(det.finish())
        segments.sort(key=lambda s: (s.start_s, s.channel))
        label_detected(segments, ctx.prototypes, ctx.label_threshold)
        timings["detect"] += time.perf_counter() - t3
    except DegsearchError as exc:
        reason = exc.reason if isinstance(exc, AudioDecodeError) else str(exc)
        stage = "decode" if isinstance(exc, AudioDecodeError) else stage
        failure = RecordingFailure(path=task.path, stage=stage, error=reason, content_hash=digest, attributes=task.attributes)
        return FileOutcome("failed", task.path, failure=failure, size=task.size, timings=timings)
    except MemoryError:
        failure = RecordingFailure(path=task.path, stage=stage, error="out of memory", content_hash=digest, attributes=task.attributes)
        return FileOutcome("failed", task.path, failure=failure, size=task.size, timings=timings)
    except Exception as exc:  # a bug or an unexpected library error must not stop the batch
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        failure = RecordingFailure(path=task.path, stage=stage, error=f"unexpected error: {detail}", content_hash=digest,
                                   attributes=task.attributes)
        return FileOutcome("failed", task.path, failure=failure, size=task.size, timings=timings)
    frames_total = sum(d.n_frames for d in detectors)
    mos_total = sum(d.mos_sum for d in detectors)
    result = RecordingResult(
        path=task.path, content_hash=digest, duration_s=duration_s, sample_rate=int(stream.orig_sr), channels=int(stream.channels),
        model_id=ctx.model_id, segments=segments, analysed_s=duration_s * stream.channels,
        degraded_s=float(sum(s.duration_s for s in segments)),
        mean_mos=float(mos_total / frames_total) if frames_total else None, attributes=dict(task.attributes),
        detected_with=ctx.detected_with(task.attributes),
    )
    return FileOutcome("indexed", task.path, result=result, audio_s=duration_s, size=task.size, timings=timings)


# --- worker processes ------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(ctx: IndexContext) -> None:
    """Process-pool initializer: one model per worker, one torch thread each (workers are the parallelism)."""
    import torch

    torch.set_num_threads(1)
    from indexer.model import load_model

    _WORKER["ctx"] = ctx
    _WORKER["model"] = load_model(ctx.model_ref)


def _worker_process(task: FileTask) -> FileOutcome:
    return process_file(_WORKER["ctx"], _WORKER["model"], task)


def _run_local_pool(tasks: list[FileTask], ctx: IndexContext, workers: int) -> Iterator[FileOutcome]:
    """Yield outcomes from a forkserver process pool, at most 2 x workers files in flight.

    If a worker dies (killed, out of memory), the pool is rebuilt and its in-flight files are
    retried once; a file that kills a worker twice is reported failed.
    """
    import multiprocessing as mp

    # forkserver: workers fork from a clean server process that has imported torch and the
    # pipeline once (not from this process, whose torch thread pools are already running).
    mp_ctx = mp.get_context("forkserver")
    # librosa.filters: the log-mel basis needs it on the first embed and it takes seconds to import.
    mp_ctx.set_forkserver_preload(["torch", "librosa.filters", "indexer.model", "indexer.pipeline"])
    pending = list(reversed(tasks))
    attempts: dict[str, int] = {}
    while pending:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp_ctx, initializer=_init_worker, initargs=(ctx,))
        inflight: dict[Future, FileTask] = {}
        broken = False
        try:
            while pending or inflight:
                while pending and len(inflight) < 2 * workers and not broken:
                    task = pending.pop()
                    inflight[pool.submit(_worker_process, task)] = task
                if not inflight:
                    break
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    task = inflight.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool:
                        broken = True
                        attempts[task.path] = attempts.get(task.path, 0) + 1
                        if attempts[task.path] >= 2:
                            yield FileOutcome("failed", task.path, size=task.size, failure=RecordingFailure(
                                path=task.path, stage="model", error="a worker process died on this file twice (out of memory?)",
                                attributes=task.attributes))
                        else:
                            pending.append(task)
                if broken and not inflight:
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# --- the run --------------------------------------------------------------------------------------


@dataclass
class IndexSummary:
    """What an index run did; ``failures`` lists every file that failed in this run."""

    run_id: int | None
    model_id: str
    files_total: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    segments: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    failures: list[RecordingFailure] = field(default_factory=list)
    previously_failed: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    engine: str = "local"
    workers: int = 1
    status: str = "done"

    @property
    def audio_hours(self) -> float:
        return self.audio_s / 3600.0

    @property
    def realtime_factor(self) -> float:
        """Audio seconds indexed per wall-clock second (0 when nothing was indexed)."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


def clean_enrollment(store: Store, model: FrameModel, *, sample_rate: int | None = None) -> np.ndarray:
    """The clean enrollment used for detection: the store-level one set by ``degsearch enroll-clean``
    for this model if any, else the model's (narrowband for sources <= 8 kHz, wideband otherwise)."""
    stored = stored_enrollment(store, model.model_id)
    if stored is not None:
        return stored
    return enrollment_for(dict(model.enrollments), sample_rate or TARGET_SR)


def _clean_enrollment_column(session: Any, column: Any, model_id: str, group: EnrollmentGroup | None = None) -> Any:
    """One column of the store's clean enrollment row for ``model_id`` (``group``'s, or the
    store-level one) — None when there is none."""
    from sqlalchemy import select

    from retrieval.models import Enrollment

    name = group.name if group is not None else CLEAN_ENROLLMENT
    return session.scalar(select(column).where(Enrollment.model_id == model_id, Enrollment.name == name))


def stored_enrollment(store: Store, model_id: str, group: EnrollmentGroup | None = None) -> np.ndarray | None:
    """The store-level (or ``group``'s) clean enrollment vector of ``model_id``, or None."""
    from retrieval.models import Enrollment, bytes_to_vector

    with store.session() as session:
        blob = _clean_enrollment_column(session, Enrollment.vector, model_id, group)
    return None if blob is None else bytes_to_vector(blob)


def group_enrollments(store: Store, model_id: str) -> list[tuple[EnrollmentGroup, np.ndarray, float | None, Any]]:
    """Every group enrollment of ``model_id``: (group, vector, calibrated threshold, created_at),
    sorted by group."""
    from sqlalchemy import select

    from retrieval.models import Enrollment, bytes_to_vector

    with store.session() as session:
        rows = session.execute(select(Enrollment.sources, Enrollment.vector, Enrollment.threshold, Enrollment.created_at)
                               .where(Enrollment.model_id == model_id, Enrollment.name.startswith(f"{CLEAN_ENROLLMENT}:"))).all()
    found = [(EnrollmentGroup(**sources["group"]), bytes_to_vector(blob), threshold, created)
             for sources, blob, threshold, created in rows]
    return sorted(found, key=lambda row: (row[0].key, row[0].value))


@dataclass
class EnrollmentInfo:
    """One stored clean enrollment as `degsearch enrollments` lists it."""

    model_id: str
    scope: str  # "store" or the group's KEY=VALUE
    clips: int
    seconds: float
    threshold: float | None
    created_at: Any


def list_enrollments(store: Store) -> list[EnrollmentInfo]:
    """Every clean enrollment in ``store``, per model: the store-level one first, then the groups."""
    from sqlalchemy import select

    from retrieval.models import Enrollment

    with store.session() as session:
        rows = session.execute(select(Enrollment.model_id, Enrollment.sources, Enrollment.threshold, Enrollment.created_at)
                               .where(Enrollment.name.startswith(CLEAN_ENROLLMENT))).all()
    out = []
    for model_id, sources, threshold, created in rows:
        sources = sources or {}
        group = sources.get("group")
        scope = f"{group['key']}={group['value']}" if group else "store"
        out.append(EnrollmentInfo(model_id, scope, len(sources.get("clips", [])), float(sources.get("seconds", 0.0)), threshold, created))
    return sorted(out, key=lambda e: (e.model_id, e.scope != "store", e.scope))


# Less clean reference audio than this gives an unreliable threshold: on one held-out real speaker
# (MODEL_CARD), enrollments from 8 s flagged 13-16 % of the speaker's other clean frames, from
# 60-240 s 2-7 % (the quantile asks for 2 %). `degsearch enroll-clean` warns below it.
MIN_REFERENCE_S = 60.0


@dataclass
class CleanEnrollment:
    """A clean enrollment computed from reference clips: the vector, its own detection threshold,
    the clips' smoothed frame scores it was taken from, and how much audio that was."""

    vector: np.ndarray
    threshold: float
    scores: np.ndarray
    frames: int
    seconds: float


def enrollment_from_clips(model: FrameModel, clips: Sequence[str | Path], *, quantile: float = 0.98,
                          smooth_frames: int = 5) -> CleanEnrollment:
    """Embed every frame of the clean ``clips`` (all channels); the enrollment is their normalised mean.

    Its detection threshold is the ``quantile`` of the clips' frame scores against it,
    median-smoothed as detection smooths them. The model's threshold was calibrated against its
    built-in enrollment, and distances to an archive's own enrollment sit on another scale (on the
    demo the model's threshold missed most noise stretches, this one found them).
    """
    from scipy.ndimage import median_filter

    if not clips:
        raise ConfigError("enroll-clean needs at least one clip", "pass clean recordings: degsearch enroll-clean a.wav b.wav")
    channels: list[np.ndarray] = []
    seconds = 0.0
    for clip in clips:
        audio = load_audio(clip)
        channels += [out.embeddings for out in model.embed_batch([ch for ch in audio.samples])]
        seconds += audio.duration_s * audio.channels
    total = np.sum([e.astype(np.float64).sum(axis=0) for e in channels], axis=0)
    frames = sum(len(e) for e in channels)
    norm = float(np.linalg.norm(total))
    if frames == 0 or norm == 0:
        raise ModelError("the clips gave no usable frames", "pass longer clean clips (a few seconds each)")
    vector = (total / norm).astype(np.float32)
    scores = np.concatenate([median_filter(frame_scores(e, vector), size=smooth_frames, mode="nearest") for e in channels])
    return CleanEnrollment(vector, float(np.quantile(scores, quantile)), scores, frames, seconds)


def set_clean_enrollment(store: Store, model: FrameModel, clips: Sequence[str | Path], *,
                         quantile: float = 0.98, smooth_frames: int = 5, group: EnrollmentGroup | None = None) -> CleanEnrollment:
    """Store ``enrollment_from_clips`` of the clean ``clips`` as this store's clean enrollment for
    ``model`` — or, with ``group``, as that group's — replacing an older one, with its own detection
    threshold; return it."""
    from sqlalchemy import delete

    from retrieval.models import Enrollment, vector_to_bytes
    from retrieval.prototypes import write_session

    enrollment = enrollment_from_clips(model, clips, quantile=quantile, smooth_frames=smooth_frames)
    name = group.name if group is not None else CLEAN_ENROLLMENT
    sources: dict[str, Any] = {"clips": [str(Path(c).resolve()) for c in clips], "frames": enrollment.frames,
                               "seconds": enrollment.seconds, "quantile": quantile}
    if group is not None:
        sources["group"] = {"key": group.key, "value": group.value}
    with write_session(store) as session:
        session.execute(delete(Enrollment).where(Enrollment.model_id == model.model_id, Enrollment.name == name))
        session.add(Enrollment(name=name, model_id=model.model_id, dim=model.dim, vector=vector_to_bytes(enrollment.vector),
                               threshold=enrollment.threshold, sources=sources))
    return enrollment


def remove_clean_enrollment(store: Store, model_id: str, group: EnrollmentGroup | None = None) -> None:
    """Delete the store-level (or ``group``'s) clean enrollment of ``model_id``. The files detected
    against it are detected again, against what applies to them now, on the next index run."""
    from sqlalchemy import delete

    from retrieval.models import Enrollment
    from retrieval.prototypes import write_session

    name = group.name if group is not None else CLEAN_ENROLLMENT
    with write_session(store) as session:
        removed = session.execute(delete(Enrollment).where(Enrollment.model_id == model_id, Enrollment.name == name)).rowcount
    if not removed:
        scope = f"group {group.key}={group.value}" if group is not None else "the store"
        raise NotFoundError(f"no clean enrollment of {scope} for model {model_id[:12]}",
                            "`degsearch enrollments` lists the ones set")


def detection_threshold(store: Store | None, model: FrameModel, settings: Settings) -> float:
    """The threshold on ``1 - cosine``: an explicit ``settings.threshold``, else the one calibrated
    by ``enroll-clean`` with the store's enrollment, else the model's."""
    calibrated = stored_threshold(store, model.model_id) if store is not None and settings.threshold is None else None
    return _chosen_threshold(settings, model, calibrated)


def _chosen_threshold(settings: Settings, model: FrameModel, calibrated: float | None) -> float:
    """An explicit ``settings.threshold``, else the ``calibrated`` one (``enroll-clean``), else the model's."""
    if settings.threshold is not None:
        return float(settings.threshold)
    return float(model.threshold if calibrated is None else calibrated)


def stored_threshold(store: Store, model_id: str, group: EnrollmentGroup | None = None) -> float | None:
    """The detection threshold calibrated with the store's (or ``group``'s) clean enrollment of
    ``model_id``, or None."""
    from retrieval.models import Enrollment

    with store.session() as session:
        return _clean_enrollment_column(session, Enrollment.threshold, model_id, group)


def embed_clip(model: FrameModel, path_or_samples: str | Path | np.ndarray, *, whole: bool = False,
               store: Store | None = None, settings: Settings | None = None) -> np.ndarray:
    """One L2-normalised query vector for a clip (a path, or mono 16 kHz samples).

    Channels are averaged to mono. By default the frames inside detected segments (same detection
    as indexing) are averaged; if none are detected, frames whose score exceeds the threshold; if
    none either (a clean clip), every frame. ``whole=True`` averages every frame.
    """
    from indexer.settings import get_settings

    settings = settings or (store.settings if store is not None else get_settings())
    if isinstance(path_or_samples, np.ndarray):
        mono = np.asarray(path_or_samples, dtype=np.float32).reshape(-1)
        sample_rate = TARGET_SR
    else:
        audio = load_audio(path_or_samples)
        mono = audio.samples.mean(axis=0).astype(np.float32)
        sample_rate = audio.orig_sr
    if mono.size < int(MIN_DURATION_S * TARGET_SR):
        raise AudioDecodeError(str(path_or_samples) if not isinstance(path_or_samples, np.ndarray) else "<samples>",
                               f"clip too short ({mono.size / TARGET_SR * 1000:.0f} ms)", "use a clip of at least 0.1 s")
    if not np.isfinite(mono).all():
        raise AudioDecodeError("<samples>", "contains NaN/inf samples", "pass finite samples")
    frames = model.embed(mono)
    emb = frames.embeddings.astype(np.float64)
    chosen = emb
    if not whole and len(frames):
        enrollment = clean_enrollment(store, model, sample_rate=sample_rate) if store is not None else \
            enrollment_for(dict(model.enrollments), sample_rate)
        threshold = detection_threshold(store, model, settings)
        det = SegmentDetector(enrollment, threshold, channel=0, hop_s=frames.hop_s, smooth_frames=settings.smooth_frames,
                              bridge_gap_s=settings.bridge_gap_s, min_segment_s=settings.min_segment_s)
        segs = det.push(frames) + det.finish()
        if segs:
            idx = np.concatenate([np.arange(round(s.start_s / frames.hop_s), round(s.end_s / frames.hop_s)) for s in segs])
            chosen = emb[np.clip(idx, 0, len(emb) - 1)]
        else:
            scores = 1.0 - emb @ (enrollment / np.linalg.norm(enrollment))
            if (scores > threshold).any():
                chosen = emb[scores > threshold]
    vec = chosen.mean(axis=0) if len(chosen) else np.zeros(model.dim)
    norm = float(np.linalg.norm(vec))
    if norm == 0:
        raise ModelError("the clip's frame embeddings average to zero", "use a longer or different clip")
    return (vec / norm).astype(np.float32)


def _load_prototypes(store: Store, model_id: str) -> list[Any]:
    try:
        from retrieval.prototypes import list_prototypes
    except ImportError:  # pragma: no cover
        return []
    return [p for p in list_prototypes(store, model_id=model_id) if p.vector is not None]


def model_spec(settings: Settings) -> str:
    """The model to use with ``settings``' store: ``settings.model`` when it was set (flag,
    ``DEGSEARCH_MODEL``) or the store is new; left at its default, the one shipped model the store
    was indexed with, so a store indexed before the default model changed keeps working."""
    from indexer.model import shipped_name
    from retrieval.store import store_model_ids

    if "model" in settings.model_fields_set:
        return str(settings.model)
    ids = store_model_ids(settings)
    name = shipped_name(ids[0]) if len(ids) == 1 else None
    return name or str(settings.model)


def load_store_model(settings: Settings) -> FrameModel:
    """Load the model :func:`model_spec` names for ``settings``' store."""
    from indexer.model import load_model

    return load_model(model_spec(settings))


def build_context(store: Store, model: FrameModel, settings: Settings, *, retry_failed: bool = False) -> IndexContext:
    """The worker context for ``model`` on ``store`` (enrollments, prototypes, detection settings)."""
    enrollments = {k: np.asarray(v, dtype=np.float32) for k, v in model.enrollments.items()}
    stored = stored_enrollment(store, model.model_id)
    calibrated = stored_threshold(store, model.model_id)  # read once: the store's key and the threshold
    store_key = MODEL_ENROLLMENT
    if stored is not None:
        enrollments = {"store": stored}
        store_key = enrollment_key(CLEAN_ENROLLMENT, stored, calibrated)
    if not enrollments:
        raise ModelError(f"model {model.name} has no clean enrollment", "run `degsearch enroll-clean CLIPS...` or use a calibrated checkpoint")
    groups = [GroupDetection(group, vector, _chosen_threshold(settings, model, calibrated), enrolled_at,
                             enrollment_key(group.name, vector, calibrated))
              for group, vector, calibrated, enrolled_at in group_enrollments(store, model.model_id)]
    return IndexContext(
        model_ref=str(settings.model), model_id=model.model_id, groups=groups, store_key=store_key,
        threshold=_chosen_threshold(settings, model, calibrated),
        enrollments=enrollments, prototypes=_load_prototypes(store, model.model_id), label_threshold=settings.label_threshold,
        smooth_frames=settings.smooth_frames, bridge_gap_s=settings.bridge_gap_s, min_segment_s=settings.min_segment_s,
        chunk_s=settings.chunk_s, batch_frames=settings.batch_frames, retry_failed=retry_failed,
    )


class _Progress:
    """Rich progress: files done/total, audio hours, hours per second, ETA (by bytes)."""

    def __init__(self, tasks: list[FileTask], enabled: bool) -> None:
        self.enabled = enabled
        self.files = len(tasks)
        self.done = 0
        self.audio_s = 0.0
        self.t0 = time.perf_counter()
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]indexing"), BarColumn(), TextColumn("{task.fields[files]}"),
                TextColumn("{task.fields[hours]}"), TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._task = self._progress.add_task("index", total=max(sum(t.size for t in tasks), 1), **self._fields())
            self._progress.start()

    def _fields(self) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return {"files": f"{self.done}/{self.files} files", "hours": f"{self.audio_s / 3600:.2f} h audio",
                "rate": f"{self.audio_s / 3600 / elapsed:.3f} h/s"}

    def advance(self, outcome: FileOutcome) -> None:
        self.done += 1
        self.audio_s += outcome.audio_s
        if self._progress is not None:
            self._progress.update(self._task, advance=max(outcome.size, 0), **self._fields())

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _outcomes(tasks: list[FileTask], ctx: IndexContext, model: FrameModel, settings: Settings, engine: str) -> Iterator[FileOutcome]:
    if engine == "ray":
        from indexer.ray_engine import run_ray

        yield from run_ray(tasks, ctx, workers=settings.workers)
    elif settings.workers > 1 and len(tasks) > 1:
        yield from _run_local_pool(tasks, ctx, min(settings.workers, len(tasks)))
    else:
        # One torch thread, as in every worker: intra-op threads gain little on these small
        # convolutions and collapse when the cores are shared; use workers for parallelism.
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for task in tasks:
                yield process_file(ctx, model, task)
        finally:
            torch.set_num_threads(previous)


def _attach_states(store: Store, tasks: list[FileTask], ctx: IndexContext) -> None:
    """Set each task's stored (content hash, model id, status), one query per 500 paths, and mark
    it stale when the clean enrollment it would be detected against now (its group's, else the
    store's, else the model's) is not the one it was detected against: `degsearch enroll-clean`
    and `remove-enrollment` change what counts as degraded, so those files are detected again.
    A file listed without manifest attributes keeps the ones stored with it."""
    from sqlalchemy import select

    from retrieval.models import Enrollment, Recording

    by_path = {t.path: t for t in tasks}
    paths = list(by_path)
    with store.session() as session:
        store_enrolled_at = _clean_enrollment_column(session, Enrollment.created_at, ctx.model_id)
        for start in range(0, len(paths), 500):
            rows = session.execute(select(Recording.path, Recording.content_hash, Recording.model_id, Recording.status,
                                          Recording.indexed_at, Recording.detected_with, Recording.attributes)
                                   .where(Recording.path.in_(paths[start:start + 500]))).all()
            for path, digest, rec_model, status, indexed_at, detected_with, attributes in rows:
                task = by_path[path]
                task.state = (digest, rec_model, status)
                if not task.attributes and attributes:
                    task.attributes = dict(attributes)
                if detected_with is not None:
                    task.stale = detected_with != ctx.detected_with(task.attributes)
                else:  # indexed before the store recorded it: detected again if its enrollment was set since
                    group = ctx.group_for(task.attributes)
                    enrolled_at = group.enrolled_at if group is not None else store_enrolled_at
                    task.stale = enrolled_at is not None and indexed_at is not None and indexed_at < enrolled_at


def index_archive(inputs: list[str], settings: Settings, *, engine: str = "local", retry_failed: bool = False,
                  progress: bool = True, on_outcome: Callable[[FileOutcome], None] | None = None) -> IndexSummary:
    """Index ``inputs`` (folders, globs, files, CSV/JSONL manifests) into the store of ``settings``.

    Returns the run's :class:`IndexSummary`. Decode/model failures are recorded per file and never
    stop the batch; a store failure (disk full, locked database) stops it with :class:`StoreError`,
    after marking the run interrupted. ``on_outcome`` is called after each file is committed.
    """
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine {engine!r}", "use --engine local or --engine ray")
    from retrieval.store import Store

    t_start = time.perf_counter()
    tasks = resolve_inputs(inputs)
    # Workers load the model by name: pin the one chosen for this store.
    settings = settings.model_copy(update={"model": model_spec(settings)})
    model = load_store_model(settings)
    if settings.database_url is None:
        settings.store_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings)
    summary = IndexSummary(run_id=None, model_id=model.model_id, files_total=len(tasks), engine=engine, workers=settings.workers)
    status = "interrupted"
    bar: _Progress | None = None
    try:
        store.ensure_model(model.model_id, model.name, model.frame_rate, model.dim, model.threshold,
                           {"enrollments": sorted(model.enrollments)})
        ctx = build_context(store, model, settings, retry_failed=retry_failed)
        _attach_states(store, tasks, ctx)
        summary.run_id = store.start_run(model.model_id, {
            "inputs": [str(i) for i in inputs], "engine": engine, "workers": settings.workers, "retry_failed": retry_failed,
            "threshold": ctx.threshold, "smooth_frames": ctx.smooth_frames, "bridge_gap_s": ctx.bridge_gap_s,
            "min_segment_s": ctx.min_segment_s, "chunk_s": ctx.chunk_s,
        })
        bar = _Progress(tasks, progress)
        for outcome in _outcomes(tasks, ctx, model, settings, engine):
            for stage, secs in outcome.timings.items():
                summary.stage_s[stage] = summary.stage_s.get(stage, 0.0) + secs
            if outcome.kind == "indexed" and outcome.result is not None:
                t0 = time.perf_counter()
                try:
                    store.write_recording(outcome.result, summary.run_id)
                except StoreError:
                    raise
                except Exception as exc:  # a row the database rejects: record it, go on
                    outcome = FileOutcome("failed", outcome.path, failure=RecordingFailure(
                        path=outcome.path, stage="store", error=f"{type(exc).__name__}: {exc}",
                        content_hash=outcome.result.content_hash, attributes=outcome.result.attributes), size=outcome.size)
                else:
                    summary.indexed += 1
                    summary.segments += len(outcome.result.segments)
                    summary.audio_s += outcome.audio_s
                summary.stage_s["store"] += time.perf_counter() - t0
            if outcome.kind == "failed" and outcome.failure is not None:
                store.record_failure(outcome.failure, summary.run_id)
                summary.failed += 1
                summary.failures.append(outcome.failure)
            elif outcome.kind == "skipped":
                summary.skipped += 1
                if outcome.note.startswith("failed before"):
                    summary.previously_failed.append(outcome.path)
            bar.advance(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        status = "done"
    finally:
        if bar is not None:
            bar.close()
        summary.wall_s = time.perf_counter() - t_start
        summary.status = status
        try:
            if summary.run_id is not None:
                store.finish_run(summary.run_id, status=status, files_indexed=summary.indexed, files_skipped=summary.skipped,
                                 files_failed=summary.failed, audio_seconds=summary.audio_s, wall_seconds=summary.wall_s)
            t0 = time.perf_counter()
            store.flush_index()
            summary.stage_s["store"] += time.perf_counter() - t0
        finally:
            store.close()
    return summary


def iter_failures(store: Store) -> Iterable[tuple[str, str | None, str | None]]:
    """(path, stage, error) of every recording whose status is failed."""
    from sqlalchemy import select

    from retrieval.models import Recording

    with store.session() as session:
        rows = session.execute(select(Recording.path, Recording.error_stage, Recording.error)
                               .where(Recording.status == "failed").order_by(Recording.path)).all()
    return [(r[0], r[1], r[2]) for r in rows]
