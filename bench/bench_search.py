"""Search latency and recall@10 against exact search, for the default and approximate indexes.

    .venv/bin/python bench/bench_search.py                       # 100k and 1M, Flat / HNSW32 / IVF1024,SQ8,RFlat
    .venv/bin/python bench/bench_search.py --sizes 100000 --queries 200 --factories Flat HNSW32
    .venv/bin/python bench/bench_search.py --demo /tmp/demo --model fast   # clip-query precision on the demo archive

Vectors are random 64-d unit vectors (``--data random``, the hardest case: no structure for an
ANN index to exploit) or a mixture of unit vectors around 2,000 centres (``--data clustered``,
closer to segment embeddings, which gather by degradation). They go straight into FAISS indexes
built by :mod:`retrieval.vectors` the way the store builds them (inner product on normalised
vectors, ids mapped); no database is involved. Latency is per single query (one user request),
on ``--threads`` threads, after warm-up; recall@10 is the fraction of the exact top-10 found.
For approximate indexes the search parameter (HNSW ``efSearch``, IVF ``nprobe``) is swept and
the cheapest setting reaching ``--target-recall`` is reported as the tuned one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SWEEPS = {"HNSW": ("efSearch", [16, 32, 64, 128, 192, 256, 384, 512, 768, 1024]), "IVF": ("nprobe", [8, 16, 32, 64, 128, 256, 512])}


def make_vectors(n: int, dim: int, data: str, seed: int) -> np.ndarray:
    """``n`` unit vectors (float32), generated in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    centres = rng.standard_normal((2000, dim)).astype(np.float32) if data == "clustered" else None
    block = 100_000
    for start in range(0, n, block):
        m = min(block, n - start)
        x = rng.standard_normal((m, dim)).astype(np.float32)
        if centres is not None:
            x = centres[rng.integers(len(centres), size=m)] + 0.6 * x / np.sqrt(dim)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def build(factory: str, vectors: np.ndarray):
    """A trained, filled :class:`retrieval.vectors.VectorIndex` (ids 1..n, like segment ids)."""
    from retrieval.vectors import VectorIndex

    index = VectorIndex(vectors.shape[1], factory)
    index.add(np.arange(1, len(vectors) + 1, dtype=np.int64), vectors)
    return index


def timed_queries(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (nq,k), per-query seconds) searching one query at a time, as the store does."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        ids, _ = index.search(q, k)
        times[i] = time.perf_counter() - t0
        out[i, : len(ids)] = ids
    return out, times


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k present in its found top-k."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / k for f, e in zip(found, exact)]))


def set_param(index, name: str, value: float) -> None:
    """Set a FAISS search parameter (efSearch, nprobe, k_factor_rf, ...) on the index inside the id map."""
    import faiss

    faiss.ParameterSpace().set_index_parameter(faiss.downcast_index(index._index.index), name, float(value))


def run(args: argparse.Namespace) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    results = []
    for n in args.sizes:
        vectors = make_vectors(n, args.dim, args.data, args.seed)
        queries = make_vectors(args.queries, args.dim, args.data, args.seed + 1)
        if args.data == "clustered":  # queries from the same mixture (different noise)
            queries = vectors[np.random.default_rng(args.seed + 2).choice(n, args.queries, replace=False)] + \
                0.3 * queries / np.sqrt(args.dim)
            queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        exact_index = faiss.IndexFlatIP(args.dim)
        exact_index.add(vectors)
        _, exact = exact_index.search(queries, args.k)
        exact = exact + 1  # ids are 1-based in the benchmark indexes
        del exact_index
        for factory in args.factories:
            faiss.omp_set_num_threads(args.build_threads)
            t0 = time.perf_counter()
            index = build(factory, vectors)
            build_s = time.perf_counter() - t0
            faiss.omp_set_num_threads(args.threads)
            kind = next((key for key in SWEEPS if factory.upper().startswith(key)), None)
            settings: list[tuple[str | None, int | None]] = [(None, None)]
            extra = ""
            if kind and not index.fallback:  # a fallback is the exact flat index standing in until trained
                name, values = SWEEPS[kind]
                fixed = [int(p.split("=")[1]) for p in args.param if p.split("=")[0] == name]
                settings = [(name, v) for v in (fixed or values)]
                for other in (p for p in args.param if p.split("=")[0] not in (name, *(n for n, _ in SWEEPS.values()))):
                    try:  # e.g. k_factor_rf, which only refine indexes (...,RFlat) have
                        set_param(index, other.split("=")[0], float(other.split("=")[1]))
                    except RuntimeError:
                        continue
                    extra += f",{other}"
            rows = []
            for name, value in settings:
                if name:
                    set_param(index, name, value)
                timed_queries(index, queries[: min(20, len(queries))], args.k)  # warm-up
                found, times = timed_queries(index, queries, args.k)
                row = {"n": n, "factory": factory, "param": f"{name}={value}{extra}" if name else ("untrained: flat" if index.fallback else "-"), "build_s": round(build_s, 1),
                       "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3), "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3),
                       "recall@10": round(recall_at_k(found, exact), 4)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if name and row["recall@10"] >= args.target_recall and args.stop_at_target:
                    break
            tuned = next((r for r in rows if r["recall@10"] >= args.target_recall), rows[-1])
            results.append({**tuned, "tuned": True})
            del index
    return results


