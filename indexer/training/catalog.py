"""The training degradation catalog (audiomentations-style) and the codec helpers both catalogs use.

Each degradation is a class with ``name``, ``stage`` and ``__call__(samples, sample_rate, rng) ->
samples`` (float32, same length, finite); the parameters drawn by the last call are in ``params``.
``Pair`` applies two singles in stage order (source -> acoustic -> signal -> channel/codec) and is
its own class, named ``"a+b"`` with the names sorted. ``training_catalog(resources)`` returns the
full list (singles + a fixed seeded set of random pairs); ``CLASS_NAMES`` is index 0 ``clean``
followed by the catalog names, the order of ``classes.json`` in the shards.

Narrowband clean speech (telephone band, 8 kHz, G.711 at a normal level) is CLEAN, not a
degradation: the shards draw half their clean speech that way. So the band-limiting entries here
are narrower than the telephone band (``bandpass`` keeps roughly 400-1000 .. 1800-3000 Hz,
``lowpass`` cuts at 0.8-2.5 kHz) and ``g711`` is companding of a quiet signal (-55..-40 dBFS,
then brought back up), where its quantisation noise is what a listener hears on real lines.

Codecs run in process through PyAV where its wheel has the encoder (MP3, Opus, AMR-NB) and
through ffmpeg pipes where it does not (GSM, Speex, codec2); outputs are realigned to the input.
The held-out catalog (other implementations and ranges) is in :mod:`indexer.training.heldout`.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction
from math import gcd
from pathlib import Path

import numpy as np

from indexer.errors import DegsearchError

SR = 16000
class CodecUnavailable(DegsearchError):
    """The codec needed by a degradation is not available in PyAV or ffmpeg on this machine."""

    code = "codec_unavailable"


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (one signal or a batch of rows)."""
    from scipy.signal import resample_poly

    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    g = gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g, axis=-1).astype(np.float32)


def _envelope(x: np.ndarray, hop: int = 80) -> np.ndarray:
    n = x.size // hop
    e = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-10) if n else np.zeros(0)
    return np.repeat(e - e.mean(), hop).astype(np.float32)


def align_to(ref: np.ndarray, y: np.ndarray, max_lag: int = 4000, envelope: bool = False) -> np.ndarray:
    """Shift ``y`` so it lines up with ``ref`` (lag found by FFT cross-correlation) and fit its length.

    ``envelope=True`` correlates energy envelopes (5 ms hop) instead of waveforms: parametric codecs
    (codec2) do not keep the waveform's phase, only its envelope.
    """
    if envelope:
        return _shift(y, _lag_of(_envelope(ref), _envelope(y), max_lag), ref.size)
    return _shift(y, _lag_of(ref, y, max_lag), ref.size)


def _shift(y: np.ndarray, lag: int, n: int) -> np.ndarray:
    if lag > 0:
        y = y[lag:]
    elif lag < 0:
        y = np.concatenate([np.zeros(-lag, dtype=np.float32), y])
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, y.size)] = y[:n]
    return out


def _lag_of(ref: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    n = ref.size
    if y.size == 0:
        return 0
    m = min(n, y.size)
    size = 1 << int(np.ceil(np.log2(n + y.size)))
    c = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.concatenate([np.arange(0, min(max_lag, m)), np.arange(-min(max_lag, m) + 1, 0)])
    vals = c[lags % size]
    # Positive peak: codecs keep polarity; taking |c| would lock onto an anti-phase lag of voiced speech.
    return int(lags[int(np.argmax(vals))]) if np.any(vals) else 0


def has_pyav_encoder(name: str) -> bool:
    """True if the installed PyAV wheel can encode with codec ``name``."""
    try:
        import av

        av.codec.Codec(name, "w")
        return True
    except Exception:  # noqa: BLE001 - PyAV raises several types for unknown codecs
        return False


def has_ffmpeg_encoder(name: str) -> bool:
    """True if the ``ffmpeg`` binary lists encoder ``name``."""
    if shutil.which("ffmpeg") is None:
        return False
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=False).stdout
    return any(line.split()[1:2] == [name] for line in out.splitlines() if len(line.split()) > 1)


