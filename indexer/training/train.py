"""The training loop: shards of partial mix-up examples -> a calibrated frame-model checkpoint.

Model selection uses HELD-OUT REAL SPEAKERS (the training-catalog and the held-out-catalog
validation sets: frame EER and prototype error, averaged), never the loss or TTS validation:
MODEL_NOTES showed TTS validation pointing the wrong way.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from indexer.errors import ConfigError, ModelError
from indexer.model import MARGIN_FRAMES, model_path
from indexer.model.checkpoint import FORMAT, network_from_checkpoint, read_checkpoint, save_checkpoint
from indexer.model.network import FrameNetwork, NetworkConfig
from indexer.training.augment import channel_augment, freq_mixstyle, noise_floor, vtlp_warp
from indexer.training.calibrate import calibrate, model_embedder
from indexer.training.combine import combine
from indexer.training.frozen import ClipEmbed, cache_path, cached_embedder, encode_clips
from indexer.training.losses import total_loss
from indexer.training.shards import load_shards, load_speaker_groups, load_val_sets
from retrieval.evaluation import class_prototypes, equal_error_rate, prototype_accuracy


@dataclass
class TrainConfig:
    """One training recipe (a preset or its command-line overrides)."""

    encoder: str = "logmel_cnn"
    minutes: float = 45.0
    batch_size: int = 24
    lr: float = 2e-3
    weight_decay: float = 1e-4
    tau: float = 0.1
    contrast_frames: int = 1024
    mos_weight: float = 1.0
    eval_every: int = 100
    seed: int = 0
    threads: int = 2
    freeze_encoder_steps: int = 0  # pretrained encoders: train the head frozen first, then fine-tune
    max_steps: int = 0  # step budget; also sets the LR schedule (0: the time budget only)
    # Share of clips given a faint noise floor (35-60 dB below the speech, labels unchanged). Tried at
    # 0.5: better wideband prototypes, worse telephone detection (MODEL_CARD recipe table), so off.
    noise_floor_p: float = 0.0
    # Classes per batch (batch_size // classes_per_batch clips each); 0: clips drawn at random. With
    # 39 classes, a random batch of 24 rarely holds two clips of a class, so SupCon's positives for
    # a degraded frame came from its own clip and taught "same utterance" more than "same degradation".
    classes_per_batch: int = 0
    # Training examples read from the shards directory, its first shards in order; 0: all of them.
    train_examples: int = 0
    # Narrowband training and validation clips as an 8 kHz file reaches the model (nothing above
    # 4 kHz, shards.band_limit_narrowband) instead of as the shards store them. On the fast model it
    # helped the telephone benchmarks and hurt the wideband ones (MODEL_CARD), so only the telephone
    # preset has it.
    narrowband_8khz: bool = False
    # With narrowband_8khz: this share of the wideband training clips band-limited the same way and
    # still labelled by their regions, so speech band-limited at the source reads as clean (the
    # telephone model flagged two held-out speakers' clean wideband speech, MODEL_CARD).
    wideband_8khz_share: float = 0.0
    # Weight of the cosine-classifier term on the indexed embedding (losses.cosine_class_loss); 0: off.
    # From step 0 (at 1.0 or 0.3) it raised prototype accuracy but widened the clean-speech tail and
    # lost the demo's detections (MODEL_CARD recipe table); the presets start it half-way.
    class_weight: float = 0.0
    class_on_clean: bool = True  # False: the classifier term sees degraded frames only
    # Weight of the same classifier on each clip's pooled degraded frames (losses.region_class_loss),
    # the segment embedding that prototypes and search use; starts with the frame term. 0: off.
    region_class_weight: float = 0.0
    # First step of the classifier terms: later, the contrastive term has shaped the clean cluster first.
    class_from_step: int = 0
    # Pretrained encoders: compute each clip's encoder features once and train the head on them
    # while the encoder is frozen (indexer.training.frozen); without it every step runs the encoder.
    cache_frozen: bool = False
    # Dropout on the cached features: the cache repeats each clip's features exactly, where the fast
    # encoder sees a new random EQ and level every visit.
    frozen_feature_dropout: float = 0.0
    # Exponential moving average of the weights (and BatchNorm statistics), decay per step; 0: off.
    # With it, validation, checkpoint selection and the written checkpoint use the averaged weights:
    # one aim is a smaller run-to-run spread than the seeds in MODEL_CARD show.
    ema_decay: float = 0.0
    # Distillation: a trained model (name or checkpoint) whose frame embeddings of every training
    # clip are computed once, and the weight of losses.relation_distill_loss toward them; "": off.
    distill_from: str = ""
    distill_weight: float = 10.0
    # Fine-tuning: a trained single network (name or checkpoint) of this recipe's architecture whose
    # weights the run starts from instead of a random initialisation; "": from scratch.
    init_from: str = ""
    # Weight of losses.clean_ranking_loss: clean frames ranked above degraded ones by the cosine to
    # the batch's mean clean frame, the score detection thresholds; 0: off. Fine-tuning distilled
    # at 1, 20 and 50 gave no gain beyond run-to-run variation, and at 20 from scratch it cost
    # 8-13 points of prototypes (MODEL_CARD), so off.
    detect_weight: float = 0.0
    # Scale of the reversed gradient from a speaker-group classifier on the indexed embedding
    # (losses.speaker_adversarial_loss): embeddings that do not tell speakers apart; 0: off. At 0.3
    # in a fine-tune it lost wideband detection and prototypes (MODEL_CARD), so off.
    speaker_adversarial: float = 0.0
    # Largest vocal-tract-length warp of the fast encoder's log-mel input (augment.vtlp_warp: the
    # frequency axis scaled by 1 +- this per clip, labels unchanged), so the spread of speakers'
    # spectral envelopes becomes a nuisance like the channel's EQ; 0: off. At 0.08 from scratch it
    # left frame EER level and cost telephone-heldout prototypes and wideband F1 (MODEL_CARD), so off.
    vtlp_warp: float = 0.0
    # Share of training clips whose log-mel bands take on a mix of their own and another same-channel
    # clip's mean and spread over time (augment.freq_mixstyle, Beta(0.3, 0.3) weights): other real
    # speakers' and microphones' colourings as a nuisance; 0: off. At 0.5 from scratch it raised
    # frame EER and cost 1-7 points of prototypes on every benchmark (MODEL_CARD), so off.
    freq_mixstyle: float = 0.0
    # Train on the real-speech clips of the loaded examples only, the TTS ones dropped: on held-out
    # TTS voices the default finds pitch shift, time stretch and mild codecs that it misses on real
    # speakers, so synthetic voices might teach cues that real ones lack. Fine-tuning balanced-4's
    # third member this way raised its frame EER and left those misses where they were (MODEL_CARD),
    # so False: every clip.
    real_only: bool = False
    # Keep this share of the real-speech clips, TTS clips all kept: those of a seeded share of the
    # real speaker groups (real_share_by "speaker": a learning curve over speakers) or a seeded share
    # of the clips from every group ("clip": its control, at the same count of real clips). 1: all.
    # Half the speakers at the same real clips cost 1.7 points of mean frame EER (MODEL_CARD).
    real_share: float = 1.0
    real_share_by: str = "speaker"
    network: dict = field(default_factory=dict)
    # An ensemble recipe: train each of these presets (with this seed and threads), then combine the
    # networks into one calibrated checkpoint (indexer.training.combine). Empty: one network.
    # "NAME@N" trains preset NAME with this seed + N: two seeds of one recipe as two members.
    members: list[str] = field(default_factory=list)
    # An ensemble recipe's type head (indexer.training.type_head): its weight in the embedding; 0: none.
    type_head: float = 0.0


PRESETS: dict[str, TrainConfig] = {
    # The shipped fast model: 13,810 steps (65 min on the 2-core CPU machine). The step budget is the
    # recipe; the presets' 180-min cap only guards against a stuck run (a slower 2-core machine took
    # 0.43 s a step, and the 90-min cap there cut distilled at step 13,290: MODEL_CARD).
    # The classifier term at 0.3 from half-way (MODEL_CARD recipe table: frame EER lower on all four
    # benchmarks, the demo's detections kept; from step 0 it widened the clean tail and lost them).
    "fast": TrainConfig(minutes=180.0, max_steps=13810, class_weight=0.3, class_from_step=6905, train_examples=6000),
    # The fast network for archives of 8 kHz calls (~70 min): narrowband clips band-limited to 4 kHz as
    # an 8 kHz file is, 30 % of the wideband clips too (speech band-limited at the source is clean),
    # three times the examples, and a fifth temporal block (dilation 16: ~1.3 s of context instead of
    # ~0.7 s). Better than fast on the telephone benchmarks; on wideband audio fewer detections, on
    # two seeds (MODEL_CARD).
    "telephone": TrainConfig(minutes=180.0, max_steps=13810, class_weight=0.3, class_from_step=6905, train_examples=18000,
                             narrowband_8khz=True, wideband_8khz_share=0.3, network={"dilations": [1, 2, 4, 8, 16]}),
    # The distillmos front end frozen for the whole run, its features computed once (12 min on 2
    # cores), the head trained on them with the fast recipe over 6,000 steps (14 min; fine-tuning
    # the front end too needs a GPU: set --freeze-encoder-steps below --max-steps and --no-cache-frozen).
    "accurate": TrainConfig(encoder="distillmos", minutes=180.0, max_steps=6000, freeze_encoder_steps=6000,
                            cache_frozen=True, eval_every=500, class_weight=0.3, class_from_step=3000, train_examples=6000),
    "smoke": TrainConfig(minutes=0.3, batch_size=4, eval_every=5, contrast_frames=128),
}
# The fast network on the telephone preset's data (18,000 examples, narrowband and 30 % of wideband
# clips band-limited), trained to reproduce the balanced ensemble's cosines between frames as well
# (~75 min): near balanced's frame EER at fast's speed, and the highest prototype accuracy (MODEL_CARD).
PRESETS["distilled"] = TrainConfig(minutes=180.0, max_steps=13810, class_weight=0.3, class_from_step=6905, train_examples=18000,
                                   narrowband_8khz=True, wideband_8khz_share=0.3, distill_from="balanced")
# `balanced`, the default until balanced-2: the fast and telephone networks as one ensemble (~140 min
# on 2 cores). Together they beat either alone on the wideband benchmarks and nearly match
# telephone on the telephone ones, on two seeds (MODEL_CARD).
PRESETS["balanced"] = TrainConfig(minutes=PRESETS["fast"].minutes + PRESETS["telephone"].minutes, members=["fast", "telephone"])
# `balanced-2`, the default until balanced-3: the distilled and telephone networks as one ensemble
# (~215 min: fast and telephone, balanced from them as distilled's teacher, then distilled). Against
# balanced, over two seeds: frame EER lower or level on all four benchmarks, prototype accuracy
# higher on seven of the eight figures (MODEL_CARD).
PRESETS["balanced-2"] = TrainConfig(minutes=PRESETS["balanced"].minutes + PRESETS["distilled"].minutes,
                                    members=["distilled", "telephone"])
# The telephone recipe taught by balanced-2 (its cosines between frames, as distilled was taught by
# balanced; ~110 min on 2 cores after balanced-2). Joined with distilled alone it is level with
# balanced-2 over two seeds (MODEL_CARD, "A distilled telephone member").
PRESETS["telephone-distilled"] = replace(PRESETS["telephone"], distill_from="balanced-2")
# `telephone-3`: the telephone recipe taught by the shipped balanced-3 (a third round; ~100 min on
# 2 cores), seed 2 as measured. Alone it is level with balanced-3 on mean frame EER at a third of its
# cost, with lower frame EER than telephone on all six benchmarks; in an ensemble it added nothing (MODEL_CARD).
PRESETS["telephone-3"] = replace(PRESETS["telephone"], distill_from="balanced-3", seed=2)
# `balanced-3`, the default until balanced-4: distilled and two seeds of telephone-distilled as one
# ensemble (~435 min: balanced-2 as the teacher, then the two taught networks). Against balanced-2,
# over three seeds of the taught network: frame EER lower on all four benchmarks (MODEL_CARD).
PRESETS["balanced-3"] = TrainConfig(
    minutes=PRESETS["balanced-2"].minutes + 2 * PRESETS["telephone-distilled"].minutes,
    members=["distilled", "telephone-distilled", "telephone-distilled@1"])
# telephone-3 with a sixth temporal block (dilation 32: ~2.5 s of context instead of ~1.2 s; ~100 min
# on 2 cores): more detections than telephone-3, fewer correct prototypes alone (MODEL_CARD).
PRESETS["telephone-3-long"] = replace(PRESETS["telephone-3"], network={"dilations": [1, 2, 4, 8, 16, 32]})
# `balanced-4`, the default until balanced-5: balanced-3 with telephone-3-long (seed 2, as shipped) in
# place of its second taught seed (~535 min: balanced-3 as the teacher, then that network). Against
# balanced-3, over two seeds of telephone-3-long: frame EER lower on five of six benchmarks,
# whole-call detection F1 higher, spliced-event detection and prototypes level (MODEL_CARD).
PRESETS["balanced-4"] = TrainConfig(
    minutes=PRESETS["balanced-3"].minutes + PRESETS["telephone-3-long"].minutes,
    members=["distilled", "telephone-distilled", "telephone-3-long@2"])
# The shipped default, `balanced-5`: balanced-4's networks with a type head of weight 1.0 (LDA of
# their hidden features and their squares on the training clips, ~5 min more). Against balanced-4:
# frame EER lower on five of six benchmarks (mean 12.40 -> 11.64 %) and single-degradation
# prototype accuracy higher on all six (mean 69.5 -> 73.7 %) (MODEL_CARD).
PRESETS["default"] = PRESETS["balanced-5"] = replace(PRESETS["balanced-4"], minutes=PRESETS["balanced-4"].minutes + 5.0,
                                                     type_head=1.0)


def parse_positive_ints(text: str, what: str, example: str) -> list[int]:
    """Comma-separated positive integers for a network option (``what``, e.g. ``"dilations"``).

    >>> parse_positive_ints("1, 2,4", "dilations", "1,2,4,8,16")
    [1, 2, 4]
    """
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{what} {text!r} are not positive integers", f"give them comma-separated, e.g. {example}")
    return values


def example_classes(frame_labels: np.ndarray) -> np.ndarray:
    """The degraded class of each mix-up example (its regions share one class), 0 for clean clips."""
    return frame_labels.max(axis=1).astype(np.int64)


def balanced_batch(classes: np.ndarray, batch_size: int, classes_per_batch: int, rng: np.random.Generator) -> np.ndarray:
    """Example indices: ``classes_per_batch`` distinct classes, ``batch_size // classes_per_batch`` clips each.

    Every degraded frame then has positives in other utterances (other speakers, texts, channels).
    Classes with too few clips are sampled with replacement rather than skipped.
    """
    per = max(1, batch_size // classes_per_batch)
    present = np.unique(classes)
    chosen = rng.choice(present, min(classes_per_batch, present.size), replace=False)
    picks = []
    for c in chosen:
        pool = np.flatnonzero(classes == c)
        picks.append(rng.choice(pool, per, replace=pool.size < per))
    return np.concatenate(picks)


def class_weight_at(cfg: TrainConfig, step: int, weight: float | None = None) -> float:
    """A classifier term's weight at ``step``: ``weight`` (default ``cfg.class_weight``, the frame
    term's) from ``cfg.class_from_step`` on, else 0. Both classifier terms start there."""
    if step < cfg.class_from_step:
        return 0.0
    return cfg.class_weight if weight is None else weight


