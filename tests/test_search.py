"""Filtered search equals numpy brute force; query resolution; cutting hits to WAV files."""

from __future__ import annotations

import fnmatch
from datetime import timedelta

import numpy as np
import pytest

from indexer.errors import ConfigError, NotFoundError
from retrieval.search import SearchFilters, resolve_query, search
from tests.store_factory import RET_BASE_TIME, RET_DIM, build_planted_store


def _expected(planted, query: np.ndarray, k: int, keep) -> tuple[list[int], np.ndarray]:
    """Brute force over the planted truth (independent of the store's SQL): ids and sims, best first."""
    recs = {r["id"]: r for r in planted.recordings}
    rows = [s for s in planted.segments if keep(s, recs[s["recording_id"]])]
    if not rows:
        return [], np.empty(0)
    ids = np.array([s["id"] for s in rows])
    sims = np.stack([s["vector"] for s in rows]) @ query
    order = np.argsort(-sims)[:k]
    return ids[order].tolist(), sims[order]


def _query(planted, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = planted.centres[seed % len(planted.centres)] + 0.5 * rng.standard_normal(RET_DIM) / np.sqrt(RET_DIM)
    return (q / np.linalg.norm(q)).astype(np.float32)


# Each case: (filters, the same condition written over the planted truth).
FILTER_CASES = {
    "path_glob": (SearchFilters(path_glob="/archive/lyon/*"), lambda s, r: fnmatch.fnmatchcase(r["path"], "/archive/lyon/*")),
    "path_glob_inner_wildcard": (SearchFilters(path_glob="*/2024-05-0[23]/*"),
                                 lambda s, r: fnmatch.fnmatchcase(r["path"], "*/2024-05-0[23]/*")),
    "attributes": (SearchFilters(attributes={"site": "nice", "agent": "A2"}),
                   lambda s, r: r["attributes"]["site"] == "nice" and r["attributes"]["agent"] == "A2"),
    "attribute_number_as_text": (SearchFilters(attributes={"queue": "1"}), lambda s, r: r["attributes"]["queue"] == 1),
    "channel": (SearchFilters(channel=1), lambda s, r: s["channel"] == 1),
    "start_range": (SearchFilters(start_min_s=5.0, start_max_s=20.0), lambda s, r: 5.0 <= s["start_s"] <= 20.0),
    "mos_range": (SearchFilters(mos_min=2.0, mos_max=3.0), lambda s, r: 2.0 <= s["mos"] <= 3.0),
    "duration_range": (SearchFilters(duration_min_s=1.0, duration_max_s=2.0),
                       lambda s, r: 1.0 <= s["end_s"] - s["start_s"] <= 2.0),
    "label": (SearchFilters(label="deg2"), lambda s, r: s["label"] == "deg2"),
    "indexed_dates": (SearchFilters(indexed_after=RET_BASE_TIME + timedelta(hours=5), indexed_before=RET_BASE_TIME + timedelta(hours=17)),
                      lambda s, r: RET_BASE_TIME + timedelta(hours=5) <= r["indexed_at"] < RET_BASE_TIME + timedelta(hours=17)),
    "combined": (SearchFilters(channel=0, mos_max=3.5, path_glob="/archive/*/2024-05-0[1-3]/*"),
                 lambda s, r: s["channel"] == 0 and s["mos"] <= 3.5 and fnmatch.fnmatchcase(r["path"], "/archive/*/2024-05-0[1-3]/*")),
}


@pytest.fixture(scope="module")
def shared_planted(tmp_path_factory):
    """One read-only planted store for the many filter cases (searching does not modify it)."""
    return build_planted_store(tmp_path_factory.mktemp("search") / "store")


@pytest.fixture(scope="module")
def shared_store(shared_planted):
    store = shared_planted.store(readonly=True)
    yield store
    store.close()


@pytest.mark.parametrize("case", sorted(FILTER_CASES))
def test_filtered_search_equals_brute_force(shared_planted, shared_store, case):
    filters, keep = FILTER_CASES[case]
    query = _query(shared_planted)
    for k in (1, 5, 20):
        want_ids, want_sims = _expected(shared_planted, query, k, keep)
        hits = search(shared_store, query, k, filters)
        assert [h.segment_id for h in hits] == want_ids, case
        np.testing.assert_allclose([h.similarity for h in hits], want_sims, atol=1e-5)
    assert want_ids, f"filter case {case} matches nothing: the test would prove little"


def test_unfiltered_search_equals_brute_force_exact_and_default(shared_planted, shared_store):
    query = _query(shared_planted, seed=3)
    want_ids, _ = _expected(shared_planted, query, 15, lambda s, r: True)
    assert [h.segment_id for h in search(shared_store, query, 15)] == want_ids
    assert [h.segment_id for h in search(shared_store, query, 15, exact=True)] == want_ids
    assert [h.segment_id for h in search(shared_store, query, 15, SearchFilters())] == want_ids


def test_selective_filter_returns_every_match_when_k_exceeds_them(shared_planted, shared_store):
    rec = shared_planted.recordings[4]
    filters = SearchFilters(path_glob=rec["path"], channel=0)
    n_matching = sum(1 for s in shared_planted.segments if s["recording_id"] == rec["id"] and s["channel"] == 0)
    hits = search(shared_store, _query(shared_planted), 500, filters)
    assert len(hits) == n_matching
    assert all(h.path == rec["path"] and h.channel == 0 for h in hits)
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)


