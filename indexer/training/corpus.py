"""Training corpus set-up: clean speech (TTS + real human recordings) and real noise, with a manifest.

``prepare_corpus(data_dir)`` builds, under ``data_dir``:

- ``raw/``          Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg -x``
- ``speech/tts/``   16 kHz TTS utterances (espeak-ng voices/rates/pitches, flite voices, festival)
- ``speech/real/``  16 kHz utterances of 3-8 s, concatenated per speaker/folder from the packages'
                    recordings (Asterisk prompts 8 kHz, klettres, ktuberling, hedgewars voices)
- ``speech/user/``  the same from folders of the user's own clean recordings (``speech_dirs``,
                    ``prepare-data --speech-dir``: one sub-folder per speaker, all for training)
- ``noise/``        16 kHz ambience chunks (megaglest / lincity-ng) and hold music (asterisk-moh)
- ``rirs.npz``      simulated room impulse responses (pyroomacoustics; train and held-out rooms)
- ``manifest.jsonl`` one line per utterance: ``path`` (relative to data_dir), ``group`` (speaker or
  folder id), ``source`` (tts/real), ``native_rate`` (8000 or 16000+), ``lang``, ``seconds`` and
  ``split`` (``train`` or ``heldout``). Whole groups are held out: one Asterisk voice (French),
  several klettres and ktuberling language folders, one hedgewars pack and a set of TTS voices.
  Held-out rows are for validation and benchmarks only and never enter training shards.
- ``noise.jsonl``   one line per noise chunk: ``path``, ``kind`` (ambience/music), ``group``, ``split``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from indexer.errors import ConfigError, DegsearchError

SR = 16000

# Debian packages with real human speech (package, kind); sizes 18-145 MB each.
SPEECH_PACKAGES = (
    "asterisk-core-sounds-en-wav",
    "asterisk-core-sounds-es-wav",
    "asterisk-core-sounds-fr-wav",
    "klettres-data",
    "ktuberling-data",
    "hedgewars-data",
)
NOISE_PACKAGES = ("megaglest-data", "lincity-ng-data", "asterisk-moh-opsound-wav")

# Whole groups held out from training (validation / benchmarks). Group ids are built in
# ``_real_groups``: "<package>:<folder>".
HELDOUT_REAL_GROUPS = {
    "asterisk:fr",
    "klettres:it", "klettres:nl", "klettres:cs", "klettres:pt_BR",
    "ktuberling:it", "ktuberling:nl", "ktuberling:pt_BR", "ktuberling:sv", "ktuberling:cs",
    "hedgewars:Russian",
}
# TTS voices held out from training (benchmarks built from TTS use these).
HELDOUT_TTS_VOICES = {
    "espeak:de", "espeak:en-gb-scotland", "espeak:pt-br", "espeak:pl", "espeak:sv",
    "flite:slt", "festival:ked_diphone",
}
# Festival voices from Debian (festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts); the
# ones installed are used.
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
ESPEAK_VOICES = (
    "en-us", "en-gb", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-scotland", "en-gb-x-gbclan",
    "de", "fr-fr", "es", "es-419", "it", "pt", "pt-br", "nl", "pl", "sv", "da", "fi", "cs", "ru",
    "tr", "el", "hu", "ro", "id", "vi", "hi", "ja", "cmn",
)
ESPEAK_VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4", "+croak", "+klatt", "+whisper")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")

_WORDS = (
    "account balance call center customer number order payment please press service transfer "
    "agent line hold minute moment thank you your our we they she he it is was will would could "
    "should must can may the a an this that these those today tomorrow yesterday morning evening "
    "afternoon night week month year monday tuesday friday weekend office house street river train "
    "station airport ticket price discount offer delivery package letter message phone email address "
    "name date time question answer problem issue update confirm cancel change check open close "
    "start finish wait listen speak repeat again quickly slowly carefully really very quite almost "
    "green blue red yellow bright dark small large heavy light warm cold quiet loud happy busy "
    "doctor teacher driver manager engineer neighbour friend family children weather rain snow wind "
    "coffee water bread garden window kitchen table chair paper music picture story history science"
).split()
_TEMPLATES = (
    "{W} {w} {w} the {w} {w}.",
    "Please {w} your {w} before the {w} {w}.",
    "{W} {w} {w}, and then {w} {w} {w} {w}.",
    "Did you {w} the {w} {w} {n} times?",
    "{W} {w} {n} {w} {w} on {w}.",
    "Your {w} {w} is {n} {w}, {w} {w}.",
    "We {w} {w} {w} {w} because the {w} was {w}.",
    "{W} {w}! {W} {w} {w} {w} {w}.",
)


class CorpusError(DegsearchError):
    """Preparing the training corpus failed (missing tool, package or data)."""

    code = "corpus_error"


@dataclass
class Utterance:
    """One manifest row."""

    path: str
    group: str
    source: str  # 'tts' | 'real'
    native_rate: int
    lang: str
    seconds: float
    split: str  # 'train' | 'heldout'


# ----------------------------------------------------------------------------- audio helpers

def resample(x: np.ndarray, sr_in: int, sr_out: int = SR) -> np.ndarray:
    """Polyphase resampling (scipy) to ``sr_out``; returns float32."""
    from scipy.signal import resample_poly

    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """Read any file as mono float32; falls back to ffmpeg for formats soundfile rejects.

    Some packaged headers lie about the rate (klettres files claiming 128 kHz): those are
    decoded by ffmpeg, whose probe reads the stream rate.
    """
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        if sr <= 48000:
            return x.mean(axis=1), int(sr)
    except (RuntimeError, sf.LibsndfileError):
        pass
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-ac", "1",
         "-ar", str(SR), "-f", "f32le", "-"], capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise CorpusError(f"cannot decode {path}: {proc.stderr.decode(errors='replace')[-200:]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy(), SR


def trim_silence(x: np.ndarray, sr: int = SR, threshold_db: float = -40.0, pad_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing audio more than ``threshold_db`` below the file's peak frame energy."""
    hop = int(0.01 * sr)
    if x.size < 2 * hop:
        return x
    n = x.size // hop
    e = 10 * np.log10(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(e > e.max() + threshold_db)
    if active.size == 0:
        return x[:0]
    pad = int(pad_s * sr)
    return x[max(0, active[0] * hop - pad): min(x.size, (active[-1] + 1) * hop + pad)]


def normalise_level(x: np.ndarray, rng: random.Random | None = None, peak: float | None = None) -> np.ndarray:
    """Peak-normalise to ``peak`` (drawn in [0.3, 0.9] when not given)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m < 1e-6:
        return x.astype(np.float32)
    p = peak if peak is not None else (rng or random).uniform(0.3, 0.9)
    return (x * (p / m)).astype(np.float32)


# ----------------------------------------------------------------------------- TTS

def make_sentence(rng: random.Random) -> str:
    """A random sentence from the word list; never starts with '-' (espeak reads that as an option)."""
    def word() -> str:
        return rng.choice(_WORDS)

    t = rng.choice(_TEMPLATES)
    out = ""
    i = 0
    while i < len(t):
        if t.startswith("{w}", i):
            out += word()
            i += 3
        elif t.startswith("{W}", i):
            out += word().capitalize()
            i += 3
        elif t.startswith("{n}", i):
            out += str(rng.randint(2, 9999))
            i += 3
        else:
            out += t[i]
            i += 1
    return out.lstrip("- ")


def _tts_job(engine: str, voice: str, text: str, rate: int, pitch: int, out: Path) -> bool:
    """Synthesise one utterance into ``out`` (16 kHz mono); False if the engine failed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "t.wav"
        if engine == "espeak":
            cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(wav), "--", text]
            proc = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
        elif engine == "flite":
            stretch = 170.0 / rate
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.2f}",
                   "--setf", f"int_f0_target_mean={80 + pitch:.0f}", "-t", text, "-o", str(wav)]
            proc = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
        else:  # festival
            txt = Path(tmp) / "t.txt"
            txt.write_text(text)
            cmd = ["text2wave", "-eval", f"(voice_{voice})", "-o", str(wav), str(txt)]
            proc = subprocess.run(cmd, capture_output=True, check=False, timeout=120)
        if proc.returncode != 0 or not wav.exists():
            return False
        x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    x = trim_silence(resample(x.mean(axis=1), sr))
    if x.size < int(0.8 * SR):
        return False
    sf.write(str(out), normalise_level(x, random.Random(hash(text) & 0xFFFF)), SR, subtype="PCM_16")
    return True


