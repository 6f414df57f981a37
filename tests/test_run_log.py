"""What a run tells its user, read where the user reads it: the log lines of a run without a terminal, the
block that ends it (its files exist, its resume command works), and what TensorBoard gets besides the
step scalars (the config as text, the hyperparameters with the final metrics, per-epoch loss and top-1)."""

import fcntl
import json
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from conftest import REPO, speakerid_cli

SPEAKERID = [sys.executable, "-m", "speakerid.cli.main"]
STEP_LINE = re.compile(r"epoch (\d+)/(\d+) step (\d+)/(\d+) \(run step (\d+)\): loss ([\d.]+), top-1 ([\d.]+)%, "
                       r"lr ([\d.e-]+), ([\d.]+) utt/s; left: epoch (\d+):(\d\d), run (\d+):(\d\d)( \+ validation)?$")


def speakerid(*args, **kwargs):
    return subprocess.run([*SPEAKERID, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, **kwargs)  # generous: the tests share the machine


@pytest.fixture(scope="module")
def logged_run(tiny_corpus_dir, tmp_path_factory):
    """`speakerid train` on the tiny corpus, its output captured (no terminal), progress bar asked for."""
    runs = tmp_path_factory.mktemp("runs")
    proc = speakerid("train", "debug=tiny", f"data.dir={tiny_corpus_dir}", f"runs_root={runs}",
                     "trainer.log_every_steps=2", "trainer.progress_bar=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (runs / "debug").iterdir()
    return proc, run_dir, runs


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_without_a_terminal_the_log_gets_a_line_per_logging_step(logged_run):
    proc, run_dir, _ = logged_run
    log = (run_dir / "train.log").read_text()
    lines = [m for m in (STEP_LINE.search(line) for line in log.splitlines()) if m]
    assert len(lines) == 12 // 2  # 2 epochs of 6 steps, a line every 2 steps
    by_step = {r["step"]: r for r in records(run_dir) if "train/loss" in r}
    for m in lines:
        epoch, epochs, in_epoch, per_epoch, step = map(int, m.groups()[:5])
        assert (epochs, per_epoch) == (2, 6) and step == (epoch - 1) * 6 + in_epoch
        record = by_step[step]  # the same window's numbers as TensorBoard and metrics.jsonl got
        assert float(m[6]) == pytest.approx(record["train/loss"], abs=5e-5)
        assert float(m[7]) == pytest.approx(100 * record["train/top1"], abs=5e-3)
        assert float(m[8]) == pytest.approx(record["train/lr"], rel=1e-3)
        assert float(m[9]) == pytest.approx(record["train/utterances_per_s"], abs=0.05)
        if in_epoch == per_epoch:
            assert (m[10], m[11]) == ("0", "00")  # nothing left in the epoch
        # a validation follows every epoch: unknown until the first one has run, then counted in
        assert bool(m[14]) == (epoch == 1)
    assert sum(bool(STEP_LINE.search(line)) for line in proc.stdout.splitlines()) == len(lines)  # console too

    # EER as everywhere: percent, two decimals
    val = [r["val/eer"] for r in records(run_dir) if "val/eer" in r]
    for epoch, eer in enumerate(val, start=1):
        assert re.search(rf"epoch {epoch}/2 done in \d+:\d\d: loss [\d.]+, top-1 [\d.]+%; EER {100 * eer:.2f}%, "
                         rf"minDCF\(0.01\) [\d.]+, minDCF\(0.05\) [\d.]+ \(best EER {100 * min(val[:epoch]):.2f}%\)",
                         log)


def test_the_run_ends_with_its_files_and_commands_that_work(logged_run, tiny_corpus_dir):
    proc, run_dir, runs = logged_run
    block = proc.stdout[proc.stdout.index("run finished"):].splitlines()
    best_eer = min(r["val/eer"] for r in records(run_dir) if "val/eer" in r)
    assert block[0].endswith(f"run finished (2/2 epochs, best EER {100 * best_eer:.2f}%): {run_dir}")
    commands = {line.split()[0]: line.split(None, 1)[1] for line in block[1:6]}
    best = run_dir / "checkpoints" / "best.pt"
    assert commands["model"].split()[0] == str(best) and best.is_file()
    assert commands["TensorBoard"] == f"tensorboard --logdir {runs / 'debug'}"
    assert commands["evaluate"] == f"speakerid evaluate --model {best}"
    evaluated = run_dir / "checkpoints" / "best_eval" / "trials.cosine.json"  # evaluate writes it, verify reads it
    assert commands["verify"] == f"speakerid verify --model {best} --threshold-from {evaluated} a.wav b.wav  " \
                                 f"(after evaluate)"
    # the evaluate and verify commands work as printed
    proc = speakerid_cli(*shlex.split(commands["evaluate"])[1:])  # in this process: an interpreter start fewer
    assert proc.returncode == 0 and evaluated.is_file(), proc.stderr
    a, b = sorted((tiny_corpus_dir / "wav").rglob("*.wav"))[:2]
    verify = shlex.split(commands["verify"].removesuffix("  (after evaluate)").replace("a.wav b.wav", f"{a} {b}"))
    proc = speakerid_cli(*verify[1:])
    assert proc.returncode in (0, 1) and "EER threshold of trials, cosine" in proc.stdout, proc.stderr
    resume = shlex.split(commands["resume"])
    assert resume == ["speakerid", "train", "debug=tiny", f"data.dir={tiny_corpus_dir}", f"runs_root={runs}",
                      "trainer.log_every_steps=2", "trainer.progress_bar=true", "trainer.resume=true"]
    assert (run_dir / "train.log").read_text().count("run finished") == 1  # the log file has it too

    again = speakerid(*resume[1:])  # the resume command finds this run, finished: nothing to do
    assert again.returncode == 0, again.stderr
    assert "already finished (2 of 2 epochs)" in again.stdout and len(list((runs / "debug").iterdir())) == 1


def test_tensorboard_gets_the_config_hyperparameters_and_epoch_scalars(logged_run):
    _, run_dir, _ = logged_run
    assert len(list((run_dir / "tensorboard").iterdir())) == 1  # one event file: no sub-run for the hparams
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert yaml.safe_load("\n".join(line[4:] for line in config_text.splitlines())) == config

    # per-epoch means: with equal windows of 2 steps, the mean of an epoch's three window means
    steps = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in ("train/loss", "train/top1")}
    for tag, epoch_tag in (("train/loss", "train/epoch_loss"), ("train/top1", "train/epoch_top1")):
        epochs = {e.step: e.value for e in acc.Scalars(epoch_tag)}
        assert sorted(epochs) == [6, 12]
        for end in (6, 12):
            assert epochs[end] == pytest.approx(np.mean([steps[tag][s] for s in (end - 4, end - 2, end)]), rel=1e-5)

    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {k: (v.number_value if v.HasField("number_value") else v.string_value) for k, v in start.hparams.items()}
    assert hparams["optim.lr"] == config["optim"]["lr"] and hparams["model.channels"] == config["model"]["channels"]
    assert hparams["trainer.epochs"] == 2 and hparams["model._target_"] == config["model"]["_target_"]
    assert hparams["augment.speed.factors"] == json.dumps(config["augment"]["speed"]["factors"])
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"final/eer", "final/best_eer", "final/epoch_loss", "final/epoch_top1"} <= metrics
    val = [e.value for e in acc.Scalars("val/eer")]
    assert len(val) == 2  # the final metrics have tags of their own: no extra point on the val/eer curve
    assert acc.Scalars("final/eer")[-1].value == pytest.approx(val[-1])
    assert acc.Scalars("final/best_eer")[-1].value == pytest.approx(min(val))


