"""Frame model: output shapes and frame timing, edge inputs, checkpoints and encoders, offline."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

from indexer.errors import ModelError
from indexer.model import FrameModel, load_model
from indexer.model.checkpoint import build_untrained_checkpoint, file_model_id, network_from_checkpoint, read_checkpoint, save_checkpoint
from indexer.model.network import FRAME_HOP, DistillMOSFrontEnd, FrameNetwork, NetworkConfig, distillmos_cnn_state, fold_batchnorm
from indexer.training.train import PRESETS, parse_member

torch.set_num_threads(1)
SR = 16000


def voice(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A speech-like harmonic signal with a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(130 + 25 * np.sin(2 * np.pi * 0.6 * t)) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 10)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.1 * x + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    build_untrained_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="module")
def model(checkpoint) -> FrameModel:
    return load_model(str(checkpoint))


@pytest.mark.parametrize("n_samples", [1600, 1601, 16000, 64000, 64321])
def test_frames_cover_the_input_at_50_hz(model, n_samples):
    out = model.embed(voice(n_samples / SR)[:n_samples] if n_samples <= 64000 else np.resize(voice(4.1), n_samples))
    assert out.embeddings.shape == (math.ceil(n_samples / FRAME_HOP), 64)
    assert out.mos.shape == (out.embeddings.shape[0],)
    assert out.hop_s == pytest.approx(0.02) and model.frame_rate == 50.0
    assert np.allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    assert ((out.mos >= 1.0) & (out.mos <= 5.0)).all()


def test_long_input_windows_stitch_to_the_unwindowed_result(model):
    # 45 s spans three 20 s windows; the 1 s margins exceed the receptive field, so stitching is exact.
    x = np.resize(voice(3.3, seed=1), 45 * SR - 77)
    out = model.embed(x)
    t = math.ceil(x.size / FRAME_HOP)
    assert out.embeddings.shape[0] == t
    margin = 50 * FRAME_HOP
    padded = np.pad(x, (margin, t * FRAME_HOP - x.size + margin))
    with torch.inference_mode():
        ref = model.network(torch.from_numpy(padded)[None])
    np.testing.assert_allclose(out.embeddings, ref["emb"][0, 50 : 50 + t].numpy(), atol=2e-4)
    np.testing.assert_allclose(out.mos, ref["mos"][0, 50 : 50 + t].numpy(), atol=2e-4)


def test_silence_gives_finite_frames(model):
    out = model.embed(np.zeros(SR, dtype=np.float32))
    assert out.embeddings.shape == (50, 64)
    assert np.isfinite(out.embeddings).all() and np.isfinite(out.mos).all()


def test_shortest_input_is_0_1_s_and_shorter_is_a_model_error(model):
    assert model.embed(voice(0.1)).embeddings.shape == (5, 64)
    with pytest.raises(ModelError, match="shorter than 0.1 s"):
        model.embed(voice(0.05))


def test_bad_inputs_are_model_errors(model):
    with pytest.raises(ModelError, match="mono"):
        model.embed(np.zeros((2, SR), dtype=np.float32))
    bad = voice(1.0)
    bad[100] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        model.embed(bad)


def test_8_khz_speech_resampled_to_16_khz_is_embedded(model, tmp_path):
    import soundfile as sf

    from indexer.audio import load_audio

    path = tmp_path / "nb.wav"
    sf.write(path, voice(2.0, sr=8000), 8000, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.sr == 16000 and audio.orig_sr == 8000
    samples = audio.samples[0]  # (channels, n)
    out = model.embed(samples.astype(np.float32))
    assert out.embeddings.shape[0] == math.ceil(samples.shape[0] / FRAME_HOP)
    assert np.isfinite(out.embeddings).all()
    assert model.enrollment_for(8000).shape == (64,)


def test_checkpoint_carries_calibration_and_id(checkpoint, model):
    meta = read_checkpoint(checkpoint)["meta"]
    assert meta["frame_rate"] == 50.0 and meta["dim"] == 64
    assert set(meta["enrollments"]) == {"wideband", "narrowband"}
    assert {"threshold", "classes", "recipe"} <= set(meta)
    assert model.model_id == file_model_id(checkpoint) and len(model.model_id) == 16
    assert model.threshold == pytest.approx(meta["threshold"])
    # Same seed, same network and enrollments.
    build_untrained_checkpoint(checkpoint.parent / "again.pt", seed=0)
    again = load_model(str(checkpoint.parent / "again.pt"))
    x = voice(1.0)
    np.testing.assert_allclose(again.embed(x).embeddings, model.embed(x).embeddings, atol=1e-6)


def test_missing_shipped_model_says_how_to_train(monkeypatch, tmp_path):
    import indexer.model as m

    monkeypatch.setitem(m.SHIPPED, "fast", tmp_path / "absent.pt")
    with pytest.raises(ModelError) as err:
        load_model("fast")
    assert "degsearch train" in str(err.value)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_model(str(tmp_path / "junk.pt"))


@pytest.fixture
def network_off(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_checkpoint_and_distillmos_front_end_load_with_network_off(network_off, checkpoint, tmp_path):
    assert load_model(str(checkpoint)).embed(voice(0.5)).embeddings.shape == (25, 64)
    front = DistillMOSFrontEnd(load_weights=True)
    state = distillmos_cnn_state()
    assert len(state) == 12  # six Conv2d layers, weight + bias
    for key, value in front.cnn.state_dict().items():
        assert torch.equal(value, state[key])
    with torch.inference_mode():
        feats = front(torch.from_numpy(voice(1.0))[None])
    assert feats.shape[0] == 1 and feats.shape[1] == front.out_channels
    assert abs(feats.shape[2] - 50) <= 1  # 100 Hz STFT, time stride 2 in the last layer
    # A distillmos-encoder checkpoint round trip keeps the pretrained weights without re-reading them.
    torch.manual_seed(0)
    net = FrameNetwork(NetworkConfig(encoder="distillmos", hidden=32, dilations=[1, 2])).eval()
    save_checkpoint(tmp_path / "acc.pt", net, {"name": "acc", "threshold": 0.3,
                                               "enrollments": {"wideband": np.eye(64)[0], "narrowband": np.eye(64)[1]}})
    acc = load_model(str(tmp_path / "acc.pt"))
    out = acc.embed(voice(0.7))
    assert out.embeddings.shape == (35, 64) and np.isfinite(out.mos).all()


def assert_trained_by(recipe: dict, preset_name: str) -> None:
    """A checkpoint's ``meta["recipe"]`` (or an ensemble member's) is the preset's recipe."""
    config, preset = recipe["train_config"], PRESETS[preset_name]
    assert config.get("narrowband_8khz", False) is preset.narrowband_8khz, preset_name
    assert config.get("wideband_8khz_share", 0.0) == preset.wideband_8khz_share, preset_name
    assert (config["max_steps"], config["class_weight"]) == (preset.max_steps, preset.class_weight), preset_name
    assert config.get("network", {}) == preset.network, preset_name  # e.g. the telephone model's fifth temporal block
    assert recipe["train_examples"] == preset.train_examples, preset_name
    assert config.get("distill_from", "") == preset.distill_from, preset_name  # distilled: the balanced ensemble's cosines


