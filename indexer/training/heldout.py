"""The held-out degradation catalog: the same kinds as training, made by OTHER implementations and
parameter ranges, never used for training (validation and benchmarks only).

| kind | training catalog | held-out catalog (here) |
| --- | --- | --- |
| noise_white/pink/brown | numpy FFT-shaped noise, SNR 0-25 dB | sox ``synth`` noise, SNR 3-20 dB |
| noise_babble | 3-7 training speakers | 8-14 held-out speakers |
| noise_ambience, music | training noise chunks | held-out chunks (other source files) |
| clipping | numpy hard clip at a percentile | sox ``gain`` into its output clipper |
| gain_jumps | random steps every 100-400 ms | ffmpeg ``volume`` periodic pumping 0.3-1.2 s |
| bandpass | Butterworth 400-1000 .. 1800-3000 Hz | sox ``sinc`` 250-700 .. 2000-3200 Hz |
| lowpass | Butterworth order 8, 0.8-2.5 kHz | sox ``lowpass -2`` x2, 1.0-3.0 kHz |
| mp3 | LAME at 16 kHz, 8-24 kbit/s | LAME at 8 kHz (MPEG-2.5), 8-16 kbit/s |
| opus | PyAV libopus 6-10 kbit/s | ffmpeg's native opus encoder, 48 kHz, 12-24 kbit/s |
| gsm | ffmpeg libgsm (raw) | ffmpeg libgsm_ms (WAV 49) |
| amr_nb | modes 4.75-7.95 kbit/s | modes 10.2/12.2 kbit/s |
| speex | narrowband 4-8 kbit/s | wideband 16 kHz, VBR quality 0-3 |
| codec2 | modes 1200/1600/3200 | modes 700C/1300/2400 |
| g711 | numpy mu-law, signal -55..-40 dB | ffmpeg A-law (pcm_alaw), signal -50..-35 dB |
| packet_loss | zeroed 20 ms packets, 5-30 % | repeated previous packet (PLC-like), 30-60 ms packets |
| reverb | pyroomacoustics shoeboxes, RT60 0.15-1.2 s | held-out rooms (corridors, tall halls) or sox ``reverb`` |
| echo | 1-3 taps 50-400 ms | sox ``echo``: 20-45 ms or 450-900 ms |
| pitch_shift | phase vocoder +-1.5-6 semitones | sox ``pitch`` +-0.8-1.4 or +-6.5-9 semitones |
| time_stretch | phase vocoder 0.7-0.88 / 1.15-1.4 | sox ``tempo`` (WSOLA) 0.6-0.7 / 1.4-1.6 |
| bitcrush | uniform rounding, 3-6 bits | log-companded quantiser with TPDF dither, 3-6 bits |
| distortion | tanh drive | sox ``overdrive`` |
| aliasing | numpy decimation | sox ``downsample``/``upsample`` (no filters) |

Pairs: another seeded draw of pairs (seed 1) than training's.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from indexer.training.catalog import (
    SR,
    CodecUnavailable,
    Degradation,
    FFmpegCodec,
    PyAVCodec,
    Resources,
    _crop,
    active_power,
    align_to,
    convolve_rir,
    level_match,
    make_pairs,
    mix_at_snr,
)


def _run_sox(args: list[str], what: str, stdin: bytes | None = None) -> np.ndarray:
    """Run ``sox -q ARGS`` (float32 mono on stdout); CodecUnavailable naming ``what`` if it fails."""
    if shutil.which("sox") is None:
        raise CodecUnavailable("sox is not installed", "apt-get install sox")
    proc = subprocess.run(["sox", "-q", *args], input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        raise CodecUnavailable(f"sox {what} failed: {proc.stderr.decode(errors='replace')[-200:]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def sox_effect(x: np.ndarray, effects: list[str], sr: int = SR) -> np.ndarray:
    """Run ``sox`` effects on float32 mono through pipes; same rate out (length may differ)."""
    return _run_sox(["-t", "f32", "-r", str(sr), "-c", "1", "-", "-t", "f32", "-r", str(sr), "-c", "1", "-", *effects],
                    " ".join(effects), np.asarray(x, dtype=np.float32).tobytes())


def ffmpeg_filter(x: np.ndarray, af: str, sr: int = SR) -> np.ndarray:
    """Run one ffmpeg audio filter graph on float32 mono through pipes."""
    if shutil.which("ffmpeg") is None:
        raise CodecUnavailable("ffmpeg is not installed", "apt-get install ffmpeg")
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "f32le", "-ar", str(sr), "-ac", "1", "-i", "-",
         "-af", af, "-f", "f32le", "-ar", str(sr), "-ac", "1", "-"],
        input=np.asarray(x, dtype=np.float32).tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise CodecUnavailable(f"ffmpeg -af {af} failed: {proc.stderr.decode(errors='replace')[-200:]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    return np.pad(y, (0, max(0, n - y.size)))[:n].astype(np.float32)


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


class SoxNoise(Degradation):
    """White, pink or brown noise from sox's own generator at 3-20 dB SNR.

    sox seeds that generator from the clock unless run with ``-R``, so each instance renders one
    repeatable 60 s stretch per sample rate and crops it at an offset drawn from ``rng``: a
    benchmark or validation set rebuilt with the same seed holds the same audio.
    """

    stage = 1
    stretch_s = 60.0

    def __init__(self, name: str, kind: str, resources=None) -> None:
        super().__init__(resources)
        self.name, self.kind = name, kind
        self.available = shutil.which("sox") is not None
        self._stretch: dict[int, np.ndarray] = {}

    def _noise(self, sr: int) -> np.ndarray:
        if sr not in self._stretch:
            self._stretch[sr] = _run_sox(["-R", "-n", "-t", "f32", "-r", str(sr), "-c", "1", "-", "synth",
                                          f"{self.stretch_s:.0f}", self.kind], f"synth {self.kind}")
        return self._stretch[sr]

    def apply(self, x, sr, rng):
        stretch = self._noise(sr)
        start = int(rng.integers(0, max(1, stretch.size - x.size)))
        noise = np.resize(stretch[start:], x.size)  # tiles the stretch for inputs longer than it
        snr = float(rng.uniform(3, 20))
        self.params = {"snr_db": round(snr, 2), "sox": self.kind}
        return mix_at_snr(x, noise, snr)


class HeldoutBabble(Degradation):
    name, stage = "noise_babble", 1

    def apply(self, x, sr, rng):
        k = int(rng.integers(8, 15))
        b = np.zeros(x.size, dtype=np.float32)
        for _ in range(k):
            t = _crop(self.resources.speech, x.size, rng) if self.resources.speech else rng.standard_normal(x.size)
            b += t / np.sqrt(active_power(t))
        snr = float(rng.uniform(2, 18))
        self.params = {"talkers": k, "snr_db": round(snr, 2)}
        return mix_at_snr(x, b, snr)


class HeldoutPoolNoise(Degradation):
    stage = 1

    def __init__(self, name: str, pool: str, resources=None) -> None:
        super().__init__(resources)
        self.name, self.pool = name, pool

    def apply(self, x, sr, rng):
        pool = getattr(self.resources, self.pool)
        n = _crop(pool, x.size, rng) if pool else rng.standard_normal(x.size).astype(np.float32)
        snr = float(rng.uniform(2, 18))
        self.params = {"snr_db": round(snr, 2)}
        return mix_at_snr(x, n, snr)


class SoxClipping(Degradation):
    name, stage = "clipping", 2

    def apply(self, x, sr, rng):
        peak = float(np.max(np.abs(x))) + 1e-9
        g = float(rng.uniform(6, 20))
        self.params = {"gain_db": round(g, 1)}
        y = sox_effect(x / peak * 0.9, ["gain", f"{g:.1f}"], sr)  # sox clips samples beyond full scale
        return level_match(x, _fit(np.clip(y, -1, 1), x.size))


class FFmpegGainPumping(Degradation):
    name, stage = "gain_jumps", 2

    def apply(self, x, sr, rng):
        period = float(rng.uniform(0.3, 1.2))
        low = float(rng.uniform(0.08, 0.35))
        self.params = {"period_s": round(period, 2), "low_gain": round(low, 2)}
        af = f"volume=volume='if(lt(mod(t\\,{period:.3f})\\,{period / 2:.3f})\\,{low:.3f}\\,1)':eval=frame"
        return _fit(ffmpeg_filter(x, af, sr), x.size)


class SoxBandPass(Degradation):
    name, stage = "bandpass", 3

    def apply(self, x, sr, rng):
        lo, hi = float(rng.uniform(250, 700)), float(rng.uniform(2000, 3200))
        self.params = {"low_hz": round(lo), "high_hz": round(hi)}
        return level_match(x, align_to(x, sox_effect(x, ["sinc", f"{lo:.0f}-{hi:.0f}"], sr)))


class SoxLowPass(Degradation):
    name, stage = "lowpass", 3

    def apply(self, x, sr, rng):
        fc = float(rng.uniform(1000, 3000))
        self.params = {"cutoff_hz": round(fc)}
        y = sox_effect(x, ["lowpass", "-2", f"{fc:.0f}", "lowpass", "-2", f"{fc:.0f}"], sr)
        return level_match(x, align_to(x, y, max_lag=400))


class FFmpegALawQuiet(Degradation):
    name, stage = "g711", 3

    def apply(self, x, sr, rng):
        from indexer.training.catalog import ffmpeg_roundtrip

        att = float(rng.uniform(35, 50))
        peak = float(np.max(np.abs(x))) + 1e-9
        scale = 10 ** (-att / 20) / peak
        y = ffmpeg_roundtrip(x * scale, sr, ["-c:a", "pcm_alaw"], "alaw", 8000)
        self.params = {"attenuation_db": round(att, 1), "law": "A"}
        return y / scale


class PLCPacketLoss(Degradation):
    name, stage = "packet_loss", 3

    def apply(self, x, sr, rng):
        pkt = int(float(rng.choice([0.03, 0.04, 0.06])) * sr)
        rate = float(rng.uniform(0.05, 0.25))
        y = x.copy()
        lost_any = False
        for s in range(pkt, x.size, pkt):
            if rng.random() < rate:
                prev = y[s - pkt: s]
                y[s: s + pkt] = prev[: y[s: s + pkt].size] * 0.8  # naive concealment: repeat, fading
                lost_any = True
        if not lost_any:
            s = pkt * int(rng.integers(1, max(2, x.size // pkt - 1)))
            y[s: s + pkt] = y[s - pkt: s][: y[s: s + pkt].size]
        self.params = {"packet_s": pkt / sr, "loss_rate": round(rate, 3)}
        return y


class HeldoutReverb(Degradation):
    name, stage = "reverb", 1

    def apply(self, x, sr, rng):
        if self.resources.rirs and rng.random() < 0.5:
            i = int(rng.integers(len(self.resources.rirs)))
            self.params = {"rir": i}
            return convolve_rir(x, self.resources.rirs[i])
        rev, room = float(rng.uniform(40, 100)), float(rng.uniform(40, 100))
        self.params = {"sox_reverberance": round(rev), "room_scale": round(room)}
        y = sox_effect(x, ["reverb", "-w", f"{rev:.0f}", "50", f"{room:.0f}"], sr)
        return level_match(x, _fit(y, x.size))


class SoxEcho(Degradation):
    name, stage = "echo", 1

    def apply(self, x, sr, rng):
        delay_ms = float(rng.uniform(20, 45) if rng.random() < 0.5 else rng.uniform(450, 900))
        decay = float(rng.uniform(0.2, 0.6))
        self.params = {"delay_ms": round(delay_ms), "decay": round(decay, 2)}
        y = sox_effect(x, ["echo", "0.8", "0.9", f"{delay_ms:.0f}", f"{decay:.2f}"], sr)
        return level_match(x, _fit(y, x.size))


class SoxPitch(Degradation):
    name, stage = "pitch_shift", 0

    def apply(self, x, sr, rng):
        semi = _sign(rng) * float(rng.uniform(0.8, 1.4) if rng.random() < 0.5 else rng.uniform(6.5, 9.0))
        self.params = {"semitones": round(semi, 2)}
        return level_match(x, _fit(sox_effect(x, ["pitch", f"{semi * 100:.0f}"], sr), x.size))


class SoxTempo(Degradation):
    name, stage = "time_stretch", 0

    def apply(self, x, sr, rng):
        rate = float(rng.uniform(0.6, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 1.6))
        self.params = {"tempo": round(rate, 3)}
        return level_match(x, _fit(sox_effect(x, ["tempo", "-s", f"{rate:.3f}"], sr), x.size))


class LogCrusher(Degradation):
    """Logarithmic (companded) quantisation to 3-6 bits with TPDF dither: other quantiser, other noise shape.

    (ffmpeg's ``acrusher`` was tried first; Debian's build passed the signal through unchanged.)
    """

    name, stage = "bitcrush", 2

    def apply(self, x, sr, rng):
        bits = int(rng.integers(3, 7))
        peak = float(np.max(np.abs(x))) + 1e-9
        u = x / peak
        c = np.sign(u) * np.log1p(50 * np.abs(u)) / np.log1p(50)
        q = 2.0 ** (bits - 1)
        dither = (rng.random(x.size) - rng.random(x.size)) / q
        cq = np.clip(np.round((c + dither) * q) / q, -1, 1)
        y = np.sign(cq) * np.expm1(np.abs(cq) * np.log1p(50)) / 50 * peak
        self.params = {"bits": bits, "mode": "log+dither"}
        return level_match(x, y.astype(np.float32))


class SoxOverdrive(Degradation):
    name, stage = "distortion", 2

    def apply(self, x, sr, rng):
        gain, colour = float(rng.uniform(10, 40)), float(rng.uniform(10, 40))
        self.params = {"gain": round(gain), "colour": round(colour)}
        y = sox_effect(x, ["overdrive", f"{gain:.0f}", f"{colour:.0f}"], sr)
        return level_match(x, _fit(y, x.size))


class SoxAliasing(Degradation):
    name, stage = "aliasing", 3

    def apply(self, x, sr, rng):
        f = int(rng.integers(2, 6))
        self.params = {"factor": f}
        y = sox_effect(x, ["downsample", str(f), "upsample", str(f)], sr) * f
        return level_match(x, _fit(y, x.size))


def heldout_singles(resources: Resources | None = None) -> list[Degradation]:
    """The held-out single degradations (same kind names as training)."""
    r = resources or Resources()
    singles: list[Degradation] = [
        SoxNoise("noise_white", "whitenoise", r), SoxNoise("noise_pink", "pinknoise", r),
        SoxNoise("noise_brown", "brownnoise", r),
        HeldoutBabble(r), HeldoutPoolNoise("noise_ambience", "ambience", r), HeldoutPoolNoise("music", "music", r),
        SoxClipping(r), FFmpegGainPumping(r), SoxBandPass(r), SoxLowPass(r),
        PyAVCodec("mp3", "libmp3lame", "mp3", 8000, (8000, 16000), r),
        FFmpegCodec("opus", "opus", "ogg", 48000, (("-strict", "-2", "-b:a", "12k"), ("-strict", "-2", "-b:a", "24k")), r),
        FFmpegCodec("gsm", "libgsm_ms", "wav", 8000, ((),), r),
        PyAVCodec("amr_nb", "libopencore_amrnb", "amr", 8000, (10200, 12200), r),
        FFmpegCodec("speex", "libspeex", "ogg", 16000, (("-q:a", "0"), ("-q:a", "2"), ("-q:a", "3")), r),
        FFmpegCodec("codec2", "libcodec2", "codec2", 8000, (("-mode", "700C"), ("-mode", "1300"), ("-mode", "2400")), r,
                    envelope_align=True),
        FFmpegALawQuiet(r), PLCPacketLoss(r), HeldoutReverb(r), SoxEcho(r), SoxPitch(r), SoxTempo(r),
        LogCrusher(r), SoxOverdrive(r), SoxAliasing(r),
    ]
    for d in singles:
        if isinstance(d, (SoxNoise,)) or type(d).__name__.startswith("Sox") or d.name in ("reverb", "echo"):
            d.available = d.available and shutil.which("sox") is not None
    return singles


def heldout_catalog(resources: Resources | None = None, n_pairs: int = 12, seed: int = 1,
                    include_unavailable: bool = False) -> list[Degradation]:
    """Held-out singles + their own seeded pairs; entries whose tool is missing are dropped unless asked."""
    singles = heldout_singles(resources)
    cat: list[Degradation] = singles + make_pairs(singles, n_pairs, seed)
    return cat if include_unavailable else [d for d in cat if d.available]


__all__ = ["heldout_catalog", "heldout_singles", "sox_effect", "ffmpeg_filter", "align_to"]
