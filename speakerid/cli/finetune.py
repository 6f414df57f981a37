"""Fine-tune a trained model on your own speakers, in one command, and measure it before and after.

    speakerid finetune --root /data/my_speakers --model best.pt --out-dir finetuned/
    speakerid finetune --root /data/my_speakers --model best.pt --out-dir finetuned/ trainer.epochs=20 \\
        data.batch_size=64 optim.lr=5e-4
    speakerid finetune --root ... --model ... --out-dir ... --held-out 0.1 --split-seed 7 --device cuda

--root is a folder in the VoxCeleb layout, <root>/<speaker>/<session>/<file>.wav|flac. The command
  1. splits its speakers, seeded (--split-seed), into training speakers and held-out ones (--held-out, a
     fraction; at least 2 held-out and 2 training speakers);
  2. writes <out-dir>/train_list.txt and <out-dir>/trials.txt: balanced target and non-target trials among
     the held-out speakers only (targets across sessions, at most --trials-per-speaker per speaker);
  3. scores --model on those trials: the EER before fine-tuning;
  4. trains, starting from --model's encoder with a new head for the training speakers
     (trainer.init_from=<model> trainer.init_head=false, experiment=finetune: 10 epochs), validating on the
     held-out trials after every epoch, into <out-dir>/train/<date_time>/. The model and fbank configs are
     --model's (written to <out-dir>/configs/); the key=value overrides go to training as they would
     to `speakerid train` (trainer.epochs, data.batch_size, optim.lr, augment=..., ...);
  5. scores the last epoch's model on the same trials: the EER after. Both go to <out-dir>/finetune.json.

--model is a training checkpoint (best.pt, last.pt, step-N.pt), an averaged checkpoint or a model file of
`speakerid export`. A model file holds no training state: its encoder weights and configs are written to
<out-dir>/start.pt, a checkpoint of the encoder alone that training starts from. Its mean embedding,
calibration and threshold are not carried over (they belong to the model before fine-tuning), so the EER
before is measured, as the one after, on plain cosine scores.

--out-dir must be new or empty. Exit status: 0 done, 1 an error (named), 2 wrong options, 128+N stopped by
signal N after checkpointing (the run's last lines give the command that resumes it).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from speakerid import builders
from speakerid.checkpoint import FORMAT_VERSION, load_checkpoint, save_atomic
from speakerid.cli import usage_error
from speakerid.cli.overrides import hydra_override, hydra_value
from speakerid.cli.train import launch
from speakerid.training.state import check_run_folder_free
from speakerid.config import ConfigError, validate_config
from speakerid.configs import compose
from speakerid.data.audio import AudioError
from speakerid.data.lists import ListFormatError, MissingFilesError
from speakerid.data.prepare import make_trials, scan_voxceleb_folder, split_speakers, write_train_list, write_trial_list
from speakerid.evaluation import Evaluation
from speakerid.io import check_writable, write_json_atomic, write_text_atomic
from speakerid.metrics import format_eer
from speakerid.model_file import LoadedModel, load_extractor
from speakerid.training.setup import resolve_device, steps_per_epoch

HELP = "fine-tune a model on your own speakers (VoxCeleb-layout folder) and compare its EER before and after"

# Keys this command sets itself, from --root, --model, --out-dir and --device: an override of one of them
# (or of a key below one of them) is refused rather than silently replaced ...
SET_HERE = ("experiment", "model", "features.fbank", "data.dir", "data.train_list", "data.train_root",
            "data.generate", "data.sample_rate", "eval.dir", "eval.trials", "eval.root", "eval.name",
            "eval.strip_prefix", "trainer.init_from", "trainer.init_head", "trainer.device", "trainer.resume",
            "runs_root", "name", "run_dir", "hydra")
# ... and so is the choice of these groups, whose other keys (SpecAugment, scoring) are the user's.
GROUPS_SET_HERE = ("features", "eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path,
                        help="your speakers' audio: <root>/<speaker>/<session>/<file>.wav|flac")
    parser.add_argument("--model", required=True, type=Path,
                        help="the model to start from: a checkpoint (best.pt, last.pt), an averaged checkpoint or "
                             "a model file")
    parser.add_argument("--out-dir", required=True, type=Path, help="a new or empty folder for the lists, "
                                                                    "the training run and finetune.json")
    parser.add_argument("overrides", nargs="*", help="training overrides: trainer.epochs=20 data.batch_size=64 ...")
    parser.add_argument("--held-out", type=float, default=0.25,
                        help="fraction of the speakers held out for the trials (default: %(default)s; at least 2)")
    parser.add_argument("--split-seed", type=int, default=1234, help="seed of the speaker split and the trials")
    parser.add_argument("--trials-per-speaker", type=int, default=500,
                        help="target trials per held-out speaker, at most (as many non-target trials in all)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N], for training and scoring")


def run(args: argparse.Namespace) -> int:
    refused = [o for o in args.overrides if sets_a_key_of_this_command(o)]
    if refused:
        return usage_error(args.command, f"{', '.join(refused)}: finetune sets these from --root, --model, "
                                         f"--out-dir and --device (the model and fbank are --model's)")
    if not 0.0 < args.held_out < 1.0:
        return usage_error(args.command, f"--held-out is a fraction between 0 and 1, got {args.held_out}")
    if args.trials_per_speaker < 1:
        return usage_error(args.command, f"--trials-per-speaker must be at least 1, got {args.trials_per_speaker}")
    out = args.out_dir.resolve()
    try:
        check_out_dir(out)
        loaded = load_extractor(args.model)
        held_out, train_files = write_lists(args.root.resolve(), out, args.held_out, args.split_seed,
                                            args.trials_per_speaker)
        trained = OmegaConf.create(loaded.config)
        write_model_configs(trained, out / "configs")
        start = args.model.resolve() if loaded.kind != "model file" else write_start_checkpoint(loaded, out)
        overrides = training_overrides(args, trained, loaded.sample_rate, start, out)
        cfg = compose("train", overrides)
        cfg.run_dir = str(out / "train")  # for the checks only: the training run claims its own folder
        validate_config(cfg)  # a wrong override stops here, not after the first evaluation
        steps_per_epoch(cfg, train_files)  # a batch larger than the list too, before the run folder is made
        evaluation = Evaluation(builders.build_eval_protocol(cfg))
        evaluation.check_audio(cfg.data.sample_rate, bool(cfg.data.resample))
        device = resolve_device(args.device)
        before = held_out_eer(loaded.extractor, evaluation, cfg, device)
    except (ConfigError, HydraException, OmegaConfBaseException, ListFormatError, MissingFilesError, AudioError,
            ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if any(x is not None for x in (loaded.embedding_mean, loaded.calibration, loaded.threshold)):
        print(f"note: {args.model}'s mean embedding, calibration and threshold are not carried over to the fine-tuned "
              f"model, and the EER before is on plain cosine scores, as the one after", flush=True)
    print(f"EER on the held-out speakers before fine-tuning: {format_eer(before)} ({args.model})", flush=True)

    results = launch(overrides, "speakerid train")  # exits, as `speakerid train` does, on an error or a signal
    last = Path(results["run_dir"]) / "checkpoints" / "last.pt"
    extractor, _ = builders.extractor_from_checkpoint(load_checkpoint(last), source=str(last))
    after = held_out_eer(extractor, evaluation, cfg, device)
    write_json_atomic(out / "finetune.json", {
        "root": str(args.root.resolve()), "model": str(args.model.resolve()), "model_kind": loaded.kind,
        "held_out_speakers": held_out,
        "trials": str(out / "trials.txt"), "train_list": str(out / "train_list.txt"), "run_dir": results["run_dir"],
        "final_model": str(last), "eer_before": before, "eer_after": after,
        "overrides": overrides, "epochs": results["epochs"]})
    print(f"EER on the {len(held_out)} held-out speakers ({len(evaluation.trials)} trials in {out / 'trials.txt'}):\n"
          f"  before fine-tuning  {format_eer(before)}  {args.model}\n"
          f"  after fine-tuning   {format_eer(after)}  {last}\n"
          f"summary: {out / 'finetune.json'}")
    return 0


def sets_a_key_of_this_command(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key in GROUPS_SET_HERE or any(key == k or key.startswith(f"{k}.") for k in SET_HERE)


# What this command writes into --out-dir before training starts: an attempt that stopped there (a typo in an
# override, a bad audio file) leaves only these, and running the command again rewrites them.
BEFORE_TRAINING = {"train_list.txt", "trials.txt", "configs", "start.pt"}


def check_out_dir(out: Path) -> None:
    """--out-dir is new, empty or holds only what attempts that never trained wrote (a second fine-tuning into
    it would mix two runs), and is writable."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out-dir {out} is a file: give a new or empty folder")
    others = sorted(p.name for p in out.iterdir()
                    if p.name not in BEFORE_TRAINING and not (p.name == "train" and failed_starts_only(p))
                    ) if out.exists() else []
    if others:
        raise FileExistsError(f"--out-dir {out} is not empty (it holds {', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}): give a new or empty folder")
    check_writable(out, folder=True, what="--out-dir")
    out.mkdir(parents=True, exist_ok=True)


