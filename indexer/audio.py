"""Audio decoding: any archive file in, float32 channels at 16 kHz out, streamed in chunks.

* **Backends.** libsndfile (``soundfile``) decodes WAV/FLAC/OGG-Vorbis/Opus/AIFF/AU/... by content,
  not by extension, so a FLAC named ``.mp3`` still decodes. Everything libsndfile does not recognise
  (MP3 is routed here too, for its encoder-delay handling; M4A/AAC, AMR, GSM, WMA, video containers)
  goes through FFmpeg via PyAV.
* **Trusted length.** Headers can lie (truncated uploads, streaming writers that never patched the
  WAV size). Durations and offsets always come from the decoded sample count, never from headers.
* **Resampling.** soxr (high quality, streaming, so chunk boundaries leave no seams); scipy's
  polyphase ``resample_poly`` is the fallback when soxr is not installed.
* **Channels.** Every channel is kept (stereo call recordings are agent/customer); files with more
  than :data:`MAX_CHANNELS` channels are rejected rather than silently down-mixed, because
  indexing each of dozens of channels is almost never what an archive owner wants.
* **Bad files** raise :class:`AudioDecodeError` naming the file and the reason: missing,
  unreadable, empty (0 bytes), no samples, too short, NaN/inf samples, unsupported codec, no audio
  stream, too many channels, absurd sample rate or duration.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import AudioDecodeError

TARGET_SR = 16000
# More channels than this is rejected (see the module docstring).
MAX_CHANNELS = 8
# Decoded audio longer than this (per file) is rejected: 48 h is beyond any real call or meeting
# recording and usually means a corrupt or concatenated file.
MAX_DURATION_S = 48 * 3600.0
# The frame model needs at least this much audio.
MIN_DURATION_S = 0.1
MIN_SAMPLE_RATE = 2000
MAX_SAMPLE_RATE = 768000
# Extensions a directory scan picks up.
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .m4a .mp4 .aac .amr .awb .3gp .gsm .wma .webm .mka .aif .aiff .au .caf .w64 .rf64".split()
)
# libsndfile formats routed to PyAV instead (see module docstring).
_SF_DELEGATE = {"MP3", "MPEG"}
# Frames read from the decoder per step (input rate): small enough for flat memory.
_BLOCK_FRAMES = 1 << 16
_HASH_BLOCK = 1 << 20

try:  # optional, preferred resampler
    import soxr as _soxr
except ImportError:  # pragma: no cover - soxr is a declared dependency
    _soxr = None


@dataclass
class AudioData:
    """Decoded audio: ``samples`` is (channels, n) float32 at ``sr``; ``orig_sr`` is the file's rate."""

    samples: np.ndarray
    sr: int
    orig_sr: int
    channels: int
    duration_s: float
    path: str = ""


