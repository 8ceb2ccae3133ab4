"""Training loop, validation EER and calibration on tiny synthetic shards."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from indexer.errors import ConfigError, ModelError
from indexer.model import MARGIN_FRAMES, FrameModel, load_model
from indexer.model.checkpoint import build_untrained_checkpoint, file_model_id, network_from_checkpoint, read_checkpoint
from indexer.model.network import FrameNetwork, NetworkConfig
from indexer.training.combine import combine
from indexer.training.frozen import decode_clips, encode_clips
from indexer.training.shards import band_limit_narrowband, load_shards, load_speaker_groups
from indexer.training.train import (PRESETS, TrainConfig, _segment_prototype_accuracy, balanced_batch, class_weight_at,
                                    example_classes, member_path, parse_member, parse_positive_ints, train, validate)

torch.set_num_threads(1)
SR, CLIP_S, FRAMES = 16000, 1.0, 50


def _voice(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    phase = 2 * np.pi * np.cumsum(rng.uniform(100, 200) + 20 * np.sin(2 * np.pi * 0.8 * t)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 10)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.1 * x).astype(np.float32)


def write_shards(out: Path, n: int, seed: int) -> None:
    """Partial mix-up in miniature: clean voices with one region clipped (class 1) or noisy (class 2)."""
    rng = np.random.default_rng(seed)
    audio = np.empty((n, int(CLIP_S * SR)), np.float32)
    labels = np.zeros((n, FRAMES), np.int16)
    for i in range(n):
        x = _voice(rng, audio.shape[1])
        cls = i % 3  # 0: fully clean example
        if cls:
            a = int(rng.integers(5, 30))
            b = a + int(rng.integers(10, 20))
            seg = slice(a * 320, b * 320)
            x[seg] = np.clip(x[seg] * 6, -0.1, 0.1) if cls == 1 else x[seg] + 0.1 * rng.standard_normal(b * 320 - a * 320)
            labels[i, a:b] = cls
        audio[i] = x
    frame_mos = np.where(labels == 0, 4.3, 2.0).astype(np.float32)
    out.mkdir(parents=True)
    np.savez(out / "shard_00000.npz", audio=audio, frame_labels=labels, frame_mos=frame_mos,
             utt_mos=frame_mos.mean(1), narrowband=np.arange(n) % 2 == 0, real=np.ones(n, bool))
    (out / "classes.json").write_text(json.dumps(["clean", "clipping", "noise_white"]))
    (out / "shard_00000.jsonl").write_text("".join(json.dumps({"group": f"voice{i % 4}"}) + "\n" for i in range(n)))


def write_shard_root(root: Path) -> Path:
    """A shards directory as `degsearch prepare-data` lays it out: training and both validation sets."""
    write_shards(root / "train", 24, 0)
    write_shards(root / "val_real", 12, 1)
    write_shards(root / "val_heldout_catalog", 12, 2)
    return root


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    return write_shard_root(tmp_path_factory.mktemp("shards"))


def test_narrowband_clips_lose_everything_above_4khz_and_wideband_clips_stay():
    t = np.arange(64000) / 16000
    clip = (np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    arrays = {"audio": np.stack([clip, clip]), "narrowband": np.array([True, False])}
    band_limit_narrowband(arrays)

    def band_db(x: np.ndarray, hz: int) -> float:
        spec = np.abs(np.fft.rfft(x[1000:-1000])) ** 2
        freqs = np.fft.rfftfreq(x.size - 2000, 1 / 16000)
        return 10 * np.log10(spec[np.abs(freqs - hz) < 50].sum() + 1e-12)

    narrow, wide = arrays["audio"]
    assert band_db(narrow, 6000) < band_db(clip, 6000) - 60
    assert abs(band_db(narrow, 1000) - band_db(clip, 1000)) < 0.5
    assert np.array_equal(wide, clip) and narrow.dtype == np.float32 and narrow.shape == clip.shape


def test_a_share_of_wideband_clips_is_band_limited_too_and_the_draw_follows_the_seed():
    t = np.arange(16000) / 16000
    clip = np.sin(2 * np.pi * 6000 * t).astype(np.float32)
    narrow = np.zeros(400, bool)
    narrow[:100] = True

    def limited(seed: int) -> np.ndarray:
        arrays = {"audio": np.tile(clip, (400, 1)), "narrowband": narrow.copy()}
        band_limit_narrowband(arrays, wideband_share=0.3, seed=seed)
        return np.abs(arrays["audio"][:, 4000:-4000]).max(axis=1) < 0.01

    picked = limited(0)
    assert picked[:100].all()
    assert 60 <= picked[100:].sum() <= 120  # about 30 % of the 300 wideband clips
    assert np.array_equal(picked, limited(0)) and not np.array_equal(picked, limited(1))


def test_a_recipe_reads_the_first_examples_of_the_shards_and_asks_for_more_when_short(shard_root):
    everything, classes = load_shards(shard_root / "train")
    first, _ = load_shards(shard_root / "train", max_examples=10)
    assert classes[0] == "clean" and len(everything["audio"]) == 24
    assert all(np.array_equal(first[k], everything[k][:10]) for k in everything)
    with pytest.raises(ConfigError, match="--shards 30"):
        load_shards(shard_root / "train", max_examples=30)
    with pytest.raises(ConfigError, match="narrowband"):
        load_shards(shard_root / "train", wideband_8khz_share=0.3)


def test_balanced_batch_gives_each_chosen_class_the_same_number_of_clips():
    labels = np.zeros((40, 10), np.int16)
    for i in range(40):
        labels[i, 3:6] = i % 5  # classes 0 (clean) .. 4, eight clips each
    labels[0, :] = 0
    classes = example_classes(labels)
    assert classes[1] == 1 and classes[0] == 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = balanced_batch(classes, 12, 4, rng)
        counts = np.unique(classes[idx], return_counts=True)[1]
        assert idx.size == 12 and counts.size == 4 and set(counts) == {3}
        assert np.unique(idx).size == 12  # a class with enough clips gives distinct clips
    rare = np.r_[np.ones(2, np.int64), np.full(10, 2)]
    assert np.sum(rare[balanced_batch(rare, 8, 2, rng)] == 1) == 4  # too few clips: drawn with replacement


def test_class_term_is_off_before_its_start_step_and_weighted_after():
    cfg = replace(PRESETS["default"], class_weight=0.5, class_from_step=100)
    assert class_weight_at(cfg, 0) == 0.0 and class_weight_at(cfg, 99) == 0.0
    assert class_weight_at(cfg, 100) == 0.5 and class_weight_at(cfg, 5000) == 0.5
    for name in PRESETS["default"].members:  # the shipped recipes: contrastive term alone for the first half
        member = PRESETS[parse_member(name)[0]]
        assert class_weight_at(member, 0) == 0.0 and class_weight_at(member, member.max_steps // 2) == 0.3
    region = replace(cfg, region_class_weight=0.2)  # the region term starts with the frame term
    assert class_weight_at(region, 99, region.region_class_weight) == 0.0
    assert class_weight_at(region, 100, region.region_class_weight) == 0.2


def test_network_lists_parse_into_one_block_or_layer_each_and_bad_ones_are_refused():
    dilations = parse_positive_ints("1, 2,4,8,16", "dilations", "1,2,4,8,16")
    channels = parse_positive_ints("32,48,96,96", "channels", "32,48,96,96")
    net = FrameNetwork(NetworkConfig(dilations=dilations, channels=channels))
    assert [block.conv.dilation[0] for block in net.temporal] == [1, 2, 4, 8, 16]
    assert [conv.out_channels for conv in net.encoder.convs if isinstance(conv, torch.nn.Conv2d)] == [32, 48, 96, 96]
    for bad in ("", "1,two", "1,0", "-2"):
        with pytest.raises(ConfigError, match="channels .* comma-separated, e.g. 32"):
            parse_positive_ints(bad, "channels", "32,48,96,96")


def test_validation_prototype_accuracy_separates_and_confuses_classes():
    rng = np.random.default_rng(0)
    labels = np.zeros((8, 20), np.int16)
    labels[:, 5:15] = np.arange(8)[:, None] % 2 + 1  # classes 1 and 2 alternate over the clips
    directions = np.eye(4, dtype=np.float32)
    emb = np.repeat(directions[None, None, 0], 8, 0).repeat(20, 1).copy()
    for i in range(8):
        emb[i, 5:15] = directions[labels[i, 5]] + 0.05 * rng.standard_normal(4)
    assert _segment_prototype_accuracy(emb, labels, q=2) == 100.0
    emb[:, 5:15] = directions[3]  # every region looks the same: the first prototype (class 1) wins
    assert _segment_prototype_accuracy(emb, labels, q=2) == 50.0


def test_validation_reports_each_channel_beside_the_pooled_frame_eer():
    rng = np.random.default_rng(0)
    n, frames = 16, 20
    labels = np.zeros((n, frames), np.int16)
    labels[:, 10:] = 1
    narrow = np.arange(n) % 2 == 1
    clean, degraded = np.eye(4, dtype=np.float32)[:2]
    emb = np.repeat(clean[None, None], n, 0).repeat(frames, 1) + 0.01 * rng.standard_normal((n, frames, 4)).astype(np.float32)
    emb[~narrow, 10:] = degraded  # wideband degradations stand out; narrowband ones look clean
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    sets = {"val_real": {"audio": np.zeros((n, 1)), "frame_labels": labels, "narrowband": narrow}}
    figures = validate(lambda _name, idx: emb[idx], sets)
    assert figures["eer_val_real_wideband"] == 0.0
    assert figures["eer_val_real_narrowband"] > 30.0
    assert figures["eer_val_real_wideband"] < figures["eer_val_real"] < figures["eer_val_real_narrowband"]
    assert figures["selection"] == np.mean([figures["eer_val_real"], 100.0 - figures["proto_val_real"]])


def test_train_writes_a_calibrated_loadable_checkpoint_and_resumes(shard_root, tmp_path):
    cfg = replace(PRESETS["smoke"], minutes=5.0, max_steps=2, threads=1, eval_every=2, batch_size=4, contrast_frames=64,
                  network={"channels": [8, 8, 8, 8], "hidden": 32, "dilations": [1, 2]})
    out = tmp_path / "m.pt"
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    summary = train(shard_root, out, cfg, console=console)
    assert summary["steps"] >= 1 and 0.0 <= summary["best_val_error"] <= 100.0
    model = load_model(str(out))
    assert model.model_id == summary["model_id"]
    assert set(model.enrollments) == {"wideband", "narrowband"}
    assert np.allclose([np.linalg.norm(v) for v in model.enrollments.values()], 1.0, atol=1e-5)
    meta = read_checkpoint(out)["meta"]
    assert meta["classes"] == ["clean", "clipping", "noise_white"]
    assert meta["recipe"]["train_config"]["seed"] == 0
    assert meta["history"] and {"eer_val_real", "eer_val_heldout_catalog", "proto_val_real", "selection"} <= set(meta["history"][0])
    assert {"frame_eer_val_real", "frame_eer_val_heldout_catalog"} <= set(meta["validation"])
    assert model.embed(np.zeros(SR // 2, np.float32)).embeddings.shape == (25, 64)

    steps = summary["steps"]
    again = train(shard_root, out, replace(cfg, max_steps=3), resume=True, console=console)
    console.file.close()
    assert steps == 2 and again["steps"] == 3
    assert f"resumed at step {steps}" in (tmp_path / "log.txt").read_text()


def test_train_with_ema_validates_and_saves_the_averaged_weights_and_resumes_them(shard_root, tmp_path):
    cfg = replace(PRESETS["smoke"], minutes=5.0, max_steps=2, threads=1, eval_every=2, batch_size=4, contrast_frames=64,
                  ema_decay=0.5, network={"channels": [8, 8, 8, 8], "hidden": 32, "dilations": [1, 2]})
    out = tmp_path / "m.pt"
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    train(shard_root, out, cfg, console=console)
    state = torch.load(out.with_suffix(".state.pt"), weights_only=False)
    assert int(state["ema"]["n_averaged"]) == 2
    saved = network_from_checkpoint(read_checkpoint(out.with_suffix(".best.pt"))).state_dict()
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    name = next(k for k in saved if k.endswith("weight") and saved[k].ndim > 1)
    assert torch.allclose(saved[name], averaged[name]) and not torch.allclose(saved[name], state["net"][name])
    train(shard_root, out, replace(cfg, max_steps=3), resume=True, console=console)
    console.file.close()
    assert int(torch.load(out.with_suffix(".state.pt"), weights_only=False)["ema"]["n_averaged"]) == 3


def test_fine_tuning_starts_from_the_given_networks_weights_and_refuses_another_architecture(shard_root, tmp_path):
    tiny = {"channels": [8, 8, 8, 8], "hidden": 32, "dilations": [1, 2]}
    cfg = replace(PRESETS["smoke"], minutes=5.0, max_steps=2, threads=1, eval_every=2, batch_size=4, contrast_frames=64, network=tiny)
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    base, tuned = tmp_path / "base.pt", tmp_path / "tuned.pt"
    train(shard_root, base, cfg, console=console)
    # At learning rate 0 the run keeps the weights it started from; another seed would start elsewhere.
    train(shard_root, tuned, replace(cfg, init_from=str(base), lr=0.0, max_steps=1, eval_every=1, seed=1), console=console)
    before = network_from_checkpoint(read_checkpoint(base)).state_dict()
    after = network_from_checkpoint(read_checkpoint(tuned)).state_dict()
    weights = [k for k in before if k.endswith("weight") and before[k].ndim > 1]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)
    assert read_checkpoint(tuned)["meta"]["recipe"]["train_config"]["init_from"] == str(base)
    with pytest.raises(ModelError, match="differs from this recipe's in dilations"):
        train(shard_root, tmp_path / "other.pt", replace(cfg, init_from=str(base), network={**tiny, "dilations": [1, 2, 4]}),
              console=console)
    console.file.close()


def test_train_command_applies_its_network_width_context_front_end_batch_and_temperature_flags(shard_root, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    out = tmp_path / "m.pt"
    args = ["train", "--preset", "smoke", "--data", str(shard_root), "--out", str(out), "--max-steps", "1", "--threads", "1",
            "--batch-size", "6", "--tau", "0.2", "--n-mels", "96", "--n-fft", "800",
            "--channels", "8,8,8,8", "--hidden", "32", "--dilations", "1,2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    recipe = read_checkpoint(out)["meta"]["recipe"]["train_config"]
    network = recipe["network"]
    assert (recipe["batch_size"], recipe["tau"]) == (6, 0.2)
    assert (network["channels"], network["hidden"], network["dilations"]) == ([8, 8, 8, 8], 32, [1, 2])
    assert (network["n_mels"], network["n_fft"]) == (96, 800)
    assert load_model(str(out)).embed(np.zeros(SR // 2, np.float32)).embeddings.shape == (25, 64)
    refused = CliRunner().invoke(app, args[:-6] + ["--channels", "8,0"])
    assert isinstance(refused.exception, ConfigError) and "channels '8,0'" in str(refused.exception)
    too_big = CliRunner().invoke(app, args[:-6] + ["--batch-size", "1000"])
    assert isinstance(too_big.exception, ConfigError) and "larger than the 24 training examples" in str(too_big.exception)


def test_frozen_encoder_features_cached_once_score_what_the_model_embeds(tmp_path):
    """The accurate recipe's cache: embeddings decoded from cached distillmos features equal the
    shipped model's own embed(), and a second run reads the cache instead of encoding again."""
    torch.manual_seed(0)
    net = FrameNetwork(NetworkConfig(encoder="distillmos", hidden=32, dilations=[1, 2])).eval()
    audio = np.stack([_voice(np.random.default_rng(i), SR) for i in range(3)])
    cached = decode_clips(net, encode_clips(net, audio, MARGIN_FRAMES), MARGIN_FRAMES)
    model = FrameModel(net, model_id="t", name="t", threshold=0.0, enrollments={})
    direct = np.stack([model.embed(a).embeddings for a in audio])
    assert cached.shape == direct.shape == (3, FRAMES, 64)
    assert np.abs(cached - direct).max() < 1e-3  # float16 features

    root = tmp_path / "shards"
    for name in ("train", "val_real", "val_heldout_catalog"):
        write_shards(root / name, 6, len(name))
    cfg = replace(PRESETS["smoke"], encoder="distillmos", minutes=5.0, max_steps=2, freeze_encoder_steps=2, cache_frozen=True,
                  frozen_feature_dropout=0.1, threads=1, eval_every=2, batch_size=4, contrast_frames=64,
                  network={"hidden": 32, "dilations": [1, 2]})
    log = tmp_path / "log.txt"
    for run in ("a", "b"):
        with open(log, "a") as f:
            summary = train(root, tmp_path / f"{run}.pt", cfg, console=Console(file=f, width=300))
        assert summary["steps"] == 2 and load_model(str(tmp_path / f"{run}.pt")).embed(audio[0]).embeddings.shape == (FRAMES, 64)
    assert len(list((root / "train").glob("encoded-*.npy"))) == 1
    text = log.read_text()
    assert text.count("features computing") == 3 and text.count("features from") == 3


