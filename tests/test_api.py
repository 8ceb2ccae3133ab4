"""HTTP API behaviour over a small real store (TestClient, in-process).

Every endpoint, auth on and off, and every error status (401, 403, 404, 413, 415, 422, 503).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from indexer.settings import get_settings

torch.set_num_threads(1)

KEY = "s3cret-key"


def client_for(api_store, **overrides) -> TestClient:
    """A TestClient (lifespan run on enter) over the fixture store with settings ``overrides``."""
    settings = get_settings(store_dir=api_store.settings.store_dir, model=api_store.settings.model, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def client(api_store):
    with client_for(api_store) as c:
        yield c


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"code", "message"} and body["message"]
    if code:
        assert body["code"] == code, body
    return body


def wav_bytes(seconds: float, sr: int = 8000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# --- health, metrics, page ----------------------------------------------------------------------


def test_healthz_reports_open_store_and_vector_count(client, api_store):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["store_open"] is True
    assert body["segments"] == len(api_store.segments)


def test_app_starts_degraded_when_store_cannot_open_and_recovers(tmp_path, untrained_checkpoint, untrained_model):
    # No database yet (nothing indexed): a read-only open fails, the app must still start.
    settings = get_settings(store_dir=tmp_path / "store", model=str(untrained_checkpoint))
    app = create_app(settings)
    with TestClient(app) as c:
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded" and health.json()["detail"]
        assert_error(c.get("/v1/segments/1"), 503, "unavailable")
        assert c.get("/").status_code == 200  # the page still loads
        # An index run creates the store; the API picks it up without a restart.
        from tests.store_factory import populate_api_store

        populate_api_store(settings, untrained_model, tmp_path / "audio", n_recordings=1)
        app.state.degsearch.store_retry_s = 0.0
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/v1/segments/1").status_code == 200


def test_metrics_expose_latency_histogram_query_counter_and_index_size(client, api_store):
    seg = api_store.segments[0]["id"]
    client.post("/v1/search", json={"segment_id": seg, "k": 3})
    text = client.get("/metrics").text
    assert 'degsearch_http_request_duration_seconds_count{method="POST",route="/v1/search",status="200"} 1.0' in text
    assert 'degsearch_queries_total{kind="segment"} 1.0' in text
    assert f"degsearch_index_segments {float(len(api_store.segments))}" in text


def test_index_page_and_static_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="clip-file"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_openapi_documents_every_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/v1/search", "/v1/search/clip", "/v1/segments/{segment_id}", "/v1/segments/{segment_id}/audio",
        "/v1/recordings/{recording_id}", "/v1/prototypes", "/v1/prototypes/recluster", "/v1/stats", "/healthz", "/metrics",
    }


# --- search -------------------------------------------------------------------------------------


def test_search_by_segment_returns_itself_then_its_recording_siblings(client, api_store):
    seg = api_store.segments[0]
    resp = client.post("/v1/search", json={"segment_id": seg["id"], "k": 3})
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    assert hits[0]["segment_id"] == seg["id"] and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert {h["recording_id"] for h in hits} == {seg["recording_id"]}
    assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)
    assert hits[0]["audio_url"] == f"/v1/segments/{seg['id']}/audio"


def test_search_by_vector_finds_the_matching_segment(client, api_store):
    seg = api_store.segments[4]
    resp = client.post("/v1/search", json={"vector": (seg["vector"] * 3).tolist(), "k": 1, "exact": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["hits"][0]["segment_id"] == seg["id"]


def test_search_filters_restrict_hits(client, api_store):
    seg = api_store.segments[0]
    resp = client.post("/v1/search", json={"segment_id": seg["id"], "k": 20, "filters": {"channel": 1}})
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    assert hits and all(h["channel"] == 1 for h in hits)
    assert len(hits) == sum(1 for s in api_store.segments if s["channel"] == 1)


@pytest.mark.parametrize(
    "body",
    [
        {"k": 5},  # no query
        {"segment_id": 1, "prototype": "x"},  # two queries
        {"segment_id": 1, "k": 0},
        {"segment_id": 1, "k": 100000},
        {"vector": [0.0, 0.0]},
        {"segment_id": 1, "filters": {"no_such_filter": 1}},
        {"segment_id": "abc"},
    ],
)
def test_search_rejects_bad_parameters_with_422(client, body):
    assert_error(client.post("/v1/search", json=body), 422, "invalid_request")


def test_search_rejects_malformed_json_with_422(client):
    resp = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(resp, 422, "invalid_request")


def test_search_vector_of_wrong_dimension_is_a_client_error(client, api_store):
    resp = client.post("/v1/search", json={"vector": [1.0] * (api_store.model.dim + 1)})
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["code"]


def test_search_unknown_segment_or_prototype_is_404(client):
    assert_error(client.post("/v1/search", json={"segment_id": 987654}), 404, "not_found")
    assert_error(client.post("/v1/search", json={"prototype": "no-such-prototype"}), 404, "not_found")


def test_clip_search_returns_stored_segments(client, api_store, api_clip):
    with api_clip.open("rb") as f:
        resp = client.post("/v1/search/clip", files={"file": ("query.wav", f, "audio/wav")}, data={"k": "4", "whole": "true"})
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    stored = {s["id"] for s in api_store.segments}
    assert len(hits) == 4 and {h["segment_id"] for h in hits} <= stored
    assert all(-1.0001 <= h["similarity"] <= 1.0001 for h in hits)


def test_clip_search_with_filters_form_field(client, api_clip):
    with api_clip.open("rb") as f:
        resp = client.post("/v1/search/clip", files={"file": ("q.wav", f)}, data={"k": "9", "whole": "true", "filters": json.dumps({"channel": 0})})
    assert resp.status_code == 200, resp.text
    assert {h["channel"] for h in resp.json()["hits"]} == {0}
    with api_clip.open("rb") as f:
        bad = client.post("/v1/search/clip", files={"file": ("q.wav", f)}, data={"filters": "{oops"})
    assert_error(bad, 422, "invalid_request")


def test_clip_search_rejects_non_audio_with_415(client):
    resp = client.post("/v1/search/clip", files={"file": ("notes.wav", b"this is not audio at all" * 20, "audio/wav")})
    assert_error(resp, 415, "unsupported_audio")
    assert_error(client.post("/v1/search/clip", files={"file": ("empty.wav", b"", "audio/wav")}), 415)


def test_upload_over_byte_limit_is_413_by_content_length(api_store):
    with client_for(api_store, max_upload_bytes=4000) as c:
        resp = c.post("/v1/search/clip", files={"file": ("big.wav", wav_bytes(10.0), "audio/wav")})
    assert_error(resp, 413, "upload_too_large")


def test_upload_over_byte_limit_is_413_when_streamed_without_length(api_store):
    body = b"x" * 200_000

    def chunks():
        for i in range(0, len(body), 10_000):
            yield body[i : i + 10_000]

    with client_for(api_store, max_upload_bytes=1000) as c:
        resp = c.post("/v1/search/clip", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert_error(resp, 413)


def test_upload_file_over_limit_inside_allowed_body_is_413(api_store):
    # Body limit has multipart slack; the file itself is still counted against max_upload_bytes.
    with client_for(api_store, max_upload_bytes=20_000) as c:
        resp = c.post("/v1/search/clip", files={"file": ("a.wav", wav_bytes(2.0), "audio/wav")})  # ~32 kB
    assert_error(resp, 413, "upload_too_large")


def test_clip_longer_than_max_seconds_is_413(api_store):
    with client_for(api_store, max_upload_seconds=1.0) as c:
        resp = c.post("/v1/search/clip", files={"file": ("long.wav", wav_bytes(3.0), "audio/wav")})
    body = assert_error(resp, 413, "upload_too_large")
    assert "1 s" in body["message"]


# --- segments and recordings -----------------------------------------------------------------------


def test_get_segment_and_its_recording(client, api_store):
    seg = api_store.segments[2]
    body = client.get(f"/v1/segments/{seg['id']}").json()
    assert body["recording_id"] == seg["recording_id"] and body["channel"] == seg["channel"]
    assert body["start_s"] == pytest.approx(seg["start_s"]) and body["path"] == seg["path"]
    rec = client.get(f"/v1/recordings/{seg['recording_id']}").json()
    assert rec["path"] == seg["path"] and rec["status"] == "done" and seg["id"] in rec["segment_ids"]
    assert rec["sample_rate"] == 8000 and rec["attributes"]["site"] in {"paris", "lyon"}


def test_unknown_segment_and_recording_are_404_and_bad_ids_422(client):
    assert_error(client.get("/v1/segments/999999"), 404, "not_found")
    assert_error(client.get("/v1/segments/999999/audio"), 404, "not_found")
    assert_error(client.get("/v1/recordings/999999"), 404, "not_found")
    assert_error(client.get("/v1/segments/0"), 422, "invalid_request")
    assert_error(client.get("/v1/segments/abc"), 422)


def test_segment_audio_is_the_segment_cut_from_its_recording(client, api_store):
    seg = api_store.segments[2]  # channel 1, 0.8-1.6 s
    resp = client.get(f"/v1/segments/{seg['id']}/audio")
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
    data, sr = sf.read(io.BytesIO(resp.content), dtype="float32")
    assert sr == 8000 and data.ndim == 1
    assert len(data) == pytest.approx((seg["end_s"] - seg["start_s"]) * sr, abs=2)
    original, _ = sf.read(seg["path"], dtype="float32")
    start = int(round(seg["start_s"] * sr))
    np.testing.assert_allclose(data[:100], original[start : start + 100, seg["channel"]], atol=2e-3)
    padded = client.get(f"/v1/segments/{seg['id']}/audio", params={"pad": 0.5})
    assert len(sf.read(io.BytesIO(padded.content))[0]) == pytest.approx((seg["end_s"] - seg["start_s"] + 1.0) * sr, abs=2)


def test_segment_audio_rejects_bad_padding_and_missing_file(client, api_store):
    seg = api_store.segments[0]
    assert_error(client.get(f"/v1/segments/{seg['id']}/audio", params={"pad": -1}), 422)
    assert_error(client.get(f"/v1/segments/{seg['id']}/audio", params={"pad": 1e9}), 422)
    wav = Path(seg["path"])
    moved = wav.rename(wav.with_suffix(".moved"))  # the fixture's WAV files are shared: put it back
    try:
        assert_error(client.get(f"/v1/segments/{seg['id']}/audio"), 404, "audio_unavailable")
    finally:
        moved.rename(wav)


# --- prototypes -----------------------------------------------------------------------------------


def test_prototypes_enroll_list_search_and_recluster_without_auth(client, api_store, api_clip):
    assert client.get("/v1/prototypes").json() == {"prototypes": []}
    with api_clip.open("rb") as f:
        resp = client.post("/v1/prototypes", data={"name": "my-clipping"}, files=[("files", ("a.wav", f, "audio/wav"))])
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "my-clipping" and resp.json()["kind"] == "named"
    names = [p["name"] for p in client.get("/v1/prototypes").json()["prototypes"]]
    assert "my-clipping" in names
    hits = client.post("/v1/search", json={"prototype": "my-clipping", "k": 2}).json()["hits"]
    assert len(hits) == 2
    resp = client.post("/v1/prototypes/recluster", json={"n_clusters": 3})
    assert resp.status_code == 200, resp.text
    clusters = [p for p in resp.json()["prototypes"] if p["kind"] == "cluster"]
    assert len(clusters) == 3 and sum(p["size"] for p in clusters) == len(api_store.segments)
    assert all(p["example_segment_ids"] for p in clusters)


def test_prototype_enrollment_validates_name_and_audio(client):
    assert_error(client.post("/v1/prototypes", data={"name": "../etc"}, files=[("files", ("a.wav", wav_bytes(1.0)))]), 422)
    assert_error(client.post("/v1/prototypes", data={"name": "ok"}), 422)
    assert_error(client.post("/v1/prototypes", data={"name": "ok"}, files=[("files", ("a.wav", b"garbage" * 50))]), 415)
    assert_error(client.post("/v1/prototypes/recluster", json={"n_clusters": 2, "distance_threshold": 0.3}), 422)


def test_writes_need_a_key_when_keys_are_configured(api_store, api_clip):
    with client_for(api_store, api_keys=[KEY]) as c:
        clip = api_clip.read_bytes()
        files = [("files", ("a.wav", clip, "audio/wav"))]
        assert_error(c.post("/v1/prototypes", data={"name": "p"}, files=files), 401, "missing_api_key")
        assert_error(c.post("/v1/prototypes", data={"name": "p"}, files=files, headers={"X-API-Key": "wrong"}), 403, "invalid_api_key")
        assert_error(c.post("/v1/prototypes/recluster", json={}), 401)
        ok = c.post("/v1/prototypes", data={"name": "p"}, files=files, headers={"X-API-Key": KEY})
        assert ok.status_code == 201, ok.text
        # Reads stay open unless require_key_for_reads.
        assert c.get("/v1/prototypes").status_code == 200
        assert c.post("/v1/search", json={"segment_id": api_store.segments[0]["id"]}).status_code == 200


def test_reads_need_a_key_when_require_key_for_reads(api_store):
    seg = api_store.segments[0]["id"]
    with client_for(api_store, api_keys=[KEY], require_key_for_reads=True) as c:
        assert_error(c.get(f"/v1/segments/{seg}"), 401, "missing_api_key")
        assert_error(c.get(f"/v1/segments/{seg}/audio", headers={"X-API-Key": "nope"}), 403)
        assert_error(c.post("/v1/search", json={"segment_id": seg}), 401)
        assert_error(c.get("/v1/stats"), 401)
        assert_error(c.get("/metrics"), 401)
        assert c.get(f"/v1/segments/{seg}", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


# --- stats ----------------------------------------------------------------------------------------


def test_stats_in_json_csv_and_parquet(client):
    import pandas as pd

    body = client.get("/v1/stats").json()
    assert body["rows"] and body["columns"]
    csv = client.get("/v1/stats", params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert len(pd.read_csv(io.StringIO(csv.text))) == len(body["rows"])
    pq = client.get("/v1/stats", params={"format": "parquet"})
    assert pq.status_code == 200 and len(pd.read_parquet(io.BytesIO(pq.content))) == len(body["rows"])
    assert_error(client.get("/v1/stats", params={"format": "xlsx"}), 422)


# --- CORS and live reload ---------------------------------------------------------------------------


def test_cors_headers_only_when_origins_configured(api_store, client):
    preflight = {"Origin": "http://example.org", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/search", headers=preflight).headers
    with client_for(api_store, cors_origins=["http://example.org"]) as c:
        resp = c.options("/v1/search", headers=preflight)
        assert resp.headers["access-control-allow-origin"] == "http://example.org"


# Another process (no torch import: it only needs the store) indexes one more recording.
_WRITER_SCRIPT = """
import sys
import numpy as np
from indexer.records import DetectedSegment, RecordingResult
from indexer.settings import get_settings
from retrieval.store import Store

