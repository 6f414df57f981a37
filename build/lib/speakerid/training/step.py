"""The training step, public so that the loop, the benchmarks and the tests all run the same code: waveforms
as loaded -> augmentation -> features -> model and head (under autocast) -> backward -> optimizer step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speakerid.augment import NoiseReverb, SpeedPerturb
from speakerid.data.audio import to_float

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    loss: torch.Tensor    # scalar, on the device
    top1: torch.Tensor
    finite: torch.Tensor  # bool: False when the step was skipped


class TrainingStep:
    """One optimizer step over a batch. Its results stay on the device: the host reads them at logging
    steps only, so it never waits for the device here. A step whose gradient is NaN/inf (a NaN/inf loss
    gives one) is skipped by the loss scaler: parameters and optimizer state stay those of the last good
    step.

    `model` and `head` are the modules the step calls (wrapped for DDP and/or torch.compile when the run
    asks for it); `parameters` are the plain modules' parameters, which the optimizer updates."""

    def __init__(self, *, device: torch.device, fbank: nn.Module, specaugment: nn.Module | None,
                 speed: SpeedPerturb | None, noise_reverb: NoiseReverb | None, model: nn.Module, head: nn.Module,
                 parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 precision: str = "fp32", grad_clip_norm: float | None = None, compile: bool = False):
        self.device = device
        self.fbank, self.specaugment = fbank, specaugment
        self.speed, self.noise_reverb = speed, noise_reverb
        self.model, self.head = model, head
        self.parameters = parameters
        self.optimizer, self.scaler = optimizer, scaler
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        self.grad_clip_norm = grad_clip_norm
        self.apply_noise_reverb = None
        if noise_reverb is not None:
            # Its many elementwise passes over the batch fuse well: compiled along with the model.
            self.apply_noise_reverb = torch.compile(noise_reverb.apply, dynamic=False) if compile else noise_reverb.apply

    @torch.no_grad()
    def augment(self, waves: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms as loaded -> float32 crops on the device, speed-perturbed, reverberated and noised."""
        waves = to_float(waves.to(self.device, non_blocking=True))
        labels = labels.to(self.device, non_blocking=True)
        if self.speed is not None:
            waves, labels = self.speed(waves, labels)
        if self.noise_reverb is not None:
            waves = self.apply_noise_reverb(waves, self.noise_reverb.draw(waves.shape[0]))
        return waves, labels

    @torch.no_grad()
    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """Log-Mel features (always float32: Fbank turns autocast off) with SpecAugment when configured."""
        features = self.fbank(waves)
        return self.specaugment(features) if self.specaugment is not None else features

    def __call__(self, waves: torch.Tensor, labels: torch.Tensor, augment: bool = True) -> StepResult:
        """One step on a batch as the loader gives it; augment=False takes crops of the training length as
        they are (benchmarks time the step without the augmentation that way)."""
        if augment:
            waves, labels = self.augment(waves, labels)
        else:
            waves, labels = to_float(waves.to(self.device)), labels.to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss, top1 = self.head(self.model(self.features(waves)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(loss.detach(), top1.detach(), torch.isfinite(grad_norm))
