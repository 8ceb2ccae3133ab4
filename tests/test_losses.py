"""Paper 003's loss: supervised contrastive term over frames, MOS terms, and that it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from indexer.model.network import FrameNetwork, NetworkConfig
from indexer.training.losses import (clean_ranking_loss, cosine_class_loss, region_class_loss, relation_distill_loss,
                                     sample_frames, speaker_adversarial_loss, supcon_frames, total_loss)

torch.set_num_threads(1)


def _clustered(labels: torch.Tensor, spread: float, seed: int = 0) -> torch.Tensor:
    """(B, T, P) unit vectors: one direction per class plus noise of ``spread``."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(int(labels.max()) + 1, 16, generator=g), dim=1)
    return F.normalize(centres[labels] + spread * torch.randn(*labels.shape, 16, generator=g), dim=-1)


def test_supcon_is_lower_when_frames_cluster_by_class():
    labels = torch.arange(4).repeat_interleave(10).reshape(2, 20)
    idx = torch.arange(40)
    tight = supcon_frames(_clustered(labels, 0.05), labels, idx, exclude_within=0)
    loose = supcon_frames(_clustered(labels, 5.0), labels, idx, exclude_within=0)
    assert float(tight) < float(loose)


def test_neighbouring_frames_of_one_utterance_are_not_positives():
    # Every frame's only same-class frames are its direct neighbours: excluded, so no positives.
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    proj = _clustered(labels, 0.1)
    assert float(supcon_frames(proj, labels, torch.arange(8), exclude_within=2)) == 0.0
    assert float(supcon_frames(proj, labels, torch.arange(8), exclude_within=1)) > 0.0


def test_frame_sampling_balances_clean_and_degraded():
    labels = torch.zeros(4, 200, dtype=torch.long)
    labels[:, 180:] = 3  # 10 % degraded
    idx = sample_frames(labels, 200, torch.Generator().manual_seed(0))
    degraded = (labels.reshape(-1)[idx] != 0).float().mean()
    assert 0.3 < float(degraded) < 0.7


