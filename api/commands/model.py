"""Model commands: training data (`prepare-data`, `build-shards`), benchmarks (`make-benchmark`).

Each command is registered by its own small function called from :func:`register`, so more
commands (``train``) are added with one more ``_register_*`` function and one line in ``register``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _register_prepare_data(app: typer.Typer) -> None:
    @app.command("prepare-data")
    def prepare_data(
        data_dir: Annotated[Path, typer.Argument(help="Where the corpus goes (e.g. data/train); reruns keep finished steps.")],
        tts: Annotated[int, typer.Option(help="Number of TTS utterances (espeak-ng, flite, festival).")] = 1500,
        seed: Annotated[int, typer.Option(help="Random seed (texts, voices, concatenation, rooms).")] = 0,
        real: Annotated[bool, typer.Option("--real/--no-real", help="Fetch the Debian speech packages (apt-get download).")] = True,
        noise: Annotated[bool, typer.Option("--noise/--no-noise", help="Fetch the Debian ambience/music packages.")] = True,
        shards: Annotated[int, typer.Option(help="Also build this many training examples into DATA_DIR/shards/train (0: none).")] = 0,
        val_shards: Annotated[int, typer.Option(help="With --shards: held-out-speaker validation examples (training and held-out catalogs).")] = 300,
        workers: Annotated[int, typer.Option(help="Processes for shard building: 1 = main only, 2 = main + one worker.")] = 1,
        speech_dir: Annotated[Optional[list[Path]], typer.Option(help="A folder of your own clean recordings, one sub-folder per speaker, added to the training speech (repeatable; every speaker goes to training; rebuilt whenever given).")] = None,
    ) -> None:
        """Fetch real speech and noise from Debian packages, add your own recordings, synthesise TTS, write DATA_DIR/manifest.jsonl."""
        from rich.console import Console

        from indexer.training.corpus import prepare_corpus

        console = Console(stderr=True)
        summary = prepare_corpus(data_dir, n_tts=tts, seed=seed, real=real, noise=noise, speech_dirs=speech_dir,
                                 log=console.print)
        console.print(f"corpus: {summary['utterances']} utterances, {summary['hours']} h {summary['by_split_source']}; "
                      f"held-out real groups: {', '.join(summary['groups_heldout_real'])}; {summary['seconds']} s")
        if shards > 0:
            _build_all(data_dir, data_dir / "shards", shards, val_shards, seed, workers, console)


def _print_shard_info(console, out: Path, info: dict) -> None:
    """One line summarising a shard set written by ``build_shards``."""
    console.print(f"{out}: {info['n_examples']} examples in {info['shards']} shards, {info['classes']} classes, "
                  f"narrowband {info['narrowband_fraction']:.0%}, real {info['real_fraction']:.0%}, {info['seconds']} s")


def _build_all(data_dir: Path, out: Path, n_train: int, n_val: int, seed: int, workers: int, console) -> None:
    from indexer.training.shards import build_shards

    sets = [("train", n_train, "train", "train")]
    if n_val > 0:
        sets += [("val_real", n_val, "heldout", "train"), ("val_heldout_catalog", n_val, "heldout", "heldout")]
    for name, n, split, catalog in sets:
        info = build_shards(data_dir, out / name, n, seed=seed + (0 if name == "train" else 1000), split=split,
                            catalog=catalog, workers=workers, log=console.print)
        _print_shard_info(console, out / name, info)


def _register_build_shards(app: typer.Typer) -> None:
    @app.command("build-shards")
    def build_shards_cmd(
        data_dir: Annotated[Path, typer.Argument(help="A directory prepared by `degsearch prepare-data`.")],
        out_dir: Annotated[Path, typer.Argument(help="Output directory for shard_NNNNN.npz + classes.json + info.json.")],
        n: Annotated[int, typer.Option("--n", help="Number of examples.")] = 3000,
        seed: Annotated[int, typer.Option(help="Random seed (shard i uses (seed, i)).")] = 0,
        split: Annotated[str, typer.Option(help="Clean speech: 'train' (TTS + real) or 'heldout' (held-out real speakers).")] = "train",
        catalog: Annotated[str, typer.Option(help="Degradations: 'train' or 'heldout' (other implementations/ranges).")] = "train",
        clip_s: Annotated[float, typer.Option(help="Clip length in seconds.")] = 4.0,
        shard_size: Annotated[int, typer.Option(help="Examples per shard file.")] = 500,
        workers: Annotated[int, typer.Option(help="1 = main process only, 2 = main + one worker process.")] = 1,
        teacher: Annotated[str, typer.Option(help="MOS teacher for the pseudo-targets: 'distillmos' or 'dnsmos'.")] = "distillmos",
    ) -> None:
        """Build partial mix-up shards (audio, 50 Hz frame labels, frame/utterance MOS targets)."""
        from rich.console import Console

        from indexer.training.shards import build_shards

        console = Console(stderr=True)
        info = build_shards(data_dir, out_dir, n, seed=seed, split=split, clip_s=clip_s, catalog=catalog,
                            shard_size=shard_size, workers=workers, teacher=teacher, log=console.print)
        _print_shard_info(console, out_dir, info)


def _register_make_benchmark(app: typer.Typer) -> None:
    @app.command("make-benchmark")
    def make_benchmark_cmd(
        out: Annotated[Path, typer.Argument(help="Output directory (manifest.jsonl + audio/).")],
        seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
        clean_dir: Annotated[Optional[Path], typer.Option(help="Folder of clean recordings (sub-folder = speaker) instead of the held-out speakers.")] = None,
        data_dir: Annotated[Path, typer.Option(help="Prepared data dir (held-out speakers, noise pools, rooms).")] = Path("data/train"),
        source: Annotated[str, typer.Option(help="Without --clean-dir: held-out 'real' speakers, held-out 'tts' voices, or 'all'.")] = "real",
        channel: Annotated[str, typer.Option(help="'wideband' (16 kHz files) or 'telephone' (telephone band, 8 kHz files).")] = "wideband",
        catalog: Annotated[str, typer.Option(help="'train' (training catalog) or 'heldout' (other implementations/ranges).")] = "train",
        minutes: Annotated[float, typer.Option(help="Approximate total length (the enroll split needs 2 events per label at least).")] = 10.0,
        file_s: Annotated[float, typer.Option(help="Length of each file in seconds.")] = 8.0,
        label: Annotated[Optional[list[str]], typer.Option(help="Restrict to these catalog labels (repeatable).")] = None,
        whole_file: Annotated[bool, typer.Option("--whole-file", help="Degrade each degraded file from start to end (one event) instead of splicing 1-3 events into clean speech.")] = False,
    ) -> None:
        """Generate a labelled benchmark (BENCHMARK.md format) with enroll/test splits, singles and pairs."""
        from rich.console import Console

        from indexer.training.benchmark import make_benchmark, validate_benchmark

        console = Console(stderr=True)
        summary = make_benchmark(out, seed=seed, data_dir=data_dir, clean_dir=clean_dir, channel=channel, catalog=catalog,
                                 minutes=minutes, source=source, file_s=file_s, labels=label or None, whole_file=whole_file,
                                 log=console.print)
        problems = validate_benchmark(out)
        if problems:
            from indexer.errors import DegsearchError

            raise DegsearchError(f"generated benchmark is invalid: {problems[:3]}", "report this as a bug")
        console.print(f"{out}: {summary['files']} files, {summary['seconds'] / 60:.1f} min, {summary['events']} events, "
                      f"{len(summary['labels'])} labels, speakers: {', '.join(summary['speakers'][:8])}")


def _register_train(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        preset: Annotated[str, typer.Option(help="Recipe: default (= balanced-5: balanced-4 with a type head fitted on the training clips, ~540 min), balanced-4 (trains balanced-3, then telephone-3-long taught by it, and joins balanced-3's distilled and first telephone-distilled with it, ~535 min), balanced-3 (trains balanced-2, then two seeds of telephone-distilled taught by it, and joins distilled with them, ~435 min), balanced-2 (trains fast and telephone, joins them as balanced, trains distilled taught by it, then joins distilled and telephone, ~215 min), balanced (fast + telephone, ~140 min), fast (log-mel CNN), telephone (fast, narrowband clips and 30 % of wideband ones band-limited to 4 kHz as 8 kHz files are, 18,000 examples, ~1.3 s of context), distilled (fast on telephone's data, also trained to reproduce balanced's cosines, ~75 min), telephone-distilled (telephone's recipe, also trained to reproduce balanced-2's cosines, ~120 min), telephone-3 (telephone's recipe taught by the installed balanced-3, seed 2: the shipped telephone-3, ~100 min), telephone-3-long (telephone-3 with a sixth temporal block, ~2.5 s of context, ~100 min), accurate (frozen distillmos front end + the same head), smoke.")] = "default",
        data: Annotated[Path, typer.Option(help="Shard root with train/, val_real/ and val_heldout_catalog/ (e.g. data/shards).")] = Path("data/shards"),
        out: Annotated[Path, typer.Option(help="Checkpoint to write (also OUT.best.pt, OUT.state.pt for --resume, OUT.json).")] = Path("models/fast.pt"),
        resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.state.pt (same preset).")] = False,
        seed: Annotated[Optional[int], typer.Option(help="Random seed (default: the preset's, 0).")] = None,
        minutes: Annotated[Optional[float], typer.Option(help="Wall-clock training budget in minutes (default: the preset's).")] = None,
        threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: the preset's, 2).")] = None,
        encoder: Annotated[Optional[str], typer.Option(help="Override the encoder: logmel_cnn, distillmos or hf:/path/to/local_model_dir.")] = None,
        max_steps: Annotated[Optional[int], typer.Option(help="Step budget, which also sets the LR schedule (default: the preset's).")] = None,
        noise_floor: Annotated[Optional[float], typer.Option(help="Share of training clips given a faint noise floor (default: the preset's).")] = None,
        classes_per_batch: Annotated[Optional[int], typer.Option(help="Degradation classes per batch, clips split evenly among them; 0 draws clips at random (default: the preset's).")] = None,
        narrowband_8khz: Annotated[Optional[bool], typer.Option("--narrowband-8khz/--narrowband-as-stored", help="Band-limit narrowband clips to 4 kHz as an 8 kHz file would be, or train on them as the shards store them (default: the preset's, as stored).")] = None,
        train_examples: Annotated[Optional[int], typer.Option(help="Train on the first N examples of the shards directory; 0 reads them all (default: the preset's).")] = None,
        wideband_8khz_share: Annotated[Optional[float], typer.Option(help="With --narrowband-8khz: share of the wideband training clips band-limited to 4 kHz too, as speech recorded band-limited at the source (default: the preset's, 0).")] = None,
        class_weight: Annotated[Optional[float], typer.Option(help="Weight of the cosine degradation-classifier term on the embedding; 0 turns it off (default: the preset's).")] = None,
        class_on_clean: Annotated[Optional[bool], typer.Option("--class-on-clean/--class-degraded-only", help="Whether the classifier term also sees clean frames (default: the preset's).")] = None,
        class_from_step: Annotated[Optional[int], typer.Option(help="First training step of the classifier terms (default: the preset's, 0).")] = None,
        region_class_weight: Annotated[Optional[float], typer.Option(help="Weight of the same classifier on each clip's pooled degraded frames (the segment embedding); 0 turns it off (default: the preset's, 0).")] = None,
        freeze_encoder_steps: Annotated[Optional[int], typer.Option(help="Pretrained encoders: steps trained with the encoder frozen before fine-tuning it (default: the preset's).")] = None,
        cache_frozen: Annotated[Optional[bool], typer.Option("--cache-frozen/--no-cache-frozen", help="Pretrained encoders: compute each clip's frozen encoder features once, beside the shards (default: the preset's).")] = None,
        frozen_feature_dropout: Annotated[Optional[float], typer.Option(help="Dropout on cached frozen-encoder features (default: the preset's, 0).")] = None,
        ema_decay: Annotated[Optional[float], typer.Option(min=0.0, max=0.99999, help="Keep an exponential moving average of the weights with this decay per step and validate and save it; 0 turns it off (default: the preset's, 0).")] = None,
        distill_from: Annotated[Optional[str], typer.Option(help="Distil a trained model (name or checkpoint, e.g. balanced) into this one: its frame embeddings of the training clips become a target for the cosines between frames (default: the preset's, none).")] = None,
        distill_weight: Annotated[Optional[float], typer.Option(min=0.0, help="Weight of that distillation term (default: the preset's, 10).")] = None,
        detect_weight: Annotated[Optional[float], typer.Option(min=0.0, help="Weight of a ranking term that puts clean frames nearer the mean clean frame than degraded ones, the score detection thresholds; 0 turns it off (default: the preset's, 0).")] = None,
        speaker_adversarial: Annotated[Optional[float], typer.Option(min=0.0, help="Scale of the reversed gradient from a speaker-group classifier on the embedding, so embeddings stop telling speakers apart; 0 turns it off (default: the preset's, 0).")] = None,
        vtlp_warp: Annotated[Optional[float], typer.Option(min=0.0, max=0.3, help="Fast encoder: scale each training clip's frequency axis by a random factor in 1 +- this (vocal-tract-length perturbation, labels unchanged), so speakers' spectral envelopes become a nuisance; 0 turns it off (default: the preset's, 0).")] = None,
        freq_mixstyle: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Fast encoder: in this share of training clips, give each log-mel band a mix of its own and another same-channel clip's mean and spread over time (frequency-wise MixStyle, labels unchanged), so other speakers' and microphones' colourings become a nuisance; 0 turns it off (default: the preset's, 0).")] = None,
        real_only: Annotated[Optional[bool], typer.Option("--real-only/--all-speech", help="Train on the real-speech clips of the loaded examples only, the TTS ones dropped (default: the preset's, all).")] = None,
        real_share: Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="Keep only this share of the real-speech clips, the TTS clips all kept: see --real-share-by (default: the preset's, 1: all).")] = None,
        real_share_by: Annotated[Optional[str], typer.Option(help="How --real-share picks: 'speaker' keeps the real clips of that share of the real speaker groups (a learning curve over speakers), 'clip' that share of the real clips from every group (its control, at the same count of real clips); seeded (default: the preset's, speaker).")] = None,
        init_from: Annotated[Optional[str], typer.Option(help="Fine-tune: start from this trained network's weights (name or checkpoint of one network with the preset's architecture, e.g. distilled) instead of a random initialisation (default: the preset's, none).")] = None,
        tau: Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="Temperature of the supervised contrastive loss over frames (default: the preset's, 0.1 as in paper 003).")] = None,
        batch_size: Annotated[Optional[int], typer.Option(min=2, help="Clips per training step (default: the preset's, 24); with --max-steps, it sets how many examples the run sees.")] = None,
        lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate of the cosine schedule (default: the preset's, 0.002); lower it to fine-tune.")] = None,
        dilations: Annotated[Optional[str], typer.Option(help="Dilations of the temporal blocks, comma-separated: one block each, so they set the context (default: the preset's, 1,2,4,8: ~0.7 s).")] = None,
        channels: Annotated[Optional[str], typer.Option(help="Fast encoder: output channels of its conv layers, comma-separated, one layer each; each layer halves the mel bands (default: the preset's, 24,32,64,64).")] = None,
        hidden: Annotated[Optional[int], typer.Option(min=1, help="Channels of the temporal blocks (default: the preset's, 192).")] = None,
        n_mels: Annotated[Optional[int], typer.Option(min=8, max=256, help="Fast encoder: log-mel bands of its front end (default: the preset's, 64).")] = None,
        n_fft: Annotated[Optional[int], typer.Option(min=160, max=2048, help="Fast encoder: analysis window of its front end in samples at 16 kHz, the hop staying 10 ms (default: the preset's, 400: 25 ms).")] = None,
    ) -> None:
        """Train a frame model on mix-up shards; keeps the checkpoint with the lowest held-out real-speech validation error."""
        from dataclasses import replace

        from rich.console import Console

        from indexer.errors import ConfigError
        from indexer.training.train import PRESETS, parse_positive_ints, train

        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}", f"use one of: {', '.join(PRESETS)}")
        cfg = PRESETS[preset]
        overrides = {k: v for k, v in (("seed", seed), ("minutes", minutes), ("threads", threads), ("encoder", encoder),
                                       ("max_steps", max_steps), ("noise_floor_p", noise_floor),
                                       ("classes_per_batch", classes_per_batch), ("narrowband_8khz", narrowband_8khz),
                                       ("wideband_8khz_share", wideband_8khz_share), ("train_examples", train_examples), ("class_weight", class_weight),
                                       ("class_on_clean", class_on_clean), ("class_from_step", class_from_step),
                                       ("region_class_weight", region_class_weight),
                                       ("freeze_encoder_steps", freeze_encoder_steps), ("cache_frozen", cache_frozen),
                                       ("frozen_feature_dropout", frozen_feature_dropout), ("ema_decay", ema_decay),
                                       ("distill_from", distill_from), ("distill_weight", distill_weight),
                                       ("detect_weight", detect_weight), ("speaker_adversarial", speaker_adversarial), ("vtlp_warp", vtlp_warp), ("freq_mixstyle", freq_mixstyle),
                                       ("real_only", real_only), ("real_share", real_share), ("real_share_by", real_share_by),
                                       ("init_from", init_from), ("lr", lr), ("batch_size", batch_size), ("tau", tau)) if v is not None}
        network = dict(cfg.network)
        if dilations is not None:
            network["dilations"] = parse_positive_ints(dilations, "dilations", "1,2,4,8,16")
        if channels is not None:
            network["channels"] = parse_positive_ints(channels, "channels", "32,48,96,96")
        for key, value in (("hidden", hidden), ("n_mels", n_mels), ("n_fft", n_fft)):
            if value is not None:
                network[key] = value
        recipe_changes = sorted(set(overrides) - {"seed", "threads"}) + (["network"] if network != cfg.network else [])
        if cfg.members and recipe_changes:
            raise ConfigError(f"preset {preset!r} trains the presets {', '.join(cfg.members)} as they are; "
                              f"it takes no {', '.join(recipe_changes)}",
                              "train changed members one by one (--preset fast ...) and join them with degsearch combine")
        cfg = replace(cfg, **overrides, network=network)
        console = Console(stderr=True)
        summary = train(data, out, cfg, resume=resume, console=console)
        if cfg.members:
            console.print(f"wrote {summary['path']} (model id {summary['model_id']}), an ensemble of "
                          f"{', '.join(summary['members'])}; threshold {summary['threshold']:.3f}")
        else:
            console.print(f"wrote {summary['path']} (model id {summary['model_id']}); best held-out real validation "
                          f"error {summary['best_val_error']:.2f} % (frame EER and prototype error) after {summary['steps']} steps; threshold {summary['threshold']:.3f}")


def _register_combine(app: typer.Typer) -> None:
    @app.command()
    def combine(
        out: Annotated[Path, typer.Argument(help="Ensemble checkpoint to write (a summary goes beside it as .json).")],
        members: Annotated[list[str], typer.Argument(help="Trained models, two or more networks in all: shipped names (fast, telephone, balanced-4: its networks) or checkpoint files.")],
        data: Annotated[Path, typer.Option(help="Shards directory: its training clips give the clean enrollments, its validation sets the threshold.")] = Path("data/train/shards"),
        type_head: Annotated[float, typer.Option(help="Weight of a type head fitted on the training clips (LDA of the members' hidden features and their squares), appended to the embedding; 0: none. balanced-5 is balanced-4 with 1.")] = 0.0,
    ) -> None:
        """Join trained frame models into one calibrated ensemble (the shipped 'balanced-5' model is distilled + telephone-distilled + telephone-3-long with a type head of weight 1).

        An ensemble given as a member stands for its networks: `degsearch combine balanced-5.pt balanced-4 --type-head 1`."""
        from rich.console import Console

        from indexer.training.combine import combine as combine_models

        summary = combine_models(members, data, out, type_head=type_head)
        Console(stderr=True).print(
            f"wrote {summary['path']} (model id {summary['model_id']}), an ensemble of {', '.join(summary['members'])}; "
            f"threshold {summary['threshold']:.3f}; held-out real validation frame EER "
            + " / ".join(f"{v:.1f} %" for k, v in summary.items() if k.startswith("frame_eer_")))


def register(app: typer.Typer) -> None:
    """Add the model/data commands to the CLI."""
    _register_prepare_data(app)
    _register_build_shards(app)
    _register_make_benchmark(app)
    _register_train(app)
    _register_combine(app)