def failed_starts_only(runs: Path) -> bool:
    """<out-dir>/train holds only run folders without a checkpoint: training stopped before its first one (a
    failed start, e.g. a bad file). They are kept, and the next attempt's run goes beside them; a run with a
    checkpoint (and its validation scores) makes --out-dir taken."""
    return runs.is_dir() and all(run.is_dir() and not any(run.glob("checkpoints/*")) and not _in_training(run)
                                 for run in runs.iterdir())


def _in_training(run: Path) -> bool:
    """A run training there now, before its first checkpoint (RunFolderClaim): its --out-dir is taken."""
    try:
        check_run_folder_free(run)
    except FileExistsError:
        return True
    return False


def write_lists(root: Path, out: Path, held_out: float, seed: int, targets_per_speaker: int) -> tuple[list[str], int]:
    """<out>/train_list.txt (the training speakers) and <out>/trials.txt (the held-out ones); prints what it
    wrote and returns the held-out speakers and the number of training files."""
    entries = scan_voxceleb_folder(root)  # names the files that are not at speaker/session/file depth
    utterances: dict[str, list[str]] = defaultdict(list)
    for speaker, path in entries:
        utterances[speaker].append(path)
    train, held = split_speakers(list(utterances), held_out, seed)
    trials = make_trials({s: utterances[s] for s in held}, np.random.default_rng([seed, 1]), targets_per_speaker)
    training = set(train)  # once: rebuilt per file it took 3 minutes for a million files
    train_entries = [(s, p) for s, p in entries if s in training]
    write_train_list(train_entries, out / "train_list.txt")
    write_trial_list(trials, out / "trials.txt")
    n_target = sum(t.label for t in trials)
    print(f"{root}: {len(entries)} files of {len(utterances)} speakers\n"
          f"  training   {len(train)} speakers, {sum(len(utterances[s]) for s in train)} files: "
          f"{out / 'train_list.txt'}\n"
          f"  held out   {len(held)} speakers ({' '.join(held)}): {n_target} target and "
          f"{len(trials) - n_target} non-target trials: {out / 'trials.txt'}")
    return held, len(train_entries)