def _check_readable(path: Path) -> None:
    """Cheap checks that give clear errors before any decoder runs."""
    if not path.exists():
        raise AudioDecodeError(path, "file not found", "check the path or the manifest's path column")
    if path.is_dir():
        raise AudioDecodeError(path, "is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioDecodeError(path, "permission denied", "make the file readable by this user (chmod o+r)")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "file is empty (0 bytes)", "re-export or re-copy the recording")


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes (hex), read in 1 MiB blocks so memory stays flat.

    There is deliberately no size+mtime shortcut: archives are often copied or restored with
    fresh mtimes, and a false "unchanged" would silently keep stale segments. Hashing runs at
    disk speed (~1 GB/s), far faster than decoding and inference.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError as exc:
        raise AudioDecodeError(path, "file not found", "check the path or the manifest's path column") from exc
    except PermissionError as exc:
        raise AudioDecodeError(path, "permission denied", "make the file readable by this user (chmod o+r)") from exc
    except IsADirectoryError as exc:
        raise AudioDecodeError(path, "is a directory, not an audio file") from exc
    except OSError as exc:
        raise AudioDecodeError(path, f"cannot read file: {exc.strerror or exc}") from exc
    return digest.hexdigest()


class _Resampler:
    """Streaming (channels-first) resampler; a no-op when the rates match."""

    def __init__(self, in_sr: int, out_sr: int, channels: int) -> None:
        self.in_sr, self.out_sr, self.channels = in_sr, out_sr, channels
        self._stream = None
        if in_sr != out_sr and _soxr is not None:
            self._stream = _soxr.ResampleStream(in_sr, out_sr, channels, dtype="float32", quality="HQ")
        elif in_sr != out_sr:
            g = math.gcd(in_sr, out_sr)
            self._up, self._down = out_sr // g, in_sr // g
            self._pending: list[np.ndarray] = []

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample a (C, n) block; with ``last`` flush what the filter still holds."""
        if self.in_sr == self.out_sr:
            return block
        if self._stream is not None:
            out = self._stream.resample_chunk(np.ascontiguousarray(block.T), last=last)
            return out.T  # (C, n) view; callers copy it into their chunk buffers
        # scipy fallback: not streaming-exact, so resample the whole signal at the end (the
        # fallback only matters for tiny installs; soxr is a declared dependency).
        self._pending.append(block)
        if not last:
            return np.zeros((self.channels, 0), np.float32)
        from scipy.signal import resample_poly

        whole = np.concatenate(self._pending, axis=1)
        self._pending = []
        return resample_poly(whole, self._up, self._down, axis=1).astype(np.float32)


class AudioStream:
    """An opened audio file: header facts plus a generator of decoded native-rate blocks.

    Use :meth:`chunks` (or :func:`iter_audio_chunks`) to read it at the pipeline rate.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _check_readable(self.path)
        self.backend, self.orig_sr, self.channels, self.header_frames = self._probe()
        if not MIN_SAMPLE_RATE <= self.orig_sr <= MAX_SAMPLE_RATE:
            raise AudioDecodeError(self.path, f"implausible sample rate {self.orig_sr} Hz", "the header is corrupt; re-export the file")
        if self.channels < 1:
            raise AudioDecodeError(self.path, "no audio channels")
        if self.channels > MAX_CHANNELS:
            raise AudioDecodeError(
                self.path, f"{self.channels} channels (at most {MAX_CHANNELS} are indexed, one by one)",
                "split the file into mono or stereo files (e.g. ffmpeg -af channelsplit) and index those",
            )

    # -- probing ----------------------------------------------------------------------------
    def _probe(self) -> tuple[str, int, int, int | None]:
        import soundfile as sf

        try:
            info = sf.info(str(self.path))
        except Exception:  # libsndfile does not know it: let FFmpeg try
            info = None
        if info is not None and info.format not in _SF_DELEGATE:
            return "soundfile", int(info.samplerate), int(info.channels), int(info.frames) if info.frames > 0 else None
        return self._probe_av()

    def _probe_av(self) -> tuple[str, int, int, int | None]:
        av = _import_av(self.path)
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.audio:
                    raise AudioDecodeError(self.path, "no audio stream in the file", "check it is an audio recording")
                stream = container.streams.audio[0]
                ctx = stream.codec_context
                if ctx is None or ctx.codec is None:
                    raise AudioDecodeError(self.path, "unsupported codec", "convert it to WAV or FLAC with ffmpeg")
                rate = int(ctx.sample_rate or stream.rate or 0)
                channels = int(ctx.channels or 0) or (ctx.layout.nb_channels if ctx.layout else 0)
                frames = None
                if stream.duration and stream.time_base:
                    frames = int(stream.duration * stream.time_base * rate)
                return "av", rate, channels, frames
        except AudioDecodeError:
            raise
        except av.error.InvalidDataError as exc:
            raise AudioDecodeError(self.path, "not a recognised audio format (corrupt or not audio)",
                                   "check the file plays; re-export it as WAV or FLAC") from exc
        except (av.error.DecoderNotFoundError, av.error.PatchWelcomeError) as exc:
            raise AudioDecodeError(self.path, f"unsupported codec ({exc})", "convert it to WAV or FLAC with ffmpeg") from exc
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(self.path, f"cannot open: {exc}", "check the file plays; re-export it as WAV or FLAC") from exc

    @property
    def header_duration_s(self) -> float | None:
        """Duration the header claims (may be wrong: decoding decides)."""
        return None if self.header_frames is None else self.header_frames / self.orig_sr

    # -- decoding ---------------------------------------------------------------------------
    def blocks(self, offset_s: float = 0.0) -> Iterator[np.ndarray]:
        """Yield decoded (C, n) float32 blocks at the native rate starting near ``offset_s``.

        Checks every block for NaN/inf and the running length against :data:`MAX_DURATION_S`.
        """
        source = self._sf_blocks(offset_s) if self.backend == "soundfile" else self._av_blocks(offset_s)
        total = 0
        limit = int(MAX_DURATION_S * self.orig_sr)
        for block in source:
            if block.shape[1] == 0:
                continue
            if not np.isfinite(block).all():
                at = (total + int(np.argmax(~np.isfinite(block).all(axis=0)))) / self.orig_sr + offset_s
                raise AudioDecodeError(self.path, f"contains NaN/inf samples (first at {at:.2f} s)",
                                       "the float samples are corrupt; re-export the recording")
            total += block.shape[1]
            if total > limit:
                raise AudioDecodeError(self.path, f"longer than {MAX_DURATION_S / 3600:.0f} h of audio",
                                       "split the file (e.g. ffmpeg -f segment) and index the parts")
            yield block

    def _sf_blocks(self, offset_s: float) -> Iterator[np.ndarray]:
        import soundfile as sf

        try:
            with sf.SoundFile(str(self.path)) as fh:
                if offset_s > 0:
                    fh.seek(min(int(round(offset_s * self.orig_sr)), max(fh.frames, 0)))
                while True:
                    data = fh.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                    if data.shape[0] == 0:
                        return
                    yield data.T  # a (C, n) view: the resampler wants (n, C) back, so no copy here
        except sf.LibsndfileError as exc:
            raise AudioDecodeError(self.path, f"decode failed: {exc}", "the file is corrupt or truncated; re-export it") from exc
        except (RuntimeError, ValueError) as exc:
            raise AudioDecodeError(self.path, f"decode failed: {exc}", "the file is corrupt or truncated; re-export it") from exc

    def _av_blocks(self, offset_s: float) -> Iterator[np.ndarray]:
        av = _import_av(self.path)
        skip = int(round(offset_s * self.orig_sr))
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.audio[0]
                # Planar float at the native rate and layout: our own resampler does the rest.
                converter = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=self.orig_sr)
                pending: list[np.ndarray] = []
                pending_n = 0
                for frame in container.decode(stream):
                    for out in converter.resample(frame):
                        arr = out.to_ndarray().astype(np.float32, copy=False)
                        if skip:
                            drop = min(skip, arr.shape[1])
                            arr, skip = arr[:, drop:], skip - drop
                        if arr.shape[1]:
                            pending.append(arr)
                            pending_n += arr.shape[1]
                    if pending_n >= _BLOCK_FRAMES:
                        yield np.concatenate(pending, axis=1)
                        pending, pending_n = [], 0
                for out in converter.resample(None):
                    pending.append(out.to_ndarray().astype(np.float32, copy=False))
                if pending:
                    yield np.concatenate(pending, axis=1)
        except (av.error.DecoderNotFoundError, av.error.PatchWelcomeError) as exc:
            raise AudioDecodeError(self.path, f"unsupported codec ({exc})", "convert it to WAV or FLAC with ffmpeg") from exc
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(self.path, f"decode failed: {exc}", "the file is corrupt or truncated; re-export it") from exc

    def chunks(self, chunk_s: float, target_sr: int = TARGET_SR, *,
               timings: dict[str, float] | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Yield ``(offset_s, samples (C, n))`` at ``target_sr``; every chunk but the last has exactly
        ``round(chunk_s * target_sr)`` samples, so chunk offsets are exact multiples of ``chunk_s``.

        ``timings``, if given, accumulates seconds spent in ``'decode'`` and ``'resample'``.
        """
        chunk_n = int(round(chunk_s * target_sr))
        if chunk_n <= 0:
            raise ValueError(f"chunk_s must be positive (got {chunk_s})")
        resample = _Resampler(self.orig_sr, target_sr, self.channels)
        times = timings if timings is not None else {}
        times.setdefault("decode", 0.0)
        times.setdefault("resample", 0.0)
        buf = np.empty((self.channels, chunk_n), np.float32)
        fill = 0
        emitted = 0
        source = self.blocks()
        while True:
            t0 = time.perf_counter()
            block = next(source, None)
            t1 = time.perf_counter()
            times["decode"] += t1 - t0
            last = block is None
            out = resample(np.zeros((self.channels, 0), np.float32) if last else block, last=last)
            times["resample"] += time.perf_counter() - t1
            pos = 0
            while pos < out.shape[1]:
                take = min(chunk_n - fill, out.shape[1] - pos)
                buf[:, fill:fill + take] = out[:, pos:pos + take]
                fill += take
                pos += take
                if fill == chunk_n:
                    yield emitted / target_sr, buf
                    emitted += chunk_n
                    buf = np.empty((self.channels, chunk_n), np.float32)
                    fill = 0
            if last:
                break
        if emitted == 0 and fill == 0:
            raise AudioDecodeError(self.path, "contains no audio samples (zero length)", "re-export or re-copy the recording")
        if fill:
            yield emitted / target_sr, buf[:, :fill]


def _import_av(path: Path) -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a declared dependency
        raise AudioDecodeError(path, "needs FFmpeg decoding but PyAV is not installed", "pip install av") from exc
    return av


def open_audio(path: str | Path) -> AudioStream:
    """Open and probe ``path`` (raises :class:`AudioDecodeError` for unusable files)."""
    return AudioStream(path)


def iter_audio_chunks(path: str | Path, chunk_s: float, target_sr: int = TARGET_SR) -> Iterator[tuple[float, np.ndarray]]:
    """Stream ``path`` as ``(offset_s, samples (C, n) float32)`` chunks at ``target_sr``.

    Memory stays proportional to ``chunk_s`` whatever the file's length.
    """
    yield from AudioStream(path).chunks(chunk_s, target_sr)


def load_audio(path: str | Path, *, target_sr: int = TARGET_SR, offset: float = 0.0, duration: float | None = None) -> AudioData:
    """Decode ``path`` (from ``offset`` s, at most ``duration`` s) into (C, n) float32 at ``target_sr``.

    Raises :class:`AudioDecodeError` for every unusable file; audio shorter than
    :data:`MIN_DURATION_S` is rejected because the frame model cannot embed it.
    """
    stream = AudioStream(path)
    if offset < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"offset must be >= 0 and duration > 0 (got {offset}, {duration})")
    want = None if duration is None else int(math.ceil(duration * stream.orig_sr))
    resample = _Resampler(stream.orig_sr, target_sr, stream.channels)
    parts: list[np.ndarray] = []
    got = 0
    for block in stream.blocks(offset):
        if want is not None:
            block = block[:, : want - got]
        got += block.shape[1]
        parts.append(resample(block))
        if want is not None and got >= want:
            break
    parts.append(resample(np.zeros((stream.channels, 0), np.float32), last=True))
    samples = np.concatenate(parts, axis=1) if parts else np.zeros((stream.channels, 0), np.float32)
    if duration is not None:
        samples = samples[:, : int(round(duration * target_sr))]
    if got == 0 or samples.shape[1] == 0:
        what = "contains no audio samples (zero length)" if offset == 0 else f"no audio after offset {offset:.2f} s"
        raise AudioDecodeError(stream.path, what, "re-export or re-copy the recording" if offset == 0 else "use a smaller offset")
    duration_s = samples.shape[1] / target_sr
    if offset == 0 and duration is None and duration_s < MIN_DURATION_S:
        raise AudioDecodeError(stream.path, f"too short ({duration_s * 1000:.0f} ms; at least {MIN_DURATION_S * 1000:.0f} ms is needed)",
                               "the frame model cannot analyse clips this short; drop or merge them")
    return AudioData(samples=np.ascontiguousarray(samples, dtype=np.float32), sr=target_sr, orig_sr=stream.orig_sr,
                     channels=stream.channels, duration_s=duration_s, path=str(stream.path))