def _segment_prototype_accuracy(emb: np.ndarray, labels: np.ndarray, q: int) -> float:
    """Oracle-region prototype accuracy (%): prototypes from the first ``q`` clips, scored on the rest."""
    seg_emb, seg_lab, seg_first = [], [], []
    for i, (e, lab) in enumerate(zip(emb, labels)):
        for c in np.unique(lab[lab != 0]):
            seg_emb.append(e[lab == c].mean(0))
            seg_lab.append(int(c))
            seg_first.append(i < q)
    if not seg_emb:
        return math.nan
    seg_emb, seg_lab, seg_first = np.stack(seg_emb), np.array(seg_lab), np.array(seg_first)
    protos, names = class_prototypes(seg_emb[seg_first], seg_lab[seg_first])
    test = ~seg_first & np.isin(seg_lab.astype(str), names)
    return 100.0 * prototype_accuracy(seg_emb[test], seg_lab[test], protos, names)


def _first_quarter_eer(emb: np.ndarray, labels: np.ndarray) -> float:
    """Frame EER (%) of clips (N, T, D): the first quarter's clean frames enroll, the rest are scored."""
    q = max(1, len(emb) // 4)
    enroll = emb[:q][labels[:q] == 0].mean(0)
    enroll /= np.linalg.norm(enroll)
    return 100.0 * equal_error_rate((1.0 - emb[q:] @ enroll).ravel(), labels[q:].ravel() != 0)


def validate(embed: ClipEmbed, sets: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Per validation set (embedded by ``embed``): frame EER (``eer_<set>``, %), the same per channel
    (``eer_<set>_wideband``, ``eer_<set>_narrowband``) and prototype accuracy (``proto_<set>``, %).

    The enrollment is the first quarter's clean frames; the prototypes its regions per class.
    ``selection`` (lower is better) averages the pooled frame EER and prototype error over the sets,
    so a checkpoint is chosen for detection and for telling degradations apart. The per-channel
    figures are what a one-channel benchmark measures: pooled, the easier narrowband clips hide
    much of the wideband error (MODEL_CARD, "Why validation reads lower than the benchmarks").
    """
    result, errors = {}, []
    for name, arrays in sets.items():
        emb = embed(name, np.arange(len(arrays["audio"])))  # (N, T, D)
        labels = arrays["frame_labels"][:, : emb.shape[1]]
        result[f"eer_{name}"] = _first_quarter_eer(emb, labels)
        narrow = np.asarray(arrays["narrowband"], dtype=bool)
        for channel, rows in (("wideband", ~narrow), ("narrowband", narrow)):
            if rows.sum() >= 8:  # two enrolling clips at least
                result[f"eer_{name}_{channel}"] = _first_quarter_eer(emb[rows], labels[rows])
        result[f"proto_{name}"] = _segment_prototype_accuracy(emb, labels, max(1, len(emb) // 4))
        errors += [result[f"eer_{name}"], 100.0 - result[f"proto_{name}"]]
    result["selection"] = float(np.nanmean(errors))
    return result


def _frozen_caches(net: FrameNetwork, data: Path, train_arrays: dict[str, np.ndarray],
                   val: dict[str, dict[str, np.ndarray]], console: Console) -> dict[str, tuple[np.ndarray, int]]:
    """(features, margin) per set: training clips bare (as training feeds them), validation clips with
    the zero margins :meth:`FrameModel.embed` adds, so validation scores what the model will."""
    caches = {}
    for name, arrays, margin in [("train", train_arrays, 0)] + [(k, v, MARGIN_FRAMES) for k, v in val.items()]:
        path = cache_path(data / name, net.cfg.encoder, arrays["audio"], margin)
        console.print(f"{name}: frozen {net.cfg.encoder} features {'from' if path.is_file() else 'computing, to'} {path}")
        caches[name] = (encode_clips(net, arrays["audio"], margin, path, log=console.print), margin)
    return caches


def training_clip_mask(arrays: dict[str, np.ndarray], groups: np.ndarray | None, cfg: TrainConfig) -> np.ndarray:
    """Which loaded training clips a run keeps: every one, the real ones only (``real_only``), or the
    TTS ones and a seeded ``real_share`` of the real ones: the real clips of that share of the real
    speaker groups (``real_share_by`` "speaker"; ``groups``: each clip's speaker-group index, as
    :func:`load_speaker_groups` gives them) or that share of the real clips themselves ("clip")."""
    real = np.asarray(arrays["real"], dtype=bool)
    keep = real.copy() if cfg.real_only else np.ones(real.size, dtype=bool)
    if cfg.real_share < 1.0:
        # Its own generator, so the batches draw the same sequence as a control run's.
        rng = np.random.default_rng([cfg.seed, 1])
        if cfg.real_share_by == "speaker":
            if groups is None:
                raise ConfigError("a real-speaker share needs each clip's speaker group", "load them with load_speaker_groups")
            real_groups = np.unique(groups[real])
            kept = rng.choice(real_groups, size=max(1, round(cfg.real_share * real_groups.size)), replace=False)
            keep &= ~real | np.isin(groups, kept)
        elif cfg.real_share_by == "clip":
            real_idx = np.flatnonzero(real)
            dropped = np.setdiff1d(real_idx, rng.choice(real_idx, size=round(cfg.real_share * real_idx.size), replace=False))
            keep[dropped] = False
        else:
            raise ConfigError(f"unknown real_share_by {cfg.real_share_by!r}", "use speaker or clip")
    return keep


def train(data_dir: str | Path, out: str | Path, cfg: TrainConfig, *, resume: bool = False, console: Console | None = None) -> dict:
    """Train on ``data_dir/train`` shards, validate on held-out real speakers, write a calibrated checkpoint."""
    console = console or Console()
    data, out = Path(data_dir), Path(out)
    if cfg.members:
        return train_ensemble(data, out, cfg, resume=resume, console=console)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_arrays, classes = load_shards(data / "train", narrowband_8khz=cfg.narrowband_8khz,
                                        wideband_8khz_share=cfg.wideband_8khz_share, seed=cfg.seed,
                                        max_examples=cfg.train_examples)
    groups, group_names = (load_speaker_groups(data / "train", len(train_arrays["audio"]))
                           if cfg.speaker_adversarial > 0 or cfg.real_share < 1.0 else (None, []))
    keep = training_clip_mask(train_arrays, groups, cfg)
    if not keep.all():
        train_arrays = {k: v[keep] for k, v in train_arrays.items()}
        groups = groups[keep] if groups is not None else None
        what = "real speech only" if cfg.real_only else f"a {cfg.real_share:g} share of the real clips, by {cfg.real_share_by}"
        console.print(f"{what}: {int(keep.sum())} of {len(keep)} training clips")
    val = load_val_sets(data, narrowband_8khz=cfg.narrowband_8khz)
    net_cfg = NetworkConfig(encoder=cfg.encoder, **cfg.network)
    net = FrameNetwork(net_cfg)
    # Training-only, like the projection head: one vector per class for the cosine-classifier term.
    class_vectors = torch.nn.Parameter(torch.randn(len(classes), net_cfg.emb_dim, generator=torch.Generator().manual_seed(cfg.seed)))
    params = list(net.parameters()) + ([class_vectors] if cfg.class_weight > 0 or cfg.region_class_weight > 0 else [])
    # Training-only too: the speaker-group classifier the adversarial term trains against.
    speakers_t, speaker_head = None, None
    if cfg.speaker_adversarial > 0:
        speakers_t = torch.from_numpy(groups)
        speaker_head = torch.nn.Sequential(torch.nn.Linear(net_cfg.emb_dim, 128), torch.nn.ReLU(),
                                           torch.nn.Linear(128, len(group_names)))
        params += list(speaker_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = (torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),
                                               use_buffers=True) if cfg.ema_decay > 0 else None)
    state_path = out.with_suffix(".state.pt")
    step, best, history, elapsed0 = 0, math.inf, [], 0.0
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        if "class_vectors" in state:
            class_vectors.data.copy_(state["class_vectors"])
        if speaker_head is not None and "speaker_head" in state:
            speaker_head.load_state_dict(state["speaker_head"])
        opt.load_state_dict(state["opt"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        step, best, history, elapsed0 = state["step"], state["best"], state["history"], state["elapsed"]
        console.print(f"resumed at step {step} (best held-out real validation error {best:.2f} %)")
    elif cfg.init_from:
        init_weights(net, cfg.init_from)
        console.print(f"starting from the weights of {cfg.init_from}")
    budget = cfg.minutes * 60
    n = len(train_arrays["audio"])
    if cfg.batch_size > n:  # checked before the teacher's embeddings, which take minutes
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the {n} training examples",
                          "lower --batch-size or train on more examples (--train-examples, more shards)")
    audio_t = torch.from_numpy(train_arrays["audio"])
    labels_t = torch.from_numpy(train_arrays["frame_labels"].astype(np.int64))
    fmos_t = torch.from_numpy(train_arrays["frame_mos"])
    umos_t = torch.from_numpy(train_arrays["utt_mos"])
    narrow_t = torch.from_numpy(train_arrays["narrowband"].astype(bool))
    clip_classes = example_classes(train_arrays["frame_labels"])
    teacher_t = (torch.from_numpy(teacher_embeddings(cfg.distill_from, train_arrays["audio"], labels_t.shape[1], console))
                 if cfg.distill_from else None)
    pretrained = cfg.encoder != "logmel_cnn"
    caches = _frozen_caches(net, data, train_arrays, val, console) if pretrained and cfg.cache_frozen else None
    t0 = time.time() - elapsed0
    recipe = {"train_config": asdict(cfg), "data": str(data), "train_examples": n, "classes": classes}
    with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("train", total=budget, info="")
        while time.time() - t0 < budget and not (cfg.max_steps and step >= cfg.max_steps):
            net.train()
            # The cosine schedule follows the step budget when there is one (same recipe on any
            # machine), else the wall-clock budget.
            frac = step / cfg.max_steps if cfg.max_steps else min(1.0, (time.time() - t0) / budget)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
            frozen = pretrained and step < cfg.freeze_encoder_steps
            net.encoder.requires_grad_(not frozen)
            idx = torch.from_numpy(balanced_batch(clip_classes, cfg.batch_size, cfg.classes_per_batch, rng)
                                   if cfg.classes_per_batch else rng.choice(n, cfg.batch_size, replace=False))
            audio = audio_t[idx] * float(10 ** rng.uniform(-0.5, 0.3))
            if cfg.noise_floor_p > 0:
                audio = noise_floor(audio, narrow_t[idx], p=cfg.noise_floor_p)
            feats = None
            if cfg.encoder == "logmel_cnn":
                feats = net.encoder.features(audio)
                if cfg.vtlp_warp > 0:
                    feats = vtlp_warp(feats, narrow_t[idx], max_warp=cfg.vtlp_warp)
                if cfg.freq_mixstyle > 0:
                    feats = freq_mixstyle(feats, narrow_t[idx], p=cfg.freq_mixstyle)
                feats = channel_augment(feats)
            if caches is not None and frozen:
                h = torch.from_numpy(caches["train"][0][idx.numpy()].astype(np.float32))
                out_ = net.decode(torch.nn.functional.dropout(h, cfg.frozen_feature_dropout), labels_t.shape[1])
            else:
                out_ = net(audio, feats=feats)
            loss, parts = total_loss(out_, labels_t[idx], fmos_t[idx], umos_t[idx], n_frames=cfg.contrast_frames,
                                     tau=cfg.tau, mos_weight=cfg.mos_weight, class_vectors=class_vectors,
                                     class_weight=class_weight_at(cfg, step), class_on_clean=cfg.class_on_clean,
                                     region_class_weight=class_weight_at(cfg, step, cfg.region_class_weight),
                                     teacher_emb=teacher_t[idx] if teacher_t is not None else None,
                                     distill_weight=cfg.distill_weight, detect_weight=cfg.detect_weight,
                                     speakers=speakers_t[idx] if speakers_t is not None else None,
                                     speaker_head=speaker_head, speaker_weight=cfg.speaker_adversarial)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            if ema is not None:
                ema.update_parameters(net)
            step += 1
            progress.update(task, completed=time.time() - t0, info=f"step {step} loss {float(loss.detach()):.3f}")
            last = time.time() - t0 >= budget or step == cfg.max_steps
            if step % cfg.eval_every == 0 or last:
                kept = ema.module if ema is not None else net  # the weights validated and saved
                kept.eval()
                figures = validate(cached_embedder(kept, caches) if caches is not None and frozen else model_embedder(kept, val), val)
                history.append({"step": step, "minutes": round((time.time() - t0) / 60, 1), **parts, **figures})
                marker = ""
                if figures["selection"] < best:
                    best = figures["selection"]
                    save_checkpoint(out.with_suffix(".best.pt"), kept, {"name": out.stem, "threshold": 0.0, "enrollments": {}, "recipe": recipe})
                    marker = " *best*"
                console.print(f"step {step:6d}  {(time.time() - t0) / 60:5.1f} min  loss {float(loss.detach()):.3f}  "
                              + "  ".join(f"{k} {v:5.2f} %" for k, v in figures.items()) + marker)
                torch.save({"net": net.state_dict(), "class_vectors": class_vectors.detach(), "opt": opt.state_dict(), "step": step, "best": best,
                            "history": history, "elapsed": time.time() - t0,
                            **({"speaker_head": speaker_head.state_dict()} if speaker_head is not None else {}),
                            **({"ema": ema.state_dict()} if ema is not None else {})}, state_path)
    best_net = network_from_checkpoint(read_checkpoint(out.with_suffix(".best.pt")))
    # The cache still describes the best network's encoder if the run never unfroze it. (Its training
    # clips are cached without the zero margins embed() adds: the enrollment means differ only at clip edges.)
    calib = calibrate(best_net, train_arrays, val,
                      embed=cached_embedder(best_net, caches) if caches is not None and step <= cfg.freeze_encoder_steps else None)
    model_id = save_checkpoint(out, best_net, {"name": out.stem, "recipe": recipe, "history": history, "classes": classes, **calib})
    summary = {"model_id": model_id, "path": str(out), "best_val_error": best, "steps": step,
               "threshold": calib["threshold"], **calib["validation"]}
    (out.with_suffix(".json")).write_text(json.dumps(summary, indent=1))
    return summary


def init_weights(net: FrameNetwork, model: str) -> None:
    """Load the weights of ``model`` (a shipped name or checkpoint file of one network) into ``net``,
    which must have the same architecture: the start of a fine-tuning run."""
    ckpt = read_checkpoint(model_path(model))
    if ckpt["format"] != FORMAT:
        raise ModelError(f"{model} is an ensemble", "start from one of its member networks")
    have, want = ckpt["config"], net.cfg.to_dict()
    if have != want:
        diff = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
        raise ModelError(f"{model}'s network differs from this recipe's in {', '.join(diff)}",
                         "start from a model trained with the same architecture (encoder, dilations, channels, hidden)")
    net.load_state_dict(ckpt["state_dict"])


def teacher_embeddings(teacher: str, audio: np.ndarray, frames: int, console: Console, batch: int = 32) -> np.ndarray:
    """The ``teacher`` model's (N, frames, D) frame embeddings of the training clips, float16,
    computed once before training: the clips as the recipe loads them (band-limited where it
    band-limits them), without the per-step gain and EQ, which the student learns to ignore."""
    from indexer.model import load_model

    model = load_model(teacher)
    out = np.empty((len(audio), frames, model.dim), np.float16)
    t0 = time.time()
    with torch.inference_mode():
        for i in range(0, len(audio), batch):
            emb = model.network(torch.from_numpy(audio[i : i + batch]), project=False)["emb"]
            out[i : i + batch] = emb[:, :frames].numpy()
    console.print(f"teacher {model.name} ({model.model_id}): {len(audio)} clips embedded in {time.time() - t0:.0f} s")
    return out


def member_path(out: Path, name: str) -> Path:
    """Where an ensemble recipe writes its member trained with preset ``name`` (a member spec,
    ``NAME`` or ``NAME@N``): beside ``out``."""
    return out.with_name(f"{out.stem}.{name}{out.suffix}")


def parse_member(spec: str) -> tuple[str, int]:
    """An ensemble member spec -> (preset name, seed offset): ``"telephone"`` -> ``("telephone", 0)``,
    ``"telephone@1"`` -> ``("telephone", 1)``."""
    name, sep, offset = spec.partition("@")
    if name not in PRESETS or (sep and not offset.isdigit()):
        raise ConfigError(f"ensemble member {spec!r} is not a preset name, optionally with @N (N: a seed offset)",
                          f"use one of {', '.join(sorted(PRESETS))}, e.g. telephone or telephone@1")
    return name, int(offset) if sep else 0


def train_ensemble(data: Path, out: Path, cfg: TrainConfig, *, resume: bool, console: Console) -> dict:
    """Build each member preset of ``cfg`` (with its seed and threads), then combine them.

    A member taught by another preset (``distill_from`` naming one) gets that preset built first,
    in the same place, so the whole chain is trained from the shards alone and a model both
    needs (a teacher's member and a member of ``cfg``) is trained once. With ``resume`` a model
    whose checkpoint is already written is kept, and an interrupted one continues from its state
    file, so a long recipe can be run in several sittings."""
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name in built:
            return built[name]
        path = member_path(out, name)
        preset_name, seed_offset = parse_member(name)
        preset = replace(PRESETS[preset_name], seed=cfg.seed + seed_offset, threads=cfg.threads)
        if resume and path.with_suffix(".json").is_file():
            console.print(f"{name}: kept {path}")
        elif preset.members:
            paths = [build(member) for member in preset.members]
            console.print(f"{name}: combining {len(paths)} members into {path}")
            combine(paths, data, path, type_head=preset.type_head)
        else:
            if preset.distill_from in PRESETS:
                preset = replace(preset, distill_from=str(build(preset.distill_from)))
            console.print(f"{name}: training to {path}")
            train(data, path, preset, resume=resume, console=console)
        built[name] = path
        return path

    paths = [build(name) for name in cfg.members]
    console.print(f"combining {len(paths)} members into {out}")
    return combine(paths, data, out, type_head=cfg.type_head)
