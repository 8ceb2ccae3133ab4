"""Benchmark the HTTP API on loopback: a real `degsearch serve` process over a store of 1M segments.

What is measured (client-side wall time per request, over HTTP on 127.0.0.1):
  1. search p50/p99: ``POST /v1/search`` by stored segment id (k=10), sequential;
  2. clip search: ``POST /v1/search/clip`` with a 10 s 8 kHz WAV (decode + model + search), sequential;
  3. load: 1,000 ``POST /v1/search`` requests from 50 concurrent httpx async clients; errors counted.

How the store is filled (printed with the figures): segment rows and vectors are bulk-inserted into the
store's own tables (``recordings``, ``segments``, ``segment_vectors``) with SQLAlchemy Core, in the same
layout ``Store.write_recording`` produces, then the FAISS index is built by ``Store.rebuild_index()``.
Going through ``write_recording`` one recording at a time would only measure indexing, which is not
what this script is about; queries then run through the real server, store and FAISS index.
Vectors are random unit vectors around 256 cluster centres (so neighbours are meaningful).

    .venv/bin/python bench/bench_api.py                     # 1M segments, model 'fast'
    .venv/bin/python bench/bench_api.py --segments 20000    # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEGMENTS_PER_RECORDING = 100
INSERT_BATCH = 50_000
REQUEST_TIMEOUT_S = 60.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` (linear interpolation)."""
    return float(np.percentile(np.asarray(values), q))