def test_k_larger_than_store_returns_every_segment(shared_planted, shared_store):
    hits = search(shared_store, _query(shared_planted), 10_000)
    assert len(hits) == len(shared_planted.segments)


def test_filter_matching_nothing_returns_no_hits(shared_planted, shared_store):
    assert search(shared_store, _query(shared_planted), 10, SearchFilters(label="no-such-label")) == []
    assert search(shared_store, _query(shared_planted), 10, SearchFilters(attributes={"site": "berlin"})) == []


def test_hits_carry_segment_metadata(shared_planted, shared_store):
    truth = {s["id"]: s for s in shared_planted.segments}
    for hit in search(shared_store, _query(shared_planted), 5):
        seg = truth[hit.segment_id]
        assert (hit.recording_id, hit.path, hit.channel, hit.label) == (seg["recording_id"], seg["path"], seg["channel"], seg["label"])
        assert hit.start_s == pytest.approx(seg["start_s"]) and hit.end_s == pytest.approx(seg["end_s"])
        assert hit.mos == pytest.approx(seg["mos"])


def test_contradictory_filter_bounds_are_rejected(shared_planted, shared_store):
    with pytest.raises(ConfigError, match="mos_min"):
        search(shared_store, _query(shared_planted), 5, SearchFilters(mos_min=4.0, mos_max=2.0))


def test_segment_query_is_its_stored_vector_and_finds_itself_first(shared_planted, shared_store):
    seg = shared_planted.segments[10]
    query = resolve_query(shared_store, None, segment_id=seg["id"])
    np.testing.assert_allclose(query, seg["vector"], atol=1e-6)
    assert search(shared_store, query, 1)[0].segment_id == seg["id"]


def test_raw_vector_query_is_validated_and_normalised(shared_store):
    q = resolve_query(shared_store, None, vector=[3.0] + [0.0] * (RET_DIM - 1))
    assert q.dtype == np.float32 and q[0] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="dimensions"):
        resolve_query(shared_store, None, vector=[1.0, 2.0])
    with pytest.raises(ConfigError, match="NaN"):
        resolve_query(shared_store, None, vector=[float("nan")] * RET_DIM)
    with pytest.raises(ConfigError, match="zeros"):
        resolve_query(shared_store, None, vector=[0.0] * RET_DIM)
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_query(shared_store, None, vector=[1.0] * RET_DIM, segment_id=1)


