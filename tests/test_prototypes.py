"""Clustering recovers planted clusters; prototypes are stored, replaced and used for labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from indexer.errors import ConfigError
from retrieval.models import Prototype, Segment, vector_to_bytes
from retrieval.prototypes import (
    N_EXAMPLES,
    UNKNOWN,
    add_named_prototype,
    cluster_vectors,
    label_segments,
    list_prototypes,
    recluster,
    write_session,
)
from tests.store_factory import RET_DIM, RET_MODEL_ID, build_planted_store


def _labels_in_store(store) -> dict[int, tuple[str, float | None]]:
    with store.session() as session:
        return {i: (lab, score) for i, lab, score in session.query(Segment.id, Segment.label, Segment.label_score)}


def _assignment(store, planted) -> tuple[list[int], list[str]]:
    labels = _labels_in_store(store)
    truth = [s["cluster"] for s in planted.segments]
    found = [labels[s["id"]][0] for s in planted.segments]
    return truth, found


def test_recluster_by_count_recovers_planted_clusters(planted_store):
    store = planted_store.store()
    try:
        infos = recluster(store, n_clusters=4, label_threshold=0.0)
        truth, found = _assignment(store, planted_store)
    finally:
        store.close()
    assert len(infos) == 4
    assert adjusted_rand_score(truth, found) >= 0.9
    # Each prototype sits on one planted centre and summarises its members.
    sims = np.stack([p.vector for p in infos]) @ planted_store.centres.T
    assert sorted(np.argmax(sims, axis=1).tolist()) == [0, 1, 2, 3]
    assert sum(p.size for p in infos) == len(planted_store.segments)
    total = sum(s["end_s"] - s["start_s"] for s in planted_store.segments)
    assert sum(p.total_duration_s for p in infos) == pytest.approx(total)
    assert [p.size for p in infos] == sorted((p.size for p in infos), reverse=True)  # cluster-00 is the largest
    by_id = {s["id"]: s for s in planted_store.segments}
    label_of = dict(zip((s["id"] for s in planted_store.segments), found))
    for i, p in enumerate(infos):
        assert p.name == f"cluster-{i:02d}" and p.kind == "cluster"
        members = [s for s in planted_store.segments if label_of[s["id"]] == p.name]
        assert p.mean_mos == pytest.approx(np.mean([s["mos"] for s in members]))
        # Examples are the members closest to the prototype.
        assert len(p.example_segment_ids) == N_EXAMPLES
        member_sims = sorted((float(s["vector"] @ p.vector) for s in members), reverse=True)
        example_sims = [float(by_id[i]["vector"] @ p.vector) for i in p.example_segment_ids]
        np.testing.assert_allclose(example_sims, member_sims[:N_EXAMPLES], atol=1e-5)


def test_recluster_by_distance_threshold_finds_the_planted_count(planted_store):
    store = planted_store.store()
    try:
        infos = recluster(store, distance_threshold=0.5, label_threshold=0.0)
        truth, found = _assignment(store, planted_store)
    finally:
        store.close()
    assert len(infos) == 4
    assert adjusted_rand_score(truth, found) >= 0.9


@pytest.mark.parametrize("mode", [{"n_clusters": 5}, {"distance_threshold": 0.5}])
def test_kmeans_path_beyond_max_agglomerative_recovers_planted_clusters(mode):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, RET_DIM))
    truth = rng.integers(5, size=3000)
    x = centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True) + 0.35 * rng.standard_normal((3000, RET_DIM)) / 8
    labels = cluster_vectors(x.astype(np.float32), max_agglomerative=400, **mode)
    assert labels.max() + 1 == 5
    assert adjusted_rand_score(truth, labels) >= 0.9


def test_cluster_vectors_needs_exactly_one_criterion():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ConfigError):
        cluster_vectors(x)
    with pytest.raises(ConfigError):
        cluster_vectors(x, n_clusters=2, distance_threshold=0.3)
    with pytest.raises(ConfigError):
        cluster_vectors(x, distance_threshold=5.0)


def _insert_named(store, name: str, vector: np.ndarray) -> None:
    with write_session(store) as session:
        session.add(Prototype(name=name, kind="named", model_id=RET_MODEL_ID, dim=RET_DIM, vector=vector_to_bytes(vector)))


def test_recluster_replaces_clusters_and_keeps_named_prototypes(planted_store):
    store = planted_store.store()
    try:
        recluster(store, n_clusters=6)
        _insert_named(store, "hum", planted_store.centres[0])
        recluster(store, n_clusters=3)
        names = sorted(p.name for p in list_prototypes(store))
    finally:
        store.close()
    assert names == ["cluster-00", "cluster-01", "cluster-02", "hum"]


def test_named_prototypes_take_precedence_and_far_segments_are_unknown(planted_store):
    store = planted_store.store()
    try:
        recluster(store, n_clusters=4, label_threshold=0.0)
        _insert_named(store, "hum", planted_store.centres[1])
        n_labelled = label_segments(store, threshold=0.8)
        labels = _labels_in_store(store)
    finally:
        store.close()
    n_known = 0
    for seg in planted_store.segments:
        label, score = labels[seg["id"]]
        to_hum = float(seg["vector"] @ planted_store.centres[1])
        if to_hum >= 0.8:
            assert label == "hum" and score == pytest.approx(to_hum, abs=1e-5)
        if label == UNKNOWN:
            assert score < 0.8
        else:
            n_known += 1
            assert score >= 0.8
    assert n_labelled == n_known
    assert sum(1 for lab, _ in labels.values() if lab == "hum") >= 0.8 * sum(1 for s in planted_store.segments if s["cluster"] == 1)


def test_knn_vote_follows_the_neighbourhood(planted_store):
    store = planted_store.store()
    try:
        recluster(store, n_clusters=4, label_threshold=0.0)
        label_segments(store, threshold=0.0, knn=7)
        truth, found = _assignment(store, planted_store)
        with pytest.raises(ConfigError):
            label_segments(store, threshold=0.0, knn=0)
    finally:
        store.close()
    assert adjusted_rand_score(truth, found) >= 0.9


def test_add_named_prototype_from_clips_labels_segments(tmp_path, untrained_checkpoint):
    import torch

    torch.set_num_threads(1)
    from indexer.model import load_model
    from tests.audio_factory import write_speechlike_wav

    model = load_model(str(untrained_checkpoint))
    planted = build_planted_store(tmp_path / "store", n_recordings=5, model_id=model.model_id)
    clip = write_speechlike_wav(tmp_path / "hum.wav", seconds=1.5, channels=1, seed=5, clip_level=0.2)
    store = planted.store()
    try:
        info = add_named_prototype(store, model, "clipped-line", [clip], whole=True, label_threshold=-1.0)
        again = add_named_prototype(store, model, "clipped-line", [clip, clip], whole=True, label_threshold=-1.0)
        labels = _labels_in_store(store)
        with pytest.raises(ConfigError, match="reserved"):
            add_named_prototype(store, model, "cluster-01", [clip])
    finally:
        store.close()
    assert info.kind == "named" and info.vector.shape == (model.dim,)
    assert again.id == info.id  # replaced, not duplicated
    # The only prototype, threshold -1: every segment is labelled with it, and its stats count them all.
    assert {lab for lab, _ in labels.values()} == {"clipped-line"}
    assert again.size == len(planted.segments)
    assert again.total_duration_s == pytest.approx(sum(s["end_s"] - s["start_s"] for s in planted.segments))


def test_prototypes_command_reclusters_and_lists(planted_store, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    store_dir = str(planted_store.settings.store_dir)
    runner = CliRunner()
    result = runner.invoke(app, ["prototypes", "--store-dir", store_dir, "--recluster", "--n-clusters", "4"])
    assert result.exit_code == 0, result.output
    assert "4 clusters" in result.output and "cluster-03" in result.output
    result = runner.invoke(app, ["prototypes", "--store-dir", store_dir, "--n-clusters", "4"])
    assert result.exit_code != 0  # --n-clusters without --recluster is refused
    result = runner.invoke(app, ["export-segments", "--store-dir", store_dir, "--label", "cluster-00", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0  # the planted store has no audio files: the decode error names the file
    assert "call_" in str(result.exception) + result.output