def pyav_roundtrip(x: np.ndarray, sr: int, codec: str, container: str, codec_sr: int,
                   bit_rate: int | None = None, options: dict | None = None) -> np.ndarray:
    """Encode ``x`` (float32 mono at ``sr``) with PyAV at ``codec_sr``, decode, return at ``sr``, aligned."""
    import av

    y = _resample(x, sr, codec_sr)
    pcm = (np.clip(y, -1, 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    try:
        out = av.open(buf, "w", format=container)
        st = out.add_stream(codec, rate=codec_sr)
    except Exception as exc:  # noqa: BLE001
        raise CodecUnavailable(f"PyAV cannot encode {codec}: {exc}", "install a PyAV wheel built with it") from exc
    st.layout = "mono"
    if bit_rate:
        st.bit_rate = bit_rate
    if options:
        st.options = {k: str(v) for k, v in options.items()}
    cc = st.codec_context
    cc.time_base = Fraction(1, codec_sr)
    resampler = av.AudioResampler(format=cc.format.name if cc.format else "s16", layout="mono", rate=codec_sr)
    frame_size = cc.frame_size or 1024
    pts = 0
    for start in range(0, pcm.size, frame_size):
        chunk = pcm[start: start + frame_size]
        if chunk.size < frame_size and cc.frame_size:
            chunk = np.concatenate([chunk, np.zeros(frame_size - chunk.size, dtype=np.int16)])
        fr = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        fr.sample_rate = codec_sr
        fr.pts = pts
        fr.time_base = Fraction(1, codec_sr)
        pts += chunk.size
        for rf in resampler.resample(fr):
            for pkt in st.encode(rf):
                out.mux(pkt)
    for pkt in st.encode(None):
        out.mux(pkt)
    out.close()
    buf.seek(0)
    dec = []
    with av.open(buf, "r", format=container) as inp:
        to_flt = av.AudioResampler(format="flt", layout="mono", rate=codec_sr)
        for frame in inp.decode(audio=0):
            for rf in to_flt.resample(frame):
                dec.append(rf.to_ndarray().reshape(-1))
    z = np.concatenate(dec).astype(np.float32) if dec else np.zeros(0, np.float32)
    return align_to(x, _resample(z, codec_sr, sr))


def ffmpeg_roundtrip(x: np.ndarray, sr: int, encoder_args: list[str], container: str, codec_sr: int,
                     envelope_align: bool = False) -> np.ndarray:
    """Encode/decode through two ffmpeg processes connected by pipes; return aligned float32 at ``sr``."""
    if shutil.which("ffmpeg") is None:
        raise CodecUnavailable("ffmpeg is not installed", "apt-get install ffmpeg")
    y = _resample(x, sr, codec_sr)
    enc = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "f32le", "-ar", str(codec_sr), "-ac", "1",
         "-i", "-", *encoder_args, "-ar", str(codec_sr), "-ac", "1", "-f", container, "-"],
        input=np.clip(y, -1, 1).astype(np.float32).tobytes(), capture_output=True, check=False)
    if enc.returncode != 0:
        raise CodecUnavailable(f"ffmpeg encode {' '.join(encoder_args)} failed: {enc.stderr.decode(errors='replace')[-200:]}",
                               "install Debian's ffmpeg (it has libgsm, libspeex, libcodec2)")
    dec = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", container,
         # raw G.711 streams carry no header: the decoder must be told rate and channels
         *(["-ar", str(codec_sr), "-ac", "1"] if container in ("alaw", "mulaw") else []), "-i", "-", "-f", "f32le",
         "-ar", str(codec_sr), "-ac", "1", "-"], input=enc.stdout, capture_output=True, check=False)
    if dec.returncode != 0:
        raise CodecUnavailable(f"ffmpeg decode {container} failed: {dec.stderr.decode(errors='replace')[-200:]}")
    z = np.frombuffer(dec.stdout, dtype=np.float32)
    return align_to(x, _resample(z, codec_sr, sr), envelope=envelope_align)


def g711_roundtrip(x: np.ndarray, law: str = "mu") -> np.ndarray:
    """G.711 companding in numpy (8-bit mu-law or A-law quantisation), same rate and length."""
    x = np.clip(x, -1, 1).astype(np.float64)
    if law == "mu":
        mu = 255.0
        y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
        q = np.round((y + 1) * 127.5) / 127.5 - 1
        return (np.sign(q) * ((1 + mu) ** np.abs(q) - 1) / mu).astype(np.float32)
    a = 87.6
    ax = np.abs(x)
    y = np.where(ax < 1 / a, a * ax / (1 + np.log(a)), (1 + np.log(np.maximum(a * ax, 1e-12))) / (1 + np.log(a)))
    q = np.round(y * 127) / 127
    inv = np.where(q < 1 / (1 + np.log(a)), q * (1 + np.log(a)) / a, np.exp(q * (1 + np.log(a)) - 1) / a)
    return (np.sign(x) * inv).astype(np.float32)


