"""--engine ray: the same per-file work on Ray Data with model actors, written by the same writer."""

from __future__ import annotations

import pytest

from indexer.pipeline import index_archive
from tests.audio_factory import write_archive
from tests.store_factory import derive_settings, quantile_threshold, stored_segments

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'degsearch[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_gives_the_same_segments_as_local_engine(local_ray, tmp_path, indexer_settings, untrained_model):
    files = write_archive(tmp_path / "archive", n=2, seconds=3.0)
    (tmp_path / "archive" / "broken.wav").write_bytes(b"not audio at all" * 20)
    settings = derive_settings(indexer_settings, threshold=quantile_threshold(untrained_model, files[1]))
    summary = index_archive([str(tmp_path / "archive")], settings, engine="ray", progress=False)
    assert (summary.indexed, summary.failed, summary.engine) == (2, 1, "ray")
    assert "not a recognised audio format" in summary.failures[0].error
    local = derive_settings(settings, store_dir=tmp_path / "local")
    index_archive([str(p) for p in files], local, progress=False)
    assert stored_segments(settings) == stored_segments(local) and stored_segments(local)
