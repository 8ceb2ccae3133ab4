"""Decoding, resampling, streaming and bad-file errors of indexer.audio on real files."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.audio import MAX_CHANNELS, content_hash, iter_audio_chunks, load_audio, open_audio
from indexer.demo import write_encoded
from indexer.errors import AudioDecodeError
from tests.audio_factory import bad_corpus, call_signal, speech_signal, write_audio, write_wav_with_format_tag


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


def test_stereo_8k_wav_is_resampled_to_16k_per_channel(tmp_path):
    path = write_audio(tmp_path / "call.wav", np.stack([tone(440, 2, 8000), tone(1000, 2, 8000)]), 8000)
    audio = load_audio(path)
    assert audio.samples.shape == (2, 32000) and audio.samples.dtype == np.float32
    assert (audio.sr, audio.orig_sr, audio.channels) == (16000, 8000, 2)
    assert audio.duration_s == pytest.approx(2.0)
    assert peak_hz(audio.samples[0], 16000) == pytest.approx(440, abs=2)
    assert peak_hz(audio.samples[1], 16000) == pytest.approx(1000, abs=2)
    # A good resampler keeps the level of an in-band tone (steady-state part).
    assert np.abs(audio.samples[0, 4000:-4000]).max() == pytest.approx(0.5, abs=0.01)


def test_96k_input_is_band_limited_when_downsampled(tmp_path):
    # 12 kHz is above the 8 kHz Nyquist of the output: it must be filtered, not aliased to 4 kHz.
    path = write_audio(tmp_path / "hi.flac", tone(1000, 1, 96000) + tone(12000, 1, 96000), 96000, "PCM_24")
    out = load_audio(path).samples[0]
    spec = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(out.size, 1 / 16000)
    assert spec[np.argmin(np.abs(freqs - 4000))] < 1e-3 * spec.max()


@pytest.mark.parametrize("codec,suffix,channels", [("mp3", ".mp3", 2), ("aac", ".m4a", 2), ("opus", ".opus", 2), ("amr122", ".amr", 1)])
def test_compressed_formats_decode_through_pyav(tmp_path, codec, suffix, channels):
    x = np.stack([tone(500, 2, 8000, 0.3)] * channels)
    path = write_encoded(tmp_path / f"clip{suffix}", x, 8000, codec)
    audio = load_audio(path)
    assert audio.channels == channels
    assert audio.duration_s == pytest.approx(2.0, abs=0.25)  # codec priming and padding (AAC: 2 frames of 1024)
    assert peak_hz(audio.samples[0], 16000) == pytest.approx(500, abs=5)


def test_wrong_extension_is_decoded_by_content(tmp_path):
    path = write_audio(tmp_path / "really_flac.mp3", call_signal(1.0), 8000, None)
    assert load_audio(path).channels == 2


def test_8bit_and_offset_duration(tmp_path):
    path = write_audio(tmp_path / "u8.wav", tone(300, 3, 8000), 8000, "PCM_U8")
    full = load_audio(path)
    part = load_audio(path, offset=1.0, duration=0.5)
    assert part.samples.shape == (1, 8000)
    np.testing.assert_allclose(part.samples[0, 1000:7000], full.samples[0, 17000:23000], atol=0.02)


def test_chunks_are_exact_and_concatenate_to_the_whole_file(tmp_path):
    path = write_audio(tmp_path / "long.wav", call_signal(23.0, seed=3), 8000)
    chunks = list(iter_audio_chunks(path, chunk_s=5.0))
    assert [off for off, _ in chunks] == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert all(c.shape == (2, 80000) for _, c in chunks[:-1])
    whole = np.concatenate([c for _, c in chunks], axis=1)
    ref = load_audio(path).samples
    assert whole.shape == ref.shape
    np.testing.assert_allclose(whole, ref, atol=1e-5)  # streaming resampling leaves no seams


def test_truncated_wav_trusts_decoded_samples_over_header(tmp_path):
    path = write_audio(tmp_path / "cut.wav", tone(400, 4, 8000), 8000)
    raw = path.read_bytes()
    path.write_bytes(raw[: 44 + 2 * 8000])  # header still claims 4 s; 1 s of samples remain
    assert load_audio(path).duration_s == pytest.approx(1.0)
    assert [c.shape[1] for _, c in iter_audio_chunks(path, chunk_s=10.0)] == [16000]


def test_eight_channels_are_kept_and_more_are_rejected(tmp_path):
    eight = write_audio(tmp_path / "8ch.wav", np.stack([speech_signal(0.5, 8000, c) for c in range(MAX_CHANNELS)]), 8000)
    assert load_audio(eight).samples.shape[0] == MAX_CHANNELS
    nine = write_audio(tmp_path / "9ch.wav", np.stack([speech_signal(0.5, 8000, c) for c in range(MAX_CHANNELS + 1)]), 8000)
    with pytest.raises(AudioDecodeError, match="9 channels"):
        load_audio(nine)


@pytest.mark.parametrize("kind,reason", [
    ("corrupt", "not a recognised audio format"),
    ("not_audio", "not a recognised audio format"),
    ("empty", "empty"),
    ("zero_length", "no audio samples"),
    ("nan_samples", "NaN/inf"),
    ("inf_samples", "NaN/inf"),
    ("unsupported_codec", "unsupported codec"),
    ("too_short", "too short"),
    ("channels_12", "12 channels"),
])
def test_bad_files_raise_decode_errors_naming_file_and_reason(tmp_path, kind, reason):
    files = bad_corpus(tmp_path, long_s=2.0)
    path, good = files[kind]
    assert not good
    with pytest.raises(AudioDecodeError, match=reason) as info:
        load_audio(path)
    assert info.value.path == str(path)
    assert info.value.fix  # every error says what to do


def test_corrupt_stream_after_valid_header_is_an_error(tmp_path):
    path, _ = bad_corpus(tmp_path, long_s=2.0)["corrupt_stream"]
    with pytest.raises(AudioDecodeError):
        load_audio(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(AudioDecodeError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioDecodeError, match="not found"):
        content_hash(tmp_path / "nope.wav")
    locked = write_audio(tmp_path / "locked.wav", tone(300, 1, 8000), 8000)
    locked.chmod(0)
    import os

    if os.access(locked, os.R_OK):
        pytest.skip("running as root: chmod 000 does not make files unreadable")
    with pytest.raises(AudioDecodeError, match="permission denied"):
        load_audio(locked)
    with pytest.raises(AudioDecodeError, match="permission denied"):
        content_hash(locked)


def test_content_hash_follows_content_not_name(tmp_path):
    a = write_audio(tmp_path / "a.wav", tone(300, 1, 8000), 8000)
    b = tmp_path / "b.wav"
    b.write_bytes(a.read_bytes())
    assert content_hash(a) == content_hash(b) and len(content_hash(a)) == 64
    write_audio(b, tone(301, 1, 8000), 8000)
    assert content_hash(a) != content_hash(b)


def test_unknown_wav_format_tag_names_the_codec_problem(tmp_path):
    with pytest.raises(AudioDecodeError, match="unsupported codec"):
        open_audio(write_wav_with_format_tag(tmp_path / "x.wav", tag=0x7777))


@pytest.mark.parametrize("kind", ["noise", "clipping", "dropouts", "codec", "echo"])
def test_demo_degradations_change_only_their_stretch(kind):
    from indexer.demo import degrade

    x = speech_signal(4.0, 8000, seed=1)
    y = degrade(x, kind, 1.0, 2.5, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y[:8000], x[:8000])
    np.testing.assert_array_equal(y[20000:], x[20000:])
    assert np.abs(y[8000:20000] - x[8000:20000]).mean() > 1e-3


def test_codec_roundtrip_is_aligned_with_its_input():
    from indexer.demo import codec_roundtrip

    x = tone(300, 2, 8000, 0.3)
    y = codec_roundtrip(x, 8000, "amr122")
    assert y.shape == x.shape
    assert np.corrcoef(x[2000:-2000], y[2000:-2000])[0, 1] > 0.9
