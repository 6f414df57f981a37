"""Setting up a run, one function per part. `speakerid.training.run.setup_run` calls them in an order that
lets mistakes surface cheaply: processes and run folder, lists (no audio read), model and head, the
training wrappers, optimisation, augmentation banks (the first audio read), the loader."""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from speakerid import builders
from speakerid.augment import NoiseReverb, SpeedPerturb
from speakerid.checkpoint import CheckpointDir, config_differences, load_checkpoint, load_state_strict
from speakerid.data.dataset import CropDataset, EpochSampler, collate
from speakerid.data.audio import AudioError
from speakerid.data.check import HEADER_RECORD, check_training_audio
from speakerid.data.lists import (MissingFilesError, TrainList, check_files_exist, read_train_list,
                                  warn_duplicate_paths)
from speakerid.data.synthetic import CorpusSpec, ensure_corpus
from speakerid.distributed import (
    DistEnv,
    ShardedSampler,
    barrier,
    broadcast_object,
    env_from_torchrun,
    init_process_group,
    shutdown,
)
from speakerid.evaluation import Evaluation
from speakerid.features import samples_for_frames
from speakerid.io import check_writable
from speakerid.resources import auto_loader_workers, available_cpus
from speakerid.schedules import LRSchedule, MarginSchedule, epoch_at
from speakerid.training.state import (RunFolderClaim, check_run_folder_free, find_resume_checkpoint,
                                     claim_resumed_run, load_resume_checkpoint)

log = logging.getLogger("speakerid")

SKIP_LOG = "skipped_files.txt"  # in the run folder: files replaced under data.bad_audio=skip


# ------------------------------------------------------------------------------------------ environment
@dataclass
class Environment:
    """The processes of a run (torchrun or one), its device and its folder."""

    dist: DistEnv
    device: torch.device
    run_dir: Path
    claim: RunFolderClaim | None = None  # rank 0's claim on run_dir, taken by setup_run_folder
    resumed_claim: RunFolderClaim | None = None  # and on the folder of the run it resumed, when another

    def close(self) -> None:
        """End the process group, then give up the run folder. DDP wrappers must be gone first: their
        destructors still talk to the process group (destroyed the other way round, a process can abort at
        exit)."""
        try:
            if self.dist.enabled:
                gc.collect()
                shutdown(self.dist)
        finally:
            for claim in (self.claim, self.resumed_claim):
                if claim is not None:
                    claim.release()
            self.claim = self.resumed_claim = None


def resolve_device(name: str, dist: DistEnv = DistEnv()) -> torch.device:
    """trainer.device; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name} but CUDA is not available on this machine (use cpu or auto)")
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    return device


class RankPrefix(logging.Filter):
    """'rank N: ' before what a process other than rank 0 logs, so that a failure of one rank is told apart."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"rank {self.rank}: {record.msg}"
        return True


def log_from_rank_0(dist: DistEnv) -> None:
    """Rank 0 speaks for the run; the other ranks log only their errors, which may be theirs alone (a file
    their node cannot read, a GPU out of memory), named with their rank. Their warnings would repeat rank
    0's once per process."""
    if dist.is_main:
        return
    log.setLevel(logging.ERROR)
    if not any(isinstance(f, RankPrefix) for f in log.filters):
        log.addFilter(RankPrefix(dist.rank))


def check_batch_for_processes(cfg: DictConfig, dist: DistEnv) -> None:
    """Under torchrun data.batch_size is the global batch, split evenly over the processes into shares that
    BatchNorm can normalise (at least 2 utterances). Checked before the processes connect, so that every
    rank stops at once, naming the key, rather than in the loader or inside BatchNorm at the first step."""
    if not dist.enabled:
        return
    batch, world = cfg.data.batch_size, dist.world_size
    fits = max(2 * world, round(batch / world) * world)
    if batch % world:
        raise ValueError(f"data.batch_size={batch} is the global batch, split over the {world} processes torchrun "
                         f"started, and {world} does not divide it: give a multiple of {world} "
                         f"(e.g. data.batch_size={fits})")
    if batch // world < 2:
        raise ValueError(f"data.batch_size={batch} over {world} processes leaves {batch // world} utterance per "
                         f"process, and BatchNorm needs at least 2: give data.batch_size={2 * world} or more "
                         f"(a multiple of {world}), or start fewer processes")