def _installed_festival_voices() -> list[str]:
    roots = [Path("/usr/share/festival/voices")]
    found = {p.name for r in roots if r.exists() for p in r.glob("*/*") if p.is_dir()}
    return [v for v in FESTIVAL_VOICES if v in found]


def generate_tts(data_dir: Path, n_utterances: int, seed: int = 0, workers: int = 2) -> list[Utterance]:
    """Synthesise ``n_utterances`` TTS utterances: ~68 % espeak-ng, 20 % flite, 12 % festival."""
    rng = random.Random(seed)
    out_dir = data_dir / "speech" / "tts"
    out_dir.mkdir(parents=True, exist_ok=True)
    festival_voices = _installed_festival_voices() if shutil.which("text2wave") else []
    have_flite = shutil.which("flite") is not None
    if shutil.which("espeak-ng") is None:
        raise CorpusError("espeak-ng is not installed", "apt-get install espeak-ng (see indexer/training/SYSTEM_PACKAGES.txt)")
    jobs = []
    for i in range(n_utterances):
        r = rng.random()
        if r < 0.12 and festival_voices:
            engine, voice = "festival", rng.choice(festival_voices)
        elif r < 0.32 and have_flite:
            engine, voice = "flite", rng.choice(FLITE_VOICES)
        else:
            engine, voice = "espeak", rng.choice(ESPEAK_VOICES)
        text = " ".join(make_sentence(rng) for _ in range(rng.randint(1, 2)))
        rate = rng.randint(120, 230)
        pitch = rng.randint(20, 80)
        full_voice = voice + (rng.choice(ESPEAK_VARIANTS) if engine == "espeak" else "")
        group = f"{engine}:{voice}"
        # The voice is in the file name: a rerun with other voices installed never reuses a file
        # under the wrong speaker id.
        safe_voice = full_voice.replace("+", "_").replace("/", "_")
        jobs.append((engine, full_voice, text, rate, pitch, out_dir / f"tts_{i:05d}_{engine}_{safe_voice}.wav", group))

    def run(job: tuple) -> Utterance | None:
        engine, full_voice, text, rate, pitch, path, group = job
        if not path.exists() and not _tts_job(engine, full_voice, text, rate, pitch, path):
            return None
        info = sf.info(str(path))
        return Utterance(path=str(path.relative_to(data_dir)), group=group, source="tts", native_rate=SR,
                         lang=group.split(":")[1], seconds=round(info.duration, 3),
                         split="heldout" if group in HELDOUT_TTS_VOICES else "train")

    with ThreadPoolExecutor(max_workers=workers) as ex:
        rows = [u for u in ex.map(run, jobs) if u is not None]
    return rows