def test_an_ensemble_recipe_trains_each_member_then_joins_them_calibrated_and_resumes(shard_root, tmp_path, monkeypatch):
    tiny = replace(PRESETS["smoke"], minutes=5.0, max_steps=2, threads=1, eval_every=2, batch_size=4, contrast_frames=64,
                   network={"channels": [8, 8, 8, 8], "hidden": 32, "dilations": [1, 2]})
    monkeypatch.setitem(PRESETS, "tiny", tiny)
    monkeypatch.setitem(PRESETS, "tiny_long", replace(tiny, network={**tiny.network, "dilations": [1, 2, 4]}))
    out = tmp_path / "ens.pt"
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    summary = train(shard_root, out, TrainConfig(members=["tiny", "tiny_long"], seed=3, threads=1), console=console)
    members = [member_path(out, "tiny"), member_path(out, "tiny_long")]
    assert summary["members"] == [file_model_id(p) for p in members]
    assert [read_checkpoint(p)["meta"]["recipe"]["train_config"]["seed"] for p in members] == [3, 3]
    model = load_model(str(out))
    assert model.model_id == summary["model_id"] and model.dim == 128
    assert set(model.enrollments) == {"wideband", "narrowband"} and model.enrollments["wideband"].shape == (128,)
    assert {"frame_eer_val_real", "frame_eer_val_heldout_catalog"} <= set(read_checkpoint(out)["meta"]["validation"])
    assert model.embed(np.zeros(SR // 2, np.float32)).embeddings.shape == (25, 128)

    train(shard_root, out, TrainConfig(members=["tiny", "tiny_long"], seed=3, threads=1), resume=True, console=console)
    console.file.close()
    assert [file_model_id(p) for p in members] == summary["members"]  # finished members are kept, not retrained
    assert (tmp_path / "log.txt").read_text().count("kept") == 2


def test_an_ensemble_member_spec_with_at_n_trains_the_same_preset_with_the_seed_moved_by_n(shard_root, tmp_path, monkeypatch):
    tiny = replace(PRESETS["smoke"], minutes=5.0, max_steps=2, threads=1, eval_every=2, batch_size=4, contrast_frames=64,
                   network={"channels": [8, 8, 8, 8], "hidden": 32, "dilations": [1, 2]})
    monkeypatch.setitem(PRESETS, "tiny", tiny)
    assert parse_member("tiny") == ("tiny", 0) and parse_member("tiny@2") == ("tiny", 2)
    for bad in ("tiny@", "tiny@x", "tiny@-1", "nosuch@1"):
        with pytest.raises(ConfigError, match="ensemble member"):
            parse_member(bad)
    out = tmp_path / "seeds.pt"
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    summary = train(shard_root, out, TrainConfig(members=["tiny", "tiny@1"], seed=3, threads=1), console=console)
    console.file.close()
    members = [member_path(out, "tiny"), member_path(out, "tiny@1")]
    assert [read_checkpoint(p)["meta"]["recipe"]["train_config"]["seed"] for p in members] == [3, 4]
    assert summary["members"] == [file_model_id(p) for p in members] and len(set(summary["members"])) == 2


def test_an_ensemble_recipe_with_a_distilled_member_builds_its_teacher_first_and_trains_each_network_once(shard_root, tmp_path, monkeypatch):
    tiny = replace(PRESETS["smoke"], minutes=5.0, max_steps=2, threads=1, eval_every=2, batch_size=4, contrast_frames=64,
                   network={"channels": [8, 8, 8, 8], "hidden": 32, "dilations": [1, 2]})
    monkeypatch.setitem(PRESETS, "tiny", tiny)
    monkeypatch.setitem(PRESETS, "tiny_long", replace(tiny, network={**tiny.network, "dilations": [1, 2, 4]}))
    monkeypatch.setitem(PRESETS, "tiny_pair", TrainConfig(members=["tiny", "tiny_long"]))
    monkeypatch.setitem(PRESETS, "tiny_student", replace(tiny, distill_from="tiny_pair"))
    out = tmp_path / "chain.pt"
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    summary = train(shard_root, out, TrainConfig(members=["tiny_student", "tiny_long"], threads=1), console=console)
    console.file.close()
    log = (tmp_path / "log.txt").read_text()
    assert log.count("tiny_long: training") == 1  # the teacher's member is the ensemble's member too
    assert log.index("tiny_pair: combining") < log.index("tiny_student: training")
    student = read_checkpoint(member_path(out, "tiny_student"))["meta"]["recipe"]["train_config"]
    assert student["distill_from"] == str(member_path(out, "tiny_pair"))  # the teacher just built, not a shipped one
    assert summary["members"] == [file_model_id(member_path(out, "tiny_student")), file_model_id(member_path(out, "tiny_long"))]


def test_combine_takes_an_ensemble_as_its_networks_and_an_ensemble_recipe_takes_no_recipe_flags(shard_root, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    for seed in (0, 1):
        build_untrained_checkpoint(tmp_path / f"m{seed}.pt", seed=seed)
    pair = combine([tmp_path / "m0.pt", tmp_path / "m1.pt"], shard_root, tmp_path / "pair.pt")
    assert read_checkpoint(tmp_path / "pair.pt")["meta"]["recipe"]["ensemble_of"][1]["model_id"] == pair["members"][1]
    triple_summary = combine([tmp_path / "pair.pt", tmp_path / "m0.pt"], shard_root, tmp_path / "triple.pt")
    assert triple_summary["members"] == [*pair["members"], pair["members"][0]]  # the recipe lists networks, not files
    triple, m0 = load_model(str(tmp_path / "triple.pt")), load_model(str(tmp_path / "m0.pt"))
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert triple.dim == 3 * m0.dim  # pair's two networks and m0
    np.testing.assert_allclose(triple.embed(x).embeddings[:, :m0.dim] * np.sqrt(3), m0.embed(x).embeddings, atol=1e-5)
    with pytest.raises(ModelError, match="at least two"):
        combine([tmp_path / "m0.pt"], shard_root, tmp_path / "single.pt")
    refused = CliRunner().invoke(app, ["train", "--preset", "default", "--data", str(shard_root), "--out", str(tmp_path / "d.pt"),
                                       "--max-steps", "5"])
    assert isinstance(refused.exception, ConfigError) and "takes no max_steps" in str(refused.exception)


def test_a_type_head_is_fitted_on_the_training_frames_appended_to_the_embedding_and_saved(shard_root, tmp_path):
    from typer.testing import CliRunner

    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from api.cli import app
    from indexer.training.type_head import hidden_frames

    for seed in (0, 1):
        build_untrained_checkpoint(tmp_path / f"m{seed}.pt", seed=seed)
    result = CliRunner().invoke(app, ["combine", str(tmp_path / "typed.pt"), str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt"),
                                      "--data", str(shard_root), "--type-head", "1.0"])
    assert result.exit_code == 0, result.output
    typed = load_model(str(tmp_path / "typed.pt"))
    combine([tmp_path / "m0.pt", tmp_path / "m1.pt"], shard_root, tmp_path / "plain.pt")
    plain = load_model(str(tmp_path / "plain.pt"))
    arrays, classes = load_shards(shard_root / "train")
    present = np.unique(arrays["frame_labels"]).size
    recipe = typed.meta["recipe"]["type_head"]
    assert recipe["weight"] == 1.0 and recipe["directions"] == present - 1 and recipe["examples"] == len(arrays["audio"])
    assert typed.dim == plain.dim + present - 1
    x = arrays["audio"][0]
    emb, base = typed.embed(x).embeddings, plain.embed(x).embeddings
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the members' part is the plain ensemble's embedding, scaled so the whole stays unit length
    np.testing.assert_allclose(emb[:, :plain.dim] * np.sqrt(2), base, atol=1e-5)
    assert np.allclose(np.linalg.norm(emb[:, plain.dim:], axis=1) * np.sqrt(2), 1.0, atol=1e-5)
    # the head is the LDA of every 4th training frame's hidden features (both members') and their squares, by class
    net = network_from_checkpoint(read_checkpoint(tmp_path / "typed.pt"))
    hidden, labels = hidden_frames(net, arrays["audio"], arrays["frame_labels"])
    assert hidden.shape == (arrays["frame_labels"].size // 4, 2 * net.members[0].cfg.hidden) and labels.size == len(hidden)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(np.hstack([hidden, hidden ** 2]), labels)
    np.testing.assert_allclose(net.type_head.weight.detach().numpy(), lda.scalings_[:, :present - 1].T, rtol=1e-3, atol=1e-5)
    assert set(typed.enrollments) == {"wideband", "narrowband"}
    with pytest.raises(ConfigError, match="negative"):
        combine([tmp_path / "m0.pt", tmp_path / "m1.pt"], shard_root, tmp_path / "bad.pt", type_head=-1.0)


def test_train_distils_a_teacher_model_into_the_student_and_records_the_term(shard_root, tmp_path):
    build_untrained_checkpoint(tmp_path / "teacher.pt", seed=5)
    cfg = replace(PRESETS["smoke"], minutes=5.0, max_steps=2, threads=1, eval_every=2, batch_size=4, contrast_frames=64,
                  distill_from=str(tmp_path / "teacher.pt"), network={"channels": [8, 8, 8, 8], "hidden": 32, "dilations": [1, 2]})
    console = Console(file=open(tmp_path / "log.txt", "w"), width=200)
    train(shard_root, tmp_path / "student.pt", cfg, console=console)
    console.file.close()
    history = read_checkpoint(tmp_path / "student.pt")["meta"]["history"]
    assert history[-1]["distill"] > 0
    assert "24 clips embedded" in (tmp_path / "log.txt").read_text()


def test_speaker_groups_follow_the_shards_example_order(shard_root):
    groups, names = load_speaker_groups(shard_root / "train", 10)
    assert names == ["voice0", "voice1", "voice2", "voice3"]
    assert groups.tolist() == [i % 4 for i in range(10)]
    with pytest.raises(ConfigError, match="24 examples"):
        load_speaker_groups(shard_root / "train", 25)


def test_train_command_weights_the_detection_and_speaker_terms_warps_and_mixes_the_input_and_records_them(shard_root, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    out = tmp_path / "m.pt"
    args = ["train", "--preset", "smoke", "--data", str(shard_root), "--out", str(out), "--max-steps", "2", "--threads", "1",
            "--channels", "8,8,8,8", "--hidden", "32", "--dilations", "1,2", "--detect-weight", "0.5",
            "--speaker-adversarial", "0.2", "--vtlp-warp", "0.05", "--freq-mixstyle", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    meta = read_checkpoint(out)["meta"]
    recipe = meta["recipe"]["train_config"]
    assert (recipe["detect_weight"], recipe["speaker_adversarial"], recipe["vtlp_warp"], recipe["freq_mixstyle"]) == (0.5, 0.2, 0.05, 0.5)
    assert meta["history"][-1]["detect_rank"] > 0 and meta["history"][-1]["speaker_ce"] > 0
    assert "speaker_head" in torch.load(out.with_suffix(".state.pt"), weights_only=False)  # --resume goes on with it


def test_train_command_real_only_drops_the_tts_clips_and_keeps_the_speaker_term_aligned(tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    root = write_shard_root(tmp_path / "shards")
    shard = root / "train" / "shard_00000.npz"
    arrays = dict(np.load(shard))
    arrays["real"] = np.arange(24) % 3 != 0  # 16 real clips, 8 TTS ones
    np.savez(shard, **arrays)
    out = tmp_path / "m.pt"
    args = ["train", "--preset", "smoke", "--data", str(root), "--out", str(out), "--max-steps", "2", "--threads", "1",
            "--channels", "8,8,8,8", "--hidden", "32", "--dilations", "1,2", "--batch-size", "8", "--real-only"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    recipe = read_checkpoint(out)["meta"]["recipe"]
    assert recipe["train_config"]["real_only"] is True and recipe["train_examples"] == 16

    result = CliRunner().invoke(app, args + ["--speaker-adversarial", "0.2"])  # the speaker groups are filtered alike
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert read_checkpoint(out)["meta"]["history"][-1]["speaker_ce"] > 0


def test_a_real_speaker_share_keeps_every_tts_clip_and_the_real_clips_of_a_seeded_half_of_the_groups():
    from dataclasses import replace

    from indexer.training.train import PRESETS, training_clip_mask

    real = np.array([True] * 8 + [False] * 4)
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])  # four real speakers, two TTS voices
    cfg = replace(PRESETS["smoke"], real_share=0.5)
    keep = training_clip_mask({"real": real}, groups, cfg)
    assert keep[8:].all()  # every TTS clip
    assert len(set(groups[:8][keep[:8]])) == 2 and keep[:8].sum() == 4  # two whole speakers of four
    assert np.array_equal(keep, training_clip_mask({"real": real}, groups, cfg))  # the same draw again
    other = [training_clip_mask({"real": real}, groups, replace(cfg, seed=s)) for s in range(1, 6)]
    assert any(not np.array_equal(keep, k) for k in other)  # the seed picks the speakers
    both = training_clip_mask({"real": real}, groups, replace(cfg, real_only=True))
    assert not both[8:].any() and both[:8].sum() == 4
    assert training_clip_mask({"real": real}, None, PRESETS["smoke"]).all()


def test_a_real_clip_share_keeps_that_many_real_clips_from_every_speaker():
    from dataclasses import replace

    from indexer.training.train import PRESETS, training_clip_mask

    real = np.array([True] * 40 + [False] * 4)
    groups = np.repeat(np.arange(11), 4)
    cfg = replace(PRESETS["smoke"], real_share=0.5, real_share_by="clip")
    keep = training_clip_mask({"real": real}, None, cfg)
    assert keep[40:].all() and keep[:40].sum() == 20
    assert len(set(groups[:40][keep[:40]])) > 5  # drawn across speakers, not whole speakers
    with pytest.raises(ConfigError, match="unknown real_share_by"):
        training_clip_mask({"real": real}, None, replace(cfg, real_share_by="voice"))


def test_train_command_trains_on_a_share_of_the_real_speakers_and_records_it(tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    root = write_shard_root(tmp_path / "shards")
    # Four voices, each with narrowband and wideband clips, so any two leave both enrollments.
    (root / "train" / "shard_00000.jsonl").write_text("".join(json.dumps({"group": f"voice{(i // 2) % 4}"}) + "\n" for i in range(24)))
    out = tmp_path / "m.pt"
    args = ["train", "--preset", "smoke", "--data", str(root), "--out", str(out), "--max-steps", "2", "--threads", "1",
            "--channels", "8,8,8,8", "--hidden", "32", "--dilations", "1,2", "--batch-size", "8", "--real-share", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    recipe = read_checkpoint(out)["meta"]["recipe"]
    assert recipe["train_config"]["real_share"] == 0.5 and recipe["train_examples"] == 12  # 2 of 4 voices


def test_calibration_without_clips_of_one_bandwidth_says_which_is_missing():
    from indexer.training.calibrate import calibrate

    train = {"narrowband": np.ones(4, bool)}
    with pytest.raises(ConfigError, match="no wideband clips"):
        calibrate(None, train, {}, embed=lambda name, rows: np.zeros((len(rows), 5, 4), np.float32))
