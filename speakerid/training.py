"""The training loop: `train(cfg)` builds everything from the config, trains, evaluates, checkpoints and
returns its final metrics."""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from speakerid import builders
from speakerid.checkpoint import (
    FORMAT_VERSION,
    CheckpointDir,
    library_versions,
    load_checkpoint,
    load_state_strict,
    rng_state,
    set_rng_state,
)
from speakerid.config import validate_config
from speakerid.data.audio import to_float
from speakerid.data.dataset import CropDataset, EpochSampler, collate
from speakerid.data.lists import check_files_exist, read_train_list
from speakerid.data.synthetic import CorpusSpec, ensure_corpus
from speakerid.distributed import (
    DistEnv,
    ShardedSampler,
    all_gather_objects,
    any_rank,
    barrier,
    broadcast_buffers,
    broadcast_object,
    env_from_torchrun,
    init_process_group,
    shutdown,
)
from speakerid.evaluation import EmbeddingExtractor, Evaluation, EvaluationResult
from speakerid.features import samples_for_frames
from speakerid.io import write_text_atomic
from speakerid.logger import MetricLogger
from speakerid.plots import det_image

log = logging.getLogger("speakerid")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0            # epoch in progress (0-based); equals the number of finished epochs
    position: int = 0         # samples of this epoch's order already consumed
    step: int = 0             # optimizer steps since the start of the run
    best_eer: float = math.inf
    nonfinite_steps: int = 0  # steps skipped because the loss or a gradient was NaN/inf


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


