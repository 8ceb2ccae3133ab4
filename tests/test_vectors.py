"""FAISS side of the store: round trips, trained and HNSW indexes, filtered exact search, file checks."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.errors import ConfigError
from indexer.settings import get_settings
from retrieval.store import Store
from retrieval.vectors import IndexFileError, IndexMeta, VectorIndex, load_index, min_training_points
from tests.store_factory import STORE_DIM, fill_store, store_recording


def _unit(rng: np.random.Generator, n: int, dim: int = STORE_DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_topk(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = vecs @ (q / np.linalg.norm(q))
    order = np.lexsort((ids, -sims))[:k]
    return ids[order], sims[order]


def test_round_trip_add_persist_reopen_search_equals_numpy_cosine_topk(store_settings):
    with Store.open(store_settings) as store:
        fill_store(store, 40, n_segments=5, seed=3)
    # Ground truth from the vectors we generated, not from the store.
    truth = [store_recording(f"/archive/call_{i:04d}.wav", 5, seed=3 + i) for i in range(40)]
    vecs = np.stack([s.embedding for r in truth for s in r.segments]).astype(np.float32)
    with Store.open(store_settings, readonly=True) as store:
        ids, db_vecs = store.segment_vectors()
        np.testing.assert_allclose(db_vecs, vecs, atol=1e-6)  # ids follow insertion order
        rng = np.random.default_rng(11)
        for q in _unit(rng, 5):
            got_ids, got_sims = store.search_vectors(q, 10)
            want_ids, want_sims = _numpy_topk(ids, vecs, q, 10)
            np.testing.assert_array_equal(got_ids, want_ids)
            np.testing.assert_allclose(got_sims, want_sims, rtol=1e-5, atol=1e-6)


def test_ivf_factory_searches_exactly_until_trained_then_trains(tmp_path):
    rng = np.random.default_rng(0)
    index = VectorIndex(STORE_DIM, "IVF4,Flat")
    need = min_training_points(STORE_DIM, "IVF4,Flat")
    assert need >= 39 * 4
    vecs = _unit(rng, need + 50)
    ids = np.arange(1000, 1000 + len(vecs), dtype=np.int64)
    index.add(ids[:100], vecs[:100])
    assert index.fallback and index.is_exact and "until" in index.kind
    index.add(ids[100:], vecs[100:])
    assert not index.fallback and index.kind == "IVF4,Flat" and index.ntotal == len(ids)
    q = vecs[7]
    got, sims = index.search(q, 5)
    want, _ = _numpy_topk(ids, vecs, q, 5)
    # nprobe covers all 4 lists: IVF-Flat is exact here.
    np.testing.assert_array_equal(got, want)
    # Trained state survives persistence.
    path = tmp_path / "ivf.faiss"
    index.save(path, IndexMeta(generation=1, dim=STORE_DIM, count=0, factory="IVF4,Flat"))
    loaded, meta = load_index(path)
    assert not loaded.fallback and meta.count == len(ids) and loaded.factory == "IVF4,Flat"
    np.testing.assert_array_equal(loaded.search(q, 5)[0], want)


def test_store_keeps_its_factory_when_reopened_without_the_flag(tmp_path):
    settings = get_settings(store_dir=tmp_path / "s", faiss_factory="IVF4,Flat")
    with Store.open(settings) as store:
        fill_store(store, 60, n_segments=5)  # 300 vectors >= 256 needed: trained on the way
        assert not store._vectors.fallback
    plain = get_settings(store_dir=tmp_path / "s")
    with Store.open(plain, readonly=True) as reader:
        assert reader._vectors.factory == "IVF4,Flat" and reader.check().consistent
    # An explicit different factory rebuilds the index with it.
    with Store.open(get_settings(store_dir=tmp_path / "s", faiss_factory="HNSW16")) as store:
        assert store._vectors.factory == "HNSW16"
        assert store.check().consistent


def test_hnsw_removal_hides_ids_and_compacts_on_save(tmp_path):
    rng = np.random.default_rng(1)
    index = VectorIndex(STORE_DIM, "HNSW16")
    vecs = _unit(rng, 60)
    ids = np.arange(60, dtype=np.int64)
    index.add(ids, vecs)
    assert index.remove(ids[:10]) == 10
    assert index.ntotal == 50
    got, _ = index.search(vecs[3], 60)
    # HNSW is approximate (may return a few short of k) but never returns a removed id.
    assert not set(got) & set(ids[:10]) and len(got) >= 45
    assert index.search(vecs[33], 1)[0][0] == 33
    index.save(tmp_path / "h.faiss", IndexMeta(generation=1, dim=STORE_DIM, count=0, factory="HNSW16"))
    loaded, meta = load_index(tmp_path / "h.faiss")
    assert meta.count == 50 and np.array_equal(loaded.ids(), ids[10:])


def test_factory_that_cannot_fit_the_dimension_is_a_config_error(store_settings, tmp_path):
    with pytest.raises(ConfigError, match="PQ7"):
        VectorIndex(STORE_DIM, "PQ7")
    settings = get_settings(store_dir=tmp_path / "pq", faiss_factory="IVF4,PQ7")
    with Store.open(settings) as store:
        with pytest.raises(ConfigError, match="cannot index 16-dimensional"):
            fill_store(store, 1)
    # Reopening a good store with a bad factory fails clearly and leaves its file alone.
    with Store.open(store_settings) as store:
        fill_store(store, 2)
    before = store_settings.index_path.read_bytes()
    with pytest.raises(ConfigError, match="--faiss-factory"):
        Store.open(get_settings(store_dir=store_settings.store_dir, faiss_factory="PQ7"))
    assert store_settings.index_path.read_bytes() == before


def test_filtered_search_over_many_ids_uses_faiss_selector_and_matches_numpy(store_settings, monkeypatch):
    import retrieval.store as store_module

    monkeypatch.setattr(store_module, "_SMALL_SUBSET", 8)  # force the IDSelectorBatch path
    with Store.open(store_settings) as store:
        fill_store(store, 30, n_segments=4)
        ids, vecs = store.segment_vectors()
        rng = np.random.default_rng(5)
        subset = np.sort(rng.choice(ids, 50, replace=False))
        q = _unit(rng, 1)[0]
        for k in (1, 10, 50, 80):
            got, sims = store.search_vectors(q, k, subset)
            mask = np.isin(ids, subset)
            want, want_sims = _numpy_topk(ids[mask], vecs[mask], q, k)
            assert len(got) == min(k, subset.size)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(sims, want_sims, rtol=1e-5, atol=1e-6)


def test_load_index_names_what_is_wrong_with_the_file(tmp_path):
    path = tmp_path / "x.faiss"
    with pytest.raises(IndexFileError, match="missing"):
        load_index(path)
    index = VectorIndex(STORE_DIM)
    index.add(np.arange(5), _unit(np.random.default_rng(2), 5))
    index.save(path, IndexMeta(generation=3, dim=STORE_DIM, count=0, factory="Flat"))
    loaded, meta = load_index(path)
    assert (meta.generation, meta.count, loaded.ntotal) == (3, 5, 5)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(IndexFileError, match="corrupt or truncated"):
        load_index(path)
    assert not path.with_name(path.name + ".tmp").exists()


def test_search_params_reach_the_index_and_survive_training_and_reload(tmp_path):
    import faiss

    rng = np.random.default_rng(1)
    factory = "IVF8,Flat"
    index = VectorIndex(STORE_DIM, factory, params="nprobe=3")
    vecs = _unit(rng, min_training_points(STORE_DIM, factory) + 10)
    index.add(np.arange(1, len(vecs) + 1, dtype=np.int64), vecs)
    assert not index.fallback
    assert faiss.extract_index_ivf(faiss.downcast_index(index._index.index)).nprobe == 3
    path = tmp_path / "ivf.faiss"
    index.save(path, IndexMeta(generation=1, dim=STORE_DIM, count=0, factory=factory))
    loaded, _ = load_index(path, "nprobe=8")
    assert faiss.extract_index_ivf(faiss.downcast_index(loaded._index.index)).nprobe == 8
    hnsw = VectorIndex(STORE_DIM, "HNSW8", params="efSearch=77")
    assert faiss.downcast_index(hnsw._index.index).hnsw.efSearch == 77


def test_search_param_for_another_index_kind_is_ignored_and_a_misspelt_one_rejected(caplog, tmp_path):
    index = VectorIndex(STORE_DIM, "HNSW8", params="nprobe=4,efSearch=33")
    assert "does not apply" in caplog.text
    import faiss

    assert faiss.downcast_index(index._index.index).hnsw.efSearch == 33
    with pytest.raises(ConfigError, match="nprob=4"):
        from api.commands.db import settings_from_flags

        settings_from_flags(tmp_path, faiss_params="nprob=4")


def test_recommended_large_archive_index_ivf_sq8_with_refine_matches_numpy_when_probing_every_list():
    # bench_search: IVF1024,SQ8,RFlat with nprobe=512,k_factor_rf=8 meets p99 < 10 ms, recall@10 0.98 at 1M.
    rng = np.random.default_rng(4)
    factory = "IVF8,SQ8,RFlat"
    vecs = _unit(rng, min_training_points(STORE_DIM, factory) + 100)
    ids = np.arange(1, len(vecs) + 1, dtype=np.int64)
    index = VectorIndex(STORE_DIM, factory, params="nprobe=8,k_factor_rf=8")
    index.add(ids, vecs)
    assert not index.fallback
    for q in _unit(rng, 5):
        np.testing.assert_array_equal(index.search(q, 5)[0], _numpy_topk(ids, vecs, q, 5)[0])
    assert index.remove(ids[:1]) == 1 and ids[0] not in index.search(vecs[0], 5)[0]