store_dir, model_id, dim, wav = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
v = np.random.default_rng(7).standard_normal((3, dim)).astype(np.float32)
v /= np.linalg.norm(v, axis=1, keepdims=True)
segs = [DetectedSegment(channel=0, start_s=0.2 + i, end_s=0.7 + i, n_frames=25, embedding=v[i], mos=2.5, score=0.4) for i in range(3)]
with Store.open(get_settings(store_dir=store_dir)) as store:
    store.write_recording(RecordingResult(path=wav, content_hash="other-process", duration_s=3.0, sample_rate=8000, channels=2,
                                          model_id=model_id, segments=segs, analysed_s=6.0, degraded_s=1.5, mean_mos=3.0))
    store.flush_index()
"""


def test_segments_written_by_another_process_are_visible_without_restart(client, api_store, tmp_path):
    from tests.audio_factory import write_speechlike_wav

    before = client.get("/healthz").json()
    wav = write_speechlike_wav(tmp_path / "late.wav", seed=5)
    root = Path(__file__).parents[1]
    subprocess.run([sys.executable, "-c", _WRITER_SCRIPT, str(api_store.settings.store_dir), api_store.model.model_id,
                    str(api_store.model.dim), str(wav)], check=True, timeout=120, cwd=root)
    after = client.get("/healthz").json()
    assert after["segments"] == before["segments"] + 3 and after["generation"] > before["generation"]
    new_ids = [h["segment_id"] for h in client.post("/v1/search", json={"segment_id": 1, "k": 100}).json()["hits"]
               if h["path"] == str(wav)]
    assert len(new_ids) == 3
    hits = client.post("/v1/search", json={"segment_id": new_ids[0], "k": 1}).json()["hits"]
    assert hits[0]["segment_id"] == new_ids[0]  # served by the reloaded FAISS index
    assert 'degsearch_store_reloads_total 1.0' in client.get("/metrics").text
