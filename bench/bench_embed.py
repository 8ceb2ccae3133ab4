"""Embedding speed of a frame model: seconds to embed 1 h of audio, and the real-time factor.

    .venv/bin/python bench/bench_embed.py [--model fast] [--minutes 60] [--threads 2]
    .venv/bin/python bench/bench_embed.py --architecture distillmos --minutes 10   # the accurate encoder's cost

``--architecture`` times an untrained network with that encoder: the cost does not depend on the
weights, so this measures an encoder that has no shipped checkpoint yet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from indexer.model import load_model
from indexer.model.checkpoint import build_untrained_checkpoint
from indexer.settings import MODEL_CHOICES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast", help=f"{MODEL_CHOICES}")
    parser.add_argument("--minutes", type=float, default=60.0, help="audio to embed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--architecture", help="time an untrained network with this encoder instead (logmel_cnn, distillmos)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.architecture:
        path = Path(tempfile.mkdtemp()) / f"untrained-{args.architecture}.pt"
        build_untrained_checkpoint(path, encoder=args.architecture)
        args.model = str(path)
    model = load_model(args.model)
    rng = np.random.default_rng(0)
    # Speech-like amplitude statistics do not change the cost: the network has no data-dependent paths.
    audio = (0.05 * rng.standard_normal(int(args.minutes * 60 * 16000))).astype(np.float32)
    model.embed(audio[:16000 * 5])  # warm-up
    t0 = time.perf_counter()
    out = model.embed(audio)
    dt = time.perf_counter() - t0
    seconds = audio.size / 16000
    print(f"model {model.name} ({model.model_id}), {args.threads} thread(s)")
    print(f"embedded {seconds / 3600:.2f} h -> {len(out)} frames in {dt:.2f} s: {seconds / dt:,.0f}x real time, "
          f"{dt * 3600 / seconds:.2f} s per audio hour")


if __name__ == "__main__":
    main()
