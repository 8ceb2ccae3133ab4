"""Paper 003's training loss: frame MOS L1 + utterance MOS L1 + supervised contrastive loss over frames.

Optionally a cosine-classifier term on the indexed embedding (paper 002's degradation classifier):
one learned unit vector per class, so every class is pulled to one place across utterances even
when a batch holds no second clip of it; a detection term that ranks frames exactly as detection
scores them (cosine to the mean clean frame); and a speaker-adversarial term (gradient reversal).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def sample_frames(labels: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices into the flattened (B*T) frames: half clean (label 0), half degraded, when both exist.

    Clean frames are ~70 % of a mix-up batch; balancing keeps degraded classes visible to the loss.
    """
    flat = labels.reshape(-1)
    picks = []
    for pool in (torch.nonzero(flat == 0).squeeze(1), torch.nonzero(flat != 0).squeeze(1)):
        if pool.numel():
            picks.append(pool[torch.randint(pool.numel(), (n // 2,), generator=generator)])
    return torch.unique(torch.cat(picks))


def supcon_frames(proj: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, *, tau: float = 0.1,
                  exclude_within: int = 5) -> torch.Tensor:
    """Supervised contrastive loss over sampled frames (003 eq. 5).

    ``proj`` (B, T, P) is L2-normalised, ``labels`` (B, T) class ids (clean is its own class),
    ``idx`` flattened frame indices. Pairs of frames of the same utterance closer than
    ``exclude_within`` frames are neither positives nor negatives (their context overlaps).
    """
    b, t, p = proj.shape
    z = proj.reshape(b * t, p)[idx]
    y = labels.reshape(-1)[idx]
    utt, pos_t = idx // t, idx % t
    logits = z @ z.T / tau
    n = idx.numel()
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    near = (utt[:, None] == utt[None, :]) & ((pos_t[:, None] - pos_t[None, :]).abs() < exclude_within)
    valid = ~(eye | near)
    positives = valid & (y[:, None] == y[None, :])
    logits = logits.masked_fill(~valid, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positives.sum(1)
    keep = n_pos > 0
    if not keep.any():
        return proj.sum() * 0.0
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(pos_log_prob[keep] / n_pos[keep]).mean()


def _cosine_cross_entropy(z: torch.Tensor, y: torch.Tensor, class_vectors: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy of classes ``y`` from ``scale`` x the cosine of rows ``z`` (L2-normalised) to each class vector."""
    return F.cross_entropy(scale * z @ F.normalize(class_vectors, dim=1).T, y)


def cosine_class_loss(emb: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, class_vectors: torch.Tensor,
                      *, scale: float = 16.0) -> torch.Tensor:
    """Cross-entropy of the sampled frames' classes from cosine similarity to one vector per class.

    ``emb`` (B, T, D) L2-normalised, ``labels`` (B, T), ``idx`` flattened frame indices,
    ``class_vectors`` (C, D) learned (normalised here). Cosine logits score exactly what the
    prototype search ranks by; ``scale`` (a NormFace-style temperature) lets the softmax saturate.
    """
    return _cosine_cross_entropy(emb.reshape(-1, emb.shape[-1])[idx], labels.reshape(-1)[idx], class_vectors, scale)


def region_class_loss(emb: torch.Tensor, labels: torch.Tensor, class_vectors: torch.Tensor, *,
                      scale: float = 16.0) -> torch.Tensor:
    """Cross-entropy of each clip's degraded class from the cosine of its pooled degraded frames.

    ``emb`` (B, T, D) L2-normalised, ``labels`` (B, T) (a mix-up clip's regions share one class),
    ``class_vectors`` (C, D). The normalised mean of a region's frames is what the store indexes and
    what prototypes are built from, so this scores the segment embedding itself rather than each
    frame. Clean clips are left out.
    """
    degraded = (labels != 0).to(emb.dtype)
    keep = degraded.sum(1) > 0
    if not keep.any():
        return emb.sum() * 0.0
    pooled = F.normalize((emb * degraded[..., None]).sum(1)[keep], dim=1)
    return _cosine_cross_entropy(pooled, labels.max(1).values[keep], class_vectors, scale)


def clean_ranking_loss(emb: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, *, scale: float = 16.0) -> torch.Tensor:
    """Pairwise ranking loss of detection's own score: every sampled clean frame should be nearer the
    batch's clean enrollment than every sampled degraded frame.

    ``emb`` (B, T, D) L2-normalised, ``labels`` (B, T), ``idx`` flattened frame indices. The
    enrollment is the normalised mean of the sampled clean frames, as ``degsearch`` builds it from
    clean clips; the loss is the mean over (clean, degraded) pairs of
    ``softplus(scale * (cos(degraded, e) - cos(clean, e)))``, a smooth 1 - AUC of frame detection.
    The contrastive and classifier terms separate classes; this one targets the threshold on a
    single clean direction that detection and the frame EER use.
    """
    z = emb.reshape(-1, emb.shape[-1])[idx]
    clean = labels.reshape(-1)[idx] == 0
    if not clean.any() or clean.all():
        return emb.sum() * 0.0
    e = F.normalize(z[clean].mean(0), dim=0)
    s = z @ e
    return F.softplus(scale * (s[~clean][None, :] - s[clean][:, None])).mean()


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``-scale`` backward (Ganin & Lempitsky's reversal layer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def speaker_adversarial_loss(emb: torch.Tensor, speakers: torch.Tensor, idx: torch.Tensor, head: torch.nn.Module,
                             *, scale: float) -> torch.Tensor:
    """Cross-entropy of each sampled frame's speaker group from ``head``, through a gradient reversal.

    ``emb`` (B, T, D), ``speakers`` (B,) group index of each clip, ``idx`` flattened frame indices.
    The head learns to name the speaker; the network gets the reversed gradient (times ``scale``) and
    learns embeddings the head cannot name the speaker from. The aim is unseen speakers' clean frames
    nearer the one clean enrollment (the per-speaker spread is what held-out voices miss on).
    """
    z = emb.reshape(-1, emb.shape[-1])[idx]
    return F.cross_entropy(head(_ReverseGradient.apply(z, scale)), speakers[idx // emb.shape[1]])


def total_loss(out: dict[str, torch.Tensor], frame_labels: torch.Tensor, frame_mos: torch.Tensor,
               utt_mos: torch.Tensor, *, n_frames: int = 1024, tau: float = 0.1, mos_weight: float = 1.0,
               class_vectors: torch.Tensor | None = None, class_weight: float = 0.0, class_on_clean: bool = True,
               region_class_weight: float = 0.0, teacher_emb: torch.Tensor | None = None, distill_weight: float = 0.0,
               detect_weight: float = 0.0, speakers: torch.Tensor | None = None,
               speaker_head: torch.nn.Module | None = None, speaker_weight: float = 0.0,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """003's total loss (plus ``class_weight`` x the cosine-classifier term on frames,
    ``region_class_weight`` x the same on pooled regions, ``distill_weight`` x
    :func:`relation_distill_loss` to ``teacher_emb``, ``detect_weight`` x
    :func:`clean_ranking_loss` and :func:`speaker_adversarial_loss` with reversal ``speaker_weight``
    when ``speakers`` and ``speaker_head`` are given); returns the loss and its parts.

    Without ``class_on_clean`` the classifier term sees degraded frames only (which degradation),
    leaving clean-versus-degraded to the contrastive term.
    """
    idx = sample_frames(frame_labels, n_frames, generator)
    con = supcon_frames(out["proj"], frame_labels, idx, tau=tau)
    frame_l1 = F.l1_loss(out["mos"], frame_mos)
    utt_l1 = F.l1_loss(out["mos"].mean(1), utt_mos)
    loss = con + mos_weight * (frame_l1 + utt_l1)
    parts = {"supcon": float(con.detach()), "frame_mos_l1": float(frame_l1.detach()), "utt_mos_l1": float(utt_l1.detach())}
    if class_weight > 0 and class_vectors is not None:
        class_idx = idx if class_on_clean else idx[frame_labels.reshape(-1)[idx] != 0]
        if class_idx.numel():
            ce = cosine_class_loss(out["emb"], frame_labels, class_idx, class_vectors)
            loss = loss + class_weight * ce
            parts["class_ce"] = float(ce.detach())
    if region_class_weight > 0 and class_vectors is not None:
        region_ce = region_class_loss(out["emb"], frame_labels, class_vectors)
        loss = loss + region_class_weight * region_ce
        parts["region_ce"] = float(region_ce.detach())
    if detect_weight > 0:
        rank = clean_ranking_loss(out["emb"], frame_labels, idx)
        loss = loss + detect_weight * rank
        parts["detect_rank"] = float(rank.detach())
    if speaker_weight > 0 and speakers is not None and speaker_head is not None:
        spk = speaker_adversarial_loss(out["emb"], speakers, idx, speaker_head, scale=speaker_weight)
        loss = loss + spk
        parts["speaker_ce"] = float(spk.detach())
    if distill_weight > 0 and teacher_emb is not None:
        kd = relation_distill_loss(out["emb"], teacher_emb, idx)
        loss = loss + distill_weight * kd
        parts["distill"] = float(kd.detach())
    return loss, parts


def relation_distill_loss(emb: torch.Tensor, teacher_emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the cosine matrices of the sampled frames (flattened indices
    ``idx``) in the student's (B, T, D) and the teacher's (B, T, D') embeddings.

    Matching cosines, not vectors, lets a 64-d student learn from a teacher of any dimension (the
    128-d ``balanced`` ensemble): what is indexed and searched is the cosine geometry."""
    s = emb.reshape(-1, emb.shape[-1])[idx]
    t = teacher_emb.reshape(-1, teacher_emb.shape[-1])[idx].to(s.dtype)
    return F.mse_loss(s @ s.T, t @ t.T)
