"""`speakerid embed --folder` finds the files prepare and finetune find: through linked folders, without
macOS `._x.wav` stubs, and a folder named like an audio file is no file."""

import os

import numpy as np
import pytest
import soundfile as sf
from conftest import speakerid_cli, untrained_checkpoint

RATE = 16000


@pytest.fixture
def checkpoint(tmp_path):
    return untrained_checkpoint(tmp_path / "best.pt", tmp_path, ["a", "b"], {"epoch": 1, "step": 1})


def tone(hz: float) -> np.ndarray:
    t = np.arange(int(1.2 * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_embed_folder_follows_linked_folders_and_skips_stubs(checkpoint, tmp_path):
    real, top = tmp_path / "real" / "s1", tmp_path / "top"
    real.mkdir(parents=True)
    (top / "z.wav").mkdir(parents=True)  # a folder named like a file: not a file
    sf.write(real / "x.wav", tone(150), RATE)
    sf.write(top / "y.wav", tone(220), RATE)
    (top / "._y.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(100))  # an AppleDouble stub, not audio
    os.symlink(tmp_path / "real", top / "linked")
    os.symlink(tmp_path / "real", top / "again")  # the same real folder twice: embedded once

    out = tmp_path / "e.npz"
    run = speakerid_cli("embed", "--model", checkpoint, "--folder", top, "--out", out, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    keys = list(np.load(out)["keys"])
    assert len(keys) == 2 and "y.wav" in keys
    assert keys[0] in ("again/s1/x.wav", "linked/s1/x.wav")  # whichever link the walk met first
