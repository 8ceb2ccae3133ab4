"""Training/validation shards: partial mix-up examples with frame labels and MOS pseudo-targets.

``build_shards(data_dir, out_dir, n_examples, seed, split)`` writes ``out_dir/shard_NNNNN.npz``
(``shard_size`` examples each) with keys

- ``audio``        (N, 64000) float32, 16 kHz, 4 s clips
- ``frame_labels`` (N, 200) int16, 50 Hz (hop 20 ms), 0 = clean, else the index in ``classes.json``
- ``frame_mos``    (N, 200) float32, eq. 4 pseudo-targets from the MOS teacher (distillmos by
                   default, DNSMOS with ``teacher='dnsmos'``; see :mod:`indexer.training.teacher`)
- ``utt_mos``      (N,) float32, mean of ``frame_mos``
- ``narrowband``   (N,) bool, the clean speech was drawn through the telephone channel
- ``real``         (N,) bool, real human speech (False: TTS)

plus ``shard_NNNNN.jsonl`` (one line per example: utterance, group, degradation and its drawn
parameters, regions in frames, teacher scores), ``classes.json`` (class names, index 0 'clean')
and ``info.json`` (arguments, counts). Finished shards are kept, so an interrupted run resumes.

Clean speech: ``split='train'`` draws manifest rows with split=train (60 % real human speech, 40 %
TTS); ``split='heldout'`` draws only held-out real speakers (validation/benchmarks). Half the
wideband clips, and every natively 8 kHz one, go through the telephone channel (300-3400 Hz
band-pass, 8 kHz, G.711 at a normal level half the time) and stay CLEAN. Speaker groups are
drawn with probability proportional to the square root of their size. ``p_clean`` of the
examples are left fully clean. ``catalog='heldout'`` degrades with the held-out catalog (other
implementations and ranges, :mod:`indexer.training.heldout`) and its held-out noise/room pools.

Work runs in the main process plus at most one worker process (``workers=2``), so another core
stays free for training; ``workers=1`` (default) computes in the main process only.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from indexer.errors import ConfigError
from indexer.training.catalog import (
    Degradation,
    Resources,
    _butter,
    _resample,
    class_names,
    g711_roundtrip,
    training_catalog,
)
from indexer.training.corpus import load_manifest
from indexer.training.mixup import HOP, partial_mixup, speech_frames
from indexer.training.teacher import TeacherCache, make_teacher, pseudo_targets

SR = 16000


def telephone_channel(x: np.ndarray, rng: np.random.Generator, g711: bool | None = None) -> np.ndarray:
    """Clean narrowband rendering: 300-3400 Hz band-pass, 8 kHz round trip, optional G.711 (normal level)."""
    lo = float(rng.uniform(200, 350))
    hi = float(rng.uniform(3200, 3600))
    y = _butter(x, SR, "bandpass", [lo, hi], 4)
    y8 = _resample(y, SR, 8000)
    if g711 if g711 is not None else rng.random() < 0.5:
        y8 = g711_roundtrip(y8, "mu" if rng.random() < 0.5 else "alaw")
    z = _resample(y8, 8000, SR)
    return np.pad(z, (0, max(0, x.size - z.size)))[: x.size].astype(np.float32)


def load_catalog(name: str, resources: Resources) -> list[Degradation]:
    """'train' -> :func:`training_catalog`; 'heldout' -> :func:`indexer.training.heldout.heldout_catalog`."""
    if name == "train":
        return training_catalog(resources)
    if name == "heldout":
        from indexer.training.heldout import heldout_catalog

        return heldout_catalog(resources)
    raise ConfigError(f"unknown catalog {name!r}", "use 'train' or 'heldout'")


class ExampleMaker:
    """Draws clean clips and makes one mix-up example at a time (one per process)."""

    def __init__(self, data_dir: str | Path, split: str, catalog: str, clip_s: float = 4.0,
                 p_clean: float = 0.1, p_narrowband: float = 0.5, p_real: float = 0.6,
                 cache_path: str | Path | None = None, teacher: str = "distillmos") -> None:
        self.data_dir = Path(data_dir)
        rows = [r for r in load_manifest(self.data_dir) if r["split"] == split]
        if split == "heldout":
            rows = [r for r in rows if r["source"] == "real"]
        if not rows:
            raise ConfigError(f"no {split} utterances in {self.data_dir / 'manifest.jsonl'}",
                              f"run `degsearch prepare-data {self.data_dir}` (it records splits)")
        self.real = [r for r in rows if r["source"] == "real"]
        self.tts = [r for r in rows if r["source"] == "tts"]
        self.by_group: dict[str, list[dict]] = {}
        for r in rows:
            self.by_group.setdefault(r["group"], []).append(r)
        # Groups are drawn with probability ~ sqrt(size): one large voice (an Asterisk language,
        # 190 utterances) does not swamp the 3-utterance folders, which still are not over-weighted.
        self._group_weights: dict[int, tuple[list[str], np.ndarray]] = {}
        for pool in (self.real, self.tts):
            sizes = Counter(r["group"] for r in pool)
            names = sorted(sizes)
            w = np.sqrt(np.array([sizes[g] for g in names], dtype=np.float64))
            self._group_weights[id(pool)] = (names, w / w.sum() if w.size else w)
        # Held-out catalog mixes held-out noises/rooms/babble; training catalog the training ones.
        self.resources = Resources.from_data_dir(self.data_dir, "heldout" if catalog == "heldout" else "train")
        self.catalog = load_catalog(catalog, self.resources)
        self.classes = class_names(self.catalog)
        self.n = int(round(clip_s * SR))
        self.p_clean, self.p_narrowband, self.p_real = p_clean, p_narrowband, p_real
        self.teacher = make_teacher(teacher, TeacherCache(cache_path))

    def _read(self, row: dict) -> np.ndarray:
        x, sr = sf.read(str(self.data_dir / row["path"]), dtype="float32", always_2d=True)
        return _resample(x.mean(axis=1), sr, SR)

    def clean_clip(self, rng: np.random.Generator) -> tuple[np.ndarray, dict, bool]:
        """A clip of ``clip_s`` seconds from one group (utterances of that group appended if short)."""
        pool = self.real if (self.real and (not self.tts or rng.random() < self.p_real)) else self.tts
        groups, weights = self._group_weights[id(pool)]
        group_name = groups[int(rng.choice(len(groups), p=weights))]
        rows = [r for r in self.by_group[group_name] if r["source"] == pool[0]["source"]]
        row = rows[int(rng.integers(len(rows)))]
        x = self._read(row)
        group = self.by_group[row["group"]]
        while x.size < self.n:
            gap = np.zeros(int(rng.uniform(0.1, 0.4) * SR), dtype=np.float32)
            x = np.concatenate([x, gap, self._read(group[int(rng.integers(len(group)))])])
        start = int(rng.integers(0, x.size - self.n + 1))
        x = x[start: start + self.n]
        narrow = row["native_rate"] <= 8000 or rng.random() < self.p_narrowband
        if narrow:
            x = telephone_channel(x, rng)
        peak = float(np.max(np.abs(x))) + 1e-9
        x = x / peak * float(rng.uniform(0.1, 0.9))
        # A faint noise floor: digital silence in TTS pauses must not become a "clean" cue.
        x = x + np.float32(10 ** (rng.uniform(-80, -60) / 20)) * rng.standard_normal(x.size).astype(np.float32)
        meta = {"path": row["path"], "group": row["group"], "source": row["source"], "offset": start,
                "narrowband": bool(narrow)}
        return x.astype(np.float32), meta, bool(narrow)

    def example(self, rng: np.random.Generator) -> dict:
        """One example: mixed audio, labels, pseudo-targets and metadata."""
        clean, meta, narrow = self.clean_clip(rng)
        n_fr = self.n // HOP
        q_ref = self.teacher.score(clean)
        if rng.random() < self.p_clean:
            labels = np.zeros(n_fr, dtype=np.int16)
            frame_mos, utt = pseudo_targets(np.zeros(n_fr, np.float32), q_ref, q_ref)
            meta.update(degradation="clean", regions=[], q_ref=round(q_ref, 3))
            return {"audio": clean, "frame_labels": labels, "frame_mos": frame_mos, "utt_mos": utt,
                    "narrowband": narrow, "real": meta["source"] == "real", "meta": meta}
        k = int(rng.integers(len(self.catalog)))
        deg = self.catalog[k]
        degraded = deg(clean, SR, rng)
        q_deg = self.teacher.score(degraded)
        res = partial_mixup(clean, degraded, k + 1, rng, speech=speech_frames(clean))
        frame_mos, utt = pseudo_targets(res.frame_mask, q_ref, q_deg)
        meta.update(degradation=deg.name, params=deg.params, regions=[list(r) for r in res.regions],
                    q_ref=round(q_ref, 3), q_deg=round(q_deg, 3))
        return {"audio": res.audio, "frame_labels": res.frame_labels, "frame_mos": frame_mos, "utt_mos": utt,
                "narrowband": narrow, "real": meta["source"] == "real", "meta": meta}


_MAKER: ExampleMaker | None = None


def _init_worker(kwargs: dict) -> None:
    global _MAKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:  # one thread per process: the distillmos teacher runs in torch
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _MAKER = ExampleMaker(**kwargs)


def _build_one_shard(args: tuple[str, int, int, int]) -> str:
    """Make shard ``index`` with ``count`` examples (seeded by (seed, index): independent of workers)."""
    out_dir, index, count, seed = args
    assert _MAKER is not None
    out = Path(out_dir) / f"shard_{index:05d}.npz"
    if out.exists():
        return str(out)
    rng = np.random.default_rng([seed, index])
    exs = [_MAKER.example(rng) for _ in range(count)]
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, audio=np.stack([e["audio"] for e in exs]).astype(np.float32),
             frame_labels=np.stack([e["frame_labels"] for e in exs]).astype(np.int16),
             frame_mos=np.stack([e["frame_mos"] for e in exs]).astype(np.float32),
             utt_mos=np.array([e["utt_mos"] for e in exs], dtype=np.float32),
             narrowband=np.array([e["narrowband"] for e in exs], dtype=bool),
             real=np.array([e["real"] for e in exs], dtype=bool))
    out.with_suffix(".jsonl").write_text("".join(json.dumps(e["meta"]) + "\n" for e in exs))
    os.replace(tmp, out)
    _MAKER.teacher.cache.flush()
    return str(out)


def build_shards(data_dir: str | Path, out_dir: str | Path, n_examples: int, seed: int = 0, split: str = "train",
                 clip_s: float = 4.0, *, catalog: str = "train", shard_size: int = 500, workers: int = 1,
                 p_clean: float = 0.1, p_narrowband: float = 0.5, teacher: str = "distillmos", log=print) -> dict:
    """Write ``ceil(n_examples / shard_size)`` shards to ``out_dir``; returns a summary dict.

    ``workers``: 1 = main process only; 2 = main process plus one worker process (the maximum).
    """
    if split not in ("train", "heldout"):
        raise ConfigError(f"unknown split {split!r}", "use 'train' or 'heldout'")
    if workers not in (1, 2):
        raise ConfigError("workers must be 1 or 2", "use 1 (main only) or 2 (main + one worker); the other core trains")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"data_dir": str(data_dir), "split": split, "catalog": catalog, "clip_s": clip_s, "p_clean": p_clean,
              "p_narrowband": p_narrowband, "cache_path": None, "teacher": teacher}
    t0 = time.time()
    _init_worker(kwargs)
    assert _MAKER is not None
    classes = _MAKER.classes
    (out / "classes.json").write_text(json.dumps(classes, indent=1))
    jobs = []
    for i, start in enumerate(range(0, n_examples, shard_size)):
        jobs.append((str(out), i, min(shard_size, n_examples - start), seed))
    done: list[str] = []
    if workers == 2 and len(jobs) > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(1, initializer=_init_worker, initargs=(kwargs,)) as pool:
            pending = [pool.apply_async(_build_one_shard, (j,)) for j in jobs[1::2]]
            for j in jobs[0::2]:
                done.append(_build_one_shard(j))
                log(f"shard {Path(done[-1]).name} ({time.time() - t0:.0f} s)")
            for p in pending:
                done.append(p.get())
                log(f"shard {Path(done[-1]).name} ({time.time() - t0:.0f} s)")
    else:
        for j in jobs:
            done.append(_build_one_shard(j))
            log(f"shard {Path(done[-1]).name} ({time.time() - t0:.0f} s)")
    counts: Counter = Counter()
    n_narrow = n_real = 0
    for f in sorted(out.glob("shard_*.jsonl")):
        for line in f.read_text().splitlines():
            m = json.loads(line)
            counts[m["degradation"]] += 1
            n_narrow += m["narrowband"]
            n_real += m["source"] == "real"
    total = sum(counts.values())
    info = {"data_dir": str(data_dir), "n_examples": total, "seed": seed, "split": split, "catalog": catalog,
            "clip_s": clip_s, "shard_size": shard_size, "shards": len(done), "classes": len(classes),
            "narrowband_fraction": round(n_narrow / max(total, 1), 3), "real_fraction": round(n_real / max(total, 1), 3),
            "per_class": dict(sorted(counts.items())), "teacher": _MAKER.teacher.name, "frame_rate": SR / HOP,
            "seconds": round(time.time() - t0, 1)}
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


def band_limit_narrowband(arrays: dict[str, np.ndarray], chunk: int = 256, *, wideband_share: float = 0.0,
                          seed: int = 0) -> None:
    """In place: the narrowband clips of loaded shards as the indexer reads an 8 kHz file, with
    nothing above 4 kHz (a 16 -> 8 -> 16 kHz round trip).

    Shards keep narrowband clips at 16 kHz with the faint full-band noise floor, and the degraded
    regions' energy, above 4 kHz. A real 8 kHz call has none there, and a model trained on the clips
    as stored took the empty band for a degradation: on the narrowband validation clips its frame
    EER went 4.8 -> 16.7 % after the round trip (MODEL_CARD).

    ``wideband_share`` of the wideband clips (drawn with ``seed``) get the same round trip, without
    the telephone band-pass: speech recorded band-limited at the source (an 8 kHz prompt, an old
    voice pack) whose clean frames are still clean. The catalog's band-limiting entries cut far
    below 4 kHz (module :mod:`indexer.training.catalog`), so their regions stay visible.
    """
    narrow = arrays["narrowband"]
    picked = ~narrow & (np.random.default_rng(seed).random(narrow.size) < wideband_share)
    rows = np.flatnonzero(narrow | picked)
    audio = arrays["audio"]
    for i in range(0, rows.size, chunk):
        sel = rows[i: i + chunk]
        audio[sel] = _resample(_resample(audio[sel], SR, 8000), 8000, SR)[:, : audio.shape[1]]


def load_shards(out_dir: str | Path, *, narrowband_8khz: bool = False, wideband_8khz_share: float = 0.0,
                seed: int = 0, max_examples: int = 0, fewer_ok: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """Concatenate the shards of ``out_dir`` in order and return (arrays, classes): all of them, or
    the first ``max_examples`` examples (shard i is seeded by (seed, i), so a larger set built with
    the same seed starts with the smaller one; fewer are an error unless ``fewer_ok``). With
    ``narrowband_8khz`` the narrowband clips, and ``wideband_8khz_share`` of the wideband ones, are
    band-limited (:func:`band_limit_narrowband`)."""
    if wideband_8khz_share and not narrowband_8khz:
        raise ConfigError("a wideband band-limited share needs the narrowband clips band-limited too",
                          "add --narrowband-8khz, or drop --wideband-8khz-share")
    out = Path(out_dir)
    files = sorted(out.glob("shard_*[0-9].npz"))
    if not files:
        raise ConfigError(f"no shards in {out}", "run `degsearch build-shards` first")
    parts: list[dict[str, np.ndarray]] = []
    loaded = 0
    for f in files:
        if max_examples and loaded >= max_examples:
            break
        parts.append(dict(np.load(f)))
        loaded += len(parts[-1]["audio"])
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if max_examples:
        if len(arrays["audio"]) < max_examples and not fewer_ok:
            raise ConfigError(f"{out} holds {len(arrays['audio'])} examples, the recipe trains on {max_examples}",
                              f"build them: degsearch prepare-data {out.parent.parent} --shards {max_examples} "
                              "(prepare-data writes DATA_DIR/shards/train; existing shards are kept)")
        arrays = {k: v[:max_examples] for k, v in arrays.items()}
    if narrowband_8khz:
        band_limit_narrowband(arrays, wideband_share=wideband_8khz_share, seed=seed)
    return arrays, json.loads((out / "classes.json").read_text())


def load_speaker_groups(out_dir: str | Path, n: int) -> tuple[np.ndarray, list[str]]:
    """The speaker group of each of the first ``n`` examples of ``out_dir`` (read from the shards'
    ``.jsonl`` lines, in :func:`load_shards` order) as indices into the returned sorted names."""
    groups: list[str] = []
    for f in sorted(Path(out_dir).glob("shard_*[0-9].jsonl")):
        if len(groups) >= n:
            break
        groups += [json.loads(line)["group"] for line in f.read_text().splitlines() if line.strip()]
    if len(groups) < n:
        raise ConfigError(f"{out_dir} describes {len(groups)} examples in its .jsonl files, {n} were loaded",
                          "rebuild the shards: their .npz and .jsonl files disagree")
    names = sorted(set(groups[:n]))
    index = {g: i for i, g in enumerate(names)}
    return np.array([index[g] for g in groups[:n]], dtype=np.int64), names


def load_val_sets(data_dir: str | Path, *, narrowband_8khz: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The held-out real-speaker validation sets under a shards directory, by name: ``val_real``
    (training catalog) and ``val_heldout_catalog``, whichever exist (at least one must)."""
    data = Path(data_dir)
    sets = {}
    for name in ("val_real", "val_heldout_catalog"):
        if (data / name).is_dir():
            sets[name], _ = load_shards(data / name, narrowband_8khz=narrowband_8khz)
    if not sets:
        raise ConfigError(f"no validation shards (val_real, val_heldout_catalog) under {data}",
                          "build them with `degsearch build-shards ... --split heldout`")
    return sets