def setup_environment(cfg: DictConfig) -> Environment:
    """Processes (their batch shares checked first), device, the run folder (rank 0's name for all), backends
    and seeds."""
    dist = env_from_torchrun()
    check_batch_for_processes(cfg, dist)
    device = resolve_device(cfg.trainer.device, dist)
    init_process_group(dist, device)
    # Processes started a second apart can name different dated folders: all use rank 0's.
    run_dir = Path(broadcast_object(str(cfg.run_dir), dist))
    tcfg = cfg.trainer
    threads = resolve_num_threads(tcfg.get("num_threads", "auto"), device,
                                  resolve_num_workers(cfg.data.num_workers, device))
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark) and not tcfg.deterministic
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    return Environment(dist, device, run_dir)


def resolve_num_threads(value: Any, device: torch.device, loader_workers: int) -> int | None:
    """trainer.num_threads: torch's intra-op threads in the training process (None: leave torch's choice).

    auto, on a CPU: the CPUs left once each loader worker has one, at least 1. PyTorch's threads meet at a
    barrier after every operator, so when one of them loses its core (to a loader worker or to any other
    process) all wait for it: on this project's 2-core machine two threads and a loader worker made the
    default run take 3 min 45 s or 7 min 21 s depending on what else ran. One thread per free core keeps a
    step at the pace of the cores it has. When OMP_NUM_THREADS is set (torchrun sets 1 for several
    processes per node) or the model runs on a GPU (the host thread only launches work), auto changes
    nothing."""
    if value != "auto":
        return int(value)
    if device.type == "cuda" or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, available_cpus() - loader_workers)


def setup_run_folder(cfg: DictConfig, env: Environment) -> tuple[CheckpointDir, Path | None, dict | None]:
    """The run's checkpoint folder, and the checkpoint to resume from with its path (None for a new run).
    Never trains over another run's checkpoints, nor beside a run in progress in the folder (rank 0 claims
    it for the whole run: RunFolderClaim), and fails now when the folder cannot be written or the run to
    resume has already finished (RunFinished)."""
    checkpoints = CheckpointDir(env.run_dir / "checkpoints", keep=cfg.trainer.keep_checkpoints)
    if env.dist.is_main:  # a run in progress there is named as such, not as checkpoints to resume
        check_run_folder_free(env.run_dir)
    resume_from = find_resume_checkpoint(cfg, env.run_dir)
    if resume_from is not None and env.dist.is_main:
        env.resumed_claim = claim_resumed_run(resume_from, env.run_dir)
    if resume_from is None and checkpoints.last.exists():
        raise FileExistsError(f"{env.run_dir} already holds a run's checkpoints: resume it with "
                              f"trainer.resume=true, or give another run_dir")
    if (resume_from is not None and checkpoints.last.exists()
            and resume_from.resolve().parent != checkpoints.folder.resolve()):
        # Its step-N.pt, last.pt and best.pt would be replaced by another run's.
        raise FileExistsError(f"trainer.resume={resume_from}: {env.run_dir} already holds another run's "
                              f"checkpoints; resume into a new run_dir (or resume that run with its own last.pt)")
    checkpoint = None if resume_from is None else load_resume_checkpoint(resume_from, cfg.trainer.epochs)
    if checkpoint is not None:
        check_resume_position(cfg, env.dist, resume_from, checkpoint)
    check_writable(env.run_dir, folder=True, what="run folder")
    env.run_dir.mkdir(parents=True, exist_ok=True)
    if env.dist.is_main:  # before anything is written there; two runs started together: one of them stops here
        env.claim = RunFolderClaim(env.run_dir)
    if resume_from is not None and env.dist.is_main:  # best.pt names the run's best, wherever it was saved
        checkpoints.adopt_best(resume_from.parent / "best.pt", resumed=checkpoint["progress"])
    # The run's config.yaml and checkpoints then say which checkpoint trainer.resume=true (or a relative path)
    # took, or that it took none: `speakerid summarize` reads it to tell a resumed run from a new one.
    cfg.trainer.resume = False if resume_from is None else str(resume_from.resolve())
    return checkpoints, resume_from, checkpoint


