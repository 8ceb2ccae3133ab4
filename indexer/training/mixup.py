"""Partial mix-up (paper 003, section 3): splice degraded regions into a clean utterance.

1-3 regions of 200 ms-1 s are taken from fully degraded versions of the same utterance (same
length, sample-aligned) and spliced into the clean one with a short crossfade. Regions are
placed where a voice activity detector finds speech: silero-vad's ONNX model from the installed
``silero_vad`` package data, run with onnxruntime (its torch helpers are not imported), or an
energy VAD when that model is missing. Region edges sit on the 20 ms frame grid (hop 320 samples
at 16 kHz, 50 frames/s), so frame ``i`` covers samples ``[320 i, 320 (i+1))`` and its label is the
class of the region it lies in, 0 (clean) elsewhere. The crossfade (5 ms) lies inside the
region, so every labelled frame is degraded audio and every clean frame is the clean signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.features import frame_power_db

SR = 16000
HOP = 320  # 20 ms at 16 kHz -> 50 frames/s
FRAME_RATE = SR / HOP


def n_frames(n_samples: int) -> int:
    """Number of whole 20 ms frames in ``n_samples`` (64000 samples -> 200 frames)."""
    return n_samples // HOP


class SileroVAD:
    """silero-vad (v5+) ONNX model on 512-sample chunks with 64 samples of context, 16 kHz."""

    CHUNK = 512
    CONTEXT = 64

    def __init__(self, model_path: str | Path | None = None) -> None:
        import onnxruntime as ort

        if model_path is None:
            import importlib.util

            spec = importlib.util.find_spec("silero_vad")
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError("silero_vad package is not installed")
            model_path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
        if not Path(model_path).exists():
            raise FileNotFoundError(str(model_path))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])

    def chunk_probs(self, x: np.ndarray) -> np.ndarray:
        """Speech probability per 512-sample chunk (32 ms)."""
        n = int(np.ceil(x.size / self.CHUNK))
        pad = np.zeros(n * self.CHUNK, dtype=np.float32)
        pad[: x.size] = x
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros(self.CONTEXT, dtype=np.float32)
        sr = np.array(SR, dtype=np.int64)
        probs = np.zeros(n, dtype=np.float32)
        for i in range(n):
            chunk = pad[i * self.CHUNK: (i + 1) * self.CHUNK]
            inp = np.concatenate([context, chunk])[None, :]
            out, state = self.session.run(None, {"input": inp, "state": state, "sr": sr})
            probs[i] = float(out[0, 0])
            context = chunk[-self.CONTEXT:]
        return probs

    def frame_speech(self, x: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Boolean speech flag per 20 ms frame."""
        probs = self.chunk_probs(x)
        centers = (np.arange(n_frames(x.size)) * HOP + HOP // 2) // self.CHUNK
        return probs[np.minimum(centers, probs.size - 1)] > threshold


def energy_vad(x: np.ndarray, threshold_db: float = -35.0) -> np.ndarray:
    """Fallback VAD: frames within ``threshold_db`` of the loudest frame's energy are speech."""
    n = n_frames(x.size)
    if n == 0:
        return np.zeros(0, dtype=bool)
    e = frame_power_db(x, n, HOP)
    return e > e.max() + threshold_db


_VAD: SileroVAD | None | bool = None


def speech_frames(x: np.ndarray) -> np.ndarray:
    """Per-frame speech flags from silero-vad, or the energy VAD if silero's model is unavailable."""
    global _VAD
    if _VAD is None:
        try:
            _VAD = SileroVAD()
        except (FileNotFoundError, ImportError, OSError):
            _VAD = False
    flags = _VAD.frame_speech(x) if _VAD else energy_vad(x)
    if flags.sum() < 10:  # VAD found (almost) nothing: fall back to energy so regions still land on sound
        flags = energy_vad(x)
    return flags


def sample_regions(speech: np.ndarray, rng: np.random.Generator, n_regions: tuple[int, int] = (1, 3),
                   length_s: tuple[float, float] = (0.2, 1.0), min_gap_frames: int = 5) -> list[tuple[int, int]]:
    """Draw non-overlapping frame ranges ``[f0, f1)`` covering mostly speech (>= half their frames)."""
    total = speech.size
    k = int(rng.integers(n_regions[0], n_regions[1] + 1))
    lo, hi = int(round(length_s[0] * FRAME_RATE)), int(round(length_s[1] * FRAME_RATE))
    regions: list[tuple[int, int]] = []
    for _ in range(k):
        for attempt in range(60):
            length = int(rng.integers(lo, hi + 1))
            if length >= total:
                length = max(1, total // 2)
            f0 = int(rng.integers(0, total - length + 1))
            f1 = f0 + length
            if any(f0 < b + min_gap_frames and a < f1 + min_gap_frames for a, b in regions):
                continue
            if attempt < 40 and speech[f0:f1].mean() < 0.5:  # later attempts accept any placement
                continue
            regions.append((f0, f1))
            break
    return sorted(regions)


@dataclass
class MixupResult:
    """Mixed audio, per-frame class ids (0 = clean) and the degraded mask (per sample and per frame)."""

    audio: np.ndarray  # (n,) float32
    frame_labels: np.ndarray  # (n_frames,) int16
    frame_mask: np.ndarray  # (n_frames,) float32, 1 inside degraded regions
    sample_mask: np.ndarray  # (n,) float32, the splice weights m(t) (crossfade ramps inside regions)
    regions: list[tuple[int, int, int]]  # (f0, f1, class id)


def splice(clean: np.ndarray, degraded: list[np.ndarray], regions: list[tuple[int, int]], crossfade_ms: float = 5.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 3 of 003: s = m * s_deg + (1 - m) * s_ref, region r taken from ``degraded[r]``."""
    out = clean.astype(np.float32).copy()
    mask = np.zeros(clean.size, dtype=np.float32)
    ramp_n = int(crossfade_ms * SR / 1000)
    for (f0, f1), deg in zip(regions, degraded):
        s0, s1 = f0 * HOP, min(f1 * HOP, clean.size)
        m = np.ones(s1 - s0, dtype=np.float32)
        r = min(ramp_n, (s1 - s0) // 4)
        if r > 0:
            ramp = np.linspace(0.0, 1.0, r + 2, dtype=np.float32)[1:-1]
            m[:r] = ramp
            m[-r:] = ramp[::-1]
        out[s0:s1] = m * deg[s0:s1] + (1 - m) * clean[s0:s1]
        mask[s0:s1] = m
    return out, mask


def partial_mixup(clean: np.ndarray, degraded: np.ndarray | list[np.ndarray], class_ids: int | list[int],
                  rng: np.random.Generator, *, n_regions: tuple[int, int] = (1, 3),
                  length_s: tuple[float, float] = (0.2, 1.0), speech: np.ndarray | None = None) -> MixupResult:
    """Splice 1-3 regions of ``degraded`` (one array, or one per region) into ``clean``.

    ``class_ids`` is the class of ``degraded`` (or one per array). With a list, region ``i`` uses
    entry ``i % len``. ``speech`` (per-frame flags) is computed with :func:`speech_frames` if absent.
    """
    degs = degraded if isinstance(degraded, list) else [degraded]
    ids = class_ids if isinstance(class_ids, list) else [class_ids] * len(degs)
    for d in degs:
        if d.size != clean.size:
            raise ValueError(f"degraded length {d.size} != clean length {clean.size}: degradations must keep the length")
    flags = speech if speech is not None else speech_frames(clean)
    regions = sample_regions(flags, rng, n_regions, length_s)
    per_region = [degs[i % len(degs)] for i in range(len(regions))]
    audio, mask = splice(clean, per_region, regions)
    labels = np.zeros(n_frames(clean.size), dtype=np.int16)
    frame_mask = np.zeros(labels.size, dtype=np.float32)
    out_regions = []
    for i, (f0, f1) in enumerate(regions):
        cid = int(ids[i % len(ids)])
        labels[f0:f1] = cid
        frame_mask[f0:f1] = 1.0
        out_regions.append((f0, f1, cid))
    return MixupResult(audio=audio, frame_labels=labels, frame_mask=frame_mask, sample_mask=mask, regions=out_regions)