# ----------------------------------------------------------------------------- Debian packages

def fetch_packages(raw_dir: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """``apt-get download`` + ``dpkg -x`` each package into ``raw_dir/<pkg>``; skip ones already unpacked."""
    debs = raw_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for pkg in packages:
        target = raw_dir / pkg
        if (target / ".done").exists():
            out[pkg] = target
            continue
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            proc = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True, check=False)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if not found:
                raise CorpusError(f"apt-get download {pkg} failed: {proc.stderr.strip()[-300:]}",
                                  "run `apt-get update` (a Debian/Ubuntu machine with network to its mirror is needed)")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(found[-1]), str(target)], check=True)
        (target / ".done").touch()
        out[pkg] = target
    return out


# Debian packages that keep real speech in one folder per language: package -> (group prefix, folder).
_LANGUAGE_FOLDERS = {
    "klettres-data": ("klettres", "usr/share/klettres"),
    "ktuberling-data": ("ktuberling", "usr/share/ktuberling/sounds"),
}


def _real_groups(unpacked: dict[str, Path]) -> dict[str, tuple[int, list[Path]]]:
    """Map group id -> (nominal native rate, files) over the speech packages."""
    groups: dict[str, tuple[int, list[Path]]] = {}
    for pkg, root in unpacked.items():
        if pkg.startswith("asterisk-core-sounds-"):
            lang = pkg.split("-")[3]
            files = sorted((root / "usr/share/asterisk/sounds").rglob("*.wav"))
            # Prompts are words, digits and sentences; concatenation turns the short ones into phrases.
            groups[f"asterisk:{lang}"] = (8000, files)
        elif pkg in _LANGUAGE_FOLDERS:  # one folder per language: each is its own speaker group
            prefix, sub = _LANGUAGE_FOLDERS[pkg]
            for d in sorted(p for p in (root / sub).iterdir() if p.is_dir()):
                files = sorted(list(d.rglob("*.ogg")) + list(d.rglob("*.wav")))
                if files:
                    groups[f"{prefix}:{d.name}"] = (44100, files)
        elif pkg == "hedgewars-data":
            base = root / "usr/share/games/hedgewars/Data/Sounds/voices"
            if base.exists():
                for d in sorted(p for p in base.iterdir() if p.is_dir()):
                    if d.name.lower().startswith("robot"):  # processed voice: not clean speech
                        continue
                    files = sorted(d.glob("*.ogg"))
                    if files:
                        groups[f"hedgewars:{d.name}"] = (44100, files)
    return groups


AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a")


def speaker_folders(root: Path) -> dict[str, list[Path]]:
    """A folder of clean recordings as speakers: each folder under ``root`` that holds audio files
    is one speaker, named by its path relative to ``root`` ("." for ``root`` itself); {} if none.
    The layout ``make-benchmark --clean-dir`` and ``prepare-data --speech-dir`` both read."""
    pool: dict[str, list[Path]] = {}
    for f in sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS):
        pool.setdefault(str(f.parent.relative_to(root)), []).append(f)
    return pool


def user_speech_groups(dirs: list[Path]) -> dict[str, tuple[int, list[Path]]]:
    """Map group id -> (nominal native rate, files) over folders of a user's own clean recordings
    (:func:`speaker_folders`: ``user:<folder>/<speaker folder>``, or ``user:<folder>`` for the files
    directly inside it); a group whose files are all at 8 kHz or less counts as narrowband."""
    groups: dict[str, tuple[int, list[Path]]] = {}
    for d in dirs:
        if not d.is_dir():
            raise CorpusError(f"no folder at {d}", "point --speech-dir at a folder of recordings, one sub-folder per speaker")
        for speaker, files in speaker_folders(d).items():
            rates = []
            for f in files:
                try:
                    rates.append(sf.info(str(f)).samplerate)
                except (RuntimeError, sf.LibsndfileError):
                    rates.append(SR)  # formats soundfile cannot probe: read_mono decodes them with ffmpeg
            name = d.name if speaker == "." else f"{d.name}/{speaker}"
            groups[f"user:{name}"] = (8000 if max(rates) <= 8000 else SR, files)
    if not groups:
        raise CorpusError(f"no audio files under {', '.join(map(str, dirs))}",
                          f"give folders of {', '.join(AUDIO_EXTS)} files, one sub-folder per speaker")
    return groups


def build_real_utterances(data_dir: Path, groups: dict[str, tuple[int, list[Path]]], seed: int = 0,
                          min_s: float = 3.0, max_s: float = 8.0, subdir: str = "real") -> list[Utterance]:
    """Concatenate each group's trimmed recordings into 3-8 s utterances (16 kHz, under
    ``speech/<subdir>``), with short pauses; ``groups`` as :func:`_real_groups` gives them."""
    rng = random.Random(seed)
    out_dir = data_dir / "speech" / subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Utterance] = []
    for group, (nominal_rate, files) in sorted(groups.items()):
        files = list(files)
        rng.shuffle(files)
        safe = group.replace(":", "_").replace("/", "_")
        buf: list[np.ndarray] = []
        cur = 0
        k = 0
        target = rng.uniform(min_s, max_s) * SR
        native = nominal_rate
        for f in files:
            try:
                x, sr = read_mono(f)
            except CorpusError:
                continue
            native = min(native, sr) if group.startswith("asterisk") else sr
            x = trim_silence(resample(x, sr))
            if x.size < int(0.15 * SR) or not np.all(np.isfinite(x)):
                continue
            x = x[: int(max_s * SR)]
            buf.append(normalise_level(x, peak=0.7))
            buf.append(np.zeros(int(rng.uniform(0.08, 0.35) * SR), dtype=np.float32))
            cur += buf[-1].size + buf[-2].size
            if cur >= target:
                y = np.concatenate(buf[:-1])[: int(max_s * SR)]
                path = out_dir / f"{safe}_{k:04d}.wav"
                sf.write(str(path), normalise_level(y, rng), SR, subtype="PCM_16")
                rows.append(Utterance(path=str(path.relative_to(data_dir)), group=group, source="real",
                                      native_rate=8000 if nominal_rate == 8000 else max(native, 11025),
                                      lang=group.split(":")[1], seconds=round(y.size / SR, 3),
                                      split="heldout" if group in HELDOUT_REAL_GROUPS else "train"))
                k += 1
                buf, cur = [], 0
                target = rng.uniform(min_s, max_s) * SR
        if buf and cur >= int(1.5 * SR):  # keep a shorter tail if it is usable
            y = np.concatenate(buf[:-1])
            path = out_dir / f"{safe}_{k:04d}.wav"
            sf.write(str(path), normalise_level(y, rng), SR, subtype="PCM_16")
            rows.append(Utterance(path=str(path.relative_to(data_dir)), group=group, source="real",
                                  native_rate=8000 if nominal_rate == 8000 else 44100,
                                  lang=group.split(":")[1], seconds=round(y.size / SR, 3),
                                  split="heldout" if group in HELDOUT_REAL_GROUPS else "train"))
    return rows