def check_resume_position(cfg: DictConfig, dist: DistEnv, path: Path, checkpoint: dict) -> None:
    """A mid-epoch checkpoint goes on with the rest of its epoch's order, which EpochSampler draws from the
    seed, the epoch and the train list (RunState._check_train_list checks the list): the seed must be the
    checkpoint's. Under torchrun the ranks take their shares of whole global batches, so the checkpoint must
    have stopped at a multiple of this run's data.batch_size (one process starts anywhere)."""
    progress = checkpoint["progress"]
    position, batch = progress["position"], cfg.data.batch_size
    saved_seed = (checkpoint.get("config") or {}).get("seed", cfg.seed)  # older checkpoints: not known
    if position and saved_seed != cfg.seed:
        raise ValueError(
            f"trainer.resume={path}: the checkpoint stopped {position} utterances into epoch {progress['epoch'] + 1}, "
            f"whose order was drawn from seed={saved_seed}; with seed={cfg.seed} the rest of the epoch would be "
            f"drawn from another order (some utterances twice, others never). Resume with seed={saved_seed}, or "
            f"from a checkpoint written at an epoch's end ({path.parent}/step-<N>.pt), after which the next "
            f"epochs are drawn from the new seed")
    if not dist.enabled or position % batch == 0:
        return
    saved = ((checkpoint.get("config") or {}).get("data") or {}).get("batch_size")
    raise ValueError(
        f"trainer.resume={path}: the checkpoint stopped {position} utterances into epoch {progress['epoch'] + 1}, "
        f"and under {dist.world_size} processes the rest of the epoch is taken in whole global batches of "
        f"data.batch_size={batch}, of which {position} is not a multiple. Resume with a data.batch_size that "
        f"divides {position} and is a multiple of {dist.world_size} (the checkpoint's was {saved}), in one "
        f"process, or from a checkpoint written at an epoch's end ({path.parent}/step-<N>.pt)")


# ------------------------------------------------------------------------------------------ data
@dataclass
class Lists:
    """What the run trains and validates on, read and checked before any audio is."""

    train: TrainList
    evaluation: Evaluation | None  # the `eval` protocol made ready; None with `~eval`

    @property
    def speakers(self) -> list[str]:
        return self.train.speaker_ids


def prepare_corpus(data_cfg: DictConfig) -> None:
    """Generate the synthetic corpus when the data config asks for one (no-op when it exists)."""
    if data_cfg.get("generate") is not None:
        spec = CorpusSpec(**OmegaConf.to_container(data_cfg.generate))
        log.info("synthetic corpus: %s (generated on first use)", data_cfg.dir)
        ensure_corpus(data_cfg.dir, spec)


def setup_lists(cfg: DictConfig, env: Environment, resume_from: Path | None = None) -> Lists:
    """The train list and the validation trials: parsed (a malformed line stops here, named) and, with
    data.check_files, every listed file checked to exist and to be audio the loader can read (a resumed
    run reads again only the files changed since the run it resumes read them)."""
    data = cfg.data
    protocol = builders.build_eval_protocol(cfg) if cfg.get("eval") is not None else None
    if env.dist.is_main:
        prepare_corpus(data)
    barrier(env.dist)
    train_list = read_train_list(data.train_list, data.train_root)
    if env.dist.is_main:
        warn_duplicate_paths(data.train_list, train_list)
    evaluation = None if protocol is None else Evaluation(protocol, check_files=False, require_labels=True)
    if data.check_files:
        t0 = time.perf_counter()
        # Rank 0 looks for the files and reads their headers (a million of them on VoxCeleb2: minutes, logged
        # as it goes) and every rank stops on what it found.
        found = None
        if env.dist.is_main:
            log.info("checking the %d files of train list %s (data.check_files=false skips this)", len(train_list),
                     data.train_list)
            try:
                check_files_exist(data.train_root, train_list.paths, what=f"train list {data.train_list}")
                previous = None if resume_from is None else resume_from.parent.parent / HEADER_RECORD
                check_training_audio(data.train_root, train_list.paths, crop_samples(cfg), data.sample_rate,
                                     data.resample, stop=data.get("bad_audio", "error") == "error",
                                     what=f"train list {data.train_list}", record=env.run_dir / HEADER_RECORD,
                                     previous=previous)
            except (AudioError, MissingFilesError) as e:
                found = e
        found = broadcast_object(found, env.dist)
        if found is not None:
            raise found
        if evaluation is not None:  # a trial file that cannot be embedded stops the run now, not after an epoch
            evaluation.check_files()
            evaluation.check_audio(data.sample_rate, data.resample)
        log.info("checked %d listed files in %.1f s", len(train_list), time.perf_counter() - t0)
    return Lists(train_list, evaluation)


