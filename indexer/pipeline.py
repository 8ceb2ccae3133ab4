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

What to index comes from :mod:`indexer.inputs`, which clean enrollment each file is detected
against from :mod:`indexer.enrollment`.

Failed files stay failed on re-runs while their content is unchanged (they are counted as
skipped and listed); ``retry_failed=True`` (``--retry-failed``) tries them again.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, astuple, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.audio import MIN_DURATION_S, TARGET_SR, AudioStream, content_hash
from indexer.detect import DetectionParams, SegmentDetector
from indexer.enrollment import (CLEAN_ENROLLMENT, MODEL_ENROLLMENT, EnrollmentGroup, chosen_threshold, enrollment_for,
                                enrollment_key, group_enrollments, stored_enrollment)
from indexer.errors import AudioDecodeError, ConfigError, DegsearchError, ModelError, StoreError
from indexer.inputs import FileTask, resolve_inputs
from indexer.records import DetectedSegment, FrameOutput, RecordingFailure, RecordingResult
from indexer.settings import Settings

if TYPE_CHECKING:
    from indexer.model import FrameModel
    from retrieval.store import Store

STAGES = ("hash", "decode", "resample", "model", "detect", "store")


# --- per-file work -------------------------------------------------------------------------------


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
    detection: DetectionParams
    chunk_s: float
    batch_frames: int
    retry_failed: bool = False
    # Group enrollments, sorted by (key, value): a file takes the first whose attribute it matches.
    groups: list[GroupDetection] = field(default_factory=list)
    # enrollment_key of the store-level enrollment (MODEL_ENROLLMENT: none, the model's own is used).
    store_key: str = MODEL_ENROLLMENT
    store_enrolled_at: Any = None  # when the store-level enrollment was set (None: there is none)
    # Digest of the settings that cut segments (detection_key): changing one makes files due again.
    detection_key: str = ""

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
        """What a file with these manifest ``attributes`` is detected with: the key of its clean
        enrollment and, after ``@``, the digest of the detection settings."""
        group = self.group_for(attributes)
        return f"{group.key if group is not None else self.store_key}@{self.detection_key}"


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
        detectors = [SegmentDetector(enrollment, threshold, channel=c, hop_s=hop_s, params=ctx.detection)
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


def detection_key(settings: Settings) -> str:
    """A digest of the settings that decide a file's segments besides its enrollment (an explicit
    threshold, smoothing, bridging, minimum length, merging): a file detected with others is
    detected again on the next index run, as after a new enrollment."""
    import hashlib

    values = (settings.threshold, *astuple(settings.detection))
    return hashlib.sha1(repr(values).encode()).hexdigest()[:12]


def build_context(store: Store, model: FrameModel, settings: Settings, *, retry_failed: bool = False) -> IndexContext:
    """The worker context for ``model`` on ``store`` (enrollments, prototypes, detection settings)."""
    enrollments = {k: np.asarray(v, dtype=np.float32) for k, v in model.enrollments.items()}
    stored = stored_enrollment(store, model.model_id)
    calibrated = stored.threshold if stored is not None else None
    store_key = MODEL_ENROLLMENT
    if stored is not None:
        enrollments = {"store": stored.vector}
        store_key = enrollment_key(CLEAN_ENROLLMENT, stored.vector, calibrated)
    if not enrollments:
        raise ModelError(f"model {model.name} has no clean enrollment", "run `degsearch enroll-clean CLIPS...` or use a calibrated checkpoint")
    groups = [GroupDetection(group, row.vector, chosen_threshold(settings, model, row.threshold), row.created_at,
                             enrollment_key(group.name, row.vector, row.threshold))
              for group, row in group_enrollments(store, model.model_id)]
    return IndexContext(
        model_ref=str(settings.model), model_id=model.model_id, groups=groups, store_key=store_key,
        store_enrolled_at=stored.created_at if stored is not None else None, detection_key=detection_key(settings),
        threshold=chosen_threshold(settings, model, calibrated),
        enrollments=enrollments, prototypes=_load_prototypes(store, model.model_id), label_threshold=settings.label_threshold,
        detection=settings.detection, chunk_s=settings.chunk_s, batch_frames=settings.batch_frames, retry_failed=retry_failed,
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

    from retrieval.models import Recording

    by_path = {t.path: t for t in tasks}
    paths = list(by_path)
    with store.session() as session:
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
                    enrolled_at = group.enrolled_at if group is not None else ctx.store_enrolled_at
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
            "threshold": ctx.threshold, **asdict(ctx.detection), "chunk_s": ctx.chunk_s,
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
