"""Training-time augmentations that make the model treat the recording chain as a nuisance."""

from __future__ import annotations

import numpy as np
import torch

from indexer.features import SAMPLE_RATE, mel_band_centres


def channel_augment(feats: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random smooth EQ (+-6 dB) and level shift (+-10 dB) per example, on natural-log mel power.

    Makes the model treat microphone/channel colouring and level as nuisances (MODEL_NOTES: it
    improved segment metrics and did not hurt detection).
    """
    b, m, _ = feats.shape
    db_to_ln = float(np.log(10.0) / 10.0)
    anchors = (torch.rand(b, 1, 6, generator=generator) * 12.0 - 6.0) * db_to_ln
    eq = torch.nn.functional.interpolate(anchors, size=m, mode="linear", align_corners=True).transpose(1, 2)
    level = (torch.rand(b, 1, 1, generator=generator) * 20.0 - 10.0) * db_to_ln
    return feats + eq + level


def noise_floor(audio: torch.Tensor, narrowband: torch.Tensor, *, p: float = 0.5,
                snr_db: tuple[float, float] = (35.0, 60.0), generator: torch.Generator | None = None) -> torch.Tensor:
    """Add a faint coloured noise floor (white to brown) to a random ``p`` of the clips, labels unchanged.

    Real lines and microphones always carry some hiss or hum far below the speech; without this the
    model's built-in clean enrollment flagged a -56 dBFS line-noise floor as degraded everywhere.
    The floor sits ``snr_db`` below the clip's power, well above the catalog's noise classes
    (0-25 dB SNR), so it never imitates them. Narrowband clips (``narrowband`` True) get a floor
    band-limited to 4 kHz, as one added before the telephone channel's 8 kHz sampling would be.
    """
    b, n = audio.shape
    spec = torch.fft.rfft(torch.randn(b, n, generator=generator), dim=1)
    freqs = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE).clamp(min=20.0)
    exponent = torch.rand(b, 1, generator=generator) * 2.0  # 0 white, 1 pink, 2 brown
    spec = spec * freqs.pow(-exponent / 2.0)
    spec = spec * ~(narrowband.view(b, 1) & (freqs > 4000.0))
    noise = torch.fft.irfft(spec, n=n, dim=1)
    noise = noise / noise.square().mean(1, keepdim=True).sqrt().clamp(min=1e-12)
    snr = snr_db[0] + torch.rand(b, 1, generator=generator) * (snr_db[1] - snr_db[0])
    level = audio.square().mean(1, keepdim=True).sqrt() * torch.pow(10.0, -snr / 20.0)
    keep = (torch.rand(b, 1, generator=generator) < p).float()
    return audio + keep * level * noise


def vtlp_warp(feats: torch.Tensor, narrowband: torch.Tensor, *, max_warp: float = 0.08,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Vocal-tract-length perturbation of :func:`~indexer.features.log_mel` features: each example's
    frequency axis scaled by a random factor in ``1 +- max_warp``, labels unchanged.

    Scaling the spectral envelope is how speakers' vocal tracts differ, so the model learns it as a
    nuisance, as it learns the channel's EQ. The warp is piecewise linear with the band's top as a
    fixed point (Kaldi's VTLP), so nothing moves above 4 kHz in a narrowband clip (an 8 kHz file
    never has energy there) or past 8 kHz in a wideband one. The default stays below the catalog's
    mildest pitch shift (1.5 semitones, a factor of 1.09), which moves pitch and envelope together.
    """
    b, m, _ = feats.shape
    centres = mel_band_centres(m)
    alpha = 1.0 + (torch.rand(b, 1, generator=generator) * 2.0 - 1.0) * max_warp
    top = torch.where(narrowband.view(b, 1), torch.tensor(4000.0), torch.tensor(SAMPLE_RATE / 2))
    knee = 0.8 * top
    f = centres.view(1, m)
    # Each output band reads the input at the frequency the warp maps onto it.
    src = torch.where(f < knee, f / alpha, knee / alpha + (f - knee) * (top - knee / alpha) / (top - knee))
    src = torch.where(f < top, src, f)
    hi = torch.searchsorted(centres, src.contiguous()).clamp(1, m - 1)
    lo = hi - 1
    w = ((src - centres[lo]) / (centres[hi] - centres[lo])).clamp(0.0, 1.0).unsqueeze(-1)
    below = torch.gather(feats, 1, lo.unsqueeze(-1).expand_as(feats))
    above = torch.gather(feats, 1, hi.unsqueeze(-1).expand_as(feats))
    return below * (1.0 - w) + above * w


def freq_mixstyle(feats: torch.Tensor, narrowband: torch.Tensor, *, p: float = 0.5, alpha: float = 0.3) -> torch.Tensor:
    """Frequency-wise MixStyle (Schmid et al., DCASE 2022) on :func:`~indexer.features.log_mel`
    features: in a random ``p`` of the examples, each mel band is normalised by its own mean and
    standard deviation over time and given a mix of its own and another example's, with the mixing
    weight drawn from Beta(``alpha``, ``alpha``); labels unchanged.

    A band's mean and spread over a clip carry the speaker's and the microphone's colouring, so the
    model sees other real speakers' colourings on the same content (where ``channel_augment`` draws
    random smooth ones). Partners come from the same channel (``narrowband`` flag), so a wideband
    clip never takes on a narrowband clip's empty bands above 4 kHz. The statistics are the whole
    clip's and the map is affine per band, so a degraded region keeps its contrast with the clean
    speech around it. Draws from torch's global generator (``torch.distributions`` takes no other).
    """
    b = feats.shape[0]
    partner = torch.arange(b)
    for group in (narrowband, ~narrowband):
        members = torch.nonzero(group, as_tuple=False).view(-1)
        partner[members] = members[torch.randperm(members.numel())]
    mu = feats.mean(dim=2, keepdim=True)
    sig = (feats.var(dim=2, keepdim=True) + 1e-6).sqrt()
    lam = torch.distributions.Beta(alpha, alpha).sample((b, 1, 1))
    mixed = (feats - mu) / sig * (lam * sig + (1 - lam) * sig[partner]) + lam * mu + (1 - lam) * mu[partner]
    apply = torch.rand(b, 1, 1) < p
    return torch.where(apply, mixed, feats)
