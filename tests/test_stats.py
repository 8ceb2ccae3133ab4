"""Statistics add up to the indexed durations; exports open with pandas and pyarrow; plots and CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from indexer.errors import ConfigError
from retrieval.stats import NO_SEGMENTS, compute_stats, export_stats, plot_map, plot_stats


@pytest.fixture(scope="module")
def stats_planted(tmp_path_factory):
    from tests.store_factory import build_planted_store

    return build_planted_store(tmp_path_factory.mktemp("stats") / "store", n_recordings=24)


@pytest.fixture(scope="module")
def stats_store(stats_planted):
    store = stats_planted.store(readonly=True)
    yield store
    store.close()


def _totals(planted) -> tuple[float, float]:
    analysed = sum(r["analysed_s"] for r in planted.recordings)
    degraded = sum(s["end_s"] - s["start_s"] for s in planted.segments)
    return analysed, degraded


def test_per_label_totals_add_up_to_indexed_durations(stats_planted, stats_store):
    analysed, degraded = _totals(stats_planted)
    df = compute_stats(stats_store)
    assert df["degraded_s"].sum() == pytest.approx(degraded)
    assert df["segments"].sum() == len(stats_planted.segments)
    np.testing.assert_allclose(df["analysed_s"], analysed)
    assert df["share"].sum() == pytest.approx(degraded / analysed)
    row = df.set_index("label").loc["deg1"]
    mine = [s for s in stats_planted.segments if s["label"] == "deg1"]
    assert row["segments"] == len(mine)
    assert row["recordings"] == len({s["recording_id"] for s in mine})
    mos = np.array([s["mos"] for s in mine])
    assert row["mean_mos"] == pytest.approx(mos.mean())
    assert row[["p10_mos", "p50_mos", "p90_mos"]].tolist() == pytest.approx(np.percentile(mos, [10, 50, 90]).tolist())
    assert df.attrs["totals"]["analysed_s"] == pytest.approx(analysed)


@pytest.mark.parametrize("by", ["agent", "site", "day", "channel"])
def test_breakdown_totals_add_up_to_indexed_durations(stats_planted, stats_store, by):
    analysed, degraded = _totals(stats_planted)
    df = compute_stats(stats_store, by=by)
    assert df["degraded_s"].sum() == pytest.approx(degraded)
    # One denominator per breakdown value; together they are all the analysed audio.
    denominators = df.groupby(by)["analysed_s"].agg(["min", "max"])
    assert (denominators["min"] == denominators["max"]).all()
    assert denominators["min"].sum() == pytest.approx(analysed)


def test_breakdown_by_attribute_counts_each_value(stats_planted, stats_store):
    df = compute_stats(stats_store, by="site")
    recs = {r["id"]: r for r in stats_planted.recordings}
    for site, part in df.groupby("site"):
        mine = [s for s in stats_planted.segments if recs[s["recording_id"]]["attributes"]["site"] == site]
        assert part["degraded_s"].sum() == pytest.approx(sum(s["end_s"] - s["start_s"] for s in mine))
        assert part["analysed_s"].iloc[0] == pytest.approx(sum(r["analysed_s"] for r in recs.values() if r["attributes"]["site"] == site))


def test_recording_without_segments_still_counts_in_the_denominator(stats_planted, stats_store):
    # Recording 1 (agent A1) has no segment: its analysed audio still belongs to A1's denominator.
    df = compute_stats(stats_store, by="agent")
    a1 = sum(r["analysed_s"] for r in stats_planted.recordings if r["attributes"]["agent"] == "A1")
    assert df[df["agent"] == "A1"]["analysed_s"].iloc[0] == pytest.approx(a1)
    assert NO_SEGMENTS not in set(compute_stats(stats_store)["label"])


def test_per_cluster_statistics_after_clustering(tmp_path):
    from retrieval.prototypes import recluster
    from tests.store_factory import build_planted_store

    planted = build_planted_store(tmp_path / "store", n_recordings=12)
    store = planted.store()
    try:
        recluster(store, n_clusters=4)
        df = compute_stats(store, group="cluster")
    finally:
        store.close()
    assert sorted(df["cluster"]) == ["cluster-00", "cluster-01", "cluster-02", "cluster-03"]
    assert df["degraded_s"].sum() == pytest.approx(_totals(planted)[1])


def test_unknown_breakdown_or_group_is_a_config_error(stats_store):
    with pytest.raises(ConfigError, match="agent"):
        compute_stats(stats_store, by="no_such_attribute")
    with pytest.raises(ConfigError):
        compute_stats(stats_store, group="colour")


def test_exports_open_with_pandas_and_pyarrow(stats_store, tmp_path):
    df = compute_stats(stats_store, by="site")
    csv_path = export_stats(df, tmp_path / "s.csv")
    json_path = export_stats(df, tmp_path / "s.json")
    parquet_path = export_stats(df, tmp_path / "out.bin", "parquet")
    from_csv = pd.read_csv(csv_path)
    from_json = pd.DataFrame(json.loads(json_path.read_text()))
    from_parquet = pd.read_parquet(parquet_path)
    table = pq.read_table(parquet_path)
    for other in (from_csv, from_json, from_parquet):
        assert list(other.columns) == list(df.columns)
        np.testing.assert_allclose(other["degraded_s"], df["degraded_s"])
        assert other["label"].tolist() == df["label"].tolist()
    assert table.num_rows == len(df)
    assert json.loads(table.schema.metadata[b"degsearch.totals"])["segments"] == df.attrs["totals"]["segments"]
    with pytest.raises(ConfigError, match="format"):
        export_stats(df, tmp_path / "s.xlsx")


def test_plots_write_png_files(stats_store, tmp_path):
    bars = plot_stats(stats_store, tmp_path / "dist.png")
    scatter = plot_map(stats_store, tmp_path / "map.png", max_points=50)
    for path in (bars, scatter):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_command_prints_a_readable_table_and_writes_csv(stats_planted, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    runner = CliRunner()
    store_dir = str(stats_planted.settings.store_dir)
    result = runner.invoke(app, ["stats", "--store-dir", store_dir, "--by", "site"])
    assert result.exit_code == 0, result.output
    assert "deg0" in result.output and "paris" in result.output and "recordings" in result.output
    out = tmp_path / "stats.csv"
    result = runner.invoke(app, ["stats", "--store-dir", store_dir, "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["segments"].sum() == len(stats_planted.segments)
    result = runner.invoke(app, ["search", "--store-dir", store_dir, "--like-segment", str(stats_planted.segments[0]["id"]),
                                 "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert len(lines) == 3 and lines[0]["segment_id"] == stats_planted.segments[0]["id"]
