"""Codec helpers and the offline demo archive (see :func:`generate_demo_archive`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from indexer.errors import ConfigError

# (codec, container) pairs PyAV can write here; keys are the names the demo and tests use.
CODECS: dict[str, tuple[str, str, int | None]] = {
    "amr": ("libopencore_amrnb", "amr", 4750),  # AMR-NB at its lowest mode: audible codec damage
    "amr122": ("libopencore_amrnb", "amr", 12200),
    "g726": ("g726", "wav", 16000),
    "mulaw": ("pcm_mulaw", "wav", None),
    "opus": ("libopus", "ogg", 12000),
    "aac": ("aac", "mp4", 24000),
    "mp3": ("libmp3lame", "mp3", 32000),
}


def encode_audio(samples: np.ndarray, sr: int, codec: str) -> bytes:
    """Encode (C, n) or (n,) float samples in [-1, 1] with one of :data:`CODECS`; returns file bytes."""
    import av

    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}", f"use one of {', '.join(CODECS)}")
    name, fmt, bit_rate = CODECS[codec]
    x = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    layout = "mono" if x.shape[0] == 1 else "stereo"
    if x.shape[0] > 2:
        raise ConfigError("encode_audio writes mono or stereo only", "pass at most two channels")
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(name, rate=sr)
        stream.layout = layout
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def write_encoded(path: str | Path, samples: np.ndarray, sr: int, codec: str) -> Path:
    """Write ``samples`` encoded with ``codec`` to ``path`` (the extension is up to the caller)."""
    path = Path(path)
    path.write_bytes(encode_audio(samples, sr, codec))
    return path


def codec_roundtrip(samples: np.ndarray, sr: int, codec: str) -> np.ndarray:
    """Encode then decode mono ``samples`` (n,) with ``codec``; same length and rate as the input."""
    import av

    data = encode_audio(samples, sr, codec)
    out: list[np.ndarray] = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        for frame in container.decode(stream):
            for f in resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            out.append(f.to_ndarray().reshape(-1))
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    n = len(samples)
    # Codecs add a priming delay; align by cross-correlation on a short window, then trim/pad.
    lag = _delay(np.asarray(samples, np.float32), y, max_lag=min(2048, len(y)))
    y = y[lag:lag + n]
    return np.pad(y, (0, n - len(y))).astype(np.float32)


def _delay(x: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """Lag (samples) by which ``y`` trails ``x``, searched in [0, max_lag)."""
    if max_lag <= 1 or len(x) == 0:
        return 0
    n = min(len(x), len(y) - max_lag, 16000)
    if n <= 0:
        return 0
    ref = x[:n]
    scores = [float(np.dot(ref, y[lag:lag + n])) for lag in range(max_lag)]
    return int(np.argmax(scores))
