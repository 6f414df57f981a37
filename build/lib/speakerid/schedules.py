"""Learning-rate and margin schedules as pure functions of the position in training, in epochs.

The position is fractional epochs done, `epoch_at(step, steps_per_epoch)` (0 = start of training), evaluated
every optimizer step. Defined in epochs, a schedule does not change with the batch size or the number of GPUs;
being a pure function of the step, it needs no state of its own, and a resumed run continues on the same curve.

Epochs here count from 0 (epochs done). WeSpeaker's margin schedule counts from 1 (its epoch n starts at
iteration (n - 1) * epoch_iter), so its `increase_start_epoch: 20` is 19 here; its LR schedule and all of
3D-Speaker's already count epochs done and carry over unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from speakerid.config import is_int, is_number, require


def _is_real(value: object) -> bool:
    return is_number(value) and math.isfinite(value)


def _check_epoch(epoch: float) -> None:
    require(_is_real(epoch) and epoch >= 0, "epoch", "a finite number >= 0 (epochs done)", epoch)


def _check_lr_span(initial_lr: float, final_lr: float, final_may_be_zero: bool) -> None:
    require(_is_real(initial_lr) and initial_lr > 0, "scheduler.initial_lr", "a learning rate > 0", initial_lr)
    low = "0 <=" if final_may_be_zero else "0 <"
    require(_is_real(final_lr) and (final_lr >= 0 if final_may_be_zero else final_lr > 0)
            and final_lr <= initial_lr, "scheduler.final_lr", f"a learning rate with {low} final_lr <= "
            f"initial_lr = {initial_lr}", final_lr)


def _check_epochs(epochs: float, warm_up_epochs: float) -> None:
    require(_is_real(epochs) and epochs > 0, "scheduler.epochs", "a number of epochs > 0", epochs)
    require(_is_real(warm_up_epochs) and 0 <= warm_up_epochs <= epochs, "scheduler.warm_up_epochs",
            f"a number of epochs in [0, epochs = {epochs}]", warm_up_epochs)


def epoch_at(step: int, steps_per_epoch: int) -> float:
    """Fractional epochs done after `step` optimizer steps, when an epoch takes `steps_per_epoch` of them."""
    require(is_int(step) and step >= 0, "step", "an integer >= 0", step)
    require(is_int(steps_per_epoch) and steps_per_epoch >= 1, "steps_per_epoch", "an integer >= 1", steps_per_epoch)
    return step / steps_per_epoch


class LRSchedule(ABC):
    """A learning rate for every point of training: lr_at(epoch)."""

    @abstractmethod
    def lr_at(self, epoch: float) -> float:
        """The learning rate after `epoch` (fractional) epochs of training."""

    def apply_to(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        """Set the optimizer's learning rates for this point of training; return param group 0's.

        Group 0 gets lr_at(epoch); every other group keeps its ratio to group 0 of the learning rates the groups
        were built with. Those are recorded once as group["initial_lr"] (the key torch's schedulers use), which
        is saved with the optimizer's state_dict, so a resumed run keeps the ratios without scheduler state.
        """
        groups = optimizer.param_groups
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        reference = groups[0]["initial_lr"]
        if not reference > 0:
            raise ValueError(f"param group 0 was built with lr={reference!r}; the other groups' learning rates "
                             "are scaled relative to it, so it must be > 0")
        lr = self.lr_at(epoch)
        for group in groups:
            group["lr"] = lr * (group["initial_lr"] / reference)
        return lr


class WarmupThenDecay(LRSchedule):
    """A warm-up over the first `warm_up_epochs`, then a decay from initial_lr to final_lr at `epochs`."""

    final_lr_may_be_zero: bool

    def __init__(self, initial_lr: float, final_lr: float, epochs: float, warm_up_epochs: float):
        _check_lr_span(initial_lr, final_lr, self.final_lr_may_be_zero)
        _check_epochs(epochs, warm_up_epochs)
        self.initial_lr, self.final_lr = float(initial_lr), float(final_lr)
        self.epochs, self.warm_up_epochs = float(epochs), float(warm_up_epochs)


class WarmupExponential(WarmupThenDecay):
    """WeSpeaker's ExponentialDecrease with warm_from_zero (wenet-e2e/wespeaker wespeaker/utils/schedulers.py):

        lr(e) = initial_lr * (final_lr / initial_lr) ** (e / epochs) * min(1, e / warm_up_epochs)

    The exponential decay runs from epoch 0 and the linear warm-up from 0 multiplies it, so at the end of the
    warm-up lr is initial_lr * (final_lr / initial_lr) ** (warm_up_epochs / epochs), a little under initial_lr.
    After `epochs` it stays at final_lr (WeSpeaker never runs past its num_epochs).

    WeSpeaker also multiplies the whole curve by world_size * batch_size / 64 (a linear scaling rule on a
    64-utterance reference batch); that factor is not applied here: give the learning rates it would produce.
    """

    final_lr_may_be_zero = False  # the decay is a power of final_lr / initial_lr

    def lr_at(self, epoch: float) -> float:
        _check_epoch(epoch)
        lr = self.initial_lr * (self.final_lr / self.initial_lr) ** (min(epoch, self.epochs) / self.epochs)
        if epoch < self.warm_up_epochs:
            lr *= epoch / self.warm_up_epochs
        return lr


class WarmupCosine(WarmupThenDecay):
    """3D-Speaker's WarmupCosineScheduler (modelscope/3D-Speaker speakerlab/process/scheduler.py), whose max_lr,
    min_lr, warmup_epoch and fix_epoch are initial_lr, final_lr, warm_up_epochs and epochs here:

        e < warm_up_epochs:            lr = final_lr + (initial_lr - final_lr) * e / warm_up_epochs
        warm_up_epochs <= e < epochs:  lr = final_lr + (initial_lr - final_lr) * (1 + cos(pi * p)) / 2,
                                       p = (e - warm_up_epochs) / (epochs - warm_up_epochs)
        e >= epochs:                   lr = final_lr

    The warm-up starts from final_lr, not from 0.
    """

    final_lr_may_be_zero = True

    def lr_at(self, epoch: float) -> float:
        _check_epoch(epoch)
        span = self.initial_lr - self.final_lr
        if epoch < self.warm_up_epochs:
            return self.final_lr + span * epoch / self.warm_up_epochs
        if epoch < self.epochs:
            progress = (epoch - self.warm_up_epochs) / (self.epochs - self.warm_up_epochs)
            return self.final_lr + span * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr


class StepDecay(LRSchedule):
    """lr(e) = initial_lr * gamma ** floor(e / step_size): torch's StepLR stepped once per epoch (TaoRuijie's
    ECAPA-TDNN recipe: gamma 0.97, step_size 1), evaluated at any point of the epoch."""

    def __init__(self, initial_lr: float, gamma: float = 0.97, step_size: int = 1):
        require(_is_real(initial_lr) and initial_lr > 0, "scheduler.initial_lr", "a learning rate > 0", initial_lr)
        require(_is_real(gamma) and 0 < gamma <= 1, "scheduler.gamma", "a factor in (0, 1]", gamma)
        require(is_int(step_size) and step_size >= 1, "scheduler.step_size", "an integer number of epochs >= 1",
                step_size)
        self.initial_lr, self.gamma, self.step_size = float(initial_lr), float(gamma), int(step_size)

    def lr_at(self, epoch: float) -> float:
        _check_epoch(epoch)
        return self.initial_lr * self.gamma ** math.floor(epoch / self.step_size)


class MarginSchedule:
    """The margin rising from initial_margin to final_margin between two points of training, as WeSpeaker's
    MarginScheduler (wenet-e2e/wespeaker wespeaker/utils/schedulers.py; 3D-Speaker's is the same), updated
    every step:

        e < increase_start_epoch:   initial_margin
        e >= fix_start_epoch:       final_margin
        otherwise                   initial_margin + (final_margin - initial_margin) * r(t),
                                    t = (e - increase_start_epoch) / (fix_start_epoch - increase_start_epoch)
        r(t) = 1 - 0.001 ** t   ("exp": fast at first, WeSpeaker's and 3D-Speaker's voxceleb setting)
        r(t) = t                ("linear")

    "exp" reaches 0.999 of the way just before fix_start_epoch and then steps to final_margin, as the references
    do. (WeSpeaker writes 0.001 as 1e-3 / (1 + 1e-6), which moves r by under 6e-8.) Epochs are epochs done: for
    WeSpeaker's 1-based increase_start_epoch / fix_start_epoch subtract 1 (see the module docstring).
    """

    INCREASE_TYPES = ("exp", "linear")

    def __init__(self, increase_start_epoch: float, fix_start_epoch: float, initial_margin: float = 0.0,
                final_margin: float = 0.2, increase_type: str = "exp"):
        require(_is_real(initial_margin) and initial_margin >= 0, "margin_schedule.initial_margin",
                "a margin >= 0", initial_margin)
        require(_is_real(final_margin) and final_margin >= initial_margin, "margin_schedule.final_margin",
                f"a margin >= initial_margin = {initial_margin}", final_margin)
        require(_is_real(increase_start_epoch) and increase_start_epoch >= 0, "margin_schedule.increase_start_epoch",
                "a number of epochs >= 0", increase_start_epoch)
        require(_is_real(fix_start_epoch) and fix_start_epoch >= increase_start_epoch,
                "margin_schedule.fix_start_epoch", f"a number of epochs >= increase_start_epoch = "
                f"{increase_start_epoch}", fix_start_epoch)
        require(increase_type in self.INCREASE_TYPES, "margin_schedule.increase_type",
                " or ".join(self.INCREASE_TYPES), increase_type)
        self.initial_margin, self.final_margin = float(initial_margin), float(final_margin)
        self.increase_start_epoch, self.fix_start_epoch = float(increase_start_epoch), float(fix_start_epoch)
        self.increase_type = increase_type

    def margin_at(self, epoch: float) -> float:
        """The margin after `epoch` (fractional) epochs of training."""
        _check_epoch(epoch)
        if epoch >= self.fix_start_epoch:
            return self.final_margin
        if epoch < self.increase_start_epoch:
            return self.initial_margin
        t = (epoch - self.increase_start_epoch) / (self.fix_start_epoch - self.increase_start_epoch)
        ratio = 1.0 - 0.001 ** t if self.increase_type == "exp" else t
        return self.initial_margin + (self.final_margin - self.initial_margin) * ratio