def fill_store(store_dir: Path, model_name: str, n_segments: int, factory: str, seed: int = 0) -> dict:
    """Create the store, bulk-insert ``n_segments`` segments + vectors, build FAISS via the Store."""
    import sqlalchemy as sa

    from indexer.model import load_model
    from indexer.settings import get_settings
    from retrieval.models import IndexRun, Recording, Segment, SegmentVector, utcnow
    from retrieval.store import Store

    settings = get_settings(store_dir=store_dir, model=model_name, faiss_factory=factory)
    store_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(model_name)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, model.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    t0 = time.perf_counter()
    store = Store.open(settings)
    try:
        store.ensure_model(model.model_id, model.name, model.frame_rate, model.dim, model.threshold, {})
        now = utcnow()
        n_recordings = -(-n_segments // SEGMENTS_PER_RECORDING)
        with store.engine.begin() as conn:
            run_id = conn.execute(sa.insert(IndexRun).values(model_id=model.model_id, status="done", args={"bench": True}, started_at=now)).inserted_primary_key[0]
            conn.execute(sa.insert(Recording), [
                {"id": r + 1, "path": f"/bench/archive/call_{r:07d}.wav", "content_hash": f"{r:064x}", "duration_s": 300.0,
                 "sample_rate": 8000, "channels": 2, "attributes": {"site": f"site{r % 7}"}, "status": "done",
                 "model_id": model.model_id, "index_run_id": run_id, "indexed_at": now, "analysed_s": 600.0,
                 "degraded_s": 60.0, "mean_mos": 3.2}
                for r in range(n_recordings)
            ])
            for lo in range(0, n_segments, INSERT_BATCH):
                hi = min(n_segments, lo + INSERT_BATCH)
                ids = np.arange(lo + 1, hi + 1)
                vecs = centres[rng.integers(0, len(centres), hi - lo)] + 0.3 * rng.standard_normal((hi - lo, model.dim)).astype(np.float32) / np.sqrt(model.dim)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                starts = rng.uniform(0, 295, hi - lo)
                durs = rng.uniform(0.3, 4.0, hi - lo)
                mos = rng.uniform(1.2, 4.2, hi - lo)
                conn.execute(sa.insert(Segment), [
                    {"id": int(i), "recording_id": int((i - 1) // SEGMENTS_PER_RECORDING + 1), "channel": int(i % 2),
                     "start_s": float(s), "end_s": float(s + d), "n_frames": int(d * 50), "mos": float(m), "score": 0.4,
                     "label": "unknown", "model_id": model.model_id, "created_at": now}
                    for i, s, d, m in zip(ids, starts, durs, mos)
                ])
                conn.execute(sa.insert(SegmentVector), [
                    {"segment_id": int(i), "dim": model.dim, "vector": v.astype("<f4").tobytes()} for i, v in zip(ids, vecs)
                ])
        t_rows = time.perf_counter() - t0
        t1 = time.perf_counter()
        indexed = store.rebuild_index()
        t_index = time.perf_counter() - t1
    finally:
        store.close()
    return {"segments": n_segments, "recordings": n_recordings, "indexed": int(indexed), "insert_rows_s": round(t_rows, 1),
            "rebuild_index_s": round(t_index, 1), "dim": model.dim, "factory": factory}


def resolve_model(name: str, tmp: Path) -> tuple[str, str]:
    """The model to serve; if the shipped 'fast' weights are not installed yet, an untrained
    checkpoint of the same architecture (identical inference cost), said so in the report."""
    from indexer.errors import ModelError
    from indexer.model import load_model

    try:
        load_model(name)
        return name, name
    except ModelError as exc:
        if name != "fast":
            raise
        from indexer.model.checkpoint import build_untrained_checkpoint

        path = tmp / "untrained-fast.pt"
        build_untrained_checkpoint(path)
        return str(path), f"untrained checkpoint, fast architecture ({exc.message})"


def clip_wav(seconds: float = 10.0, sr: int = 8000) -> bytes:
    """A speech-like 8 kHz mono clip with hard clipping in its second half."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.5 * (1 + np.sin(2 * np.pi * 3 * t))) * 0.2
    x += 0.005 * rng.standard_normal(t.size)
    half = t.size // 2
    x[half:] = np.clip(x[half:] * 5, -0.25, 0.25)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store_dir: Path, model: str, port: int, factory: str) -> subprocess.Popen:
    env = {**os.environ, "DEGSEARCH_FAISS_FACTORY": factory}
    cmd = [str(Path(sys.executable).parent / "degsearch"), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--store-dir", str(store_dir), "--model", model, "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, cwd=ROOT)


def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 300.0) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError("server not ready")


def timed_sequential(n: int, fn) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1e3)
    return out


async def load_test(base: str, n_requests: int, concurrency: int, n_segments: int) -> dict:
    """``n_requests`` searches from ``concurrency`` clients, each with its own connection."""
    import httpx

    rng = np.random.default_rng(3)
    ids = rng.integers(1, n_segments + 1, n_requests).tolist()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in ids:
        queue.put_nowait(int(i))
    latencies: list[float] = []
    errors: list[str] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S) as c:
            while True:
                try:
                    seg = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                try:
                    r = await c.post("/v1/search", json={"segment_id": seg, "k": 10})
                    if r.status_code != 200 or len(r.json()["hits"]) != 10:
                        errors.append(f"{r.status_code}: {r.text[:100]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append((time.perf_counter() - t) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"requests": len(latencies), "concurrency": concurrency, "errors": len(errors), "error_samples": errors[:3],
            "wall_s": round(wall, 2), "req_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=1_000_000)
    ap.add_argument("--model", default="fast", help="model for clip queries (name or checkpoint path)")
    ap.add_argument("--factory", default="Flat", help="FAISS factory string of the store")
    ap.add_argument("--store-dir", type=Path, default=None, help="reuse/keep a store here (default: temp dir, removed)")
    ap.add_argument("--search-requests", type=int, default=300)
    ap.add_argument("--clip-requests", type=int, default=30)
    ap.add_argument("--load-requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--fill-only", action="store_true", help="only build the store (use with --store-dir)")
    args = ap.parse_args()

    import httpx

    tmp = tempfile.mkdtemp(prefix="degsearch-bench-")
    store_dir = args.store_dir or Path(tmp) / "store"
    report: dict = {}
    try:
        args.model, report["model"] = resolve_model(args.model, Path(tmp))
        print("model:", report["model"], flush=True)
        if not (store_dir / "degsearch.db").exists():
            report["fill"] = fill_store(store_dir, args.model, args.segments, args.factory)
            print("store:", json.dumps(report["fill"]), flush=True)
        if args.fill_only:
            return
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(store_dir, args.model, port, args.factory)
        try:
            report["server_ready_s"] = round(wait_ready(base, proc), 1)
            n = httpx.get(base + "/healthz").json()["segments"]
            report["segments_served"] = n
            rng = np.random.default_rng(2)
            with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as c:
                # Warm-up: first requests load the model and touch the index pages.
                clip = clip_wav(10.0)
                first = time.perf_counter()
                r = c.post("/v1/search/clip", files={"file": ("clip.wav", clip, "audio/wav")}, data={"k": "10"})
                r.raise_for_status()
                report["first_clip_ms_incl_model_load"] = round((time.perf_counter() - first) * 1e3, 1)
                for _ in range(5):
                    c.post("/v1/search", json={"segment_id": int(rng.integers(1, n + 1)), "k": 10}).raise_for_status()

                ids = rng.integers(1, n + 1, args.search_requests)
                took: list[float] = []

                def one_search(i: int) -> None:
                    resp = c.post("/v1/search", json={"segment_id": int(ids[i]), "k": 10})
                    resp.raise_for_status()
                    took.append(resp.json()["took_ms"])

                lat = timed_sequential(args.search_requests, one_search)
                report["search"] = {"requests": len(lat), "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                                    "server_p50_ms": round(percentile(took, 50), 2)}
                print("search:", json.dumps(report["search"]), flush=True)

                clip_took: list[float] = []

                def one_clip(i: int) -> None:
                    resp = c.post("/v1/search/clip", files={"file": ("clip.wav", clip, "audio/wav")}, data={"k": "10"})
                    resp.raise_for_status()
                    clip_took.append(resp.json()["took_ms"])

                lat = timed_sequential(args.clip_requests, one_clip)
                report["clip_search_10s"] = {"requests": len(lat), "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
                                             "server_p50_ms": round(percentile(clip_took, 50), 1), "target_ms": 100}
                print("clip:", json.dumps(report["clip_search_10s"]), flush=True)

            report["load"] = asyncio.run(load_test(base, args.load_requests, args.concurrency, n))
            print("load:", json.dumps(report["load"]), flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