# ============================================================================ shared resources

@dataclass
class Resources:
    """Real recordings some degradations mix in: other speakers (babble), ambience, music, room IRs.

    Arrays are 16 kHz float32. Build from a prepared data dir with :meth:`from_data_dir`, or pass
    arrays directly (tests). An empty ``rirs`` list makes reverb simulate a room on the fly.
    """

    speech: list[np.ndarray] = field(default_factory=list)
    ambience: list[np.ndarray] = field(default_factory=list)
    music: list[np.ndarray] = field(default_factory=list)
    rirs: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, split: str = "train", max_speech: int = 300,
                      seed: int = 0) -> "Resources":
        """Load the pools of ``split`` ('train' or 'heldout'): real speech of that split for babble,
        that split's noise chunks and rooms (``rirs.npz`` keys ``train_*`` / ``heldout_*``)."""
        import soundfile as sf

        from indexer.training.corpus import load_manifest, load_noise_manifest

        data_dir = Path(data_dir)
        rng = random.Random(seed)
        rows = [r for r in load_manifest(data_dir) if r["split"] == split and r["source"] == "real"]
        rng.shuffle(rows)
        speech = [sf.read(str(data_dir / r["path"]), dtype="float32")[0] for r in rows[:max_speech]]
        noise = [r for r in load_noise_manifest(data_dir) if r["split"] == split]
        amb = [sf.read(str(data_dir / r["path"]), dtype="float32")[0] for r in noise if r["kind"] == "ambience"]
        mus = [sf.read(str(data_dir / r["path"]), dtype="float32")[0] for r in noise if r["kind"] == "music"]
        rirs: list[np.ndarray] = []
        if (data_dir / "rirs.npz").exists():
            with np.load(data_dir / "rirs.npz") as z:
                rirs = [z[k] for k in z.files if k.startswith(split)]
        return cls(speech=speech, ambience=amb, music=mus, rirs=rirs)


# ============================================================================ helpers

