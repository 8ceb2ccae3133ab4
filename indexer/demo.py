"""The offline demo: codec helpers, the demo archive (:func:`generate_demo_archive`) and the
demo run (:func:`run_demo`: generate, index, report per planted degradation, one example query).

The archive is synthesised, not shipped: espeak-ng speaks scripted agent/customer turns, band-limited
to the telephone band at 8 kHz, two channels; planted stretches of noise, clipping, packet loss,
AMR-NB codec damage and echo are listed in ``planted.json`` so the report can say what was found.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ConfigError

# (codec, container) pairs PyAV can write here; keys are the names the demo and tests use.
CODECS: dict[str, tuple[str, str, int | None]] = {
    "amr": ("libopencore_amrnb", "amr", 4750),  # AMR-NB at its lowest mode: audible codec damage
    "amr122": ("libopencore_amrnb", "amr", 12200),
    "g726": ("g726", "wav", 16000),
    "mulaw": ("pcm_mulaw", "wav", None),
    "opus": ("libopus", "ogg", 12000),
    "aac": ("aac", "mp4", 24000),
    "mp3": ("libmp3lame", "mp3", 32000),
}


def encode_audio(samples: np.ndarray, sr: int, codec: str) -> bytes:
    """Encode (C, n) or (n,) float samples in [-1, 1] with one of :data:`CODECS`; returns file bytes."""
    import av

    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}", f"use one of {', '.join(CODECS)}")
    name, fmt, bit_rate = CODECS[codec]
    x = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    layout = "mono" if x.shape[0] == 1 else "stereo"
    if x.shape[0] > 2:
        raise ConfigError("encode_audio writes mono or stereo only", "pass at most two channels")
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(name, rate=sr)
        stream.layout = layout
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def write_encoded(path: str | Path, samples: np.ndarray, sr: int, codec: str) -> Path:
    """Write ``samples`` encoded with ``codec`` to ``path`` (the extension is up to the caller)."""
    path = Path(path)
    path.write_bytes(encode_audio(samples, sr, codec))
    return path


def codec_roundtrip(samples: np.ndarray, sr: int, codec: str) -> np.ndarray:
    """Encode then decode mono ``samples`` (n,) with ``codec``; same length and rate as the input."""
    import av

    data = encode_audio(samples, sr, codec)
    out: list[np.ndarray] = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        for frame in container.decode(stream):
            for f in resampler.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
        for f in resampler.resample(None):
            out.append(f.to_ndarray().reshape(-1))
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    n = len(samples)
    # Codecs add a priming delay; align by cross-correlation on a short window, then trim/pad.
    lag = _delay(np.asarray(samples, np.float32), y, max_lag=min(2048, len(y)))
    y = y[lag:lag + n]
    return np.pad(y, (0, n - len(y))).astype(np.float32)


def _delay(x: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """Lag (samples) by which ``y`` trails ``x``, searched in [0, max_lag)."""
    if max_lag <= 1 or len(x) == 0:
        return 0
    n = min(len(x), len(y) - max_lag, 16000)
    if n <= 0:
        return 0
    ref = x[:n]
    scores = [float(np.dot(ref, y[lag:lag + n])) for lag in range(max_lag)]
    return int(np.argmax(scores))


# --- the demo archive --------------------------------------------------------------------------

DEMO_SR = 8000
DEMO_CALL_S = 24.0
DEMO_VERSION = 2
AGENTS = {"alice": "en-us+f3", "bob": "en-gb+m3", "carol": "en-us+f2"}
CUSTOMER_VOICES = ["en-us+m1", "en-gb+f2", "en-us+m4", "en-gb-x-rp+m2", "en-us+f4", "en+m2"]
AGENT_LINES = [
    "Thank you for calling, my name is {agent}, how can I help you today?",
    "I am sorry to hear that. Let me check your account for you.",
    "Could you please confirm your postcode and the first line of your address?",
    "I can see the problem now. There was a fault on the line last night.",
    "I will send a new router today, it should arrive within two working days.",
    "Is there anything else I can help you with?",
    "Thank you for your patience, I have updated the order.",
    "I understand. I will ask an engineer to call you tomorrow morning.",
]
CUSTOMER_LINES = [
    "Hello, my internet has been dropping out all week and nobody has fixed it.",
    "Yes, it is twelve Station Road, and the postcode is one two three four.",
    "I have already restarted the router three times this morning.",
    "That is fine, but I work from home so I really need it to be reliable.",
    "Can you tell me when the engineer will arrive?",
    "No, that is everything, thank you very much for your help.",
    "The last time I called I waited forty minutes on hold.",
    "Could you also check why my bill went up this month?",
]
# (call index, channel, start_s, end_s, kind): two of each degradation, two clean calls.
PLANTED = [
    (1, 1, 6.0, 11.0, "noise"),
    (2, 0, 3.0, 9.0, "clipping"),
    (3, 1, 10.0, 16.0, "dropouts"),
    (4, 1, 4.0, 12.0, "codec"),
    (5, 0, 12.0, 18.0, "echo"),
    (7, 0, 2.0, 7.0, "noise"),
    (7, 1, 14.0, 19.0, "clipping"),
    (8, 0, 5.0, 10.0, "dropouts"),
    (8, 1, 15.0, 20.0, "echo"),
    (9, 0, 8.0, 15.0, "codec"),
]
N_CALLS = 10
N_REFERENCE_CALLS = 2  # known-good calls, not indexed: the store's clean enrollment
DEGRADATIONS = ("noise", "clipping", "dropouts", "codec", "echo")


def _espeak(text: str, voice: str, speed: int = 165) -> np.ndarray:
    """Speech for ``text`` from espeak-ng, as mono float32 at :data:`DEMO_SR`."""
    import shutil
    import subprocess

    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("the demo archive needs the espeak-ng speech synthesiser, which is not installed",
                          "sudo apt-get install espeak-ng (or run `make setup`)")
    proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise ConfigError(f"espeak-ng failed for voice {voice}: {proc.stderr.decode(errors='replace').strip()}",
                          "check `espeak-ng --voices=en` lists English voices (apt-get install espeak-ng-data)")
    data, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    import soxr

    return soxr.resample(data, sr, DEMO_SR).astype(np.float32)


def _telephone_band(x: np.ndarray) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [300, 3400], btype="band", fs=DEMO_SR, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def _conversation(call: int, agent: str, rng: np.random.Generator) -> np.ndarray:
    """(2, n) call: agent on channel 0, customer on channel 1, alternating turns with pauses."""
    n = int(DEMO_CALL_S * DEMO_SR)
    out = np.zeros((2, n), np.float32)
    voices = [AGENTS[agent], CUSTOMER_VOICES[call % len(CUSTOMER_VOICES)]]
    lines = [list(AGENT_LINES), list(CUSTOMER_LINES)]
    order = [list(rng.permutation(len(lines[0]))), list(rng.permutation(len(lines[1])))]
    order[0].remove(0)
    order[0].insert(0, 0)  # the agent always opens with the greeting
    t = int(rng.uniform(0.2, 0.6) * DEMO_SR)
    speaker = 0
    while t < n - DEMO_SR:
        text = lines[speaker][order[speaker].pop(0) if order[speaker] else int(rng.integers(len(lines[speaker])))]
        speech = _espeak(text.format(agent=agent.capitalize()), voices[speaker], speed=int(rng.integers(150, 180)))
        speech = speech[: n - t]
        out[speaker, t:t + len(speech)] += 0.5 * speech / max(float(np.abs(speech).max()), 1e-6)
        t += len(speech) + int(rng.uniform(0.25, 0.8) * DEMO_SR)
        speaker = 1 - speaker
    for ch in range(2):
        out[ch] = _telephone_band(out[ch]) + 0.0015 * rng.standard_normal(n).astype(np.float32)  # line noise floor
    return out


def degrade(x: np.ndarray, kind: str, start_s: float, end_s: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one planted degradation to mono ``x`` (8 kHz) between ``start_s`` and ``end_s``."""
    a, b = int(start_s * DEMO_SR), int(end_s * DEMO_SR)
    y = x.copy()
    seg = x[a:b]
    if kind == "noise":  # loud broadband noise (street / fan)
        noise = rng.standard_normal(b - a).astype(np.float32)
        y[a:b] = seg + 0.08 * _telephone_band(noise) / 0.5
    elif kind == "clipping":  # overdriven input, hard-clipped
        y[a:b] = np.clip(seg * 6.0, -0.25, 0.25)
    elif kind == "dropouts":  # packet loss: 20 ms packets lost in bursts
        packets = (b - a) // 160
        lost = rng.random(packets) < 0.35
        lost |= np.roll(lost, 1) & (rng.random(packets) < 0.5)
        for i in np.flatnonzero(lost):
            y[a + i * 160:a + (i + 1) * 160] = 0.0
    elif kind == "codec":  # AMR-NB at 4.75 kbit/s, the lowest mobile mode
        pad = DEMO_SR // 2
        lo, hi = max(a - pad, 0), min(b + pad, len(x))
        coded = codec_roundtrip(x[lo:hi], DEMO_SR, "amr")
        y[a:b] = coded[a - lo:b - lo]
    elif kind == "echo":  # line echo: delayed, decaying copies
        out = seg.copy()
        for delay_s, gain in ((0.18, 0.6), (0.36, 0.35), (0.54, 0.2)):
            d = int(delay_s * DEMO_SR)
            src = x[max(a - d, 0):b - d]
            out[len(out) - len(src):] += gain * src
        y[a:b] = out
    else:
        raise ConfigError(f"unknown degradation {kind!r}", f"use one of {', '.join(DEGRADATIONS)}")
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def generate_demo_archive(out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the demo archive into ``out_dir/archive``: ten 24 s stereo 8 kHz calls (agent on
    channel 0, customer on channel 1; two clean, the rest with planted noise, clipping, packet
    loss, AMR codec and echo stretches), ``manifest.csv`` (path, call_id, agent, date) and
    ``planted.json`` (the degraded stretches), plus two clean reference calls in
    ``out_dir/reference`` for the clean enrollment. Offline and deterministic; returns the manifest path.
    An archive of the same version already there is reused unless ``force``.
    """
    import csv
    import json

    import soundfile as sf

    archive = Path(out_dir) / "archive"
    manifest = archive / "manifest.csv"
    planted_path = archive / "planted.json"
    if not force and manifest.exists() and planted_path.exists():
        try:
            if json.loads(planted_path.read_text()).get("version") == DEMO_VERSION:
                return manifest
        except (OSError, json.JSONDecodeError):
            pass
    archive.mkdir(parents=True, exist_ok=True)
    agents = list(AGENTS)
    rows, events = [], []
    for call in range(N_CALLS):
        rng = np.random.default_rng(1000 + call)
        agent = agents[call % len(agents)]
        audio = _conversation(call, agent, rng)
        for c, ch, start, end, kind in PLANTED:
            if c == call:
                audio[ch] = degrade(audio[ch], kind, start, end, rng)
        name = f"call_{call:02d}." + ("flac" if call % 4 == 3 else "wav")
        sf.write(str(archive / name), audio.T, DEMO_SR, subtype="PCM_16")
        rows.append({"path": name, "call_id": f"C{1000 + call}", "agent": agent, "date": f"2026-11-{1 + call:02d}"})
        events += [{"path": name, "channel": ch, "start_s": s, "end_s": e, "kind": k} for c, ch, s, e, k in PLANTED if c == call]
    # Known-good calls of the same line, as a QA team would pick: their noise floor and band are
    # part of "clean" for this archive (the model's built-in enrollment flags a line-noise floor).
    reference = Path(out_dir) / "reference"
    reference.mkdir(parents=True, exist_ok=True)
    for i in range(N_REFERENCE_CALLS):
        call = N_CALLS + i
        audio = _conversation(call, agents[call % len(agents)], np.random.default_rng(1000 + call))
        sf.write(str(reference / f"reference_{i:02d}.wav"), audio.T, DEMO_SR, subtype="PCM_16")
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "call_id", "agent", "date"])
        writer.writeheader()
        writer.writerows(rows)
    planted_path.write_text(json.dumps({"version": DEMO_VERSION, "sample_rate": DEMO_SR, "call_s": DEMO_CALL_S,
                                        "events": events}, indent=2))
    return manifest


# --- running the demo ------------------------------------------------------------------------------

QUERY_EVENT = 0  # index into PLANTED: the clip used for the example 'more like this' query


@dataclass
class DemoRow:
    """What indexing found for one planted degradation kind (or for clean speech, ``kind='none'``)."""

    kind: str
    events: int
    planted_s: float
    segments: int
    detected_s: float  # seconds of planted stretches covered by segments (for 'none': segment seconds outside them)
    share: float  # detected_s / planted_s (for 'none': share of the clean audio flagged)
    mean_mos: float | None


@dataclass
class DemoHit:
    """One hit of the example query and the planted degradation it lands on."""

    path: str
    channel: int
    start_s: float
    end_s: float
    similarity: float
    mos: float | None
    planted: str


@dataclass
class DemoReport:
    """The outcome of :func:`run_demo`."""

    out_dir: Path
    manifest: Path
    summary: Any  # indexer.pipeline.IndexSummary
    rows: list[DemoRow]
    total: dict[str, float]
    query_clip: Path
    query_kind: str
    hits: list[DemoHit] = field(default_factory=list)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _stored_segments(store: Any) -> list[tuple[str, int, float, float, float | None]]:
    from sqlalchemy import select

    from retrieval.models import Recording, Segment

    with store.session() as session:
        rows = session.execute(select(Recording.path, Segment.channel, Segment.start_s, Segment.end_s, Segment.mos)
                               .join(Recording, Recording.id == Segment.recording_id).where(Recording.status == "done")).all()
    return [(Path(r[0]).name, int(r[1]), float(r[2]), float(r[3]), r[4]) for r in rows]


def _planted_kind(events: list[dict], name: str, channel: int, start: float, end: float) -> str:
    best, best_ov = "none", 0.0
    for ev in events:
        if ev["path"] == name and ev["channel"] == channel:
            ov = _overlap(start, end, ev["start_s"], ev["end_s"])
            if ov > best_ov:
                best, best_ov = ev["kind"], ov
    return best


def summarise_demo(store: Any, planted: dict) -> tuple[list[DemoRow], dict[str, float]]:
    """Per planted kind: events, planted seconds, overlapping segments, covered seconds, share, MOS;
    plus a 'none' row for segments outside every planted stretch (false alarms on clean speech)."""
    events = planted["events"]
    segs = _stored_segments(store)
    rows = []
    for kind in DEGRADATIONS:
        evs = [e for e in events if e["kind"] == kind]
        planted_s = sum(e["end_s"] - e["start_s"] for e in evs)
        hit_segments = [s for s in segs if any(s[0] == e["path"] and s[1] == e["channel"] and _overlap(s[2], s[3], e["start_s"], e["end_s"]) > 0
                                               for e in evs)]
        covered = 0.0
        for e in evs:
            spans = sorted((max(s[2], e["start_s"]), min(s[3], e["end_s"])) for s in hit_segments
                           if s[0] == e["path"] and s[1] == e["channel"] and _overlap(s[2], s[3], e["start_s"], e["end_s"]) > 0)
            end = -1.0
            for a, b in spans:  # union of overlapping spans
                a = max(a, end)
                if b > a:
                    covered += b - a
                end = max(end, b)
        mos = [s[4] for s in hit_segments if s[4] is not None]
        rows.append(DemoRow(kind, len(evs), planted_s, len(hit_segments), covered, covered / planted_s if planted_s else 0.0,
                            float(np.mean(mos)) if mos else None))
    outside = []
    outside_s = 0.0
    for s in segs:
        ov = sum(_overlap(s[2], s[3], e["start_s"], e["end_s"]) for e in events if s[0] == e["path"] and s[1] == e["channel"])
        if s[3] - s[2] - ov > 1e-9:
            outside.append(s)
            outside_s += s[3] - s[2] - ov
    total_channel_s = planted.get("call_s", DEMO_CALL_S) * 2 * N_CALLS
    try:
        from retrieval.stats import compute_stats

        totals = compute_stats(store).attrs.get("totals", {})
    except ImportError:  # pragma: no cover - retrieval ships with the package
        totals = {}
    analysed = float(totals.get("analysed_s", total_channel_s))
    clean_s = max(analysed - sum(r.planted_s for r in rows), 1e-9)
    mos = [s[4] for s in outside if s[4] is not None]
    rows.append(DemoRow("none", 0, clean_s, len(outside), outside_s, outside_s / clean_s, float(np.mean(mos)) if mos else None))
    all_mos = [s[4] for s in segs if s[4] is not None]
    total = {"analysed_s": analysed, "segments": float(len(segs)), "degraded_s": float(sum(s[3] - s[2] for s in segs)),
             "mean_mos": float(np.mean(all_mos)) if all_mos else float("nan")}
    return rows, total


def run_demo(out_dir: str | Path, settings: Any, *, k: int = 5, progress: bool = True, force: bool = False) -> DemoReport:
    """Generate the demo archive in ``out_dir``, index it into ``settings``' store, and report per
    planted degradation what was found, plus one 'more like this' query for a planted clip."""
    import json

    import soundfile as sf

    from indexer.enrollment import set_clean_enrollment
    from indexer.pipeline import index_archive, load_store_model, model_spec
    from retrieval.store import Store

    out = Path(out_dir)
    manifest = generate_demo_archive(out, force=force)
    planted = json.loads((manifest.parent / "planted.json").read_text())
    if settings.database_url is None:
        settings.store_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"model": model_spec(settings)})
    model = load_store_model(settings)
    store = Store.open(settings)
    try:
        store.ensure_model(model.model_id, model.name, model.frame_rate, model.dim, model.threshold,
                           {"enrollments": sorted(model.enrollments)})
        set_clean_enrollment(store, model, sorted(str(p) for p in (out / "reference").glob("*.wav")),
                             quantile=settings.clean_quantile, smooth_frames=settings.smooth_frames)
    finally:
        store.close()
    summary = index_archive([str(manifest)], settings, progress=progress)
    # The example query: the first planted stretch, cut out as a mono clip.
    _, ch, start, end, kind = PLANTED[QUERY_EVENT]
    ev = next(e for e in planted["events"] if e["channel"] == ch and e["start_s"] == start and e["kind"] == kind)
    data, sr = sf.read(str(manifest.parent / ev["path"]), dtype="float32", always_2d=True)
    clip = out / f"query_{kind}.wav"
    sf.write(str(clip), data[int(start * sr):int(end * sr), ch], sr, subtype="PCM_16")
    store = Store.open(settings, readonly=True)
    try:
        rows, total = summarise_demo(store, planted)
        try:
            from retrieval.search import resolve_query, search
        except ImportError:  # pragma: no cover
            resolve_query = search = None
        hits: list[DemoHit] = []
        if search is not None and total["segments"] > 0:
            query = resolve_query(store, model, clips=[str(clip)])
            for h in search(store, query, k=k):
                name = Path(h.path).name
                hits.append(DemoHit(name, h.channel, h.start_s, h.end_s, h.similarity, h.mos,
                                    _planted_kind(planted["events"], name, h.channel, h.start_s, h.end_s)))
    finally:
        store.close()
    return DemoReport(out, manifest, summary, rows, total, clip, kind, hits)