def write_start_checkpoint(loaded: LoadedModel, out: Path) -> Path:
    """<out>/start.pt: a model file's encoder as a checkpoint holding the encoder alone, with the model and fbank
    configs it was built with, which trainer.init_from reads (with trainer.init_head=false it needs nothing
    else: optimizer, schedules and progress start anew). The fbank is rebuilt from its config, as for any
    checkpoint; its buffers (window, mel filters) follow from it."""
    prefix = "model."
    encoder = {k[len(prefix):]: v for k, v in loaded.extractor.state_dict().items() if k.startswith(prefix)}
    path = out / "start.pt"
    save_atomic({"format_version": FORMAT_VERSION, "model": encoder, "config": loaded.config,
                 "made_from": {"model_file": str(loaded.path.resolve()), "sha256": loaded.sha256}}, path)
    return path


def write_model_configs(trained: DictConfig, configs: Path) -> None:
    """--model's model and fbank as config group options (model=checkpoint, features=checkpoint) in
    a folder Hydra searches: training builds exactly the model the weights fit, and the printed resume
    command builds it again. SpecAugment keeps the features group's default."""
    write_text_atomic(configs / "model" / "checkpoint.yaml",
                      "# The model config of the checkpoint fine-tuning starts from\n"
                      + OmegaConf.to_yaml(trained.model))
    write_text_atomic(configs / "features" / "checkpoint.yaml",
                      "# The fbank of the checkpoint fine-tuning starts from; SpecAugment as features=fbank\n"
                      "defaults:\n  - fbank\n  - _self_\n\n" + OmegaConf.to_yaml({"fbank": trained.features.fbank}))


def training_overrides(args: argparse.Namespace, trained: DictConfig, sample_rate: int, start: Path,
                       out: Path) -> list[str]:
    """The overrides of the training run: the user's, then what this command sets; training starts from the
    weights in `start` (--model, or the start.pt made from a model file)."""
    root = str(args.root.resolve())
    return ["experiment=finetune", *args.overrides,
            f"hydra.searchpath=[{hydra_value('file://' + str(out / 'configs'), always_quoted=True)}]",
            "model=checkpoint", "features=checkpoint", f"data.sample_rate={sample_rate}",
            hydra_override("data.dir", str(out)), hydra_override("data.train_root", root),
            "data.generate=null", "eval=folder", hydra_override("eval.root", root),
            "eval.name=held_out", hydra_override("trainer.init_from", str(start)),
            "trainer.init_head=false", hydra_override("trainer.device", args.device),
            hydra_override("runs_root", str(out)), "name=train"]


def held_out_eer(extractor: Any, evaluation: Evaluation, cfg: DictConfig, device: torch.device) -> float:
    result = evaluation.run(extractor.to(device), device, cfg.data.sample_rate, bool(cfg.data.resample))
    return float(result.metrics["eer"])
