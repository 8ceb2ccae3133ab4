"""Degradation catalogs: every entry returns finite float32 of the input's length and changes it."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.training.catalog import (
    SR,
    PyAVCodec,
    Resources,
    class_names,
    has_pyav_encoder,
    training_catalog,
)
from indexer.training.heldout import heldout_catalog
from tests.audio_factory import speech_signal


@pytest.fixture(scope="module")
def resources() -> Resources:
    rng = np.random.default_rng(0)
    return Resources(
        speech=[speech_signal(2.0, SR, s, pitch=90 + 30 * s) for s in range(4)],
        ambience=[(0.1 * np.cumsum(rng.standard_normal(SR * 2)) / 50).astype(np.float32)],
        music=[(0.3 * np.sin(2 * np.pi * 440 * np.arange(SR * 2) / SR)).astype(np.float32)],
        rirs=[],  # reverb then simulates a room with pyroomacoustics
    )


TRAIN_NAMES = [d.name for d in training_catalog(Resources(), include_unavailable=True)]
HELDOUT_NAMES = [d.name for d in heldout_catalog(Resources(), include_unavailable=True)]


def _entry(catalog: str, name: str, resources: Resources):
    """The named entry of the 'train' or 'heldout' catalog; skips the test when its tool is missing."""
    entries = training_catalog(resources, include_unavailable=True) if catalog == "train" else \
        heldout_catalog(resources, include_unavailable=True)
    deg = {d.name: d for d in entries}[name]
    if not deg.available:
        pytest.skip(f"{deg.name}: its encoder/tool is not available on this machine")
    return deg


def _check(deg, x: np.ndarray) -> None:
    y = deg(x, SR, np.random.default_rng(3))
    assert y.dtype == np.float32
    assert y.shape == x.shape
    assert np.all(np.isfinite(y))
    change = float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))
    assert change > 0.01, f"{deg.name} left the signal (almost) unchanged: relative change {change:.4f}"
    assert isinstance(deg.params, dict) and deg.params, "drawn parameters must be recorded"


@pytest.mark.parametrize("name", TRAIN_NAMES)
def test_training_entry_returns_finite_float32_of_same_length_and_changes_signal(name, resources):
    _check(_entry("train", name, resources), speech_signal(0.75, SR, 1))


@pytest.mark.parametrize("name", HELDOUT_NAMES)
def test_heldout_entry_returns_finite_float32_of_same_length_and_changes_signal(name, resources):
    _check(_entry("heldout", name, resources), speech_signal(0.75, SR, 2))


SINGLES = [("train", n) for n in TRAIN_NAMES if "+" not in n] + [("heldout", n) for n in HELDOUT_NAMES if "+" not in n]


@pytest.mark.parametrize(("catalog", "name"), SINGLES)
def test_entry_is_repeatable_for_a_seed_so_a_rebuilt_benchmark_holds_the_same_audio(catalog, name, resources):
    deg = _entry(catalog, name, resources)
    x = speech_signal(0.75, SR, 4)
    first, again = deg(x, SR, np.random.default_rng(5)), deg(x, SR, np.random.default_rng(5))
    np.testing.assert_array_equal(first, again)


def test_catalogs_have_16_plus_singles_and_sorted_pair_names():
    cat = training_catalog(Resources(), include_unavailable=True)
    singles = [d.name for d in cat if "+" not in d.name]
    pairs = [d.name for d in cat if "+" in d.name]
    assert len(singles) >= 16 and pairs
    assert all(p.split("+") == sorted(p.split("+")) for p in pairs)
    assert len(set(d.name for d in cat)) == len(cat)
    assert class_names(cat)[0] == "clean"
    held = {d.name for d in heldout_catalog(Resources(), include_unavailable=True) if "+" not in d.name}
    assert held == set(singles), "the held-out catalog covers the same kinds"


@pytest.mark.parametrize("codec,container,codec_sr,bit_rate", [
    ("libmp3lame", "mp3", 16000, 24000), ("libopencore_amrnb", "amr", 8000, 12200), ("libopus", "ogg", 16000, 16000),
])
def test_codec_output_is_realigned_to_input(codec, container, codec_sr, bit_rate):
    if not has_pyav_encoder(codec):
        pytest.skip(f"PyAV wheel has no {codec} encoder")
    x = speech_signal(1.0, SR, 5)
    y = PyAVCodec("c", codec, container, codec_sr, (bit_rate,))(x, SR, np.random.default_rng(0))
    ref = x
    if codec_sr == 8000:  # compare within the band the codec keeps
        from indexer.training.catalog import _butter
        ref = _butter(x, SR, "lowpass", 3400, 8)
    lags = range(-40, 41)
    corr = [np.dot(ref[60:-60], np.roll(y, k)[60:-60]) for k in lags]
    assert abs(list(lags)[int(np.argmax(corr))]) <= 2, "encoder delay must be removed"
