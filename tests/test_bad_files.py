"""A corpus with every bad-file kind: the batch finishes, good files are indexed, bad ones recorded."""

from __future__ import annotations

import pytest

from indexer.pipeline import index_archive, iter_failures
from tests.audio_factory import bad_corpus

# What the recorded error must say for each bad kind.
EXPECTED_ERRORS = {
    "corrupt": "not a recognised audio format",
    "corrupt_stream": "",
    "empty": "empty (0 bytes)",
    "zero_length": "no audio samples",
    "nan_samples": "NaN/inf",
    "inf_samples": "NaN/inf",
    "not_audio": "not a recognised audio format",
    "unsupported_codec": "unsupported codec",
    "too_short": "too short",
    "channels_12": "12 channels",
    "unreadable": "permission denied",
}


@pytest.fixture
def corpus(tmp_path):
    return bad_corpus(tmp_path / "corpus", long_s=150.0)


def test_bad_corpus_finishes_with_good_files_indexed_and_bad_ones_recorded(indexer_settings, corpus):
    from sqlalchemy import select

    from retrieval.models import Recording
    from retrieval.store import Store

    good = {name: str(p) for name, (p, ok) in corpus.items() if ok}
    bad = {name: str(p) for name, (p, ok) in corpus.items() if not ok}
    summary = index_archive([str(p) for p, _ in corpus.values()], indexer_settings, progress=False)
    assert summary.status == "done"
    assert (summary.indexed, summary.failed) == (len(good), len(bad))
    assert {f.path for f in summary.failures} == set(bad.values())
    store = Store.open(indexer_settings, readonly=True)
    try:
        with store.session() as session:
            rows = {r.path: r for r in session.scalars(select(Recording)).all()}
            for name, path in good.items():
                assert rows[path].status == "done", f"{name}: {rows[path].error}"
            for name, path in bad.items():
                assert rows[path].status == "failed", name
                assert EXPECTED_ERRORS[name] in rows[path].error, (name, rows[path].error)
                assert rows[path].error_stage == "decode"
            assert rows[good["channels_8"]].channels == 8
            assert rows[good["channels_8"]].analysed_s == pytest.approx(8 * 1.5, abs=0.05)
            assert rows[good["wb_96k"]].sample_rate == 96000
            assert rows[good["bit8"]].sample_rate == 8000
            assert rows[good["long"]].duration_s == pytest.approx(150.0, abs=0.01)
            assert rows[good["wrong_extension"]].channels == 2
        assert sorted(p for p, _, _ in iter_failures(store)) == sorted(bad.values())
    finally:
        store.close()


def test_failed_files_are_skipped_until_retry_failed(indexer_settings, corpus):
    bad = [str(p) for p, ok in corpus.values() if not ok]
    inputs = bad[:3]
    first = index_archive(inputs, indexer_settings, progress=False)
    assert first.failed == 3
    again = index_archive(inputs, indexer_settings, progress=False)
    assert (again.failed, again.skipped, sorted(again.previously_failed)) == (0, 3, sorted(inputs))
    retried = index_archive(inputs, indexer_settings, retry_failed=True, progress=False)
    assert (retried.failed, retried.skipped) == (3, 0)


def test_fixed_file_is_indexed_on_the_next_run(indexer_settings, corpus, tmp_path):
    from tests.audio_factory import call_signal, write_audio

    path, _ = corpus["corrupt"]
    assert index_archive([str(path)], indexer_settings, progress=False).failed == 1
    write_audio(path, call_signal(2.0), 8000)  # the file was re-exported: new content, new hash
    assert index_archive([str(path)], indexer_settings, progress=False).indexed == 1
