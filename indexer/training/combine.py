"""Trained frame models -> one calibrated ensemble checkpoint (``degsearch combine``).

The ensemble (:class:`indexer.model.ensemble.EnsembleNetwork`) gets its own calibration, as a
trained model does (:func:`indexer.training.calibrate.calibrate`): clean enrollments from the
training shards' clean frames and the threshold at the equal-error point of the held-out
real-speaker validation sets. Narrowband clips are band-limited to 4 kHz for both, as an 8 kHz
file reaches the model: the ensemble serves archives of calls as well as wideband ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from indexer.errors import ModelError
from indexer.model import model_path
from indexer.model.checkpoint import file_model_id, network_from_checkpoint, read_checkpoint, save_checkpoint
from indexer.model.ensemble import EnsembleNetwork
from indexer.model.network import FrameNetwork
from indexer.training.calibrate import calibrate
from indexer.training.shards import load_shards, load_val_sets

ENROLL_EXAMPLES = 1000  # training clips read for the enrollments (calibrate uses 300 per bandwidth)


def combine(members: list[str | Path], data_dir: str | Path, out: str | Path, *, enroll_examples: int = ENROLL_EXAMPLES) -> dict:
    """Write an ensemble of ``members`` (shipped names or checkpoint files, two or more) to ``out``,
    calibrated on the shards under ``data_dir``; returns the summary also written to ``out``.json."""
    data, out = Path(data_dir), Path(out)
    paths = [model_path(m) for m in members]
    checkpoints = [read_checkpoint(p) for p in paths]
    nets = [network_from_checkpoint(c) for c in checkpoints]
    for path, net in zip(paths, nets):
        if not isinstance(net, FrameNetwork):
            raise ModelError(f"{path} is already an ensemble", "combine the single models it was made of")
    ensemble = EnsembleNetwork(nets)
    train_arrays, classes = load_shards(data / "train", narrowband_8khz=True, max_examples=enroll_examples, fewer_ok=True)
    calib = calibrate(ensemble, train_arrays, load_val_sets(data, narrowband_8khz=True))
    recipe = {"ensemble_of": [{"member": str(m), "model_id": file_model_id(p), "name": c["meta"].get("name"),
                               "recipe": c["meta"].get("recipe")} for m, p, c in zip(members, paths, checkpoints)],
              "calibration": {"data": str(data), "narrowband_8khz": True}}
    model_id = save_checkpoint(out, ensemble, {"name": out.stem, "recipe": recipe, "classes": classes, **calib})
    summary = {"model_id": model_id, "path": str(out), "members": [r["model_id"] for r in recipe["ensemble_of"]],
               "threshold": calib["threshold"], **calib["validation"]}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary
