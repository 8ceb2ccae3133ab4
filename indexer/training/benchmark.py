"""Generate a labelled degradation benchmark in the format of ``/work/shared/BENCHMARK.md``.

``make_benchmark(out, seed=..)`` writes ``out/manifest.jsonl`` + ``out/audio/*.flac``:

- clean speech: by default the HELD-OUT real speakers of a prepared data dir (``split=heldout``,
  ``source=real`` rows of ``DATA_DIR/manifest.jsonl``: one Asterisk voice, several klettres /
  ktuberling language folders, one hedgewars pack; never in training shards). ``source='tts'``
  uses the TTS voices held out from training instead, ``source='all'`` both. ``clean_dir`` uses
  every audio file under a folder the user points at (each sub-folder is one speaker).
- files of ``file_s`` seconds (utterances of one speaker concatenated), 1-3 events each of
  0.4-1.5 s placed in speech (silero-vad), each event one label of the chosen catalog (singles
  and pairs, names ``+``-joined and sorted), spliced as in the training mix-up (5 ms crossfades
  inside the events; event edges on the 20 ms grid). ``whole_file=True``: one degradation over
  each degraded file instead (one event from start to end).
- ``channel='telephone'``: clean speech through the telephone channel (300-3400 Hz, G.711 half
  the time) before degrading, files written at 8 kHz (call archives); ``'wideband'``: 16 kHz.
- splits: ``enroll`` holds clean files (``clean: true``) and at least ``enroll_per_label``
  events of every label (for prototypes); ``test`` holds ~10 % clean files and the rest, labels
  balanced round-robin.

Extra keys per line (``speaker``, ``source``, ``channel``) are ignored by readers of the format.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from indexer.errors import ConfigError
from indexer.training.catalog import Degradation, Resources, _resample
from indexer.training.corpus import AUDIO_EXTS, load_manifest, read_mono, speaker_folders, trim_silence
from indexer.training.mixup import FRAME_RATE, sample_regions, speech_frames, splice
from indexer.training.shards import load_catalog, telephone_channel

SR = 16000


def _clean_pool(data_dir: Path | None, clean_dir: Path | None, source: str) -> dict[str, list[Path]]:
    """speaker/group -> audio files."""
    pool: dict[str, list[Path]] = {}
    if clean_dir is not None:
        pool = speaker_folders(Path(clean_dir))
        if not pool:
            raise ConfigError(f"no audio files under {clean_dir}", f"point --clean-dir at a folder of {', '.join(AUDIO_EXTS)} files")
        return pool
    if data_dir is None:
        raise ConfigError("no clean speech source", "give --clean-dir DIR or --data-dir of `degsearch prepare-data`")
    sources = {"real": ("real",), "tts": ("tts",), "all": ("real", "tts")}.get(source)
    if sources is None:
        raise ConfigError(f"unknown source {source!r}", "use real, tts or all")
    for r in load_manifest(data_dir):
        if r["split"] == "heldout" and r["source"] in sources:
            pool.setdefault(r["group"], []).append(data_dir / r["path"])
    if not pool:
        raise ConfigError(f"no held-out {source} utterances in {data_dir}/manifest.jsonl",
                          f"rerun `degsearch prepare-data {data_dir}` (it holds out whole speakers)")
    return pool


def _clean_file(files: list[Path], n: int, rng: random.Random) -> np.ndarray:
    """Concatenate random utterances of one speaker up to ``n`` samples (short pauses between)."""
    parts: list[np.ndarray] = []
    total = 0
    tries = 0
    while total < n and tries < 200:
        tries += 1
        x, sr = read_mono(rng.choice(files))
        x = trim_silence(_resample(x, sr, SR))
        if x.size < int(0.2 * SR):
            continue
        peak = float(np.max(np.abs(x))) + 1e-9
        parts += [x / peak * 0.7, np.zeros(int(rng.uniform(0.15, 0.5) * SR), dtype=np.float32)]
        total += parts[-1].size + parts[-2].size
    if not parts:
        raise ConfigError("could not read usable speech from the clean source", "check the files decode (ffmpeg -i FILE)")
    y = np.concatenate(parts)[:n]
    return np.pad(y, (0, n - y.size)).astype(np.float32)


def make_benchmark(out: str | Path, *, seed: int = 0, data_dir: str | Path | None = "data/train",
                   clean_dir: str | Path | None = None, channel: str = "wideband", catalog: str = "train",
                   minutes: float = 10.0, source: str = "real", file_s: float = 8.0, enroll_per_label: int = 2,
                   labels: list[str] | None = None, whole_file: bool = False, log=print) -> dict:
    """Write the benchmark to ``out`` and return its summary (files, seconds, events, labels).

    ``minutes`` sizes the whole benchmark, but the enroll split always gets ``enroll_per_label``
    events of every label, so small values are rounded up. ``labels`` restricts the catalog.
    ``whole_file``: each degraded file is one degradation from start to end (a call that is noisy
    or compressed throughout) instead of 1-3 events spliced into clean speech; a detector that
    only looks for changes within a recording misses these.
    """
    if channel not in ("wideband", "telephone"):
        raise ConfigError(f"unknown channel {channel!r}", "use wideband or telephone")
    t0 = time.time()
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    data_path = Path(data_dir) if data_dir is not None else None
    pool = _clean_pool(data_path, Path(clean_dir) if clean_dir else None, source)
    resources_split = "heldout" if catalog == "heldout" else "train"
    resources = (Resources.from_data_dir(data_path, resources_split)
                 if data_path is not None and (data_path / "manifest.jsonl").exists() else Resources())
    cat: list[Degradation] = load_catalog(catalog, resources)
    if labels:
        unknown = sorted(set(labels) - {d.name for d in cat})
        if unknown:
            raise ConfigError(f"labels not in the {catalog} catalog: {', '.join(unknown)}",
                              f"choose from: {', '.join(d.name for d in cat)}")
        cat = [d for d in cat if d.name in set(labels)]
    labels = [d.name for d in cat]
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    n = int(file_s * SR)
    n_files = max(int(minutes * 60 / file_s), 4)
    n_enroll_clean = max(2, n_files // 20)
    # Enroll: each label enroll_per_label times, 2 events per file (1 with whole_file).
    enroll_events = [d for d in range(len(cat)) for _ in range(enroll_per_label)]
    rng.shuffle(enroll_events)
    per_file = 1 if whole_file else 2
    enroll_files = [enroll_events[i: i + per_file] for i in range(0, len(enroll_events), per_file)]
    n_test = max(n_files - n_enroll_clean - len(enroll_files), 2)
    n_test_clean = max(1, n_test // 10)
    test_files: list[list[int]] = []
    order: list[int] = []
    for _ in range(n_test - n_test_clean):
        k = 1 if whole_file else rng.randint(1, 3)
        ev = []
        for _ in range(k):
            if not order:
                order = list(range(len(cat)))
                rng.shuffle(order)
            ev.append(order.pop())
        test_files.append(ev)
    plan = ([("enroll", []) for _ in range(n_enroll_clean)] + [("enroll", e) for e in enroll_files]
            + [("test", []) for _ in range(n_test_clean)] + [("test", e) for e in test_files])
    speakers = sorted(pool)
    out_sr = 8000 if channel == "telephone" else SR
    lines = []
    n_events = 0
    for i, (split, deg_ids) in enumerate(plan):
        spk = speakers[i % len(speakers)] if i < len(speakers) else rng.choice(speakers)
        clean = _clean_file(pool[spk], n, rng)
        if channel == "telephone":
            clean = telephone_channel(clean, nrng)
        clean = clean / (float(np.max(np.abs(clean))) + 1e-9) * rng.uniform(0.3, 0.9)
        events = []
        audio = clean
        if deg_ids and whole_file:
            audio = cat[deg_ids[0]](clean, SR, nrng)
            events.append({"start": 0.0, "end": round(len(clean) / SR, 3), "label": cat[deg_ids[0]].name})
        elif deg_ids:
            flags = speech_frames(clean)
            regions = sample_regions(flags, nrng, (len(deg_ids), len(deg_ids)), (0.4, 1.5), min_gap_frames=10)
            degraded = [cat[d](clean, SR, nrng) for d in deg_ids[: len(regions)]]
            audio, _ = splice(clean, degraded, regions)
            for (f0, f1), d in zip(regions, deg_ids):
                events.append({"start": round(f0 / FRAME_RATE, 3), "end": round(f1 / FRAME_RATE, 3), "label": cat[d].name})
        events.sort(key=lambda e: e["start"])
        n_events += len(events)
        y = _resample(audio, SR, out_sr) if out_sr != SR else audio
        uid = f"{split[0]}{i:04d}"
        rel = f"audio/{uid}.flac"
        sf.write(str(out / rel), np.clip(y, -1, 1), out_sr, subtype="PCM_16")
        lines.append({"id": uid, "audio": rel, "split": split, "clean": not events, "events": events,
                      "speaker": spk, "channel": channel})
    (out / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = {"files": len(lines), "seconds": round(len(lines) * file_s, 1), "events": n_events,
               "labels": sorted(set(labels)), "catalog": catalog, "channel": channel, "seed": seed, "whole_file": whole_file,
               "source": str(clean_dir) if clean_dir else f"heldout-{source}", "speakers": speakers,
               "build_seconds": round(time.time() - t0, 1)}
    (out / "info.json").write_text(json.dumps(summary, indent=1))
    log(f"{out}: {summary['files']} files, {summary['events']} events, {len(summary['labels'])} labels "
        f"({summary['build_seconds']} s)")
    return summary


def validate_benchmark(bench_dir: str | Path) -> list[str]:
    """Problems with a benchmark directory against the format (empty list = valid)."""
    bench = Path(bench_dir)
    problems: list[str] = []
    path = bench / "manifest.jsonl"
    if not path.exists():
        return [f"{path} missing"]
    ids = set()
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {no}: not JSON ({exc})")
            continue
        for key in ("id", "audio", "split", "clean", "events"):
            if key not in row:
                problems.append(f"line {no}: missing {key}")
        if problems and problems[-1].startswith(f"line {no}: missing"):
            continue
        if row["id"] in ids:
            problems.append(f"line {no}: duplicate id {row['id']}")
        ids.add(row["id"])
        if row["split"] not in ("enroll", "test"):
            problems.append(f"line {no}: split {row['split']!r}")
        audio = bench / row["audio"]
        if not audio.exists():
            problems.append(f"line {no}: {row['audio']} missing")
            continue
        duration = sf.info(str(audio)).duration
        if row["clean"] and row["events"]:
            problems.append(f"line {no}: clean file with events")
        if not row["clean"] and not row["events"]:
            problems.append(f"line {no}: degraded file without events")
        prev_start = -1.0
        for ev in row["events"]:
            if not (0 <= ev["start"] < ev["end"] <= duration + 1e-6):
                problems.append(f"line {no}: event {ev} outside [0, {duration:.3f}]")
            if ev["start"] < prev_start:
                problems.append(f"line {no}: events not sorted")
            prev_start = ev["start"]
            parts = ev["label"].split("+")
            if parts != sorted(parts) or len(set(parts)) != len(parts) or not all(parts):
                problems.append(f"line {no}: label {ev['label']!r} not '+'-joined sorted names")
    return problems
