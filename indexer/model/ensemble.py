"""Several trained frame networks used as one: the ``balanced-5``, ``balanced-4``, ``balanced-3``, ``balanced-2`` and ``balanced`` models.

Each member embeds the same frames; the ensemble's embedding is the members' L2-normalised
embeddings concatenated and divided by sqrt(k), so it is unit length and its cosine with another
ensemble embedding is the mean of the members' cosines. Its frame MOS is the members' mean.
Networks trained apart make different errors: on the held-out real-speaker benchmarks the
``fast`` and ``telephone`` networks together have a lower frame EER than either alone on the
wideband ones and nearly the ``telephone`` network's on the telephone ones (MODEL_CARD.md).

An ensemble may also carry a **type head** (``balanced-5``): one linear map from the members'
hidden features (concatenated) and their squares (:func:`type_features`) to a few directions that
tell the frames' classes apart, fitted in closed form on the training clips
(:mod:`indexer.training.type_head`). Its L2-normalised output, scaled by ``type_weight``, is
appended to the members' embeddings and the whole renormalised: the members' 64-d heads keep less
of what separates the classes than their hidden features do, and the appended part brings it back
to the indexed embedding, for detection as well as for the degradation types (MODEL_CARD.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from indexer.errors import ModelError
from indexer.model.network import FrameNetwork, LogMelCNN, fold_batchnorm


class EnsembleNetwork(nn.Module):
    """Frame networks run side by side; the output has :class:`FrameNetwork`'s inference keys."""

    def __init__(self, members: list[FrameNetwork], type_head: nn.Linear | None = None, type_weight: float = 0.0) -> None:
        super().__init__()
        if len(members) < 2:
            raise ModelError(f"an ensemble needs at least two member networks, got {len(members)}",
                             "pass two or more checkpoints")
        self.members = nn.ModuleList(members)
        hidden = sum(m.cfg.hidden for m in members)
        if type_head is not None and type_head.in_features != 2 * hidden:
            raise ModelError(f"the type head reads {type_head.in_features} features but the members give {2 * hidden} "
                             f"({hidden} hidden features and their squares)",
                             "fit the type head on these members (degsearch combine --type-head)")
        self.type_head = type_head
        self.type_weight = float(type_weight) if type_head is not None else 0.0
        self.dim = sum(m.dim for m in members) + (type_head.out_features if type_head is not None else 0)

    def forward(self, audio: torch.Tensor, *, project: bool = False) -> dict[str, torch.Tensor]:
        """(B, N) waveform -> ``emb`` (B, T, :attr:`dim`), unit length, ``mos`` (B, T) and ``hidden``
        (B, T, the members' hidden features concatenated)."""
        if project:
            raise ModelError("an ensemble has no projection head", "train its members one by one")
        # Fast members with the same front end share its log-mels: compute each front end once.
        feats: dict[tuple[int, int], torch.Tensor] = {}
        outs = []
        for m in self.members:
            front = None
            if isinstance(m.encoder, LogMelCNN):
                key = (m.encoder.n_mels, m.encoder.n_fft)
                if key not in feats:
                    feats[key] = m.encoder.features(audio)
                front = feats[key]
            outs.append(m(audio, feats=front, project=False))
        emb = torch.cat([o["emb"] for o in outs], dim=-1) / math.sqrt(len(outs))
        hidden = torch.cat([o["hidden"] for o in outs], dim=-1)
        if self.type_head is not None:
            types = nn.functional.normalize(self.type_head(type_features(hidden)), dim=-1)
            emb = torch.cat([emb, self.type_weight * types], dim=-1) / math.sqrt(1.0 + self.type_weight ** 2)
        return {"emb": emb, "mos": torch.stack([o["mos"] for o in outs]).mean(0), "hidden": hidden}


def type_features(hidden: torch.Tensor) -> torch.Tensor:
    """What a type head reads: the hidden features and their squares, (..., H) -> (..., 2H). The
    squares let the linear head weigh how strongly a feature fires, not only its mean: on the
    benchmarks they took mean frame EER from 12.26 to 11.64 % (MODEL_CARD.md)."""
    return torch.cat([hidden, hidden.square()], dim=-1)


def fold_ensemble(net: EnsembleNetwork) -> EnsembleNetwork:
    """An inference copy with every member's BatchNorms folded (:func:`fold_batchnorm`)."""
    return EnsembleNetwork([fold_batchnorm(m) for m in net.members], net.type_head, net.type_weight).eval()