def build_noise(data_dir: Path, unpacked: dict[str, Path], seed: int = 0, chunk_s: float = 10.0) -> list[dict]:
    """Cut ambience (megaglest/lincity-ng) and hold music (asterisk-moh) into 16 kHz chunks.

    Every fifth source file goes to the held-out split (the held-out catalog mixes those).
    """
    rng = random.Random(seed)
    out_dir = data_dir / "noise"
    out_dir.mkdir(parents=True, exist_ok=True)
    sources: list[tuple[str, str, Path]] = []
    for pkg, root in unpacked.items():
        if pkg == "megaglest-data":
            amb = [p for p in root.rglob("*.ogg") if "/tilesets/" in str(p)]
            sources += [("ambience", "megaglest", p) for p in amb]
        elif pkg == "lincity-ng-data":
            sources += [("ambience", "lincity", p) for p in root.rglob("*.wav")]
        elif pkg == "asterisk-moh-opsound-wav":
            sources += [("music", "moh", p) for p in root.rglob("*.wav")]
    rows = []
    for i, (kind, group, path) in enumerate(sorted(sources, key=lambda s: str(s[2]))):
        try:
            x, sr = read_mono(path)
        except CorpusError:
            continue
        x = resample(x, sr)
        if x.size < int(1.0 * SR) or np.max(np.abs(x)) < 1e-3:
            continue
        split = "heldout" if i % 5 == 4 else "train"
        n = max(1, int(x.size // (chunk_s * SR)))
        for c in range(min(n, 6)):
            y = x[int(c * chunk_s * SR): int((c + 1) * chunk_s * SR)]
            if y.size < SR or np.sqrt(np.mean(y**2)) < 1e-3:
                continue
            name = f"{group}_{i:04d}_{c}.wav"
            sf.write(str(out_dir / name), normalise_level(y, rng, peak=0.7), SR, subtype="PCM_16")
            rows.append({"path": f"noise/{name}", "kind": kind, "group": group, "split": split,
                         "seconds": round(y.size / SR, 3)})
    return rows


def build_rirs(data_dir: Path, seed: int = 0, n_train: int = 48, n_heldout: int = 16) -> Path:
    """Simulate room impulse responses with pyroomacoustics; train and held-out rooms differ.

    Training rooms: shoeboxes 3-25 m wide, RT60 targets 0.15-1.2 s. Held-out rooms: other shapes
    (long corridors, tall halls, 2-40 m) and RT60 targets 0.2-2.0 s, with other absorption
    mixes, so the held-out catalog's reverb is not the training reverb with new draws.
    """
    import pyroomacoustics as pra

    rng = np.random.default_rng(seed)
    out = data_dir / "rirs.npz"
    if out.exists():
        return out
    rirs: dict[str, np.ndarray] = {}

    def one(dims: np.ndarray, rt60: float) -> np.ndarray | None:
        try:
            e_abs, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:
            return None
        room = pra.ShoeBox(dims, fs=SR, materials=pra.Material(e_abs), max_order=min(max_order, 17))
        src = rng.uniform(0.5, 1.0, 3) * (dims - 0.6) + 0.3
        mic = rng.uniform(0.0, 1.0, 3) * (dims - 0.6) + 0.3
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        h = np.asarray(room.rir[0][0], dtype=np.float32)
        h = h[: int(2.5 * SR)]
        return h / (np.max(np.abs(h)) + 1e-9)

    i = 0
    while sum(k.startswith("train") for k in rirs) < n_train and i < n_train * 4:
        i += 1
        dims = np.array([rng.uniform(3, 25), rng.uniform(3, 20), rng.uniform(2.4, 8)])
        h = one(dims, rng.uniform(0.15, 1.2))
        if h is not None:
            rirs[f"train_{i}"] = h
    i = 0
    while sum(k.startswith("heldout") for k in rirs) < n_heldout and i < n_heldout * 4:
        i += 1
        if i % 2:
            dims = np.array([rng.uniform(15, 40), rng.uniform(1.8, 3.0), rng.uniform(2.5, 3.5)])  # corridor
        else:
            dims = np.array([rng.uniform(10, 35), rng.uniform(10, 30), rng.uniform(8, 20)])  # tall hall
        h = one(dims, rng.uniform(0.2, 2.0))
        if h is not None:
            rirs[f"heldout_{i}"] = h
    np.savez_compressed(out, **rirs)
    return out


# ----------------------------------------------------------------------------- entry point

def load_manifest(data_dir: str | Path) -> list[dict]:
    """Read ``manifest.jsonl``; ConfigError with the fix if ``prepare-data`` has not run."""
    path = Path(data_dir) / "manifest.jsonl"
    if not path.exists():
        raise ConfigError(f"no training manifest at {path}", f"run `degsearch prepare-data {data_dir}` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_noise_manifest(data_dir: str | Path) -> list[dict]:
    """Read ``noise.jsonl`` (empty list if absent)."""
    path = Path(data_dir) / "noise.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prepare_corpus(data_dir: str | Path, *, n_tts: int = 2000, seed: int = 0, real: bool = True,
                   noise: bool = True, speech_dirs: list[Path] | None = None, log=print) -> dict:
    """Build the whole corpus under ``data_dir`` (idempotent: finished steps are kept) and return counts.

    ``speech_dirs``: folders of the user's own clean recordings (one sub-folder per speaker,
    :func:`user_speech_groups`), all for training; rebuilt from them whenever given."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows: list[Utterance] = []
    noise_rows: list[dict] = []
    if real:
        unpacked = fetch_packages(data_dir / "raw", SPEECH_PACKAGES)
        log(f"packages unpacked ({time.time() - t0:.0f} s)")
        real_manifest = data_dir / "speech" / "real.jsonl"
        if real_manifest.exists():
            rows += [Utterance(**json.loads(l)) for l in real_manifest.read_text().splitlines() if l.strip()]
        else:
            real_rows = build_real_utterances(data_dir, _real_groups(unpacked), seed)
            real_manifest.write_text("".join(json.dumps(asdict(u)) + "\n" for u in real_rows))
            rows += real_rows
        log(f"real speech: {sum(u.source == 'real' for u in rows)} utterances ({time.time() - t0:.0f} s)")
    user_manifest = data_dir / "speech" / "user.jsonl"
    if speech_dirs:
        user_rows = build_real_utterances(data_dir, user_speech_groups([Path(d) for d in speech_dirs]), seed, subdir="user")
        user_manifest.write_text("".join(json.dumps(asdict(u)) + "\n" for u in user_rows))
        log(f"your speech: {len(user_rows)} utterances from {len({u.group for u in user_rows})} speakers ({time.time() - t0:.0f} s)")
    if user_manifest.exists():
        rows += [Utterance(**json.loads(l)) for l in user_manifest.read_text().splitlines() if l.strip()]
    if noise:
        unpacked_n = fetch_packages(data_dir / "raw", NOISE_PACKAGES)
        if (data_dir / "noise.jsonl").exists():
            noise_rows = load_noise_manifest(data_dir)
        else:
            noise_rows = build_noise(data_dir, unpacked_n, seed)
            (data_dir / "noise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in noise_rows))
        log(f"noise: {len(noise_rows)} chunks ({time.time() - t0:.0f} s)")
    build_rirs(data_dir, seed)
    log(f"room impulse responses ready ({time.time() - t0:.0f} s)")
    if n_tts > 0:
        rows += generate_tts(data_dir, n_tts, seed)
        log(f"tts: {sum(u.source == 'tts' for u in rows)} utterances ({time.time() - t0:.0f} s)")
    (data_dir / "manifest.jsonl").write_text("".join(json.dumps(asdict(u)) + "\n" for u in rows))
    summary = {
        "utterances": len(rows),
        "hours": round(sum(u.seconds for u in rows) / 3600, 2),
        "by_split_source": {f"{s}/{src}": round(sum(u.seconds for u in rows if u.split == s and u.source == src) / 3600, 2)
                            for s in ("train", "heldout") for src in ("tts", "real")},
        "groups_heldout_real": sorted({u.group for u in rows if u.split == "heldout" and u.source == "real"}),
        "noise_chunks": len(noise_rows),
        "seconds": round(time.time() - t0, 1),
    }
    (data_dir / "corpus_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