@pytest.mark.parametrize("name", ["fast", "telephone", "distilled", "telephone-3"])
def test_shipped_models_load_with_network_off_and_carry_their_recipe(network_off, name):
    model = load_model(name)
    assert model.name == name and model.embed(voice(0.5)).embeddings.shape == (25, 64)
    assert set(model.enrollments) == {"wideband", "narrowband"} and 0 < model.threshold < 2
    assert_trained_by(model.meta["recipe"], name)


def test_hf_encoder_from_a_saved_tiny_random_wav2vec2(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    cfg = NetworkConfig(encoder=f"hf:{tmp_path / 'w2v'}", hidden=32, dilations=[1, 2])
    net = FrameNetwork(cfg).eval()
    with torch.inference_mode():
        out = net(torch.from_numpy(voice(1.0))[None])
    assert out["emb"].shape == (1, 50, 64) and out["proj"].shape == (1, 50, 128) and out["mos"].shape == (1, 50)
    save_checkpoint(tmp_path / "hf.pt", net, {"name": "hf", "threshold": 0.2,
                                              "enrollments": {"wideband": np.eye(64)[0], "narrowband": np.eye(64)[0]}})
    loaded = load_model(str(tmp_path / "hf.pt"))
    x = voice(1.3)
    with torch.inference_mode():
        direct = net(torch.from_numpy(np.pad(x, (50 * FRAME_HOP, 50 * FRAME_HOP + 65 * FRAME_HOP - x.size)))[None])
    np.testing.assert_allclose(loaded.embed(x).embeddings, direct["emb"][0, 50:115].numpy(), atol=1e-4)


def test_inference_copy_with_folded_batchnorm_matches_the_trained_network():
    torch.manual_seed(3)
    net = FrameNetwork(NetworkConfig())
    for m in net.modules():  # non-trivial running statistics, as after training
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in folded.modules())
    x = torch.from_numpy(voice(2.0))[None]
    with torch.inference_mode():
        ref, out = net(x), folded(x, project=False)
    assert "proj" not in out
    np.testing.assert_allclose(out["emb"].numpy(), ref["emb"].numpy(), atol=1e-5)
    np.testing.assert_allclose(out["mos"].numpy(), ref["mos"].numpy(), atol=1e-5)


