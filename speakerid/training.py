"""The training loop: `train(cfg)` builds everything from the config, trains, evaluates, checkpoints and
returns its final metrics."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from speakerid import builders
from speakerid.checkpoint import (
    FORMAT_VERSION,
    library_versions,
    load_checkpoint,
    load_state_strict,
    rng_state,
    save_atomic,
    set_rng_state,
)
from speakerid.config import validate_config
from speakerid.data.audio import to_float
from speakerid.data.dataset import CropDataset, EpochSampler, collate
from speakerid.data.lists import check_files_exist, read_train_list, read_trials
from speakerid.data.synthetic import CorpusSpec, ensure_corpus
from speakerid.evaluation import EmbeddingExtractor, evaluate_trials
from speakerid.features import samples_for_frames
from speakerid.logger import MetricLogger

log = logging.getLogger("speakerid")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0            # epoch in progress (0-based); equals the number of finished epochs
    position: int = 0         # samples of this epoch's order already consumed
    step: int = 0             # optimizer steps since the start of the run
    best_eer: float = math.inf


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name} but CUDA is not available on this machine (use cpu or auto)")
    return device


def resolve_num_workers(value: Any, device: torch.device) -> int:
    if value != "auto":
        return int(value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # On a GPU the loader must keep up with a fast step; on a CPU the workers compete with the step for cores.
    return min(16, max(1, cpus - 1)) if device.type == "cuda" else min(2, max(0, cpus // 2))


def prepare_corpus(data_cfg: DictConfig) -> None:
    """Generate the synthetic corpus when the data config asks for one (no-op when it exists)."""
    if data_cfg.get("generate") is not None:
        spec = CorpusSpec(**OmegaConf.to_container(data_cfg.generate))
        log.info("synthetic corpus: %s (generated on first use)", data_cfg.dir)
        ensure_corpus(data_cfg.dir, spec)


def find_resume_checkpoint(resume: Any, run_dir: Path) -> Path | None:
    """trainer.resume: false -> None; a path -> that file; true -> the newest last.pt among the runs of
    this name (sibling folders of this run's folder)."""
    if resume is False or resume is None:
        return None
    if resume is True:
        candidates = [p for p in run_dir.parent.glob("*/checkpoints/last.pt") if run_dir not in p.parents]
        candidates += list(run_dir.glob("checkpoints/last.pt"))
        if not candidates:
            raise FileNotFoundError(
                f"trainer.resume=true but no earlier run of this name has a checkpoint "
                f"(looked for {run_dir.parent}/*/checkpoints/last.pt); pass a checkpoint path instead"
            )
        return max(candidates, key=lambda p: p.stat().st_mtime)
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: no such checkpoint file")
    return path


class Trainer:
    """Holds the objects of one run; `fit()` trains and returns the final metrics."""

    def __init__(self, cfg: DictConfig):
        validate_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        resume_path = find_resume_checkpoint(cfg.trainer.resume, self.run_dir)
        if resume_path is None and (self.ckpt_dir / "last.pt").exists():
            # Never train over a run's checkpoints by accident.
            raise FileExistsError(f"{self.run_dir} already holds a run's checkpoints: resume it with "
                                  f"trainer.resume=true, or give another run_dir")
        self.device = resolve_device(cfg.trainer.device)
        tcfg = cfg.trainer
        torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark) and not tcfg.deterministic
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)

        # Lists first (cheap), so that config and list errors come before any audio is touched.
        data = cfg.data
        prepare_corpus(data)
        self.train_list = read_train_list(data.train_list, data.train_root)
        self.trials = read_trials(data.trials) if data.get("trials") else None
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
        # The training step calls these; with trainer.compile they are compiled wrappers of the same
        # modules (checkpoints and validation use the plain modules).
        self.train_model, self.train_head = self.model, self.head
        if tcfg.compile:
            self.train_model = torch.compile(self.model, dynamic=False)
            self.train_head = torch.compile(self.head, dynamic=False)
        self.optimizer = builders.build_optimizer(cfg, list(self.model.parameters()) + list(self.head.parameters()))
        self.scheduler = builders.build_scheduler(cfg, self.optimizer)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tcfg.precision]
        self.scaler = torch.amp.GradScaler("cuda", enabled=tcfg.precision == "fp16")
        self.progress = Progress()

        if data.check_files:
            t0 = time.perf_counter()
            check_files_exist(data.train_root, self.train_list.paths, what=f"train list {data.train_list}")
            if self.trials is not None:
                files = list(dict.fromkeys(p for t in self.trials for p in (t.enrol, t.test)))
                check_files_exist(data.trials_root, files, what=f"trial list {data.trials}")
            log.info("checked %d listed files in %.1f s", len(self.train_list), time.perf_counter() - t0)

        # Noise and RIR banks are read here, once, after the cheap list checks.
        self.noise_reverb = builders.build_noise_reverb(cfg, self.num_samples)
        if self.noise_reverb is not None:
            self.noise_reverb.to(self.device)

        # Workers only read crops (longer ones when speed perturbation will shorten them on the device).
        read_samples = self.speed.input_samples if self.speed is not None else self.num_samples
        self.dataset = CropDataset(self.train_list, read_samples, data.sample_rate, data.resample,
                                   data.sample_dtype)
        self.sampler = EpochSampler(len(self.dataset), seed=cfg.seed)
        workers = resolve_num_workers(data.num_workers, self.device)
        self.loader = DataLoader(
            self.dataset,
            batch_size=data.batch_size,
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
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "speakers": list(self.speakers),
            "versions": library_versions(),
        }

    def save(self, name: str = "last") -> Path:
        path = self.ckpt_dir / f"{name}.pt"
        save_atomic(self._state(), path)
        return path

    def _restore(self, path: Path) -> None:
        checkpoint = load_checkpoint(path, map_location=self.device)
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
        set_rng_state(checkpoint["rng"])
        log.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch + 1, self.progress.step)

    # ---------------------------------------------------------------- training
    def _augment(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms as loaded -> float32 crops on the device, speed-perturbed, reverberated and noised."""
        waves = to_float(waves.to(self.device, non_blocking=True))
        labels = labels.to(self.device, non_blocking=True)
        if self.speed is not None:
            waves, labels = self.speed(waves, labels)
        if self.noise_reverb is not None:
            waves = self.noise_reverb(waves)
        return waves, labels

    def _train_step(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (loss, top1) as detached device tensors, so that the host does not
        wait for the device at every step (reading them is left to the logging steps)."""
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
        if self.cfg.trainer.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                list(self.model.parameters()) + list(self.head.parameters()), self.cfg.trainer.grad_clip_norm
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), top1.detach()

    def _train_epoch(self, logger: MetricLogger) -> dict[str, float]:
        tcfg = self.cfg.trainer
        batch = self.cfg.data.batch_size
        self.model.train()
        self.head.train()
        self.sampler.set_epoch(self.progress.epoch, start=self.progress.position)
        zero = torch.zeros((), device=self.device)
        epoch_loss = epoch_top1 = zero
        window_loss = window_top1 = zero
        window_steps = 0
        done = 0
        bar = None
        if tcfg.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.progress.position // batch,
                       desc=f"epoch {self.progress.epoch + 1}/{tcfg.epochs}", unit="step", dynamic_ncols=True,
                       disable=None)  # None: no bar when stderr is not a terminal (logs get epoch lines)
        window_start = time.perf_counter()
        for waves, labels in self.loader:
            loss, top1 = self._train_step(waves, labels)
            self.progress.step += 1
            self.progress.position += batch
            done += 1
            epoch_loss = epoch_loss + loss
            epoch_top1 = epoch_top1 + top1
            window_loss = window_loss + loss
            window_top1 = window_top1 + top1
            window_steps += 1
            if self.progress.step % tcfg.log_every_steps == 0:
                mean_loss, mean_top1 = (window_loss / window_steps).item(), (window_top1 / window_steps).item()
                elapsed = time.perf_counter() - window_start
                logger.log({
                    "train/loss": mean_loss,
                    "train/top1": mean_top1,
                    "train/lr": self.optimizer.param_groups[0]["lr"],
                    "train/utterances_per_s": window_steps * batch / elapsed,
                }, self.progress.step)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", top1=f"{mean_top1:.3f}",
                                    utt_s=f"{window_steps * batch / elapsed:.1f}")
                window_loss = window_top1 = zero
                window_steps = 0
                window_start = time.perf_counter()
            if bar is not None:
                bar.update(1)
            if tcfg.checkpoint_every_steps and self.progress.step % tcfg.checkpoint_every_steps == 0:
                self.save("last")
        if bar is not None:
            bar.close()
        return {"train/epoch_loss": (epoch_loss / max(done, 1)).item(),
                "train/epoch_top1": (epoch_top1 / max(done, 1)).item()}

    def validate(self) -> dict[str, float]:
        data = self.cfg.data
        extractor = EmbeddingExtractor(self.fbank, self.model)
        metrics, _ = evaluate_trials(extractor, data.trials_root, self.trials, self.device,
                                     data.sample_rate, data.resample)
        return {f"val/{k}": v for k, v in metrics.items()}

    def fit(self) -> dict[str, Any]:
        tcfg = self.cfg.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        logger = MetricLogger(self.run_dir)
        log.info("run folder: %s", self.run_dir)
        log.info("%d utterances of %d speakers; model %.2fM parameters on %s",
                 len(self.train_list), len(self.speakers),
                 sum(p.numel() for p in self.model.parameters()) / 1e6, self.device)
        results: dict[str, Any] = {}
        try:
            while self.progress.epoch < tcfg.epochs:
                t0 = time.perf_counter()
                results.update(self._train_epoch(logger))
                self.scheduler.step()
                self.progress.epoch += 1
                self.progress.position = 0
                epoch_time = time.perf_counter() - t0
                last_epoch = self.progress.epoch == tcfg.epochs
                if self.trials is not None and (self.progress.epoch % tcfg.eval_every_epochs == 0 or last_epoch):
                    val = self.validate()
                    logger.log(val, self.progress.step)
                    results.update(val)
                    if val["val/eer"] < self.progress.best_eer:
                        self.progress.best_eer = val["val/eer"]
                        self.save("best")
                self.save("last")
                logger.flush()
                summary = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k.startswith(("train/epoch", "val/")))
                log.info("epoch %d/%d done in %.1f s: %s", self.progress.epoch, tcfg.epochs, epoch_time, summary)
        finally:
            logger.close()
        results.update({"best/eer": self.progress.best_eer, "epochs": self.progress.epoch,
                        "steps": self.progress.step, "run_dir": str(self.run_dir)})
        return results


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured and return the final metrics (train/epoch_loss, val/eer, best/eer, ...)."""
    return Trainer(cfg).fit()