def demo_precision(out_dir: Path, model: str, ks: tuple[int, ...] = (1, 3, 5, 10)) -> dict:
    """'More like this' precision on the demo archive: every planted stretch, cut out as a clip,
    queries the store; hits on the query's own stretch are dropped; precision@k is the fraction
    of the remaining top-k whose planted degradation (largest overlap) is the query's."""
    import json as _json

    import soundfile as sf

    from indexer.demo import _planted_kind, generate_demo_archive
    from indexer.model import load_model
    from indexer.enrollment import set_clean_enrollment
    from indexer.pipeline import index_archive
    from indexer.settings import get_settings
    from retrieval.search import resolve_query, search
    from retrieval.store import Store

    settings = get_settings(store_dir=out_dir / "store", model=model)
    manifest = generate_demo_archive(out_dir)
    planted = _json.loads((manifest.parent / "planted.json").read_text())
    settings.store_dir.mkdir(parents=True, exist_ok=True)
    frame_model = load_model(model)
    writer = Store.open(settings)
    try:  # the demo's clean enrollment: its reference calls, as `degsearch demo` does
        writer.ensure_model(frame_model.model_id, frame_model.name, frame_model.frame_rate, frame_model.dim,
                            frame_model.threshold, {})
        set_clean_enrollment(writer, frame_model, sorted(str(p) for p in (out_dir / "reference").glob("*.wav")),
                             quantile=settings.clean_quantile, smooth_frames=settings.smooth_frames)
    finally:
        writer.close()
    index_archive([str(manifest)], settings, progress=False)
    per_kind: dict[str, list[list[float]]] = {}
    store = Store.open(settings, readonly=True)
    try:
        for i, ev in enumerate(planted["events"]):
            data, sr = sf.read(str(manifest.parent / ev["path"]), dtype="float32", always_2d=True)
            clip = out_dir / f"query_{i:02d}_{ev['kind']}.wav"
            sf.write(str(clip), data[int(ev["start_s"] * sr):int(ev["end_s"] * sr), ev["channel"]], sr, subtype="PCM_16")
            query = resolve_query(store, frame_model, clips=[clip])
            hits = [h for h in search(store, query, max(ks) + 20)
                    if not (Path(h.path).name == ev["path"] and h.channel == ev["channel"]
                            and min(h.end_s, ev["end_s"]) > max(h.start_s, ev["start_s"]))]
            kinds = [_planted_kind(planted["events"], Path(h.path).name, h.channel, h.start_s, h.end_s) for h in hits]
            per_kind.setdefault(ev["kind"], []).append([float(np.mean([x == ev["kind"] for x in kinds[:k]])) if kinds[:k] else 0.0
                                                        for k in ks])
    finally:
        store.close()
    report = {kind: {f"p@{k}": round(float(np.mean([v[j] for v in vals])), 3) for j, k in enumerate(ks)} for kind, vals in per_kind.items()}
    allv = [v for vals in per_kind.values() for v in vals]
    report["all"] = {f"p@{k}": round(float(np.mean([v[j] for v in allv])), 3) for j, k in enumerate(ks)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--factories", nargs="+", default=["Flat", "HNSW32", "IVF1024,SQ8,RFlat"])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads per query (1: what one API worker gets).")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1, help="FAISS threads while building.")
    parser.add_argument("--data", choices=["random", "clustered"], default="random")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--stop-at-target", action="store_true", help="Stop a sweep at the first setting reaching the target.")
    parser.add_argument("--param", nargs="*", default=["k_factor_rf=8"],
                        help="Fixed settings instead of a sweep, e.g. efSearch=256 nprobe=64; others (k_factor_rf=16) are set as given.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write the tuned rows here.")
    parser.add_argument("--demo", type=Path, help="Instead: index the demo archive here and measure clip-query precision.")
    parser.add_argument("--model", default="fast", help="Model for --demo.")
    args = parser.parse_args()
    if args.demo:
        print(json.dumps(demo_precision(args.demo, args.model), indent=1))
        return
    results = run(args)
    print("\ntuned (cheapest setting reaching the target recall, else the most accurate tried):")
    print(f"{'n':>9} {'factory':<16} {'param':<14} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}")
    for r in results:
        print(f"{r['n']:>9} {r['factory']:<16} {r['param']:<14} {r['build_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['recall@10']:>9}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
