"""scripts/benchmark.py runs end to end on a generated corpus and writes its JSON (no timing is asserted:
performance is shown by running the script, not by tests)."""

import importlib
import json
import re
import subprocess
import sys

import pytest

from conftest import REPO


def speechbrain_importable() -> bool:
    """What scripts/benchmark.py's peer imports."""
    try:
        importlib.import_module("speechbrain.lobes.models.ECAPA_TDNN")
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_benchmark_runs_every_stage_on_a_generated_corpus(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--data", "synthetic",
         "--synthetic-dir", str(tmp_path / "corpus"), "--synthetic-speakers", "4", "--synthetic-utterances", "4",
         "--device", "cpu", "--channels", "16", "--batch-size", "4", "--crop-frames", "40", "--steps", "1",
         "--warmup", "1", "--workers", "0", "--augment", "on", "--out", str(out),
         "--override", "model.mfa_channels=48", "model.attention_channels=8", "model.se_bottleneck=8"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ("loading", "augment_features", "step", "loop"):
        assert result["stages"][key]["utterances_per_s"] > 0, key
    assert "loop_over_step" in result["ratios"]
    assert result["musan_dir"].endswith("noise/musan")  # generated, as on a machine without data
    assert result["settings"]["batch_size"] == 4 and result["machine"]["cpus"] >= 1
    peer = result["stages"]["peer_step"]
    if speechbrain_importable():  # the peer's row, with a throughput
        row = re.search(r"peer: SpeechBrain ECAPA_TDNN step \(eager\) +([0-9.]+) utt/s", proc.stdout)
        assert row is not None and float(row.group(1)) > 0, proc.stdout
        assert peer["utterances_per_s"] == pytest.approx(float(row.group(1)), abs=0.051) and peer["parameters_m"] > 0
    else:  # skipped, saying why, and our numbers still there
        assert "peer skipped: SpeechBrain cannot be imported" in proc.stdout, proc.stdout
        assert "utterances_per_s" not in peer and peer["error"]
    assert "(d) whole training loop with augmentation" in proc.stdout
