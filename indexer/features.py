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


@lru_cache(maxsize=1)
def _mel_basis() -> torch.Tensor:
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=MEL_FMIN, fmax=SAMPLE_RATE / 2)
    return torch.from_numpy(basis.astype(np.float32))


@lru_cache(maxsize=1)
def mel_band_centres() -> torch.Tensor:
    """Centre frequency (Hz) of each of :func:`log_mel`'s ``N_MELS`` bands, lowest first."""
    edges = librosa.mel_frequencies(n_mels=N_MELS + 2, fmin=MEL_FMIN, fmax=SAMPLE_RATE / 2)
    return torch.from_numpy(edges[1:-1].astype(np.float32))


@lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT)


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """(B, N) float waveform at 16 kHz -> (B, N_MELS, 1 + N // HOP) natural-log mel power."""
    spec = torch.stft(audio, N_FFT, HOP, window=_window(), center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(_mel_basis(), power)
    return torch.log(mel + 1e-6)
