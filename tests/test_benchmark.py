"""scripts/benchmark.py runs end to end on a generated corpus and writes its JSON (no timing is asserted:
performance is shown by running the script, not by tests)."""

import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

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
         "--storage-utterances", "12", "--extract-utterances", "10", "--extract-workers", "0,2",
         "--override", "model.mfa_channels=48", "model.attention_channels=8", "model.se_bottleneck=8"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ("loading", "augment_features", "step", "step_augmented", "loop", "extract_workers_0", "extract_workers_2",
                "extract_reading_workers_0", "extract_reading_workers_2", "extract_header_scan",
                "extract_memory_padded", "extract_memory_cut"):
        assert result["stages"][key]["utterances_per_s"] > 0, key
    # ECAPA's padded batches beside the cut ones they replaced
    memory = result["stages"]
    assert memory["extract_memory_padded"]["batching"] == "padded" and memory["extract_memory_cut"]["batching"] == "cut"
    for fmt in ("wav", "flac"):
        files = list((tmp_path / "corpus_storage" / fmt / "wav").rglob(f"*.{fmt}"))
        assert len(files) == 12
        for what in ("loading", "loop"):
            warm, cold = (result["stages"][f"storage_{fmt}_{cache}_{what}"] for cache in ("warm", "cold"))
            assert warm["utterances_per_s"] > 0 and cold["utterances_per_s"] > 0
            assert warm["page_cache_resident_before"] == 1.0
            if not on_tmpfs(tmp_path):  # tmpfs pages are the files: nothing to evict
                assert cold["page_cache_resident_before"] < 0.1, (fmt, what)
    extracted = list((tmp_path / "corpus_storage" / "extract" / "wav").rglob("*.wav"))
    assert len(extracted) == 10 and all(4.0 <= sf.info(str(f)).duration <= 10.0 for f in extracted)
    assert result["stages"]["extract_workers_2"]["files"] == 10
    ratios = result["ratios"]
    assert ratios["loop_over_step"] == pytest.approx(ratios["augmented_step_over_step"] * ratios["loop_over_augmented_step"])
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

    table = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--table", str(out),
                            str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr
    row = re.search(r"^\| \(e\) loading only, FLAC [0-9.]+ MB/file, cold \| ([0-9.,]+) \|$", table.stdout, re.M)
    assert row is not None, table.stdout
    assert float(row.group(1).replace(",", "")) == pytest.approx(
        result["stages"]["storage_flac_cold_loading"]["utterances_per_s"], rel=0.005, abs=0.51)
    assert "no result (the run failed or ran out of time): " + str(tmp_path / "missing.json") in table.stdout


def on_tmpfs(path) -> bool:
    """Whether path lies on tmpfs (the longest mount point above it in /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    except OSError:
        return False
    path = str(os.path.realpath(path))
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best is not None and best[1] == "tmpfs"


def bench_corpus():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module("bench_corpus")
    finally:
        sys.path.remove(str(REPO / "scripts"))


def test_storage_corpus_lengths_are_voxceleb2_like():
    """At least 4 s, at most 20 s, 7.8 s on average (VoxCeleb2's paper), with a long tail: the median lies
    well below the mean."""
    bc = bench_corpus()
    seconds = bc.draw_seconds(bc.LongCorpusSpec("list", "root", utterances=100_000), np.random.default_rng(0))
    assert seconds.min() >= 4.0 and seconds.max() <= 20.0 and seconds.max() > 19.0
    assert seconds.mean() == pytest.approx(7.8, abs=0.05)
    assert np.median(seconds) < 7.0
    uniform = bc.LongCorpusSpec("list", "root", utterances=10_000, max_seconds=10.0, lengths="uniform")
    seconds = bc.draw_seconds(uniform, np.random.default_rng(0))
    assert seconds.min() >= 4.0 and seconds.max() <= 10.0 and seconds.mean() == pytest.approx(7.0, abs=0.1)


def test_eviction_empties_the_page_cache_and_warming_fills_it(tmp_path):
    if on_tmpfs(tmp_path):
        pytest.skip("tmpfs: its pages are the files, nothing can be evicted")
    bc = bench_corpus()
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(os.urandom(1 << 20))  # dirty pages: eviction must write them first
    bc.warm(files)
    assert bc.resident_fraction(files) == 1.0
    bc.evict(files)
    assert bc.resident_fraction(files) < 0.05
    bc.warm(files[:1])  # one of three files read again
    assert bc.resident_fraction(files) == pytest.approx(1 / 3, abs=0.02)


def test_storage_corpus_joins_each_speakers_utterances(tmp_path):
    """Each file holds the next utterances of its own speaker, end to end, cut to its drawn length; WAV and
    FLAC hold the same samples."""
    bc = bench_corpus()
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    lines, audio = [], {}
    for speaker in ("s1", "s2"):
        for u in range(3):
            rel = f"{speaker}/v/{u}.wav"
            audio[rel] = np.round(rng.uniform(-0.5, 0.5, 16000 * (2 + u)) * 32768) / 32768
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(src / rel), audio[rel], 16000, subtype="PCM_16")
            lines.append(f"{speaker} {rel}")
    (src / "list.txt").write_text("\n".join(lines) + "\n")
    decoded = {}
    for fmt in ("wav", "flac"):
        spec = bc.LongCorpusSpec(str(src / "list.txt"), str(src), utterances=4, fmt=fmt)
        train_list = bc.ensure_long_corpus(tmp_path / fmt, spec, workers=1)
        entries = [line.split() for line in train_list.read_text().split("\n") if line]
        assert [e[0] for e in entries] == ["s1", "s2", "s1", "s2"] and all(e[1].endswith(f".{fmt}") for e in entries)
        decoded[fmt] = [sf.read(str(tmp_path / fmt / "wav" / e[1]), dtype="float64")[0] for e in entries]
        assert sf.info(str(tmp_path / fmt / "wav" / entries[0][1])).format == fmt.upper()
        assert bc.ensure_long_corpus(tmp_path / fmt, spec, workers=1) == train_list  # reused
    seconds = bc.draw_seconds(spec, np.random.default_rng(spec.seed))
    for speaker, (first, second) in (("s1", (0, 2)), ("s2", (1, 3))):
        stream = np.concatenate([audio[f"{speaker}/v/{u}.wav"] for u in (0, 1, 2) * 5])
        n1, n2 = (int(round(seconds[i] * 16000)) for i in (first, second))
        for fmt in ("wav", "flac"):
            np.testing.assert_array_equal(decoded[fmt][first], stream[:n1])
            np.testing.assert_array_equal(decoded[fmt][second], stream[n1:n1 + n2])


@pytest.mark.slow
def test_device_bench_runs_every_run_on_a_cpu_with_tiny_sizes(tmp_path):
    """scripts/device_bench.sh with SMOKE=1: the same runs as on the GPU, tiny, and the one table."""
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "BENCH_DIR": str(tmp_path / "data"),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device_bench.sh")], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("done"), proc.stdout + proc.stderr
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| stage | ecapa_compiled | ecapa_eager | resnet34_tiny | campplus_tiny |" in table
    assert "no result" not in table, table
    for label in ("(a) loading only", "(d) whole training loop with augmentation", "peer: SpeechBrain",
                  "(e) whole loop, WAV", "(e) loading only, FLAC", "(f) extraction, 4-10 s, fp32, 2 loader",
                  "(e) loading only, WAV", "cold, 2 read threads", "(f) reading only (no model), 2 loader",
                  "(f) header scan", "(f) model only (audio in memory), padded batches",
                  "(f) model only (audio in memory), cut batches"):
        assert label in table, (label, table)
