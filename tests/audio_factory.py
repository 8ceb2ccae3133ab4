"""Small real audio for tests: speech-like signals and the files written from them.

Signals are made with numpy and written with soundfile (PyAV for compressed codecs), so tests run
on real decodable files without shipped recordings; ``bad_corpus`` writes one file of each bad kind
the indexer must survive.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np


def speech_signal(seconds: float, sr: int = 8000, seed: int = 0, pitch: float | None = None,
                  pauses: bool = True) -> np.ndarray:
    """Mono speech-like signal: gliding harmonic voice, syllable envelope, pauses, faint noise.

    ``pitch`` sets the voice's mean f0 in Hz (default: 100-130 Hz, drawn from ``seed``); without
    ``pauses`` the syllables run on, so a VAD finds speech all along."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    base = 100 + 30 * rng.random()
    f0 = (base if pitch is None else pitch) + 20 * np.sin(2 * np.pi * (0.5 + rng.random()) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase + rng.random()) / k for k in range(1, 15) if k * f0.max() < sr / 2)
    envelope = np.clip(np.sin(2 * np.pi * (3 + rng.random()) * t), 0, None) ** 2
    if pauses:
        envelope *= (np.sin(2 * np.pi * 0.3 * t + rng.random() * 6) > -0.6)  # pauses between phrases
    return (0.2 * voice * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def write_audio(path: Path, data: np.ndarray, sr: int, subtype: str | None = "PCM_16") -> Path:
    """Write (n,) or (C, n) samples; subtype None lets soundfile pick (FLAC/OGG)."""
    import soundfile as sf

    data = np.asarray(data)
    sf.write(str(path), data.T if data.ndim == 2 else data, sr, subtype=subtype)
    return Path(path)


def call_signal(seconds: float = 4.0, sr: int = 8000, seed: int = 0, noise_span: tuple[float, float] | None = None,
            noise_channel: int = 1) -> np.ndarray:
    """(2, n) call: agent and customer speech; ``noise_span`` adds loud white noise on one channel."""
    x = np.stack([speech_signal(seconds, sr, seed), speech_signal(seconds, sr, seed + 1000)])
    if noise_span is not None:
        a, b = (int(v * sr) for v in noise_span)
        x[noise_channel, a:b] += 0.3 * np.random.default_rng(seed).standard_normal(b - a).astype(np.float32)
    return np.clip(x, -1, 1)


def write_speechlike_wav(path: Path, seconds: float = 3.0, sr: int = 8000, channels: int = 2, seed: int = 0,
                         clip_level: float | None = None) -> Path:
    """Write a speech-like WAV, one voice per channel; ``clip_level``: amplified 4x and hard-clipped there."""
    x = np.stack([speech_signal(seconds, sr, seed + 1000 * ch) for ch in range(channels)])
    if clip_level is not None:
        x = np.clip(4 * x, -clip_level, clip_level)
    return write_audio(path, x if channels > 1 else x[0], sr)


def write_wav_with_format_tag(path: Path, tag: int = 0x3039, sr: int = 8000, seconds: float = 1.0) -> Path:
    """A RIFF/WAVE file whose fmt chunk names a codec no decoder knows."""
    data = (speech_signal(seconds, sr) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", tag, 1, sr, sr * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def bad_corpus(root: Path, long_s: float = 150.0) -> dict[str, tuple[Path, bool]]:
    """One file per bad-file kind (and the edge cases that must index): name -> (path, should_index)."""
    from indexer.demo import write_encoded

    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, bool]] = {}
    call = call_signal(3.0, seed=7, noise_span=(1.0, 2.0))
    files["good_8k_stereo"] = (write_audio(root / "good_8k_stereo.wav", call, 8000), True)
    (root / "corrupt.wav").write_bytes(np.random.default_rng(1).bytes(4000))
    files["corrupt"] = (root / "corrupt.wav", False)
    trunc = root / "truncated.flac"
    write_audio(trunc, call, 8000, None)
    raw = trunc.read_bytes()
    trunc.write_bytes(raw[:200] + np.random.default_rng(2).bytes(len(raw) - 200))  # garbage after the header
    files["corrupt_stream"] = (trunc, False)
    (root / "empty.wav").write_bytes(b"")
    files["empty"] = (root / "empty.wav", False)
    files["zero_length"] = (write_audio(root / "zero_length.wav", np.zeros((2, 0), np.float32), 8000), False)
    nan = call.copy()
    nan[0, 5000] = np.nan
    files["nan_samples"] = (write_audio(root / "nan_samples.wav", nan, 8000, "FLOAT"), False)
    inf = call.copy()
    inf[1, 100] = np.inf
    files["inf_samples"] = (write_audio(root / "inf_samples.wav", inf, 8000, "FLOAT"), False)
    files["wrong_extension"] = (write_audio(root / "flac_named_as.mp3", call, 8000, None), True)
    (root / "text_named_as.wav").write_text("this is not audio\n" * 50)
    files["not_audio"] = (root / "text_named_as.wav", False)
    files["unsupported_codec"] = (write_wav_with_format_tag(root / "unsupported_codec.wav"), False)
    files["too_short"] = (write_audio(root / "too_short.wav", speech_signal(0.05, 8000), 8000), False)
    files["bit8"] = (write_audio(root / "bit8.wav", call, 8000, "PCM_U8"), True)
    files["wb_96k"] = (write_audio(root / "wb_96k.flac", speech_signal(2.0, 96000, seed=3), 96000, "PCM_24"), True)
    eight = np.stack([speech_signal(1.5, 8000, seed=10 + c) for c in range(8)])
    files["channels_8"] = (write_audio(root / "channels_8.wav", eight, 8000), True)
    twelve = np.stack([speech_signal(1.0, 8000, seed=20 + c) for c in range(12)])
    files["channels_12"] = (write_audio(root / "channels_12.wav", twelve, 8000), False)
    files["amr"] = (write_encoded(root / "codec.amr", call[0], 8000, "amr122"), True)
    files["mp3"] = (write_encoded(root / "codec.mp3", call, 8000, "mp3"), True)
    # "Long": several streaming chunks of tone + silence, cheap to write (the 10 h one is in bench/).
    t = np.arange(int(long_s * 8000)) / 8000
    tone = (0.1 * np.sin(2 * np.pi * 300 * t) * (np.floor(t) % 2 == 0)).astype(np.float32)
    files["long"] = (write_audio(root / "long.wav", tone, 8000), True)
    locked = write_audio(root / "unreadable.wav", call, 8000)
    locked.chmod(0)
    if not os.access(locked, os.R_OK):  # root ignores permissions: then this kind cannot be tested
        files["unreadable"] = (locked, False)
    else:
        locked.chmod(0o644)
        locked.unlink()
    return files


def write_archive(root: Path, n: int = 3, seconds: float = 4.0, sr: int = 8000, first_seed: int = 0) -> list[Path]:
    """``n`` stereo call WAVs (every other one with loud noise on the customer channel)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        span = (seconds * 0.3, seconds * 0.7) if i % 2 else None
        paths.append(write_audio(root / f"call_{first_seed + i:03d}.wav", call_signal(seconds, sr, seed=first_seed + i, noise_span=span), sr))
    return paths
