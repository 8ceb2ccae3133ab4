"""Clean enrollments: what "clean" sounds like for a store, a group of its files, or the model.

A file is detected against the first of: its group's enrollment (``degsearch enroll-clean --group
agent=alice``, for files whose manifest attribute matches), the store-level one (``degsearch
enroll-clean``), the model's own (``narrowband`` for sources sampled at <= 8 kHz, ``wideband``
otherwise). A stored enrollment carries its own detection threshold, calibrated on its clips, and
its key (:func:`enrollment_key`) tells the indexer which files were detected against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.audio import TARGET_SR, load_audio
from indexer.detect import frame_scores
from indexer.errors import ConfigError, ModelError, NotFoundError
from indexer.settings import Settings

if TYPE_CHECKING:
    from indexer.model import FrameModel
    from retrieval.store import Store


# Sources at or below this sample rate use the model's narrowband enrollment.
NARROWBAND_MAX_SR = 8000
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


def enrollment_for(enrollments: dict[str, np.ndarray], sample_rate: int) -> np.ndarray:
    """The enrollment vector for a source sampled at ``sample_rate``."""
    if "store" in enrollments:
        return enrollments["store"]
    key = "narrowband" if sample_rate <= NARROWBAND_MAX_SR else "wideband"
    if key not in enrollments:
        key = next(iter(enrollments))
    return enrollments[key]


def clean_detection(store: Store | None, model: FrameModel, settings: Settings, *,
                    sample_rate: int = TARGET_SR) -> tuple[np.ndarray, float]:
    """The (clean enrollment, threshold) a clip is detected with, from one read of the store: the
    store-level enrollment set by ``degsearch enroll-clean`` for this model and its calibrated
    threshold if any, else the model's own (narrowband for sources <= 8 kHz, wideband otherwise);
    an explicit ``settings.threshold`` wins."""
    stored = stored_enrollment(store, model.model_id) if store is not None else None
    if stored is None:
        return enrollment_for(dict(model.enrollments), sample_rate), chosen_threshold(settings, model, None)
    return stored.vector, chosen_threshold(settings, model, stored.threshold)


@dataclass(frozen=True)
class StoredEnrollment:
    """A clean enrollment row of the store: its vector, the threshold calibrated on its clips, and
    when it was set."""

    vector: np.ndarray
    threshold: float | None
    created_at: Any


def stored_enrollment(store: Store, model_id: str, group: EnrollmentGroup | None = None) -> StoredEnrollment | None:
    """The store-level (or ``group``'s) clean enrollment of ``model_id``, read in one query, or None."""
    from sqlalchemy import select

    from retrieval.models import Enrollment, bytes_to_vector

    name = group.name if group is not None else CLEAN_ENROLLMENT
    with store.session() as session:
        row = session.execute(select(Enrollment.vector, Enrollment.threshold, Enrollment.created_at)
                              .where(Enrollment.model_id == model_id, Enrollment.name == name)).first()
    return None if row is None else StoredEnrollment(bytes_to_vector(row.vector), row.threshold, row.created_at)


def group_enrollments(store: Store, model_id: str) -> list[tuple[EnrollmentGroup, StoredEnrollment]]:
    """Every group enrollment of ``model_id``, sorted by group."""
    from sqlalchemy import select

    from retrieval.models import Enrollment, bytes_to_vector

    with store.session() as session:
        rows = session.execute(select(Enrollment.sources, Enrollment.vector, Enrollment.threshold, Enrollment.created_at)
                               .where(Enrollment.model_id == model_id, Enrollment.name.startswith(f"{CLEAN_ENROLLMENT}:"))).all()
    found = [(EnrollmentGroup(**sources["group"]), StoredEnrollment(bytes_to_vector(blob), threshold, created))
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
    set_aside: int = 0  # clips enroll-clean set aside as unlike the rest


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
        out.append(EnrollmentInfo(model_id, scope, len(sources.get("clips", [])), float(sources.get("seconds", 0.0)), threshold, created,
                                  len(sources.get("set_aside", []))))
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
    outliers: list[str] = field(default_factory=list)  # clips set aside as unlike the rest (see OUTLIER_SHARE)


def enrollment_from_clips(model: FrameModel, clips: Sequence[str | Path], *, quantile: float = 0.98,
                          smooth_frames: int = 5) -> CleanEnrollment:
    """Embed every frame of the clean ``clips`` (all channels); the enrollment is their normalised mean.

    Its detection threshold is the ``quantile`` of the clips' frame scores against it,
    median-smoothed as detection smooths them. The model's threshold was calibrated against its
    built-in enrollment, and distances to an archive's own enrollment sit on another scale (on the
    demo the model's threshold missed most noise stretches, this one found them). A clip that the
    others' enrollment calls mostly degraded (:data:`OUTLIER_SHARE`) is set aside from both and
    listed in ``outliers``.
    """
    if not clips:
        raise ConfigError("enroll-clean needs at least one clip", "pass clean recordings: degsearch enroll-clean a.wav b.wav")
    channels: list[np.ndarray] = []
    names: list[str] = []  # the clip of each channel
    seconds = 0.0
    for clip in clips:
        audio = load_audio(clip)
        channels += [out.embeddings for out in model.embed_batch([ch for ch in audio.samples])]
        names += [str(clip)] * audio.channels
        seconds += audio.duration_s * audio.channels
    frames = sum(len(e) for e in channels)
    outlying = _outlying(channels, quantile, smooth_frames)
    kept = [e for e, out in zip(channels, outlying) if not out]
    vector = mean_direction(kept)
    per_channel = _smoothed_scores(channels, vector, smooth_frames)
    threshold = float(np.quantile(np.concatenate([s for s, out in zip(per_channel, outlying) if not out]), quantile))
    outliers = sorted({name for name, out in zip(names, outlying) if out})
    return CleanEnrollment(vector, threshold, np.concatenate(per_channel), frames, seconds, outliers)


def mean_direction(channels: Sequence[np.ndarray]) -> np.ndarray:
    """A clean enrollment: the normalised mean of every frame embedding of ``channels`` (arrays of
    frames); enroll-clean's, and ``degsearch evaluate``'s from a benchmark's clean enroll files."""
    total = np.sum([e.astype(np.float64).sum(axis=0) for e in channels], axis=0)
    norm = float(np.linalg.norm(total))
    if sum(len(e) for e in channels) == 0 or norm == 0:
        raise ModelError("the clips gave no usable frames", "pass longer clean clips (a few seconds each)")
    return (total / norm).astype(np.float32)


def _smoothed_scores(channels: list[np.ndarray], vector: np.ndarray, smooth_frames: int) -> list[np.ndarray]:
    """Each channel's frame scores against ``vector``, median-smoothed as detection smooths them."""
    from scipy.ndimage import median_filter

    return [median_filter(frame_scores(e, vector), size=smooth_frames, mode="nearest") for e in channels]


# A clip (channel) is set aside when the enrollment of the other clips, with the threshold they
# would get, flags more than OUTLIER_SHARE of its frames: a noisy "clean" clip, or a lone voice
# unlike the rest. On two wideband benchmarks one dark voice among 11 clean clips (91-96 % of its
# frames flagged so) raised the threshold to 0.88-0.92 on 1 - cosine and about halved what the
# indexer found; such a voice wants its own group enrollment (--group).
OUTLIER_SHARE = 0.5
# Past this many channels one clip barely moves the mean: each is judged against all of them.
LEAVE_ONE_OUT_MAX = 200


def _outlying(channels: list[np.ndarray], quantile: float, smooth_frames: int) -> list[bool]:
    """Which channels the others call mostly degraded (3 channels with frames at least to judge)."""
    if sum(1 for e in channels if len(e)) < 3:
        return [False] * len(channels)
    sums = np.stack([e.astype(np.float64).sum(axis=0) for e in channels])
    total = sums.sum(axis=0)
    if len(channels) > LEAVE_ONE_OUT_MAX:
        scores = _smoothed_scores(channels, mean_direction(channels), smooth_frames)
        cut = float(np.quantile(np.concatenate(scores), quantile))
        return [bool(len(s)) and float(np.mean(s > cut)) > OUTLIER_SHARE for s in scores]
    out = []
    for i, e in enumerate(channels):
        rest = total - sums[i]
        norm = float(np.linalg.norm(rest))
        if not len(e) or norm == 0:
            out.append(False)
            continue
        scores = _smoothed_scores(channels, (rest / norm).astype(np.float32), smooth_frames)
        cut = float(np.quantile(np.concatenate(scores[:i] + scores[i + 1:]), quantile))
        out.append(float(np.mean(scores[i] > cut)) > OUTLIER_SHARE)
    return out


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
                               "seconds": enrollment.seconds, "quantile": quantile,
                               "set_aside": [str(Path(c).resolve()) for c in enrollment.outliers]}
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


def chosen_threshold(settings: Settings, model: FrameModel, calibrated: float | None) -> float:
    """An explicit ``settings.threshold``, else the ``calibrated`` one (``enroll-clean``), else the model's."""
    if settings.threshold is not None:
        return float(settings.threshold)
    return float(model.threshold if calibrated is None else calibrated)