def test_with_a_terminal_the_progress_bar_stays_and_no_step_lines(tiny_corpus_dir, tmp_path):
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns for the bar
    proc = subprocess.Popen([*SPEAKERID, "train", "debug=tiny", f"data.dir={tiny_corpus_dir}", f"runs_root={tmp_path}",
                             "trainer.epochs=1", "~eval", "trainer.progress_bar=true"],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 1 << 16)
        except OSError:  # the terminal closed when the process ended
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=1800) == 0, output.decode(errors="replace")[-3000:]
    os.close(primary)
    text = output.decode(errors="replace")
    assert "epoch 1/1: 100%" in text and "6/6" in text  # tqdm's bar
    assert not STEP_LINE.search(text.replace("\r", "\n"))
    (run_dir,) = (tmp_path / "debug").iterdir()
    assert "run finished (1/1 epochs)" in (run_dir / "train.log").read_text()


def test_the_end_block_names_the_protocol_the_run_validated_on(tmp_path):
    """An experiment that validates on Vox1-O (its own eval group): evaluate's default (eval=folder) would
    score another list, and verify would look for that list's JSON."""
    from speakerid.cli.train import end_block
    from speakerid.configs import compose

    overrides = ["experiment=vox2_resnet34", "eval.dir=/data/vox1"]
    cfg = compose("train", [*overrides, "data.train_list=/data/l.txt", "data.train_root=/data/wav",
                            f"runs_root={tmp_path}"])
    run_dir = tmp_path / "vox2_resnet34" / "2026-11-27_10-00-00"
    block = end_block({"run_dir": str(run_dir), "epochs": 3, "best/eer": 0.1}, cfg, overrides, "python train.py",
                      eval_group="vox1_o")
    commands = {line.split()[0]: line.split(None, 1)[1] for line in block.splitlines()[1:]}
    model = run_dir / "checkpoints" / "last.pt"
    assert commands["evaluate"] == f"speakerid evaluate --model {model} eval=vox1_o eval.dir=/data/vox1"
    assert commands["verify"] == (f"speakerid verify --model {model} --threshold-from "
                                  f"{model.parent / 'last_eval' / 'vox1_o_cleaned.cosine.json'} a.wav b.wav  "
                                  f"(after evaluate)")
    assert commands["resume"] == "python train.py experiment=vox2_resnet34 eval.dir=/data/vox1 trainer.resume=true"
