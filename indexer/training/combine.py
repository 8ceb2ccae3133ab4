"""Trained frame models -> one calibrated ensemble checkpoint (``degsearch combine``).

The ensemble (:class:`indexer.model.ensemble.EnsembleNetwork`) gets its own calibration, as a
trained model does (:func:`indexer.training.calibrate.calibrate`): clean enrollments from the
training shards' clean frames and the threshold at the equal-error point of the held-out
real-speaker validation sets. Narrowband clips are band-limited to 4 kHz for both, as an 8 kHz
file reaches the model: the ensemble serves archives of calls as well as wideband ones.

With ``type_head`` > 0 the ensemble also gets a type head (:mod:`indexer.training.type_head`),
fitted on the training clips as they are stored, before the calibration. An ensemble given as a
member stands for its member networks (its own type head is left out), so a type head can be added
to a shipped ensemble: ``degsearch combine balanced-5.pt balanced-4 --type-head 1``.
"""

from __future__ import annotations

import json
from pathlib import Path

from indexer.errors import ConfigError
from indexer.model import model_path
from indexer.model.checkpoint import file_model_id, network_from_checkpoint, read_checkpoint, save_checkpoint
from indexer.model.ensemble import EnsembleNetwork
from indexer.model.network import FrameNetwork
from indexer.training.calibrate import calibrate
from indexer.training.shards import load_shards, load_val_sets
from indexer.training.type_head import FRAME_STRIDE, fit_type_head

ENROLL_EXAMPLES = 1000  # training clips read for the enrollments (calibrate uses 300 per bandwidth)
TYPE_EXAMPLES = 6000  # training clips the type head is fitted on (every 4th frame: 300,000 frames)


def combine(members: list[str | Path], data_dir: str | Path, out: str | Path, *, enroll_examples: int = ENROLL_EXAMPLES,
            type_head: float = 0.0, type_examples: int = TYPE_EXAMPLES) -> dict:
    """Write an ensemble of ``members`` (shipped names or checkpoint files; two or more networks in
    all) to ``out``, with a type head of weight ``type_head`` if it is above 0, calibrated on the
    shards under ``data_dir``; returns the summary also written to ``out``.json."""
    data, out = Path(data_dir), Path(out)
    if type_head < 0:
        raise ConfigError(f"type head weight {type_head} is negative", "use 0 (none) or a weight such as 1")
    paths = [model_path(m) for m in members]
    checkpoints = [read_checkpoint(p) for p in paths]
    nets: list[FrameNetwork] = []
    networks: list[dict] = []  # the recipe's entry for each network
    for member, path, ckpt in zip(members, paths, checkpoints):
        net = network_from_checkpoint(ckpt)
        if isinstance(net, EnsembleNetwork):
            nets += list(net.members)
            networks += ckpt["meta"]["recipe"]["ensemble_of"]
        else:
            nets.append(net)
            networks.append({"member": str(member), "model_id": file_model_id(path), "name": ckpt["meta"].get("name"),
                             "recipe": ckpt["meta"].get("recipe")})
    ensemble = EnsembleNetwork(nets)
    recipe: dict = {"ensemble_of": networks, "calibration": {"data": str(data), "narrowband_8khz": True}}
    if type_head > 0:
        arrays, _ = load_shards(data / "train", max_examples=type_examples, fewer_ok=True)
        ensemble = EnsembleNetwork(nets, fit_type_head(ensemble, arrays["audio"], arrays["frame_labels"]), type_head)
        recipe["type_head"] = {"weight": type_head, "data": str(data), "examples": len(arrays["audio"]),
                               "frame_stride": FRAME_STRIDE, "directions": ensemble.type_head.out_features}
    train_arrays, classes = load_shards(data / "train", narrowband_8khz=True, max_examples=enroll_examples, fewer_ok=True)
    calib = calibrate(ensemble, train_arrays, load_val_sets(data, narrowband_8khz=True))
    model_id = save_checkpoint(out, ensemble, {"name": out.stem, "recipe": recipe, "classes": classes, **calib})
    summary = {"model_id": model_id, "path": str(out), "members": [r["model_id"] for r in recipe["ensemble_of"]],
               "threshold": calib["threshold"], **calib["validation"]}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary
