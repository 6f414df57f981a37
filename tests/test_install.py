"""The package as a user installs it: a wheel built from the checkout, installed (not editable) into a
folder of its own, runs an evaluation from another directory with the configs it ships."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from speakerid.training import train


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_evaluates_from_another_directory(tiny_cfg, tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Built from a copy of the sources: setuptools writes build/ into the tree it builds.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "data", "*.egg-info",
                                                                "__pycache__", ".whl", ".bench_noise", "outputs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("speakerid-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    assert (target / "speakerid" / "configs" / "evaluate.yaml").is_file()
    assert (target / "speakerid" / "configs" / "eval" / "vox1_o.yaml").is_file()

    train(tiny_cfg("trainer.epochs=1", "~eval", run_dir=tmp_path / "run"))
    env = {**os.environ, "PYTHONPATH": str(target)}  # first on the path: the installed copy, not the checkout
    where = subprocess.run([sys.executable, "-c", "import speakerid; print(speakerid.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(target)), where
    command = target / "bin" / "speakerid"  # the console script the wheel installs
    assert command.is_file()
    proc = subprocess.run([sys.executable, str(command), "evaluate", "--model",
                           str(tmp_path / "run" / "checkpoints" / "last.pt"), "--device", "cpu",
                           "--out-dir", str(elsewhere / "eval")], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "EER" in proc.stdout and (elsewhere / "eval" / "trials.cosine.json").is_file()