def crop_samples(cfg: DictConfig) -> int:
    """data.crop_frames as waveform samples, with the fbank's own hop and window."""
    fbank = cfg.features.fbank
    return samples_for_frames(cfg.data.crop_frames, fbank.hop_length, fbank.win_length)


def steps_per_epoch(cfg: DictConfig, utterances: int) -> int:
    """Full global batches per epoch (the last, partial one is dropped)."""
    steps = utterances // cfg.data.batch_size
    if steps == 0:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} is larger than the train list ({utterances})")
    return steps


def resolve_num_workers(value: Any, device: torch.device) -> int:
    """data.num_workers; auto: see speakerid.resources.auto_loader_workers (at most 2 on a CPU)."""
    return auto_loader_workers(device, cpu_device_limit=2) if value == "auto" else int(value)


@dataclass
class Loader:
    dataset: CropDataset
    sampler: EpochSampler | ShardedSampler
    loader: DataLoader
    steps_per_epoch: int


def setup_loader(cfg: DictConfig, env: Environment, train_list: TrainList, read_samples: int,
                 skip_log: Path) -> Loader:
    """Loader workers read crops of `read_samples` (longer than the training crop when speed perturbation
    will shorten them on the device). `data.batch_size` is the global batch: with W processes each takes
    its 1/W share of every batch that a single process would take, so the data per step and the
    per-epoch schedule do not change."""
    data = cfg.data
    dataset = CropDataset(train_list, read_samples, data.sample_rate, data.resample, data.sample_dtype,
                          bad_audio=data.bad_audio, skip_log=skip_log, read_threads=data.get("read_threads", 1))
    sampler = EpochSampler(len(dataset), seed=cfg.seed)
    if env.dist.enabled:
        sampler = ShardedSampler(sampler, data.batch_size, env.dist)
    workers = resolve_num_workers(data.num_workers, env.device)
    loader = DataLoader(
        dataset,
        batch_size=data.batch_size // env.dist.world_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        drop_last=True,  # BatchNorm needs more than one sample, and steps stay equal in size
        pin_memory=bool(data.pin_memory) and env.device.type == "cuda",
        persistent_workers=bool(data.persistent_workers) and workers > 0,
        prefetch_factor=int(data.prefetch_factor) if workers else None,
        # Its own generator, so creating loader iterators never consumes the global RNG.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return Loader(dataset, sampler, loader, steps_per_epoch(cfg, len(dataset)))


# ------------------------------------------------------------------------------------------ model
@dataclass
class ModelParts:
    """The plain modules (checkpoints and validation use these) and those the training step calls:
    the same modules wrapped for DDP (gradients averaged over ranks) and/or torch.compile."""

    fbank: nn.Module
    specaugment: nn.Module | None
    model: nn.Module
    head: nn.Module
    train_model: nn.Module | None = None
    train_head: nn.Module | None = None

    @property
    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + list(self.head.parameters())


def setup_model_and_head(cfg: DictConfig, env: Environment, num_classes: int, speakers: list[str],
                         resuming: bool = False) -> ModelParts:
    """Fbank, SpecAugment, model and head on the device; a new run takes its first weights from
    trainer.init_from when given (a resumed one gets them from its checkpoint)."""
    parts = ModelParts(builders.build_fbank(cfg).to(env.device), builders.build_specaugment(cfg),
                       builders.build_model(cfg).to(env.device),
                       builders.build_head(cfg, num_classes=num_classes).to(env.device))
    if cfg.trainer.get("init_from") and not resuming:
        initialise_from(Path(cfg.trainer.init_from), parts, speakers, bool(cfg.trainer.init_head),
                        OmegaConf.to_container(cfg, resolve=True))
    if env.dist.rank:  # the same initial weights everywhere, but each rank its own augmentation draws
        torch.manual_seed(cfg.seed + 1000 * env.dist.rank)
    return parts


def initialise_from(path: Path, parts: ModelParts, speakers: list[str], head: bool,
                    config: dict[str, Any] | None = None) -> None:
    """Start from the weights of an earlier run (large-margin fine-tuning, new data): model and, with
    `head`, the classification head, loaded strictly (differing keys and shapes are named). This run's
    model and fbank settings (in its resolved `config`) must be those the checkpoint saved: a switch such
    as unbiased_context_std, or another hop or band, changes what the weights compute, not their shapes.
    Only tensors are read; the optimizer, schedules and progress start anew."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    load_state_strict(parts.model, checkpoint["model"], what=f"trainer.init_from={path}: model")
    saved = checkpoint.get("config") or {}
    if config is not None and saved.get("model") is not None:
        differences = [f"model.{d}" for d in builders.model_config_differences(saved["model"], config["model"])]
        differences += config_differences(saved, config, "features.fbank")
        if differences:
            raise RuntimeError(f"trainer.init_from={path}: its model was built with other settings than this run's "
                               f"(checkpoint -> this run): {'; '.join(differences)}. The weights would compute "
                               f"something else here; give this run the checkpoint's model and fbank settings")
    if head:
        if checkpoint.get("speakers") != speakers:
            theirs = len(checkpoint.get("speakers") or [])
            raise RuntimeError(f"trainer.init_from={path}: its head was trained on {theirs} speakers that differ "
                               f"from the {len(speakers)} of this train list; give trainer.init_head=false to start "
                               f"a new head")
        load_state_strict(parts.head, checkpoint["head"], what=f"trainer.init_from={path}: head")
    log.info("initialised the model%s from %s", " and head" if head else "", path)


def wrap_for_training(cfg: DictConfig, env: Environment, parts: ModelParts) -> ModelParts:
    """DDP (with SyncBatchNorm on GPUs when asked) and torch.compile around the modules the step calls."""
    tcfg = cfg.trainer
    train_model, train_head = parts.model, parts.head
    if env.dist.enabled:
        if tcfg.sync_batchnorm and env.device.type == "cuda":
            parts.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(parts.model)
        ids = [env.device] if env.device.type == "cuda" else None
        train_model = DistributedDataParallel(parts.model, device_ids=ids)
        train_head = DistributedDataParallel(parts.head, device_ids=ids)
    if tcfg.compile:
        train_model = torch.compile(train_model, dynamic=False)
        train_head = torch.compile(train_head, dynamic=False)
    parts.train_model, parts.train_head = train_model, train_head
    return parts


# ------------------------------------------------------------------------------------------ optimisation
@dataclass
class Optimisation:
    """The optimizer with its loss scaler, and what changes every step: the learning rate and the head's
    margin, both functions of epochs done, so that they do not depend on the batch size or the number of
    GPUs and a resumed run continues on the same curves."""

    optimizer: torch.optim.Optimizer
    lr_schedule: LRSchedule
    margin_schedule: MarginSchedule | None
    scaler: torch.amp.GradScaler
    steps_per_epoch: int

    def apply_schedules(self, epoch: int, steps_into_epoch: int, head: nn.Module) -> None:
        """Set the learning rate and the margin for the step after `epoch` whole epochs and `steps_into_epoch`
        steps of this run's batch size: a run resumed with another batch size (so another step count per
        epoch) continues at the same point of the curves, which the run's total step count would not give."""
        epoch = epoch_at(epoch * self.steps_per_epoch + steps_into_epoch, self.steps_per_epoch)
        self.lr_schedule.apply_to(self.optimizer, epoch)
        if self.margin_schedule is not None:
            head.m = self.margin_schedule.margin_at(epoch)