def resolve_num_workers(value: Any, device: torch.device) -> int:
    if value != "auto":
        return int(value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Workers only read crops (augmentation runs on the device), so a few keep up with a fast GPU; more would
    # take the cores the main thread needs to launch the device's work. On a CPU they compete with the step.
    return min(8, max(1, cpus // 2)) if device.type == "cuda" else min(2, max(0, cpus // 2))


def prepare_corpus(data_cfg: DictConfig) -> None:
    """Generate the synthetic corpus when the data config asks for one (no-op when it exists)."""
    if data_cfg.get("generate") is not None:
        spec = CorpusSpec(**OmegaConf.to_container(data_cfg.generate))
        log.info("synthetic corpus: %s (generated on first use)", data_cfg.dir)
        ensure_corpus(data_cfg.dir, spec)


def find_resume_checkpoint(resume: Any, run_dir: Path) -> Path | None:
    """trainer.resume: false -> None; a path -> that file; true -> the newest last.pt among the runs of
    this name (this run's folder and its siblings), or None when there is none yet, so that a job script
    can always pass resume=true and be requeued at any moment."""
    if resume is False or resume is None:
        return None
    if resume is True:
        candidates = list(run_dir.parent.glob("*/checkpoints/last.pt"))
        if not candidates:
            log.warning("trainer.resume=true: no checkpoint under %s/*/checkpoints/ yet; starting a new run",
                        run_dir.parent)
            return None
        return max(candidates, key=lambda p: p.stat().st_mtime)
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: no such checkpoint file")
    return path


def _check_writable(run_dir: Path) -> None:
    """Fail now, not after the first epoch, when the run folder cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OSError(e.errno, f"run folder {run_dir} is not writable ({e.strerror})") from None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/inf loss or gradient."""


class StopSignal:
    """Turns SIGTERM/SIGINT into a request to stop after the current step (the trainer then checkpoints and
    returns); a second signal gets the default behaviour, so a stuck run can still be killed."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None


class Trainer:
    """Holds the objects of one run; `fit()` trains and returns the final metrics."""

    def __init__(self, cfg: DictConfig):
        validate_config(cfg)
        self.cfg = cfg
        self.dist = env_from_torchrun()
        self.device = resolve_device(cfg.trainer.device, self.dist)
        init_process_group(self.dist, self.device)
        if not self.dist.is_main:  # one process speaks for the run
            log.setLevel(logging.WARNING)
        # Processes started a second apart can name different dated folders: all use rank 0's.
        self.run_dir = Path(broadcast_object(str(cfg.run_dir), self.dist))
        self.checkpoints = CheckpointDir(self.run_dir / "checkpoints", keep=cfg.trainer.keep_checkpoints)
        resume_path = find_resume_checkpoint(cfg.trainer.resume, self.run_dir)
        if resume_path is None and self.checkpoints.last.exists():
            # Never train over a run's checkpoints by accident.
            raise FileExistsError(f"{self.run_dir} already holds a run's checkpoints: resume it with "
                                  f"trainer.resume=true, or give another run_dir")
        _check_writable(self.run_dir)
        tcfg = cfg.trainer
        torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark) and not tcfg.deterministic
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)

        # Lists first (cheap), so that config and list errors come before any audio is touched.
        data = cfg.data
        # Validation: the protocol of the `eval` group (`~eval` on the command line: no validation).
        protocol = builders.build_eval_protocol(cfg) if cfg.get("eval") is not None else None
        if self.dist.is_main:
            prepare_corpus(data)
        barrier(self.dist)
        self.train_list = read_train_list(data.train_list, data.train_root)
        self.evaluation = None if protocol is None else Evaluation(protocol, check_files=False, require_labels=True)
        self.speakers = self.train_list.speaker_ids

        self.num_samples = samples_for_frames(data.crop_frames, cfg.features.fbank.hop_length,
                                              cfg.features.fbank.win_length)
        self.speed = builders.build_speed_perturb(cfg, len(self.speakers), self.num_samples)
        if self.speed is not None:
            self.speed.to(self.device)
        num_classes = self.speed.num_classes if self.speed is not None else len(self.speakers)
        self.fbank = builders.build_fbank(cfg).to(self.device)
        self.specaugment = builders.build_specaugment(cfg)
        self.model = builders.build_model(cfg).to(self.device)
        self.head = builders.build_head(cfg, num_classes=num_classes).to(self.device)
        if self.dist.rank:  # the same initial weights everywhere, but each rank its own augmentation draws
            torch.manual_seed(cfg.seed + 1000 * self.dist.rank)
        # The training step calls these; they are the same modules wrapped for DDP (gradients averaged over
        # ranks) and/or torch.compile. Checkpoints and validation use the plain modules.
        self.train_model, self.train_head = self.model, self.head
        if self.dist.enabled:
            if tcfg.sync_batchnorm and self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
            self.train_head = DistributedDataParallel(self.head, device_ids=ids)
        if tcfg.compile:
            self.train_model = torch.compile(self.train_model, dynamic=False)
            self.train_head = torch.compile(self.train_head, dynamic=False)
        self.parameters = list(self.model.parameters()) + list(self.head.parameters())
        self.optimizer = builders.build_optimizer(cfg, self.parameters, self.device)
        self.scheduler = builders.build_scheduler(cfg, self.optimizer)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tcfg.precision]
        # A loss scaler at every precision: besides fp16's dynamic scaling, it is what skips a step whose
        # gradient is NaN/inf, without the host waiting for the device when the optimizer is fused. At
        # fp32/bf16 its scale stays a power of two <= 1, which leaves the results bit-identical.
        fp16 = tcfg.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0**16 if fp16 else 1.0,
                                           growth_interval=2000 if fp16 else 2**30)
        self.progress = Progress()
        self.nonfinite = NonFiniteCounter(self.device)
        self._last_save = time.monotonic()

        if data.check_files:
            t0 = time.perf_counter()
            check_files_exist(data.train_root, self.train_list.paths, what=f"train list {data.train_list}")
            if self.evaluation is not None:
                self.evaluation.check_files()
            log.info("checked %d listed files in %.1f s", len(self.train_list), time.perf_counter() - t0)

        # Noise and RIR banks are read here, once, after the cheap list checks.
        self.noise_reverb = builders.build_noise_reverb(cfg, self.num_samples)
        if self.noise_reverb is not None:
            self.noise_reverb.to(self.device)
            # Its many elementwise passes over the batch fuse well: compiled along with the model.
            self.apply_noise_reverb = (torch.compile(self.noise_reverb.apply, dynamic=False) if tcfg.compile
                                       else self.noise_reverb.apply)

        # Workers only read crops (longer ones when speed perturbation will shorten them on the device).
        read_samples = self.speed.input_samples if self.speed is not None else self.num_samples
        self.skip_log = self.run_dir / "skipped_files.txt"
        self.dataset = CropDataset(self.train_list, read_samples, data.sample_rate, data.resample,
                                   data.sample_dtype, bad_audio=data.bad_audio, skip_log=self.skip_log)
        # data.batch_size is the global batch: with W processes each takes its 1/W share of every batch
        # that a single process would take, so the data per step and the per-epoch schedule do not change.
        self.sampler = EpochSampler(len(self.dataset), seed=cfg.seed)
        if self.dist.enabled:
            self.sampler = ShardedSampler(self.sampler, data.batch_size, self.dist)
        workers = resolve_num_workers(data.num_workers, self.device)
        self.loader = DataLoader(
            self.dataset,
            batch_size=data.batch_size // self.dist.world_size,
            sampler=self.sampler,
            collate_fn=collate,
            num_workers=workers,
            drop_last=True,  # BatchNorm needs more than one sample, and steps stay equal in size
            pin_memory=bool(data.pin_memory) and self.device.type == "cuda",
            persistent_workers=bool(data.persistent_workers) and workers > 0,
            prefetch_factor=int(data.prefetch_factor) if workers else None,
            # Its own generator, so creating loader iterators never consumes the global RNG.
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.steps_per_epoch = len(self.dataset) // data.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"data.batch_size={data.batch_size} is larger than the train list ({len(self.dataset)})")

        if resume_path is not None:
            self._restore(resume_path)

    # ---------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        self.progress.nonfinite_steps = self.nonfinite.total
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(),  # replaced in save() by the states of every rank
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "speakers": list(self.speakers),
            "versions": library_versions(),
        }

    def save(self, best: bool = False) -> Path:
        """Checkpoint (rank 0 writes; every rank takes part, as each contributes its RNG state)."""
        broadcast_buffers(self.model, self.dist)  # BatchNorm statistics as rank 0 has them
        rngs = all_gather_objects(rng_state(), self.dist)
        path = self.checkpoints.last
        if self.dist.is_main:
            state = self._state()
            state["rng"], state["rng_per_rank"] = rngs[0], rngs
            path = self.checkpoints.save(state, self.progress.step)
            if best:
                self.checkpoints.save_best(state)
        barrier(self.dist)
        self._last_save = time.monotonic()
        return path

    def _restore(self, path: Path) -> None:
        # Loaded on the CPU: RNG states must stay there; load_state_dict moves the rest to the device.
        checkpoint = load_checkpoint(path, map_location="cpu")
        if "averaged_from" in checkpoint:
            raise RuntimeError(f"{path} averages {len(checkpoint['averaged_from'])} checkpoints: it has no "
                               f"optimizer or RNG state to resume from; resume from one of them")
        if checkpoint["speakers"] != list(self.speakers):
            raise RuntimeError(
                f"{path}: the checkpoint was trained on {len(checkpoint['speakers'])} speakers that differ from "
                f"the {len(self.speakers)} of {self.cfg.data.train_list}; resume needs the same train list"
            )
        load_state_strict(self.model, checkpoint["model"], what=f"{path} model")
        load_state_strict(self.head, checkpoint["head"], what=f"{path} head")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.progress = Progress(**checkpoint["progress"])
        self.nonfinite = NonFiniteCounter(self.device, total=self.progress.nonfinite_steps)
        per_rank = checkpoint.get("rng_per_rank", [checkpoint["rng"]])
        if len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank])
        else:  # another number of processes: rank 0 continues the saved stream, the others are reseeded
            set_rng_state(checkpoint["rng"])
            if self.dist.rank:
                torch.manual_seed(self.cfg.seed + 1000 * self.dist.rank + self.progress.step)
        log.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch + 1, self.progress.step)

    # ---------------------------------------------------------------- training
    def _augment(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms as loaded -> float32 crops on the device, speed-perturbed, reverberated and noised."""
        waves = to_float(waves.to(self.device, non_blocking=True))
        labels = labels.to(self.device, non_blocking=True)
        if self.speed is not None:
            waves, labels = self.speed(waves, labels)
        if self.noise_reverb is not None:
            waves = self.apply_noise_reverb(waves, self.noise_reverb.draw(waves.shape[0]))
        return waves, labels

    def _train_step(self, waves: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """One optimizer step. Its results stay on the device (the host reads them at logging steps only,
        so it never waits for the device here). A step whose gradient is NaN/inf (a NaN/inf loss gives
        one) is skipped by the loss scaler: parameters and optimizer state stay those of the last good
        step."""
        with torch.no_grad():
            waves, labels = self._augment(waves, labels)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            with torch.no_grad():
                features = self.fbank(waves)
                if self.specaugment is not None:
                    features = self.specaugment(features)
            loss, top1 = self.train_head(self.train_model(features), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.cfg.trainer.grad_clip_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.cfg.trainer.grad_clip_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(loss.detach(), top1.detach(), torch.isfinite(grad_norm))

    def _train_epoch(self, logger: MetricLogger, stop: StopSignal) -> dict[str, float]:
        """Train until the end of the epoch, or until a stop signal arrives (then return early)."""
        tcfg = self.cfg.trainer
        batch = self.cfg.data.batch_size
        self.model.train()
        self.head.train()
        self.sampler.set_epoch(self.progress.epoch, start=self.progress.position)
        epoch = DeviceMeans(self.device)
        window = DeviceMeans(self.device)
        bar = None
        if tcfg.progress_bar and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.progress.position // batch,
                       desc=f"epoch {self.progress.epoch + 1}/{tcfg.epochs}", unit="step", dynamic_ncols=True,
                       disable=None)  # None: no bar when stderr is not a terminal (logs get epoch lines)
        window_start = time.perf_counter()
        for waves, labels in self.loader:
            result = self._train_step(waves, labels)
            self.progress.step += 1
            self.progress.position += batch
            epoch.add(result)
            window.add(result)
            self.nonfinite.add(result.finite)
            log_step = self.progress.step % tcfg.log_every_steps == 0
            if log_step:
                loss, top1, skipped = window.read(self.dist)
                elapsed = time.perf_counter() - window_start
                scalars = {
                    "train/lr": self.optimizer.param_groups[0]["lr"],
                    "train/utterances_per_s": tcfg.log_every_steps * batch / elapsed,
                    "train/nonfinite_steps": self.nonfinite.total,
                }
                if self.dist.is_main and self.skip_log.exists():
                    scalars["train/skipped_files"] = _count_lines(self.skip_log)
                if not math.isnan(loss):
                    scalars.update({"train/loss": loss, "train/top1": top1})
                logger.log(scalars, self.progress.step)
                if bar is not None and not math.isnan(loss):
                    bar.set_postfix(loss=f"{loss:.3f}", top1=f"{top1:.3f}",
                                    utt_s=f"{scalars['train/utterances_per_s']:.1f}")
                self._check_nonfinite(skipped)
                window = DeviceMeans(self.device)
                window_start = time.perf_counter()
            if bar is not None:
                bar.update(1)
            if self._stop_requested(stop, log_step):
                break
            if self._checkpoint_due(log_step):
                self.save()
        if bar is not None:
            bar.close()
        loss, top1, skipped = epoch.read(self.dist)
        self._check_nonfinite(0)
        return {"train/epoch_loss": loss, "train/epoch_top1": top1}

    def _check_nonfinite(self, skipped_in_window: int) -> None:
        if skipped_in_window:
            log.warning("step %d: %d of the last steps had a NaN/inf loss or gradient and were skipped "
                        "(%d in the run)", self.progress.step, skipped_in_window, self.nonfinite.total)
        limit = self.cfg.trainer.max_nonfinite_steps
        if self.nonfinite.in_a_row >= limit:
            raise NonFiniteLossError(
                f"{self.nonfinite.in_a_row} consecutive steps had a non-finite loss or gradient (limit "
                f"trainer.max_nonfinite_steps={limit}); stopped. The last checkpoint, {self.checkpoints.last}, "
                f"holds the last good state: lower optim.lr, set trainer.grad_clip_norm, or check the data")

    def close(self) -> None:
        """End the process group, after the DDP wrappers: their destructors still talk to it (destroyed
        the other way round, a process can abort at exit)."""
        if self.dist.enabled:
            self.train_model = self.train_head = None
            gc.collect()
            shutdown(self.dist)

    def _stop_requested(self, stop: StopSignal, log_step: bool) -> bool:
        """A SIGTERM/SIGINT was received. With several processes they must stop at the same step, so the
        flag is agreed on at logging steps (one collective there, none at every step)."""
        if not self.dist.enabled:
            return stop.received is not None
        if not log_step:
            return False
        if any_rank(stop.received is not None, self.dist, self.device):
            stop.received = stop.received or signal.SIGTERM
            return True
        return False

    def _checkpoint_due(self, log_step: bool) -> bool:
        tcfg = self.cfg.trainer
        if tcfg.checkpoint_every_steps and self.progress.step % tcfg.checkpoint_every_steps == 0:
            return True
        minutes = tcfg.checkpoint_every_minutes
        if not minutes or (self.dist.enabled and not log_step):
            return False
        # Clocks differ between processes: rank 0 decides for all of them.
        return broadcast_object(time.monotonic() - self._last_save >= 60 * minutes, self.dist)

    def validate(self) -> EvaluationResult:
        """The current model on the `eval` protocol (embeddings, scores, EER and minDCF)."""
        data = self.cfg.data
        extractor = EmbeddingExtractor(self.fbank, self.model)
        broadcast_buffers(self.model, self.dist)  # every rank embeds with rank 0's BatchNorm statistics
        return self.evaluation.run(extractor, self.device, data.sample_rate, data.resample, dist=self.dist)

    @staticmethod
    def _log_validation(logger: MetricLogger, result: EvaluationResult, step: int) -> dict[str, float]:
        val = {f"val/{k}": result.metrics[k] for k in ("eer", "min_dcf_p0.01", "min_dcf_p0.05")}
        logger.log(val, step)
        title = f"{result.protocol.name} ({result.protocol.scoring})"
        logger.log_image("val/det", det_image(result.scores, result.labels, result.metrics["eer"], title), step)
        logger.log_histogram("val/scores_target", result.scores[result.labels == 1], step)
        logger.log_histogram("val/scores_nontarget", result.scores[result.labels == 0], step)
        return val

    def fit(self) -> dict[str, Any]:
        tcfg = self.cfg.trainer
        if self.dist.is_main:
            write_text_atomic(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        logger = MetricLogger(self.run_dir, enabled=self.dist.is_main)
        log.info("run folder: %s", self.run_dir)
        log.info("%d utterances of %d speakers; model %.2fM parameters on %s%s",
                 len(self.train_list), len(self.speakers),
                 sum(p.numel() for p in self.model.parameters()) / 1e6, self.device,
                 f" x {self.dist.world_size} processes" if self.dist.enabled else "")
        results: dict[str, Any] = {}
        self._last_save = time.monotonic()
        with StopSignal() as stop:
            try:
                while self.progress.epoch < tcfg.epochs:
                    t0 = time.perf_counter()
                    results.update(self._train_epoch(logger, stop))
                    if stop.received is not None:
                        path = self.save()
                        log.warning(
                            "%s received: stopped at epoch %d, step %d; checkpoint %s. Resume with the same command "
                            "plus trainer.resume=true (or trainer.resume=%s)", stop.name, self.progress.epoch + 1,
                            self.progress.step, path, self.checkpoints.last)
                        results["interrupted"] = stop.name
                        results["exit_code"] = 128 + stop.received
                        break
                    self.scheduler.step()
                    self.progress.epoch += 1
                    self.progress.position = 0
                    epoch_time = time.perf_counter() - t0
                    last_epoch = self.progress.epoch == tcfg.epochs
                    best = False
                    if self.evaluation is not None and (self.progress.epoch % tcfg.eval_every_epochs == 0
                                                        or last_epoch):
                        val = self._log_validation(logger, self.validate(), self.progress.step)
                        results.update(val)
                        if val["val/eer"] < self.progress.best_eer:
                            self.progress.best_eer = val["val/eer"]
                            best = True
                    self.save(best=best)
                    logger.flush()
                    summary = ", ".join(f"{k} {v:.4f}" for k, v in results.items()
                                        if k.startswith(("train/epoch", "val/")))
                    log.info("epoch %d/%d done in %.1f s: %s", self.progress.epoch, tcfg.epochs, epoch_time, summary)
            finally:
                logger.close()
        results.update({"best/eer": self.progress.best_eer, "epochs": self.progress.epoch,
                        "steps": self.progress.step, "nonfinite_steps": self.nonfinite.total,
                        "run_dir": str(self.run_dir)})
        return results


@dataclass
class StepResult:
    loss: torch.Tensor    # scalar, on the device
    top1: torch.Tensor
    finite: torch.Tensor  # bool: False when the step was skipped


class DeviceMeans:
    """Mean loss and top-1 over the applied steps, summed on the device and read once."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, applied steps
        self.steps = 0

    def add(self, result: StepResult) -> None:
        applied = result.finite.to(torch.float64)
        self.sums += torch.stack([torch.where(result.finite, result.loss.double(), 0.0),
                                  torch.where(result.finite, result.top1.double(), 0.0), applied])
        self.steps += 1

    def read(self, dist: DistEnv = DistEnv()) -> tuple[float, float, int]:
        """(mean loss, mean top1, skipped steps) over every rank; NaN means when no step was applied."""
        sums = self.sums
        if dist.enabled:
            sums = sums.clone()
            torch.distributed.all_reduce(sums)
        loss, top1, applied = sums.tolist()
        if applied == 0:
            return math.nan, math.nan, self.steps
        # Gradients are averaged over ranks, so a step is skipped on all of them or on none.
        return loss / applied, top1 / applied, self.steps - round(applied / dist.world_size)


class NonFiniteCounter:
    """Skipped (non-finite) steps, in total and in a row, counted on the device."""

    def __init__(self, device: torch.device, total: int = 0):
        self._total = torch.tensor(total, dtype=torch.int64, device=device)
        self._in_a_row = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, finite: torch.Tensor) -> None:
        bad = (~finite).to(torch.int64)
        self._total += bad
        self._in_a_row = (self._in_a_row + 1) * bad

    @property
    def total(self) -> int:
        return int(self._total.item())

    @property
    def in_a_row(self) -> int:
        return int(self._in_a_row.item())


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured and return the final metrics (train/epoch_loss, val/eer, best/eer, ...)."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()
