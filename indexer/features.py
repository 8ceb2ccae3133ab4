"""Log-mel features computed with torch ops (batched, no per-file Python loops)."""

from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP = 160  # 10 ms hop -> 100 feature frames per second
N_MELS = 64
MEL_FMIN = 20.0


@lru_cache(maxsize=4)
def _mel_basis(n_mels: int, n_fft: int) -> torch.Tensor:
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels, fmin=MEL_FMIN, fmax=SAMPLE_RATE / 2)
    return torch.from_numpy(basis.astype(np.float32))


@lru_cache(maxsize=4)
def mel_band_centres(n_mels: int = N_MELS) -> torch.Tensor:
    """Centre frequency (Hz) of each of :func:`log_mel`'s ``n_mels`` bands, lowest first."""
    edges = librosa.mel_frequencies(n_mels=n_mels + 2, fmin=MEL_FMIN, fmax=SAMPLE_RATE / 2)
    return torch.from_numpy(edges[1:-1].astype(np.float32))


@lru_cache(maxsize=4)
def _window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)


def log_mel(audio: torch.Tensor, n_mels: int = N_MELS, n_fft: int = N_FFT) -> torch.Tensor:
    """(B, N) float waveform at 16 kHz -> (B, n_mels, 1 + N // HOP) natural-log mel power.

    ``n_fft`` is the analysis window in samples (400: 25 ms); the hop is always ``HOP`` (10 ms).
    """
    spec = torch.stft(audio, n_fft, HOP, window=_window(n_fft), center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(_mel_basis(n_mels, n_fft), power)
    return torch.log(mel + 1e-6)


def frame_power_db(x: np.ndarray, n: int, hop: int) -> np.ndarray:
    """Mean power in dB (floor -120 dB) of each of ``n`` frames of ``hop`` samples of ``x``,
    zero-padded or cut at the end to ``n * hop`` samples."""
    padded = np.zeros(n * hop, np.float64)
    padded[: min(x.size, n * hop)] = x[: n * hop]
    return 10.0 * np.log10(np.mean(padded.reshape(n, hop) ** 2, axis=1) + 1e-12)
