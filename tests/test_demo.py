"""The README's main command on its embedded default: the demo archive with the shipped model."""

from __future__ import annotations

import shutil

import pytest
import torch

from indexer.demo import run_demo
from indexer.settings import get_settings

torch.set_num_threads(1)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_demo_finds_planted_noise_with_few_false_alarms(tmp_path):
    settings = get_settings(store_dir=tmp_path / "store")  # the default model, as `make demo` runs it
    report = run_demo(tmp_path / "demo", settings, progress=False)
    rows = {r.kind: r for r in report.rows}
    assert report.summary.failed == 0 and report.summary.indexed == 10
    assert rows["noise"].share > 0.8
    assert rows["none"].share < 0.1  # clean speech flagged, with the reference calls as enrollment
    assert report.hits and report.hits[0].planted == "noise"
