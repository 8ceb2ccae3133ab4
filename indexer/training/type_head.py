"""An ensemble's type head, fitted in closed form on the training clips' frames (``combine --type-head``).

The members' hidden features (the temporal head's output, concatenated) and their squares
(:func:`~indexer.model.ensemble.type_features`) of every ``stride``-th frame of the training
clips, each frame labelled with its class (clean, a single degradation or a pair), are fitted with
linear discriminant analysis (scikit-learn, eigen solver, Ledoit-Wolf shrinkage). Its discriminant
directions become the head's weights, with no bias, as LDA's ``transform`` applies them;
:class:`~indexer.model.ensemble.EnsembleNetwork` appends the head's L2-normalised output to the
members' embeddings. On the held-out real-speaker benchmarks it lowered frame EER on five of six
and raised single-degradation prototype accuracy on all six (MODEL_CARD.md).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from indexer.errors import ConfigError
from indexer.model import MARGIN_FRAMES
from indexer.model.ensemble import EnsembleNetwork, fold_ensemble, type_features
from indexer.model.network import FRAME_HOP

FRAME_STRIDE = 4  # every 4th frame: neighbours overlap in context, and 6,000 clips then give 300,000 frames
_BATCH = 16


def hidden_frames(net: EnsembleNetwork, audio: np.ndarray, frame_labels: np.ndarray, *,
                  stride: int = FRAME_STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """The members' hidden features and the class of every ``stride``-th frame of each clip (clip i
    starts at frame ``i % stride``, so every offset is used), as :meth:`FrameModel.embed` computes them.
    The features are float32; a type head reads them through :func:`type_features`."""
    inference = fold_ensemble(net)
    pad = MARGIN_FRAMES * FRAME_HOP
    rows, labels = [], []
    with torch.inference_mode():
        for a in range(0, len(audio), _BATCH):
            batch = np.pad(np.asarray(audio[a:a + _BATCH], np.float32), ((0, 0), (pad, pad)))
            hidden = inference(torch.from_numpy(batch))["hidden"].numpy()
            for j in range(len(batch)):
                i = a + j
                lab = frame_labels[i]
                h = hidden[j, MARGIN_FRAMES:MARGIN_FRAMES + len(lab)]
                rows.append(h[i % stride::stride])
                labels.append(lab[: len(h)][i % stride::stride])
    return np.concatenate(rows), np.concatenate(labels)


def fit_type_head(net: EnsembleNetwork, audio: np.ndarray, frame_labels: np.ndarray, *,
                  stride: int = FRAME_STRIDE) -> torch.nn.Linear:
    """A linear head on ``net``'s :func:`type_features` whose outputs are the LDA directions of the
    frames' classes (one fewer than the classes present), fitted on ``audio``'s clips."""
    hidden, labels = hidden_frames(net, audio, frame_labels, stride=stride)
    features = type_features(torch.from_numpy(hidden)).numpy()
    del hidden
    if np.unique(labels).size < 2:
        raise ConfigError("the type head needs frames of at least two classes", "fit it on training shards (degsearch prepare-data)")
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(features, labels)
    k = min(np.unique(labels).size - 1, features.shape[1])
    head = torch.nn.Linear(features.shape[1], k)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.ascontiguousarray(lda.scalings_[:, :k].T, dtype=np.float32)))
        head.bias.zero_()
    return head
