"""Training-time augmentations: what they change in the features and what they leave alone."""

from __future__ import annotations

import numpy as np
import torch

from indexer.features import SAMPLE_RATE, log_mel, mel_band_centres
from indexer.training.augment import vtlp_warp



def _tone_feats(freq: float, n: int = 2) -> torch.Tensor:
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    return log_mel(torch.sin(2 * np.pi * freq * t).repeat(n, 1) * 0.3)


def _peak_hz(feats: torch.Tensor) -> np.ndarray:
    """Power-weighted centre frequency of the loudest mel bands of each example."""
    mean = feats.mean(2)
    top = mean >= mean.max(1, keepdim=True).values - 3.0
    weights = torch.exp(mean) * top
    return ((weights * mel_band_centres()).sum(1) / weights.sum(1)).numpy()


def test_vtlp_without_warp_leaves_the_features_unchanged():
    feats = _tone_feats(1000.0)
    out = vtlp_warp(feats, torch.tensor([False, True]), max_warp=0.0)
    assert torch.allclose(out, feats, atol=1e-5)


def test_vtlp_moves_a_tone_by_the_drawn_factor_and_stays_within_the_bound():
    feats = _tone_feats(1500.0, n=64)
    out = vtlp_warp(feats, torch.zeros(64, dtype=torch.bool), max_warp=0.1, generator=torch.Generator().manual_seed(0))
    ratio = _peak_hz(out) / _peak_hz(feats)
    assert ratio.min() > 0.88 and ratio.max() < 1.12  # 1 +- 0.1, with the bands' interpolation
    assert ratio.max() - ratio.min() > 0.1  # the factor is drawn per example, not once per batch


def test_vtlp_keeps_a_narrowband_clip_empty_above_4khz():
    feats = _tone_feats(3900.0, n=32)  # just under the narrowband edge
    out = vtlp_warp(feats, torch.ones(32, dtype=torch.bool), max_warp=0.1, generator=torch.Generator().manual_seed(1))
    above = mel_band_centres() > 4300.0
    # Bands above 4 kHz are read unchanged: a warp never pushes the edge up into them.
    assert torch.equal(out[:, above], feats[:, above])
