"""``--engine ray``: the same per-file work (:func:`indexer.pipeline.process_file`) on Ray Data.

Files become a Ray dataset of pickled :class:`~indexer.inputs.FileTask` rows; ``map_batches``
runs them through a pool of model actors (each loads the checkpoint once); outcomes stream back
to the driver, where :func:`indexer.pipeline.index_archive` commits them with the single store
writer, exactly as the local engine does. On a cluster, start Ray first (``ray start`` /
``RAY_ADDRESS``) and make the archive and checkpoint paths visible to every node; otherwise a
local Ray instance with ``workers`` CPUs is started.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from indexer.errors import ConfigError
from indexer.inputs import FileTask
from indexer.pipeline import FileOutcome, IndexContext, process_file


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError("--engine ray needs Ray Data, which is not installed", "pip install 'degsearch[ray]' (ray[data])") from exc
    return ray


class RayIndexer:
    """Ray Data actor: loads the model once, then indexes each batch of pickled tasks."""

    def __init__(self, ctx_blob: bytes) -> None:
        import torch

        torch.set_num_threads(1)  # one CPU per actor: parallelism comes from the actor pool
        from indexer.model import load_model

        self.ctx: IndexContext = pickle.loads(ctx_blob)
        self.model = load_model(self.ctx.model_ref)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes = [pickle.dumps(process_file(self.ctx, self.model, pickle.loads(blob))) for blob in batch["task"]]
        return {"outcome": np.array(outcomes, dtype=object)}


def run_ray(tasks: list[FileTask], ctx: IndexContext, *, workers: int = 1) -> Iterator[FileOutcome]:
    """Yield one outcome per task, computed by ``workers`` Ray actors (order not guaranteed)."""
    ray = _require_ray()
    if not tasks:
        return
    if not ray.is_initialized():
        ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    items = [{"task": pickle.dumps(t)} for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), max(4 * workers, 1)))
    ds = ds.map_batches(
        RayIndexer,
        fn_constructor_kwargs={"ctx_blob": pickle.dumps(ctx)},
        batch_size=1,
        batch_format="numpy",
        concurrency=max(workers, 1),
        num_cpus=1,
    )
    for row in ds.iter_rows():
        yield pickle.loads(row["outcome"])