def test_unknown_segment_and_prototype_raise_not_found(shared_store):
    with pytest.raises(NotFoundError):
        resolve_query(shared_store, None, segment_id=10**9)
    with pytest.raises(NotFoundError, match="no prototype"):
        resolve_query(shared_store, None, prototype="nonexistent")


def test_clip_query_embeds_with_the_model_and_searches(tmp_path, untrained_checkpoint):
    import torch

    torch.set_num_threads(1)
    from indexer.model import load_model
    from tests.audio_factory import write_speechlike_wav

    model = load_model(str(untrained_checkpoint))
    planted = build_planted_store(tmp_path / "store", n_recordings=6)
    clip_a = write_speechlike_wav(tmp_path / "a.wav", seconds=1.5, channels=1, seed=1, clip_level=0.2)
    clip_b = write_speechlike_wav(tmp_path / "b.wav", seconds=1.5, channels=1, seed=2)
    store = planted.store(readonly=True)
    try:
        qa = resolve_query(store, model, clips=[clip_a], whole=True)
        qb = resolve_query(store, model, clips=[clip_b], whole=True)
        both = resolve_query(store, model, clips=[clip_a, clip_b], whole=True)
        assert qa.shape == (model.dim,) and np.linalg.norm(qa) == pytest.approx(1.0, abs=1e-5)
        mean = (qa + qb) / np.linalg.norm(qa + qb)
        np.testing.assert_allclose(both, mean, atol=1e-5)
        hits = search(store, qa, 4)
        assert len(hits) == 4 and hits[0].similarity >= hits[-1].similarity
    finally:
        store.close()


def test_export_cuts_hits_to_padded_wav_files(tmp_path):
    import pandas as pd
    import soundfile as sf

    from retrieval.export import MANIFEST, export_segments, hits_for_label

    planted = build_planted_store(tmp_path / "store", n_recordings=4, wav_dir=tmp_path / "wav")
    store = planted.store(readonly=True)
    try:
        hits = search(store, _query(planted), 3)
        files = export_segments(store, hits, tmp_path / "out", pad_s=0.25)
        label_hits = hits_for_label(store, "deg0")
    finally:
        store.close()
    assert len(files) == 3 and all(f.exists() for f in files)
    for f, hit in zip(files, hits):
        data, sr = sf.read(f)
        assert sr == 8000 and data.ndim == 1
        expected = min(hit.end_s + 0.25, 4.0) - max(hit.start_s - 0.25, 0.0)
        assert len(data) / sr == pytest.approx(expected, abs=2 / sr)
    manifest = pd.read_csv(tmp_path / "out" / MANIFEST)
    assert manifest["segment_id"].tolist() == [h.segment_id for h in hits]
    assert all(h.label == "deg0" for h in label_hits)


def test_approximate_index_store_still_gives_exact_filtered_results(tmp_path):
    planted = build_planted_store(tmp_path / "store", n_recordings=12, factory="HNSW32")
    query = _query(planted)
    filters, keep = FILTER_CASES["combined"]
    store = planted.store(readonly=True)
    try:
        want_ids, _ = _expected(planted, query, 7, keep)
        assert [h.segment_id for h in search(store, query, 7, filters)] == want_ids
        exact_ids, _ = _expected(planted, query, 10, lambda s, r: True)
        assert [h.segment_id for h in search(store, query, 10, exact=True)] == exact_ids
        assert len(search(store, query, 10)) == 10  # approximate, but never short
    finally:
        store.close()


def test_filtered_search_equals_brute_force_on_postgresql(postgres_settings, tmp_path):
    """The same filters on PostgreSQL (JSON attributes, timestamptz): skipped without a server."""
    planted = build_planted_store(tmp_path / "pg-store", n_recordings=15, database_url=postgres_settings.database_url)
    query = _query(planted)
    store = planted.store(readonly=True)
    try:
        for case, (filters, keep) in sorted(FILTER_CASES.items()):
            want_ids, _ = _expected(planted, query, 8, keep)
            assert [h.segment_id for h in search(store, query, 8, filters)] == want_ids, case
    finally:
        store.close()
