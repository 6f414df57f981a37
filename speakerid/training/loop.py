"""The training loop: epochs, the logging cadence, stop signals, the checkpoint cadence and validation.
`fit(run)` trains a set-up run (speakerid.training.run) to its last epoch and returns its final metrics."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from speakerid.distributed import DistEnv, any_rank, broadcast_buffers, broadcast_object
from speakerid.evaluation import EmbeddingExtractor, EvaluationResult
from speakerid.io import write_text_atomic
from speakerid.logger import MetricLogger, flat_hyperparameters
from speakerid.metrics import format_eer
from speakerid.plots import det_image
from speakerid.training.step import StepResult

if TYPE_CHECKING:
    from speakerid.training.run import Run

log = logging.getLogger("speakerid")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/inf loss or gradient."""


class StopSignal:
    """Turns SIGTERM/SIGINT into a request to stop after the current step (the loop then checkpoints and
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


class DeviceMeans:
    """Mean loss and top-1 over the applied steps, summed on the device and read once."""

    def __init__(self, device: torch.device, saved: dict | None = None):
        """`saved`: what state() gave when the run was checkpointed, under any number of processes. Every
        rank takes back the saved sums divided by the number of ranks that added them (the mean rank's), so
        that their sum over this run's ranks is what these ranks would have added: the means and the count
        of skipped steps come out as an uninterrupted run's, whether the resume has more processes or fewer."""
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, applied steps
        self.steps = 0
        if saved is not None:
            self.sums += torch.tensor(saved["sums"], dtype=torch.float64, device=device) / saved["world_size"]
            self.steps = saved["steps"]

    def state(self, dist: DistEnv = DistEnv()) -> dict:
        """The sums over every rank, the number of ranks and the step count, for a checkpoint (every rank
        must call it)."""
        sums = self.sums.clone()
        if dist.enabled:
            torch.distributed.all_reduce(sums)
        return {"sums": sums.tolist(), "world_size": dist.world_size, "steps": self.steps}

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


def format_duration(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TimeLeft:
    """The time left in the epoch and in the run, from the seconds per step this process has trained so far
    and the duration of its last validation (unknown until one has run)."""

    def __init__(self):
        self.seconds = 0.0
        self.steps = 0
        self.validation_seconds: float | None = None

    def add_steps(self, steps: int, seconds: float) -> None:
        self.steps += steps
        self.seconds += seconds

    def text(self, steps_left_in_epoch: int, steps_left_in_run: int, validations_left: int) -> str:
        per_step = self.seconds / max(self.steps, 1)
        run = steps_left_in_run * per_step
        unknown = ""
        if validations_left:
            if self.validation_seconds is None:
                unknown = " + validation"
            else:
                run += validations_left * self.validation_seconds
        return f"epoch {format_duration(steps_left_in_epoch * per_step)}, run {format_duration(run)}{unknown}"


def show_progress_bar(enabled: bool, dist: DistEnv) -> bool:
    """tqdm's bar (trainer.progress_bar) where it can be seen: on rank 0, when stderr is a terminal."""
    return bool(enabled) and dist.is_main and sys.stderr.isatty()


def _count_lines(path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))


class Loop:
    """The cadences of one run: what happens at each step, logging step, checkpoint and epoch end."""

    def __init__(self, run: Run, logger: MetricLogger, stop: StopSignal):
        self.run, self.logger, self.stop = run, logger, stop
        self.tcfg = run.cfg.trainer
        self.last_save = time.monotonic()
        self.time_left = TimeLeft()
        # Without a terminal to draw the bar on (nohup, a batch job, trainer.progress_bar=false), or when the
        # log goes to a file while the bar is drawn, the log gets a line at every logging step instead.
        self.show_bar = show_progress_bar(self.tcfg.progress_bar, run.env.dist)
        self.log_lines = not (self.show_bar and sys.stdout.isatty())
        self.means: tuple[DeviceMeans, DeviceMeans] | None = None  # the epoch's and the window's, while training

    def save(self, best: bool = False):
        progress, dist = self.run.state.progress, self.run.env.dist
        in_epoch = self.means is not None and progress.position > 0
        progress.epoch_means = self.means[0].state(dist) if in_epoch else None
        progress.window_means = self.means[1].state(dist) if in_epoch else None
        path = self.run.state.save(best)
        self.last_save = time.monotonic()
        return path

    def train_epoch(self) -> dict[str, float]:
        """Train until the end of the epoch, or until a stop signal arrives (then return early)."""
        run, tcfg = self.run, self.tcfg
        progress, dist, device = run.state.progress, run.env.dist, run.env.device
        batch = run.cfg.data.batch_size
        run.parts.model.train()
        run.parts.head.train()
        run.loader.sampler.set_epoch(progress.epoch, start=progress.position)
        # Resumed mid-epoch: the sums so far come back with the checkpoint.
        resumed = progress.position > 0
        epoch = DeviceMeans(device, progress.epoch_means if resumed else None)
        window = DeviceMeans(device, progress.window_means if resumed else None)
        self.means = (epoch, window)
        timed_steps = 0  # the window's steps taken by this process (its speed)
        bar = None
        if self.show_bar:
            from tqdm import tqdm

            bar = tqdm(total=run.loader.steps_per_epoch, initial=progress.position // batch,
                       desc=f"epoch {progress.epoch + 1}/{tcfg.epochs}", unit="step", dynamic_ncols=True)
        window_start = time.perf_counter()
        for waves, labels in run.loader.loader:
            run.optimisation.apply_schedules(progress.epoch, progress.position // batch, run.parts.head)
            result = run.step(waves, labels)
            progress.step += 1
            progress.position += batch
            epoch.add(result)
            window.add(result)
            timed_steps += 1
            run.state.nonfinite.add(result.finite)
            log_step = progress.step % tcfg.log_every_steps == 0
            if log_step:
                loss, top1, skipped = window.read(dist)  # waits for the device: the window's steps are done
                window_seconds = time.perf_counter() - window_start
                self.time_left.add_steps(timed_steps, window_seconds)
                scalars = {
                    "train/lr": run.optimisation.optimizer.param_groups[0]["lr"],
                    "train/utterances_per_s": timed_steps * batch / window_seconds,
                    "train/nonfinite_steps": run.state.nonfinite.total,
                }
                if hasattr(run.parts.head, "m"):
                    scalars["train/margin"] = run.parts.head.m
                if dist.is_main and run.skip_log.exists():
                    scalars["train/skipped_files"] = _count_lines(run.skip_log)
                if not math.isnan(loss):
                    scalars.update({"train/loss": loss, "train/top1": top1})
                self.logger.log(scalars, progress.step)
                if bar is not None and not math.isnan(loss):
                    bar.set_postfix(loss=f"{loss:.3f}", top1=f"{top1:.3f}",
                                    utt_s=f"{scalars['train/utterances_per_s']:.1f}")
                if self.log_lines:
                    log.info("%s", self.step_line(loss, top1, scalars))
                self.check_nonfinite(skipped)
                window = DeviceMeans(device)
                self.means = (epoch, window)
                timed_steps = 0
                window_start = time.perf_counter()
            if bar is not None:
                bar.update(1)
            if self.stop_requested(log_step):
                break
            if self.checkpoint_due(log_step):
                self.save()
        if bar is not None:
            bar.close()
        loss, top1, _ = epoch.read(dist)
        self.check_nonfinite(0)
        return {"train/epoch_loss": loss, "train/epoch_top1": top1}

    def step_line(self, loss: float, top1: float, scalars: dict[str, float]) -> str:
        """The log line of a logging step: where the run is, how it learns, how fast, how long it has left."""
        tcfg, progress = self.tcfg, self.run.state.progress
        per_epoch = self.run.loader.steps_per_epoch
        in_epoch = progress.position // self.run.cfg.data.batch_size
        total = tcfg.epochs * per_epoch
        left = self.time_left.text(per_epoch - in_epoch, total - (progress.epoch * per_epoch + in_epoch),
                                   self.validations_left(progress.epoch))
        return (f"epoch {progress.epoch + 1}/{tcfg.epochs} step {in_epoch}/{per_epoch} "
                f"(run step {progress.step}): loss {loss:.4f}, top-1 {100 * top1:.2f}%, "
                f"lr {scalars['train/lr']:.3g}, {scalars['train/utterances_per_s']:.1f} utt/s; left: {left}")

    def validations_left(self, epoch: int) -> int:
        """Validations still to come after the epoch in progress (0-based `epoch`) has started."""
        if self.run.lists.evaluation is None:
            return 0
        every, last = self.tcfg.eval_every_epochs, self.tcfg.epochs
        return sum(1 for e in range(epoch + 1, last + 1) if e % every == 0 or e == last)

    def check_nonfinite(self, skipped_in_window: int) -> None:
        state = self.run.state
        if skipped_in_window:
            log.warning("step %d: %d of the last steps had a NaN/inf loss or gradient and were skipped "
                        "(%d in the run)", state.progress.step, skipped_in_window, state.nonfinite.total)
        limit = self.tcfg.max_nonfinite_steps
        if state.nonfinite.in_a_row >= limit:
            last = state.checkpoints.last
            where = (f"The last checkpoint, {last}, holds the last good state" if last.exists()
                     else "No checkpoint had been written yet")
            raise NonFiniteLossError(
                f"{state.nonfinite.in_a_row} consecutive steps had a non-finite loss or gradient (limit "
                f"trainer.max_nonfinite_steps={limit}); stopped. {where}: lower optim.lr, set "
                f"trainer.grad_clip_norm, or check the data")

    def stop_requested(self, log_step: bool) -> bool:
        """A SIGTERM/SIGINT was received. With several processes they must stop at the same step, so the
        flag is agreed on at logging steps (one collective there, none at every step)."""
        if self.run.env.dist.enabled and not log_step:
            return False
        return self.stop_agreed()

    def stop_agreed(self) -> bool:
        """Whether a stop signal reached any rank, the same answer on every rank (every rank must call it;
        the flag is then set on each). A signal can reach one rank alone, at any moment: a rank-local flag
        that chose between two saves would send the ranks into different collectives, and hang them. Branch
        on what this returns, not on the flag read again: a signal may arrive in between."""
        if any_rank(self.stop.received is not None, self.run.env.dist, self.run.env.device):
            self.stop.received = self.stop.received or signal.SIGTERM
            return True
        return False

    def checkpoint_due(self, log_step: bool) -> bool:
        tcfg, dist = self.tcfg, self.run.env.dist
        if tcfg.checkpoint_every_steps and self.run.state.progress.step % tcfg.checkpoint_every_steps == 0:
            return True
        minutes = tcfg.checkpoint_every_minutes
        if not minutes or (dist.enabled and not log_step):
            return False
        # Clocks differ between processes: rank 0 decides for all of them.
        return broadcast_object(time.monotonic() - self.last_save >= 60 * minutes, dist)

    def validate(self) -> dict[str, float]:
        """The current model on the `eval` protocol; logs EER, minDCF, the DET curve and score histograms."""
        run = self.run
        data = run.cfg.data
        extractor = EmbeddingExtractor(run.parts.fbank, run.parts.model)
        broadcast_buffers(run.parts.model, run.env.dist)  # every rank embeds with rank 0's BatchNorm statistics
        start = time.perf_counter()
        result = run.lists.evaluation.run(extractor, run.env.device, data.sample_rate, data.resample,
                                          dist=run.env.dist)
        self.time_left.validation_seconds = time.perf_counter() - start
        return log_validation(self.logger, result, run.state.progress.step)

    def validate_and_save(self, results: dict[str, Any]) -> None:
        """Validate the epoch just saved, then save it again with the result (and as best.pt when best)."""
        progress = self.run.state.progress
        val = self.validate()
        results.update(val)
        progress.pending_validation = False
        best = val["val/eer"] < progress.best_eer
        if best:
            progress.best_eer = val["val/eer"]
        self.save(best=best)


def log_validation(logger: MetricLogger, result: EvaluationResult, step: int) -> dict[str, float]:
    val = {f"val/{k}": result.metrics[k] for k in ("eer", "min_dcf_p0.01", "min_dcf_p0.05")}
    logger.log(val, step)
    title = f"{result.protocol.name} ({result.scoring})"
    logger.log_image("val/det", det_image(result.scores, result.labels, result.metrics["eer"], title), step)
    logger.log_histogram("val/scores_target", result.scores[result.labels == 1], step)
    logger.log_histogram("val/scores_nontarget", result.scores[result.labels == 0], step)
    return val


def fit(run: Run) -> dict[str, Any]:
    """Train epochs until trainer.epochs, validating every trainer.eval_every_epochs (and after the last)
    and checkpointing at every epoch end; a stop signal checkpoints and returns with an exit code."""
    tcfg, env, state = run.cfg.trainer, run.env, run.state
    progress = state.progress
    config_yaml = OmegaConf.to_yaml(run.cfg, resolve=True)
    if env.dist.is_main:
        write_text_atomic(env.run_dir / "config.yaml", config_yaml)
    logger = MetricLogger(env.run_dir, enabled=env.dist.is_main)
    logger.log_text("config", config_yaml, progress.step)
    log.info("run folder: %s", env.run_dir)
    log.info("%d utterances of %d speakers; model %.2fM parameters on %s%s",
             len(run.lists.train), len(run.lists.speakers),
             sum(p.numel() for p in run.parts.model.parameters()) / 1e6, env.device,
             f" x {env.dist.world_size} processes" if env.dist.enabled else "")
    results: dict[str, Any] = {}
    with StopSignal() as stop:
        loop = Loop(run, logger, stop)
        try:
            if progress.pending_validation:  # resumed from a checkpoint written before its validation
                if run.lists.evaluation is not None:
                    loop.validate_and_save(results)
                else:  # resumed with ~eval: there is nothing to validate it on
                    progress.pending_validation = False
            while not loop.stop_requested(log_step=True) and progress.epoch < tcfg.epochs:  # ranks agree
                t0 = time.perf_counter()
                epoch_means = loop.train_epoch()
                results.update(epoch_means)
                # Agreed, not this rank's flag: a signal that reached one rank after the epoch's last logging
                # step would otherwise take it to the mid-epoch save and the others to the epoch-end one.
                if loop.stop_agreed():
                    loop.save()  # with the epoch's sums, as a mid-epoch checkpoint
                    break
                loop.means = None  # the epoch is over: its checkpoint holds no sums
                logger.log({k: v for k, v in epoch_means.items() if math.isfinite(v)}, progress.step)
                progress.epoch += 1
                progress.position = 0
                epoch_time = time.perf_counter() - t0
                validate = run.lists.evaluation is not None and (progress.epoch % tcfg.eval_every_epochs == 0
                                                                 or progress.epoch == tcfg.epochs)
                # The epoch is saved before validation reads a file: a validation that fails or is stopped
                # never costs training.
                progress.pending_validation = validate
                loop.save()
                if validate:
                    loop.validate_and_save(results)
                logger.flush()
                log.info("epoch %d/%d done in %s: %s", progress.epoch, tcfg.epochs, format_duration(epoch_time),
                         epoch_summary(results if validate else epoch_means, progress.best_eer))
            if stop.received is not None:  # during training or during a validation
                where = f"in epoch {progress.epoch + 1}" if progress.position else f"after epoch {progress.epoch}"
                log.warning("%s received: stopped %s, step %d; checkpoint %s. Resume with the same command plus "
                            "trainer.resume=true (or trainer.resume=%s)", stop.name, where, progress.step,
                            state.checkpoints.last, state.checkpoints.last)
                results["interrupted"] = stop.name
                results["exit_code"] = 128 + stop.received
            results.update({"best/eer": progress.best_eer, "epochs": progress.epoch, "steps": progress.step,
                            "nonfinite_steps": state.nonfinite.total, "run_dir": str(env.run_dir)})
            logger.log_hparams(flat_hyperparameters(run.cfg), final_metrics(results), progress.step)
        finally:
            logger.close()
    return results


def epoch_summary(results: dict[str, float], best_eer: float) -> str:
    """'loss 1.2345, top-1 45.60%; EER 7.34%, minDCF(0.01) 0.5123, minDCF(0.05) 0.3456 (best EER 6.56%)'."""
    text = f"loss {results['train/epoch_loss']:.4f}, top-1 {100 * results['train/epoch_top1']:.2f}%"
    if "val/eer" in results:
        text += (f"; EER {format_eer(results['val/eer'])}, minDCF(0.01) {results['val/min_dcf_p0.01']:.4f}, "
                 f"minDCF(0.05) {results['val/min_dcf_p0.05']:.4f} (best EER {format_eer(best_eer)})")
    return text


# What the HPARAMS tab shows beside each run's hyperparameters (tags of their own: a scalar logged under
# an existing tag such as val/eer would add a point to that curve).
FINAL_METRICS = {"train/epoch_loss": "final/epoch_loss", "train/epoch_top1": "final/epoch_top1",
                 "val/eer": "final/eer", "val/min_dcf_p0.01": "final/min_dcf_p0.01",
                 "val/min_dcf_p0.05": "final/min_dcf_p0.05", "best/eer": "final/best_eer"}


def final_metrics(results: dict[str, Any]) -> dict[str, float]:
    return {tag: float(results[key]) for key, tag in FINAL_METRICS.items()
            if key in results and math.isfinite(results[key])}
