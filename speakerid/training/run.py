"""`train(cfg)`: set up a run from the config, then fit it. `setup_run` is the table of contents of a run;
each part is built by one function of speakerid.training.setup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from speakerid.augment import NoiseReverb, SpeedPerturb
from speakerid.config import validate_config
from speakerid.distributed import env_from_torchrun
from speakerid.training import setup
from speakerid.training.loop import fit
from speakerid.training.state import RunState
from speakerid.training.step import TrainingStep


@dataclass
class Run:
    """The objects of one run, as setup_run built them."""

    cfg: DictConfig
    env: setup.Environment
    lists: setup.Lists
    parts: setup.ModelParts
    optimisation: setup.Optimisation
    speed: SpeedPerturb | None
    noise_reverb: NoiseReverb | None
    loader: setup.Loader
    step: TrainingStep
    state: RunState

    @property
    def skip_log(self) -> Path:
        return self.env.run_dir / setup.SKIP_LOG

    def fit(self) -> dict[str, Any]:
        return fit(self)

    def close(self) -> None:
        self.parts.train_model = self.parts.train_head = self.step = None  # DDP wrappers first
        self.env.close()


def setup_run(cfg: DictConfig) -> Run:
    """Build every part of a run, cheapest checks first: config errors before the processes start, list
    errors before any audio is read, and the audio banks before the first step."""
    setup.log_from_rank_0(env_from_torchrun())                           # before the config's warnings
    validate_config(cfg)
    env = setup.setup_environment(cfg)                                   # processes, device, seeds
    try:
        return _setup_parts(cfg, env)
    except BaseException:  # no Run to close: the claim on the folder must not outlive a failed setup
        env.close()
        raise


def _setup_parts(cfg: DictConfig, env: setup.Environment) -> Run:
    checkpoints, resume_from, checkpoint = setup.setup_run_folder(cfg, env)  # never over another run
    lists = setup.setup_lists(cfg, env, resume_from)                     # train list and trials, checked
    speed = setup.setup_speed_perturbation(cfg, env, len(lists.speakers))
    num_classes = speed.num_classes if speed is not None else len(lists.speakers)
    parts = setup.setup_model_and_head(cfg, env, num_classes, lists.speakers,  # fbank, model, head
                                       resuming=checkpoint is not None)
    parts = setup.wrap_for_training(cfg, env, parts)                     # DDP, torch.compile
    optimisation = setup.setup_optimisation(cfg, parts, env.device,      # optimizer, LR and margin schedules
                                            setup.steps_per_epoch(cfg, len(lists.train)))
    noise_reverb = setup.setup_noise_reverb(cfg, env)                    # noise and RIR banks
    read_samples = speed.read_samples if speed is not None else setup.crop_samples(cfg)
    loader = setup.setup_loader(cfg, env, lists.train, read_samples, env.run_dir / setup.SKIP_LOG)
    step = TrainingStep(device=env.device, fbank=parts.fbank, specaugment=parts.specaugment, speed=speed,
                        noise_reverb=noise_reverb, model=parts.train_model, head=parts.train_head,
                        parameters=parts.parameters, optimizer=optimisation.optimizer, scaler=optimisation.scaler,
                        precision=cfg.trainer.precision, grad_clip_norm=cfg.trainer.grad_clip_norm,
                        compile=cfg.trainer.compile)
    state = RunState(cfg, env.dist, env.device, checkpoints, parts.model, parts.head, optimisation.optimizer,
                     optimisation.scaler, lists.train)
    if checkpoint is not None:
        state.restore(resume_from, checkpoint)
    return Run(cfg, env, lists, parts, optimisation, speed, noise_reverb, loader, step, state)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured and return the final metrics (train/epoch_loss, val/eer, best/eer, ...)."""
    run = setup_run(cfg)
    try:
        return run.fit()
    finally:
        run.close()