def test_total_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    net = FrameNetwork(NetworkConfig(channels=[8, 8, 8, 8], hidden=32, dilations=[1, 2]))
    rng = np.random.default_rng(0)
    audio = torch.from_numpy((0.05 * rng.standard_normal((4, 8000))).astype(np.float32))
    audio[:, 4000:] *= 8.0  # a loud second half: a degraded region with its own class
    labels = torch.zeros(4, 25, dtype=torch.long)
    labels[:, 13:] = torch.tensor([1, 2, 1, 2])[:, None]
    frame_mos = torch.where(labels == 0, 4.5, 2.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, parts = total_loss(net(audio), labels, frame_mos, frame_mos.mean(1), n_frames=100,
                                 generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        assert set(parts) == {"supcon", "frame_mos_l1", "utt_mos_l1"}
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_cosine_class_loss_is_low_when_frames_sit_on_their_class_vector():
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    vectors = torch.eye(3, 4)
    idx = torch.arange(6)
    on_class = F.normalize(vectors[labels] + 0.01, dim=-1)
    off_class = F.normalize(vectors[(labels + 1) % 3] + 0.01, dim=-1)
    low = cosine_class_loss(on_class, labels, idx, vectors)
    high = cosine_class_loss(off_class, labels, idx, vectors)
    assert float(low) < 0.01 < 10.0 < float(high)


def _two_clip_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Network outputs of two 10-frame clips (random unit vectors), their labels (clip 0's second
    half degraded) and a flat MOS target."""
    out = {"emb": F.normalize(torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(0)), dim=-1),
           "proj": F.normalize(torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1)), dim=-1),
           "mos": torch.full((2, 10), 3.0)}
    labels = torch.zeros(2, 10, dtype=torch.long)
    labels[0, 5:] = 1
    return out, labels, torch.full((2, 10), 3.0)


def test_total_loss_adds_the_class_term_only_when_weighted():
    out, labels, mos = _two_clip_batch()
    vectors = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    plain, parts = total_loss(out, labels, mos, mos.mean(1), n_frames=20, class_vectors=vectors,
                              generator=torch.Generator().manual_seed(0))
    weighted, wparts = total_loss(out, labels, mos, mos.mean(1), n_frames=20, class_vectors=vectors, class_weight=0.5,
                                  generator=torch.Generator().manual_seed(0))
    assert "class_ce" not in parts
    assert float(weighted) == pytest.approx(float(plain) + 0.5 * wparts["class_ce"], rel=1e-5)


def test_class_term_can_leave_clean_frames_to_the_contrastive_term():
    out = {"emb": F.normalize(torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(0)), dim=-1),
           "proj": F.normalize(torch.randn(1, 6, 8), dim=-1), "mos": torch.full((1, 6), 3.0)}
    labels = torch.tensor([[0, 0, 0, 2, 2, 1]])
    vectors = torch.randn(3, 3)
    mos = torch.full((1, 6), 3.0)
    _, parts = total_loss(out, labels, mos, mos.mean(1), n_frames=12, class_vectors=vectors, class_weight=1.0,
                          class_on_clean=False, generator=torch.Generator().manual_seed(0))
    degraded = torch.tensor([3, 4, 5])
    expected = cosine_class_loss(out["emb"], labels, degraded, vectors)
    assert parts["class_ce"] == pytest.approx(float(expected), rel=1e-5)


def test_region_class_loss_scores_each_clips_pooled_degraded_frames_and_skips_clean_clips():
    vectors = torch.eye(3, 4)
    labels = torch.tensor([[0, 2, 2, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    # Clip 0's degraded frames each lean off class 2 but their mean sits on it; clip 1 is clean.
    emb = torch.zeros(3, 4, 4)
    emb[0, 1] = F.normalize(torch.tensor([0.0, 0.6, 1.0, 0.0]), dim=0)
    emb[0, 2] = F.normalize(torch.tensor([0.0, -0.6, 1.0, 0.0]), dim=0)
    emb[1, :, 0] = 1.0
    emb[2, :2] = vectors[1]
    on_class = region_class_loss(emb, labels, vectors)
    wrong = region_class_loss(emb, torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [2, 2, 0, 0]]), vectors)
    assert float(on_class) < 0.01 < 10.0 < float(wrong)
    assert float(region_class_loss(emb, torch.zeros_like(labels), vectors)) == 0.0


def test_total_loss_adds_the_region_term_only_when_weighted():
    out, labels, mos = _two_clip_batch()
    vectors = torch.randn(2, 4)
    plain, parts = total_loss(out, labels, mos, mos.mean(1), n_frames=20, class_vectors=vectors,
                              generator=torch.Generator().manual_seed(0))
    weighted, wparts = total_loss(out, labels, mos, mos.mean(1), n_frames=20, class_vectors=vectors,
                                  region_class_weight=0.5, generator=torch.Generator().manual_seed(0))
    assert "region_ce" not in parts
    assert wparts["region_ce"] == pytest.approx(float(region_class_loss(out["emb"], labels, vectors)), rel=1e-5)
    assert float(weighted) == pytest.approx(float(plain) + 0.5 * wparts["region_ce"], rel=1e-5)


def test_relation_distillation_is_zero_for_the_teacher_itself_and_positive_for_another_geometry():
    g = torch.Generator().manual_seed(0)
    teacher = F.normalize(torch.randn(2, 10, 128, generator=g), dim=-1)
    idx = torch.arange(20)
    assert float(relation_distill_loss(teacher, teacher, idx)) == pytest.approx(0.0, abs=1e-6)
    student = F.normalize(teacher[..., :64], dim=-1)  # half the teacher's dimensions: other cosines
    assert float(relation_distill_loss(student, teacher, idx)) > 0.001
    student.requires_grad_(True)
    relation_distill_loss(student, teacher, idx).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_clean_ranking_loss_is_low_only_when_clean_frames_sit_nearer_the_clean_mean_than_degraded_ones():
    labels = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 2, 2, 0]])
    idx = torch.arange(10)
    clean_dir, off = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    separated = torch.where((labels == 0)[..., None], clean_dir, F.normalize(clean_dir + 2 * off, dim=0))
    # One degraded frame exactly on the clean direction and one clean frame off it: ranked wrong.
    overlapping = separated.clone()
    overlapping[0, 3] = clean_dir
    overlapping[1, 0] = off
    assert float(clean_ranking_loss(separated, labels, idx)) < 0.01
    assert float(clean_ranking_loss(overlapping, labels, idx)) > 10 * float(clean_ranking_loss(separated, labels, idx))
    assert float(clean_ranking_loss(separated, torch.zeros_like(labels), idx)) == 0.0  # no degraded frame: nothing to rank
    emb = overlapping.clone().requires_grad_(True)
    clean_ranking_loss(emb, labels, idx).backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0


def test_total_loss_adds_the_detection_term_only_when_weighted():
    out, labels, mos = _two_clip_batch()
    plain, parts = total_loss(out, labels, mos, mos.mean(1), n_frames=40, generator=torch.Generator().manual_seed(0))
    weighted, wparts = total_loss(out, labels, mos, mos.mean(1), n_frames=40, detect_weight=2.0,
                                  generator=torch.Generator().manual_seed(0))
    assert "detect_rank" not in parts and wparts["detect_rank"] > 0
    assert float(weighted) == pytest.approx(float(plain) + 2.0 * wparts["detect_rank"], rel=1e-5)


def test_speaker_adversarial_term_trains_its_head_and_sends_the_network_the_reversed_gradient():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(3, 6, 8, generator=g), dim=-1).requires_grad_(True)
    speakers = torch.tensor([0, 1, 1])
    idx = torch.arange(18)
    head = torch.nn.Linear(8, 2)
    speaker_adversarial_loss(emb, speakers, idx, head, scale=0.5).backward()
    # The same cross-entropy without the reversal: the network's gradient is -0.5 times it.
    plain = emb.detach().clone().requires_grad_(True)
    F.cross_entropy(head(plain.reshape(-1, 8)), speakers[idx // 6]).backward()
    assert torch.allclose(emb.grad, -0.5 * plain.grad, atol=1e-6)
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0
