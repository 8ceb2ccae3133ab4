"""Training-time augmentations: what they change in the features and what they leave alone."""

from __future__ import annotations

import numpy as np
import torch

from indexer.features import SAMPLE_RATE, log_mel, mel_band_centres
from indexer.training.augment import freq_mixstyle, vtlp_warp


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


def _noise_feats(n: int, *, band_limited: bool, seed: int) -> torch.Tensor:
    """Log-mel features of 1 s of white noise per example, at a random level; band-limited examples
    are emptied above 4 kHz as an 8 kHz file is."""
    g = torch.Generator().manual_seed(seed)
    spec = torch.fft.rfft(torch.randn(n, SAMPLE_RATE, generator=g), dim=1)
    if band_limited:
        spec[:, torch.fft.rfftfreq(SAMPLE_RATE, 1.0 / SAMPLE_RATE) > 4000.0] = 0
    level = torch.pow(10.0, torch.rand(n, 1, generator=g) * -2.0)
    return log_mel(torch.fft.irfft(spec, n=SAMPLE_RATE, dim=1) * level)


def test_freq_mixstyle_with_p_zero_leaves_the_features_unchanged():
    feats = _noise_feats(4, band_limited=False, seed=0)
    assert torch.equal(freq_mixstyle(feats, torch.zeros(4, dtype=torch.bool), p=0.0), feats)


def test_freq_mixstyle_gives_each_band_a_mean_between_its_own_and_another_clips():
    torch.manual_seed(0)
    feats = _noise_feats(16, band_limited=False, seed=1)
    out = freq_mixstyle(feats, torch.zeros(16, dtype=torch.bool), p=1.0)
    own, new = feats.mean(2), out.mean(2)
    lo, hi = own.min(0).values, own.max(0).values
    assert torch.all(new >= lo - 1e-3) and torch.all(new <= hi + 1e-3)
    assert (new - own).abs().max() > 0.5  # levels 0 to -20 dB apart: some clip took on another's


def test_freq_mixstyle_never_mixes_a_wideband_clip_with_a_narrowband_one():
    torch.manual_seed(1)
    feats = torch.cat([_noise_feats(8, band_limited=False, seed=2), _noise_feats(8, band_limited=True, seed=3)])
    narrow = torch.tensor([False] * 8 + [True] * 8)
    out = freq_mixstyle(feats, narrow, p=1.0)
    above = mel_band_centres() > 4300.0
    # Wideband clips keep their energy above 4 kHz; narrowband clips stay (all but) empty there.
    wide_above, narrow_above = feats[:8][:, above].mean(), feats[8:][:, above].mean()
    assert out[:8][:, above].mean(dim=(1, 2)).min() > narrow_above + 5.0
    assert out[8:][:, above].mean(dim=(1, 2)).max() < wide_above - 5.0


def test_freq_mixstyle_keeps_a_louder_region_louder_than_the_rest_of_its_clip():
    torch.manual_seed(2)
    feats = _noise_feats(8, band_limited=False, seed=4)
    feats[:, :, 40:60] += 2.3  # a 10 dB louder region, as a degraded stretch stands out
    out = freq_mixstyle(feats, torch.zeros(8, dtype=torch.bool), p=1.0)
    contrast = out[:, :, 40:60].mean(2) - torch.cat([out[:, :, :40], out[:, :, 60:]], dim=2).mean(2)
    assert torch.all(contrast > 0)