def setup_optimisation(cfg: DictConfig, parts: ModelParts, device: torch.device, steps_per_epoch: int
                       ) -> Optimisation:
    optimizer = builders.build_optimizer(cfg, parts.parameters, device)
    # A loss scaler at every precision: besides fp16's dynamic scaling, it is what skips a step whose
    # gradient is NaN/inf, without the host waiting for the device when the optimizer is fused. At
    # fp32/bf16 its scale stays a power of two <= 1, which leaves the results bit-identical.
    fp16 = cfg.trainer.precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16 if fp16 else 1.0,
                                  growth_interval=2000 if fp16 else 2**30)
    return Optimisation(optimizer, builders.build_lr_schedule(cfg), builders.build_margin_schedule(cfg), scaler,
                        steps_per_epoch)


# ------------------------------------------------------------------------------------------ augmentation
def setup_speed_perturbation(cfg: DictConfig, env: Environment, num_speakers: int) -> SpeedPerturb | None:
    speed = builders.build_speed_perturb(cfg, num_speakers, crop_samples(cfg))
    return None if speed is None else speed.to(env.device)


def setup_noise_reverb(cfg: DictConfig, env: Environment) -> NoiseReverb | None:
    """Noise and RIR banks, read here, once (the first audio the run reads), onto the training device."""
    noise_reverb = builders.build_noise_reverb(cfg, crop_samples(cfg))
    return None if noise_reverb is None else noise_reverb.to(env.device)