def test_an_ensemble_embedding_is_unit_length_its_cosine_the_members_mean_and_it_round_trips(tmp_path):
    from indexer.model.ensemble import EnsembleNetwork

    for seed in (0, 1):
        build_untrained_checkpoint(tmp_path / f"m{seed}.pt", seed=seed)
    members = [load_model(str(tmp_path / f"m{seed}.pt")) for seed in (0, 1)]
    nets = [network_from_checkpoint(read_checkpoint(tmp_path / f"m{seed}.pt")) for seed in (0, 1)]
    enroll = {"wideband": np.eye(128)[0], "narrowband": np.eye(128)[1]}
    save_checkpoint(tmp_path / "pair.pt", EnsembleNetwork(nets), {"name": "pair", "threshold": 0.3, "enrollments": enroll})
    pair = load_model(str(tmp_path / "pair.pt"))
    x = voice(1.3)
    out, parts = pair.embed(x), [m.embed(x) for m in members]
    assert pair.dim == 128 and out.embeddings.shape == (65, 128)
    assert np.allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    mean_cos = np.mean([p.embeddings[3] @ p.embeddings[40] for p in parts])
    assert out.embeddings[3] @ out.embeddings[40] == pytest.approx(mean_cos, abs=1e-5)
    assert np.allclose(out.mos, (parts[0].mos + parts[1].mos) / 2, atol=1e-5)
    with pytest.raises(ModelError, match="at least two"):
        EnsembleNetwork(nets[:1])


def test_an_ensemble_runs_each_members_own_log_mel_front_end():
    from indexer.model.ensemble import EnsembleNetwork

    torch.manual_seed(4)
    nets = [FrameNetwork(NetworkConfig(**front)).eval() for front in ({}, {"n_mels": 128, "n_fft": 800}, {})]
    assert nets[1].encoder.features(torch.zeros(1, 16000)).shape == (1, 128, 101)
    x = torch.from_numpy(voice(1.3))[None]
    with torch.inference_mode():
        out = EnsembleNetwork(nets)(x)
        parts = [net(x, project=False)["emb"] for net in nets]
    assert out["emb"].shape == (1, 65, 192)
    np.testing.assert_allclose(out["emb"].numpy(), (torch.cat(parts, -1) / np.sqrt(3)).numpy(), atol=1e-5)


# (ensemble, its preset's members that ship on their own): the taught networks ship only inside them.
@pytest.mark.parametrize("name, shipped", [("balanced-5", ["distilled"]), ("balanced-4", ["distilled"]), ("balanced-3", ["distilled"]),
                                           ("balanced-2", ["distilled", "telephone"]),
                                           ("balanced", ["fast", "telephone"])])
def test_a_shipped_ensemble_is_its_presets_member_networks_together(network_off, name, shipped):
    ensemble, parts = load_model(name), [load_model(m) for m in shipped]
    members = ensemble.meta["recipe"]["ensemble_of"]
    assert len(members) == len(PRESETS[name].members) and PRESETS[name].members[: len(shipped)] == shipped
    assert [m["model_id"] for m in members[: len(parts)]] == [p.model_id for p in parts]
    for spec, member in zip(PRESETS[name].members, members):  # each network was trained by its member's recipe
        preset, seed = parse_member(spec)
        assert_trained_by(member["recipe"], preset)
        assert member["recipe"]["train_config"]["seed"] == seed, spec
    assert set(ensemble.enrollments) == {"wideband", "narrowband"} and 0 < ensemble.threshold < 2
    x = voice(0.5)
    out, dim = ensemble.embed(x).embeddings, parts[0].dim
    weight = PRESETS[name].type_head  # a type head's directions follow the members' blocks
    assert ensemble.meta["recipe"].get("type_head", {}).get("weight", 0.0) == weight
    assert out.shape[1] == dim * len(members) + (ensemble.meta["recipe"]["type_head"]["directions"] if weight else 0)
    scale = math.sqrt(len(members) * (1 + weight ** 2))
    for i, part in enumerate(parts):  # each member's block is its own embedding, scaled to keep the whole unit length
        assert np.allclose(out[:, i * dim : (i + 1) * dim], part.embed(x).embeddings / scale, atol=1e-5)


def test_the_default_model_is_a_shipped_model_and_the_default_preset_its_recipe():
    from indexer.model import SHIPPED
    from indexer.settings import DEFAULT_MODEL

    assert DEFAULT_MODEL in SHIPPED and load_model().name == DEFAULT_MODEL
    assert PRESETS["default"] is PRESETS[DEFAULT_MODEL]