def active_power(x: np.ndarray) -> float:
    """Mean power of the louder half of 20 ms frames (speech level without pauses)."""
    hop = 320
    n = x.size // hop
    if n < 2:
        return float(np.mean(x**2) + 1e-12)
    p = np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1)
    return float(np.mean(np.sort(p)[n // 2:]) + 1e-12)


def mix_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` (tiled/cropped to len(x)) at ``snr_db`` below the speech's active power."""
    if noise.size < x.size:
        noise = np.tile(noise, int(np.ceil(x.size / max(noise.size, 1))))
    noise = noise[: x.size]
    pn = float(np.mean(noise**2) + 1e-12)
    gain = np.sqrt(active_power(x) / (pn * 10 ** (snr_db / 10)))
    y = x + gain * noise
    peak = float(np.max(np.abs(y)))
    return y / peak * 0.95 if peak > 0.99 else y


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    y = np.fft.irfft(spec / f ** (exponent / 2), n)
    return (y / (np.std(y) + 1e-12)).astype(np.float32)


def _crop(pool: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    src = pool[int(rng.integers(len(pool)))]
    if src.size <= n:
        return np.tile(src, int(np.ceil(n / max(src.size, 1))) + 1)[:n]
    start = int(rng.integers(0, src.size - n))
    return src[start: start + n]


def simulate_rir(rng: np.random.Generator, rt60: float, dims: tuple[float, float, float] | None = None) -> np.ndarray:
    """One room impulse response from pyroomacoustics (image method), peak-normalised."""
    import pyroomacoustics as pra

    d = np.array(dims) if dims is not None else np.array([rng.uniform(3, 12), rng.uniform(3, 10), rng.uniform(2.5, 4)])
    e_abs, max_order = pra.inverse_sabine(rt60, d)
    room = pra.ShoeBox(d, fs=SR, materials=pra.Material(e_abs), max_order=min(max_order, 12))
    room.add_source(rng.uniform(0.3, 0.7, 3) * d)
    room.add_microphone(rng.uniform(0.2, 0.8, 3) * d)
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float32)
    return h / (np.max(np.abs(h)) + 1e-9)


def convolve_rir(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Convolve with ``h`` keeping the direct path aligned and the input's level."""
    from scipy.signal import fftconvolve

    d = int(np.argmax(np.abs(h)))
    y = fftconvolve(x, h)[d: d + x.size]
    return (y * np.sqrt(active_power(x) / active_power(y))).astype(np.float32)


def _butter(x: np.ndarray, sr: int, kind: str, freq, order: int = 6) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(order, freq, btype=kind, fs=sr, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def level_match(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Scale ``y`` to ``x``'s active power (so loudness alone does not mark a region)."""
    return (y * np.sqrt(active_power(x) / active_power(y))).astype(np.float32)


# ============================================================================ degradations

class Degradation:
    """Base class: subclasses implement ``apply`` and record their draws in ``self.params``."""

    name: str = "degradation"
    stage: int = 2  # 0 source, 1 acoustic, 2 signal, 3 channel/codec: order inside a pair
    available: bool = True  # False when its codec is missing on this machine

    def __init__(self, resources: Resources | None = None) -> None:
        self.resources = resources or Resources()
        self.params: dict = {}

    def apply(self, x: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, samples: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32)
        self.params = {}
        y = np.asarray(self.apply(x, sample_rate, rng), dtype=np.float32)
        if y.size != x.size:  # safety net: every degradation must keep the length
            y = np.pad(y, (0, max(0, x.size - y.size)))[: x.size]
        return np.nan_to_num(np.clip(y, -1.0, 1.0), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class ColoredNoise(Degradation):
    stage = 1

    def __init__(self, name: str, exponent: float, snr_db: tuple[float, float] = (0.0, 25.0), resources=None) -> None:
        super().__init__(resources)
        self.name, self.exponent, self.snr_db = name, exponent, snr_db

    def apply(self, x, sr, rng):
        snr = float(rng.uniform(*self.snr_db))
        self.params = {"snr_db": round(snr, 2)}
        return mix_at_snr(x, colored_noise(x.size, self.exponent, rng), snr)


class Babble(Degradation):
    """3-7 other speakers' real speech summed (the pool is real recordings, never TTS)."""

    name, stage = "noise_babble", 1

    def __init__(self, resources=None, talkers=(3, 7), snr_db=(0.0, 20.0)) -> None:
        super().__init__(resources)
        self.talkers, self.snr_db = talkers, snr_db

    def apply(self, x, sr, rng):
        pool = self.resources.speech
        k = int(rng.integers(self.talkers[0], self.talkers[1] + 1))
        if pool:
            b = np.zeros(x.size, dtype=np.float32)
            for _ in range(k):
                talker = _crop(pool, x.size, rng)
                b += talker / np.sqrt(active_power(talker))
        else:  # no real speech pool: modulated speech-shaped noise stands in (tests only)
            b = colored_noise(x.size, 1.0, rng) * (1 + np.sin(np.arange(x.size) / sr * 2 * np.pi * 4))
        snr = float(rng.uniform(*self.snr_db))
        self.params = {"talkers": k, "snr_db": round(snr, 2)}
        return mix_at_snr(x, np.asarray(b, dtype=np.float32), snr)


class PoolNoise(Degradation):
    """Real ambience or music from the resources' pools at a random SNR."""

    stage = 1

    def __init__(self, name: str, pool: str, resources=None, snr_db=(0.0, 20.0)) -> None:
        super().__init__(resources)
        self.name, self.pool, self.snr_db = name, pool, snr_db

    def apply(self, x, sr, rng):
        pool = getattr(self.resources, self.pool)
        n = _crop(pool, x.size, rng) if pool else colored_noise(x.size, 1.5, rng)
        snr = float(rng.uniform(*self.snr_db))
        self.params = {"snr_db": round(snr, 2)}
        return mix_at_snr(x, n, snr)


class Clipping(Degradation):
    name, stage = "clipping", 2

    def apply(self, x, sr, rng):
        pct = float(rng.uniform(60, 97))
        thr = max(float(np.percentile(np.abs(x), pct)), 1e-4)
        self.params = {"percentile": round(pct, 1)}
        return level_match(x, np.clip(x, -thr, thr))


class GainJumps(Degradation):
    """Abrupt level steps every 100-400 ms (AGC faults, bad gain staging)."""

    name, stage = "gain_jumps", 2

    def apply(self, x, sr, rng):
        g = np.ones(x.size, dtype=np.float32)
        pos = 0
        depth = float(rng.uniform(8, 24))
        while pos < x.size:
            seg = int(rng.uniform(0.1, 0.4) * sr)
            g[pos: pos + seg] = 10 ** (rng.uniform(-depth, depth * 0.5) / 20)
            pos += seg
        self.params = {"depth_db": round(depth, 1)}
        return x * g


class BandPass(Degradation):
    name, stage = "bandpass", 3

    def apply(self, x, sr, rng):
        lo, hi = float(rng.uniform(400, 1000)), float(rng.uniform(1800, 3000))
        self.params = {"low_hz": round(lo), "high_hz": round(hi)}
        return level_match(x, _butter(x, sr, "bandpass", [lo, hi], 4))


class LowPass(Degradation):
    name, stage = "lowpass", 3

    def apply(self, x, sr, rng):
        fc = float(rng.uniform(800, 2500))
        self.params = {"cutoff_hz": round(fc)}
        return level_match(x, _butter(x, sr, "lowpass", fc, 8))


class PyAVCodec(Degradation):
    stage = 3

    def __init__(self, name: str, codec: str, container: str, codec_sr: int, bitrates: tuple[int, ...],
                 resources=None, options: dict | None = None) -> None:
        super().__init__(resources)
        self.name, self.codec, self.container, self.codec_sr = name, codec, container, codec_sr
        self.bitrates, self.options = bitrates, options
        self.available = has_pyav_encoder(codec)

    def apply(self, x, sr, rng):
        br = int(rng.choice(self.bitrates))
        self.params = {"codec": self.codec, "bit_rate": br, "codec_sr": self.codec_sr}
        return pyav_roundtrip(x, sr, self.codec, self.container, self.codec_sr, br, self.options)


class FFmpegCodec(Degradation):
    stage = 3

    def __init__(self, name: str, encoder: str, container: str, codec_sr: int,
                 variants: tuple[tuple[str, ...], ...], resources=None, envelope_align: bool = False) -> None:
        super().__init__(resources)
        self.name, self.encoder, self.container, self.codec_sr = name, encoder, container, codec_sr
        self.variants, self.envelope_align = variants, envelope_align
        self.available = has_ffmpeg_encoder(encoder)

    def apply(self, x, sr, rng):
        extra = list(self.variants[int(rng.integers(len(self.variants)))])
        self.params = {"encoder": self.encoder, "args": " ".join(extra)}
        return ffmpeg_roundtrip(x, sr, ["-c:a", self.encoder, *extra], self.container, self.codec_sr,
                                envelope_align=self.envelope_align)


class G711Quiet(Degradation):
    """mu-law G.711 on a signal 40-55 dB down, then brought back up: audible granular noise."""

    name, stage = "g711", 3

    def apply(self, x, sr, rng):
        att = float(rng.uniform(40, 55))
        peak = float(np.max(np.abs(x))) + 1e-9
        y = _butter(x, sr, "lowpass", 3600, 6)
        y8 = _resample(y, sr, 8000) / peak * 10 ** (-att / 20)
        z = _resample(g711_roundtrip(y8, "mu") * peak * 10 ** (att / 20), 8000, sr)
        self.params = {"attenuation_db": round(att, 1), "law": "mu"}
        return z[: x.size] if z.size >= x.size else np.pad(z, (0, x.size - z.size))


class PacketLoss(Degradation):
    """20 ms packets lost at 5-30 % (bursty), replaced by silence."""

    name, stage = "packet_loss", 3

    def apply(self, x, sr, rng):
        rate = float(rng.uniform(0.05, 0.3))
        pkt = int(0.02 * sr)
        y = x.copy()
        lost = False
        n_lost = 0
        for s in range(0, x.size, pkt):
            lost = rng.random() < (0.5 if lost else rate)  # Gilbert-style bursts
            if lost:
                y[s: s + pkt] = 0.0
                n_lost += 1
        if n_lost == 0:  # guarantee an audible effect
            s = int(rng.integers(0, max(1, x.size - pkt)))
            y[s: s + pkt] = 0.0
        self.params = {"loss_rate": round(rate, 3)}
        return y


class Reverb(Degradation):
    name, stage = "reverb", 1

    def apply(self, x, sr, rng):
        rirs = self.resources.rirs
        if rirs:
            i = int(rng.integers(len(rirs)))
            h = rirs[i]
            self.params = {"rir": i}
        else:
            rt = float(rng.uniform(0.3, 1.0))
            h = simulate_rir(rng, rt)
            self.params = {"rt60": round(rt, 2)}
        return convolve_rir(x, h)


class Echo(Degradation):
    """1-3 delayed copies, 50-400 ms apart, decays 0.3-0.8 (line/acoustic echo)."""

    name, stage = "echo", 1

    def apply(self, x, sr, rng):
        taps = int(rng.integers(1, 4))
        delay = float(rng.uniform(0.05, 0.4))
        decay = float(rng.uniform(0.3, 0.8))
        y = x.astype(np.float64).copy()
        for k in range(1, taps + 1):
            d = int(k * delay * sr)
            if d < x.size:
                y[d:] += (decay**k) * x[: x.size - d]
        self.params = {"taps": taps, "delay_s": round(delay, 3), "decay": round(decay, 2)}
        return level_match(x, y.astype(np.float32))


def phase_vocoder(x: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Phase-vocoder time stretch (numpy only): output length ~ len(x) / rate."""
    win = np.hanning(n_fft).astype(np.float32)
    pad = np.pad(x, (n_fft // 2, n_fft // 2))
    n_frames = 1 + (pad.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(pad[idx] * win, axis=1)  # (frames, bins)
    steps = np.arange(0, n_frames - 1, rate)
    omega = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    phase = np.angle(spec[0])
    out = np.zeros((steps.size, spec.shape[1]), dtype=np.complex64)
    for k, t in enumerate(steps):
        i = int(t)
        frac = t - i
        mag = (1 - frac) * np.abs(spec[i]) + frac * np.abs(spec[i + 1])
        out[k] = mag * np.exp(1j * phase)
        dphi = np.angle(spec[i + 1]) - np.angle(spec[i]) - omega
        dphi -= 2 * np.pi * np.round(dphi / (2 * np.pi))
        phase = phase + omega + dphi
    frames = np.fft.irfft(out, n_fft, axis=1) * win
    y = np.zeros(hop * (steps.size - 1) + n_fft, dtype=np.float64)
    norm = np.zeros_like(y)
    for k in range(steps.size):
        y[k * hop: k * hop + n_fft] += frames[k]
        norm[k * hop: k * hop + n_fft] += win**2
    y = y / np.maximum(norm, 1e-3)
    return y[n_fft // 2: n_fft // 2 + int(round(x.size / rate))].astype(np.float32)


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Pitch shift keeping duration: phase-vocoder stretch by 2**(s/12), then resample back."""
    from scipy.signal import resample

    ratio = 2.0 ** (semitones / 12.0)
    y = phase_vocoder(x, 1.0 / ratio)
    return resample(y, x.size).astype(np.float32)


class PitchShift(Degradation):
    """Phase-vocoder pitch shift by 1.5-6 semitones up or down (duration kept)."""

    name, stage = "pitch_shift", 0

    def apply(self, x, sr, rng):
        semi = float(rng.uniform(1.5, 6.0)) * (1 if rng.random() < 0.5 else -1)
        self.params = {"semitones": round(semi, 2)}
        return level_match(x, pitch_shift(x, semi))


class TimeStretch(Degradation):
    """Phase-vocoder stretch by 0.7-0.88 or 1.15-1.4, cropped/padded back to the input length."""

    name, stage = "time_stretch", 0

    def apply(self, x, sr, rng):
        rate = float(rng.uniform(0.7, 0.88) if rng.random() < 0.5 else rng.uniform(1.15, 1.4))
        self.params = {"rate": round(rate, 3)}
        y = phase_vocoder(x, rate)
        return level_match(x, np.pad(y, (0, max(0, x.size - y.size)))[: x.size])


class BitCrush(Degradation):
    name, stage = "bitcrush", 2

    def apply(self, x, sr, rng):
        bits = int(rng.integers(3, 7))
        q = 2.0 ** (bits - 1)
        peak = float(np.max(np.abs(x))) + 1e-9
        self.params = {"bits": bits}
        return np.round(x / peak * q) / q * peak


class Distortion(Degradation):
    name, stage = "distortion", 2

    def apply(self, x, sr, rng):
        drive = float(rng.uniform(3, 30))
        peak = float(np.max(np.abs(x))) + 1e-9
        self.params = {"drive": round(drive, 1)}
        return level_match(x, np.tanh(drive * x / peak).astype(np.float32))


class Aliasing(Degradation):
    """Decimation to 2-6 kHz without an anti-alias filter, then back up."""

    name, stage = "aliasing", 3

    def apply(self, x, sr, rng):
        factor = int(rng.integers(3, 9))
        y = x[::factor]
        self.params = {"factor": factor}
        return np.repeat(y, factor)[: x.size] if rng.random() < 0.5 else \
            np.interp(np.arange(x.size), np.arange(y.size) * factor, y).astype(np.float32)


class Pair(Degradation):
    """Two degradations applied in stage order; its own class named ``a+b`` (sorted)."""

    def __init__(self, a: Degradation, b: Degradation) -> None:
        super().__init__(a.resources)
        first, second = sorted((a, b), key=lambda d: (d.stage, d.name))
        self.first, self.second = first, second
        self.name = "+".join(sorted((a.name, b.name)))
        self.stage = max(a.stage, b.stage)
        self.available = a.available and b.available

    def apply(self, x, sr, rng):
        y = self.second(self.first(x, sr, rng), sr, rng)
        self.params = {self.first.name: self.first.params, self.second.name: self.second.params}
        return y


def training_singles(resources: Resources | None = None) -> list[Degradation]:
    """The single degradations of the training catalog (25 kinds)."""
    r = resources or Resources()
    return [
        ColoredNoise("noise_white", 0.0, resources=r),
        ColoredNoise("noise_pink", 1.0, resources=r),
        ColoredNoise("noise_brown", 2.0, (5.0, 30.0), resources=r),
        Babble(r),
        PoolNoise("noise_ambience", "ambience", r),
        PoolNoise("music", "music", r, snr_db=(3.0, 20.0)),
        Clipping(r), GainJumps(r), BandPass(r), LowPass(r),
        PyAVCodec("mp3", "libmp3lame", "mp3", 16000, (8000, 16000, 24000), r),
        PyAVCodec("opus", "libopus", "ogg", 16000, (6000, 8000, 10000), r),
        FFmpegCodec("gsm", "libgsm", "gsm", 8000, ((),), r),
        PyAVCodec("amr_nb", "libopencore_amrnb", "amr", 8000, (4750, 5150, 5900, 6700, 7400, 7950), r),
        FFmpegCodec("speex", "libspeex", "ogg", 8000, (("-b:a", "4000"), ("-b:a", "6000"), ("-b:a", "8000")), r),
        FFmpegCodec("codec2", "libcodec2", "codec2", 8000, (("-mode", "1200"), ("-mode", "1600"), ("-mode", "3200")), r,
                    envelope_align=True),
        G711Quiet(r), PacketLoss(r), Reverb(r), Echo(r), PitchShift(r), TimeStretch(r),
        BitCrush(r), Distortion(r), Aliasing(r),
    ]


def make_pairs(singles: list[Degradation], n: int = 14, seed: int = 0) -> list[Pair]:
    """``n`` random pairs (fixed by ``seed``) of singles from different stages; at most one codec each."""
    rng = random.Random(seed)
    avail = [d for d in singles if d.available]
    pairs: dict[str, Pair] = {}
    tries = 0
    while len(pairs) < n and tries < 1000:
        tries += 1
        a, b = rng.sample(avail, 2)
        if a.stage == b.stage:
            continue
        p = Pair(a, b)
        pairs.setdefault(p.name, p)
    return sorted(pairs.values(), key=lambda p: p.name)


def training_catalog(resources: Resources | None = None, n_pairs: int = 14, seed: int = 0,
                     include_unavailable: bool = False) -> list[Degradation]:
    """Singles + seeded random pairs; entries whose codec is missing are dropped unless asked."""
    singles = training_singles(resources)
    cat: list[Degradation] = singles + make_pairs(singles, n_pairs, seed)
    return cat if include_unavailable else [d for d in cat if d.available]


def class_names(catalog: list[Degradation]) -> list[str]:
    """``['clean', *names]``: the frame label ids of the shards (0 = clean)."""
    return ["clean"] + [d.name for d in catalog]
