"""The command-line entry points, called as a user calls them (in this process: see conftest.speakerid_cli)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO, speakerid_cli
from speakerid.checkpoint import load_checkpoint
from speakerid.training import setup_run, train


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def speakerid(*args):
    """The `speakerid` console command, from this checkout, in this process."""
    return speakerid_cli(*args)


@pytest.fixture(scope="module")
def trained_run(tiny_corpus_dir, tmp_path_factory):
    from conftest import compose_config

    run_dir = tmp_path_factory.mktemp("evalrun")
    cfg = compose_config(["debug=tiny", f"data.dir={tiny_corpus_dir}", f"run_dir={run_dir}", "trainer.epochs=2"])
    return run_dir, train(cfg)


def test_evaluate_reproduces_validation_and_writes_scores(trained_run, tiny_corpus_dir, tmp_path):
    """Validation read the files in the training process (auto on a CPU); two loader processes here."""
    run_dir, results = trained_run
    out = tmp_path / "eval"
    proc = speakerid("evaluate", "--model", run_dir / "checkpoints" / "last.pt",
               "--root", tiny_corpus_dir / "wav", "--trials", tiny_corpus_dir / "trials.txt", "--out-dir", out,
               "--device", "cpu", "--num-workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"EER {100 * results['val/eer']:.2f}%" in proc.stdout
    trials = (tiny_corpus_dir / "trials.txt").read_text().splitlines()
    lines = (out / "trials.cosine.scores.txt").read_text().splitlines()
    assert len(lines) == len(trials)
    for trial, line in zip(trials, lines):
        label, enrol, test = trial.split()
        e, t, score, lab = line.split()
        assert (e, t, lab) == (enrol, test, label) and -1.0 <= float(score) <= 1.0
    report = json.loads((out / "trials.cosine.json").read_text())
    assert report["eer"] == pytest.approx(results["val/eer"], abs=1e-9)
    assert report["min_dcf_p0.01"] == pytest.approx(results["val/min_dcf_p0.01"], abs=1e-9)
    assert report["trials"] == str(tiny_corpus_dir / "trials.txt") and report["scoring"] == "cosine"
    assert (out / "trials.cosine.det.png").is_file() and report["n_extracted"] == report["n_files"]
    assert report["embedding"]["num_workers"] == 2
    proc = speakerid("evaluate", "--model", run_dir / "checkpoints" / "last.pt", "--out-dir", out,
               "--num-workers", "-1")
    assert proc.returncode == 1 and "eval.embedding.num_workers=-1 is not allowed: 'auto' or an integer >= 0" \
        in proc.stderr, proc.stderr


def test_evaluate_protocols_cache_and_verify(trained_run, tiny_corpus_dir, tmp_path):
    """The default protocol (eval=folder) is the checkpoint's own corpus; multi-crop + AS-norm re-uses
    nothing it cannot, a second run extracts nothing; verify applies the run's threshold."""
    run_dir, results = trained_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    out = tmp_path / "eval"
    proc = speakerid("evaluate", "--model", ckpt, "--out-dir", out, "--device", "cpu",
               "eval.embedding.mode=multicrop", "eval.asnorm.enabled=true", "eval.asnorm.top_k=3")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "trials.multicrop5_asnorm3.json").read_text())
    assert report["trials"] == str(tiny_corpus_dir / "trials.txt")  # ${data.dir} from the checkpoint
    assert report["asnorm"]["cohort_list"] == str(tiny_corpus_dir / "train_list.txt")
    assert report["n_extracted"] == 18 + 36  # trial files (multicrop) + cohort files (full)
    again = ["evaluate", "--model", ckpt, "--out-dir", out, "--device", "cpu", "eval.embedding.mode=multicrop",
             "eval.asnorm.enabled=true", "eval.asnorm.top_k=3"]
    scores = (out / "trials.multicrop5_asnorm3.scores.txt").stat().st_mtime_ns
    proc = speakerid(*again)  # the earlier scores are kept unless --overwrite
    assert proc.returncode == 1 and "trials.multicrop5_asnorm3.scores.txt already exists; pass --overwrite" \
        in proc.stderr and "embedded" not in proc.stdout, proc.stderr
    assert (out / "trials.multicrop5_asnorm3.scores.txt").stat().st_mtime_ns == scores
    proc = speakerid(*again, "--overwrite")
    assert proc.returncode == 0 and "all embeddings from the cache" in proc.stdout, proc.stderr
    assert json.loads((out / "trials.multicrop5_asnorm3.json").read_text())["eer"] == report["eer"]

    same = tiny_corpus_dir / "wav" / "syn00006" / "s00" / "00000.wav"
    proc = speakerid("verify", "--model", ckpt, "--threshold-from", out / "trials.multicrop5_asnorm3.json",
                     same, same, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "same speaker" in proc.stdout and f"threshold {report['eer_threshold']:.4f}" in proc.stdout
    report["checkpoint_sha256"] = report["provenance_sha256"] = "0" * 64  # neither this model nor its source
    (tmp_path / "other.json").write_text(json.dumps(report))
    proc = speakerid("verify", "--model", ckpt, "--threshold-from", tmp_path / "other.json", same, same)
    assert proc.returncode == 2 and "another model" in proc.stderr


def test_evaluate_scores_a_list_without_labels(trained_run, tiny_corpus_dir, tmp_path):
    run_dir, _ = trained_run
    pairs = [line.split()[1:] for line in (tiny_corpus_dir / "trials.txt").read_text().splitlines()[:5]]
    trials = tmp_path / "pairs.txt"
    trials.write_text("".join(f"{e} {t}\n" for e, t in pairs))
    proc = speakerid("evaluate", "--model", run_dir / "checkpoints" / "last.pt", "--trials", trials,
               "--root", tiny_corpus_dir / "wav", "--out-dir", tmp_path / "eval", "--no-cache", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "no labels: scores only" in proc.stdout and not re.search(r"EER \d", proc.stdout)
    lines = (tmp_path / "eval" / "pairs.cosine.scores.txt").read_text().splitlines()
    assert [line.split()[:2] for line in lines] == pairs and all(len(line.split()) == 3 for line in lines)
    assert not json.loads((tmp_path / "eval" / "pairs.cosine.json").read_text())["labelled"]


def test_evaluate_stops_on_a_trial_naming_a_missing_file(trained_run, tiny_corpus_dir, tmp_path):
    run_dir, _ = trained_run
    trials = tmp_path / "trials.txt"
    trials.write_text((tiny_corpus_dir / "trials.txt").read_text() + "1 syn00006/s00/00000.wav nobody/s0/x.wav\n")
    out = tmp_path / "eval"
    proc = speakerid("evaluate", "--model", run_dir / "checkpoints" / "last.pt",
               "--root", tiny_corpus_dir / "wav", "--trials", trials, "--out-dir", out, "--device", "cpu")
    assert proc.returncode == 1
    assert "1 of" in proc.stderr and "nobody/s0/x.wav" in proc.stderr
    assert not out.exists()
    trials.write_text("1 syn00006/s00/00000.wav syn00006/s01/00000.wav\n2 syn00006/s00/00000.wav syn00007/s01/00000.wav\n")
    proc = speakerid("evaluate", "--model", run_dir / "checkpoints" / "last.pt",
               "--root", tiny_corpus_dir / "wav", "--trials", trials, "--out-dir", out)
    assert proc.returncode == 1 and "trials.txt:2: label must be 0 or 1, got '2'" in proc.stderr


def test_embed_and_export(trained_run, tiny_corpus_dir, tmp_path):
    run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    folder = tiny_corpus_dir / "wav" / "syn00006"
    proc = speakerid("embed", "--model", ckpt, "--folder", folder, "--out", tmp_path / "e.npz",
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        expected = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.wav"))
        assert list(data["keys"]) == expected and data["full"].shape == (len(expected), 32)
        np.testing.assert_allclose(np.linalg.norm(data["full"], axis=1), 1.0, atol=1e-5)
    lst = tmp_path / "files.txt"
    lst.write_text("syn00006/s00/00000.wav\nsyn00006/s00/gone.wav\n")
    proc = speakerid("embed", "--model", ckpt, "--list", lst, "--root", tiny_corpus_dir / "wav",
               "--out", tmp_path / "f.npz")
    assert proc.returncode == 1 and "syn00006/s00/gone.wav" in proc.stderr and not (tmp_path / "f.npz").exists()

    for fmt, name in (("model", "model.pt"), ("torchscript", "extractor.ts"), ("onnx", "extractor.onnx")):
        proc = speakerid("export", "--model", ckpt, "--format", fmt, "--out", tmp_path / "exported" / name,
                         "--check", folder / "s00" / "00000.wav")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "exported" / name).is_file() and f"{fmt}: largest cosine distance" in proc.stdout


def test_prepare_list_scans_voxceleb_layout(tmp_path):
    root = tmp_path / "wav"
    for rel in ["id002/vidB/00001.flac", "id001/vidA/00002.wav", "id001/vidA/00001.wav"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), np.zeros(160, dtype=np.int16), 16000)
    (root / "id001" / "vidA" / "notes.txt").write_text("not audio")
    out = tmp_path / "lists" / "train.txt"
    proc = speakerid("prepare", "--root", root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == ("id001 id001/vidA/00001.wav\nid001 id001/vidA/00002.wav\n"
                               "id002 id002/vidB/00001.flac\n")
    assert "3 utterances of 2 speakers" in proc.stdout

    (root / "stray.wav").write_bytes(b"")
    listed = out.read_text()
    proc = speakerid("prepare", "--root", root, "--out", out, "--overwrite")
    assert proc.returncode == 1 and "stray.wav" in proc.stderr and out.read_text() == listed  # the list is kept


def test_train_py_reports_bad_config_without_a_traceback(tmp_path):
    proc = run("train.py", "debug=tiny", "head.m=2.0", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert "head.m=2.0 is not allowed" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_average_checkpoints_evaluates_but_does_not_resume(trained_run, tiny_cfg, tmp_path):
    run_dir, _ = trained_run
    steps = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    assert len(steps) == 2  # the ends of epochs 1 and 2
    out = tmp_path / "avg.pt"
    proc = speakerid("average", "--out", out, *steps)
    assert proc.returncode == 0, proc.stderr

    a, b, avg = (load_checkpoint(p) for p in (*steps, out))
    assert avg["progress"] == b["progress"] and avg["config"] == b["config"] and "optimizer" not in avg
    for part in ("model", "head"):
        assert set(avg[part]) == set(a[part])
        for key, tensor in avg[part].items():
            if tensor.is_floating_point():  # float64 re-derivation of the mean
                expected = (a[part][key].double() + b[part][key].double()) / 2
                torch.testing.assert_close(tensor.double(), expected, rtol=2**-23, atol=1e-12, msg=key)  # float32 rounding
            else:
                assert torch.equal(tensor, b[part][key]), key
    proc = speakerid("evaluate", "--model", out, "--out-dir", tmp_path / "eval", "--device", "cpu")
    assert proc.returncode == 0 and "EER" in proc.stdout, proc.stderr

    proc = speakerid("average", "--out", tmp_path / "x.pt", steps[-1], run_dir / "checkpoints" / "last.pt")
    assert proc.returncode == 1 and "are the same file" in proc.stderr
    other = dict(a, model={k: v for k, v in a["model"].items() if not k.startswith("emb_bn.")})
    torch.save(other, tmp_path / "other.pt")
    proc = speakerid("average", "--out", tmp_path / "x.pt", steps[-1], tmp_path / "other.pt")
    assert proc.returncode == 1 and "only checkpoints of one run average" in proc.stderr
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(RuntimeError, match="no optimizer or RNG state"):
        setup_run(tiny_cfg(f"trainer.resume={out}", run_dir=tmp_path / "resumed"))


def test_average_never_writes_over_a_checkpoint_even_with_overwrite(trained_run, tmp_path):
    """--overwrite --out <an input> (or the run's last.pt) replaced a training checkpoint with the average,
    which then could not be resumed."""
    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    steps = sorted((copy / "checkpoints").glob("step-*.pt"))
    before = {p.name: p.read_bytes() for p in (copy / "checkpoints").iterdir()}
    for out, args in ((steps[-1], steps), (copy / "checkpoints" / "last.pt", ["--last", "2", copy]),
                      (copy / "checkpoints" / "avg.pt", steps)):
        proc = speakerid("average", "--overwrite", "--out", out, *args)
        assert proc.returncode == 1 and ("being averaged" in proc.stderr or "in the checkpoints folder of the run"
                                         in proc.stderr), proc.stderr
    assert {p.name: p.read_bytes() for p in (copy / "checkpoints").iterdir()} == before
    proc = speakerid("average", "--overwrite", "--out", copy / "avg.pt", *steps)  # beside it: fine
    assert proc.returncode == 0, proc.stderr


def test_average_last_epochs_of_a_run_folder(trained_run, tmp_path):
    """speakerid average --last N RUN: the last N epoch ends of a finished run, the same file as naming
    them; N = 1 is the last epoch without optimizer state; too few, or a mid-epoch checkpoint, is refused."""
    run_dir, _ = trained_run
    steps = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    proc = speakerid("average", "--out", tmp_path / "named.pt", *steps)
    assert proc.returncode == 0, proc.stderr
    proc = speakerid("average", "--out", tmp_path / "last2.pt", "--last", "2", run_dir)
    assert proc.returncode == 0 and "the mean of 2 checkpoints" in proc.stdout, proc.stderr
    named, last2 = load_checkpoint(tmp_path / "named.pt"), load_checkpoint(tmp_path / "last2.pt")
    for part in ("model", "head"):
        assert all(torch.equal(named[part][k], last2[part][k]) for k in named[part])

    proc = speakerid("average", "--out", tmp_path / "last1.pt", "--last", "1", run_dir)
    assert proc.returncode == 0, proc.stderr
    last1, newest = load_checkpoint(tmp_path / "last1.pt"), load_checkpoint(steps[-1])
    assert "optimizer" not in last1 and last1["progress"] == newest["progress"]
    assert all(torch.equal(last1["model"][k], newest["model"][k]) for k in newest["model"])

    proc = speakerid("average", "--out", tmp_path / "x.pt", "--last", "3", run_dir)
    assert proc.returncode == 1 and "holds 2 epoch checkpoints, 3 are to be averaged" in proc.stderr
    proc = speakerid("average", "--out", tmp_path / "x.pt", "--last", "2", *steps)
    assert proc.returncode == 2 and "--last N takes one run folder" in proc.stderr
    proc = speakerid("average", "--out", tmp_path / "x.pt", steps[-1])
    assert proc.returncode == 2 and "two or more checkpoints" in proc.stderr
    copy = tmp_path / "copy"
    shutil.copytree(run_dir / "checkpoints", copy / "checkpoints")
    mid_epoch = load_checkpoint(steps[-1])
    mid_epoch["progress"]["position"] = 8
    torch.save(mid_epoch, copy / "checkpoints" / "step-999999999.pt")
    proc = speakerid("average", "--out", tmp_path / "x.pt", "--last", "2", copy)
    assert proc.returncode == 1 and "step-999999999.pt was saved in the middle of an epoch" in proc.stderr
    assert not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------------------------- scripts/recipe.sh
def run_recipe(recipe, root, from_stage, stop_stage, work):
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(work), "STOP_STAGE": str(stop_stage)}
    return subprocess.run(["bash", str(REPO / "scripts" / "recipe.sh"), recipe, root / "vox2", root / "vox1",
                           root / "musan", root / "RIRS_NOISES", str(from_stage)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_recipe_prepares_3d_speakers_segment_list_and_real_rirs(tmp_path):
    """Stage 0 of campplus: one list row per whole 3 s of an utterance (at least one), as 3D-Speaker's
    prepare_data_csv.py; the RIRs named in real_rirs_isotropic_noises/rir_list as their first channel."""
    seconds = {"s1/v1/a.wav": 2.0, "s1/v1/b.wav": 6.5, "s2/v9/c.wav": 9.1, "s2/v9/d.wav": 3.0}
    for path, length in seconds.items():
        (tmp_path / "vox2/dev/wav" / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "vox2/dev/wav" / path, np.zeros(int(length * 16000), np.int16), 16000)
    (tmp_path / "vox2/train_list.txt").write_text("".join(f"{p.split('/')[0]} {p}\n" for p in seconds))
    rirs = tmp_path / "RIRS_NOISES/real_rirs_isotropic_noises"
    rirs.mkdir(parents=True)
    stereo = np.stack([np.linspace(1, 0, 800), np.linspace(-0.5, 0, 800)], axis=1).astype(np.float32)
    sf.write(rirs / "RVB2014_type1_rir_room_a.wav", stereo, 16000, subtype="FLOAT")
    sf.write(rirs / "RVB2014_type1_noise_room_a_1.wav", np.ones(800, np.float32) * 0.1, 16000, subtype="FLOAT")
    (rirs / "rir_list").write_text("--rir-id a --room-id room_a RIRS_NOISES/real_rirs_isotropic_noises/"
                                   "RVB2014_type1_rir_room_a.wav\n")
    work = tmp_path / "work"

    proc = run_recipe("campplus", tmp_path, 0, 0, work)
    assert proc.returncode == 0, proc.stderr
    header, *rows = (work / "train_list_3s.txt").read_text().splitlines()
    assert header.startswith("# speakerid prepare --segment-seconds 3")  # its repeats are intended
    assert rows == ["s1 s1/v1/a.wav", "s1 s1/v1/b.wav", "s1 s1/v1/b.wav", "s2 s2/v9/c.wav", "s2 s2/v9/c.wav",
                    "s2 s2/v9/c.wav", "s2 s2/v9/d.wav"]
    assert sorted(p.name for p in (work / "real_rirs").iterdir()) == ["RVB2014_type1_rir_room_a.wav"]
    mono, rate = sf.read(work / "real_rirs/RVB2014_type1_rir_room_a.wav", dtype="float32")
    assert rate == 16000 and mono.ndim == 1 and np.array_equal(mono, stereo[:, 0])
    assert not (work / "train").exists()  # STOP_STAGE=0: no training


def test_recipe_averages_the_authors_number_of_epochs(tmp_path):
    """Stage 2 takes the last num_avg epoch checkpoints of a finished run (speakerid average --last): a run
    that kept fewer, or has not finished, stops with what to change; N = 1 (3D-Speaker's last epoch) is the
    newest checkpoint's weights."""
    from speakerid.checkpoint import FORMAT_VERSION

    def checkpoints(recipe, epochs_done, epochs):
        folder = tmp_path / recipe / "train" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        for epoch in range(1, epochs_done + 1):
            path = folder / f"step-{100 * epoch:09d}.pt"
            torch.save({"format_version": FORMAT_VERSION, "config": {"trainer": {"epochs": epochs}},
                        "progress": {"epoch": epoch, "step": 100 * epoch, "position": 0}, "speakers": ["a", "b"],
                        "model": {"w": torch.full((3,), float(epoch))}, "head": {"v": torch.ones(2)}}, path)
        (folder / "last.pt").unlink(missing_ok=True)
        (folder / "last.pt").hardlink_to(path)
        return path

    checkpoints("resnet34", 3, 3)
    proc = run_recipe("resnet34", tmp_path, 2, 2, tmp_path / "resnet34")
    assert proc.returncode == 1
    assert "holds 3 epoch checkpoints, 10 are to be averaged" in proc.stderr
    assert "trainer.keep_checkpoints must be at least 10" in proc.stderr
    assert not (tmp_path / "resnet34/train/avg.pt").exists()

    checkpoints("campplus", 3, 60)
    proc = run_recipe("campplus", tmp_path, 2, 2, tmp_path / "campplus")
    assert proc.returncode == 1 and "is at epoch 3 of 60: finish the run first" in proc.stderr
    checkpoints("campplus", 4, 4)
    proc = run_recipe("campplus", tmp_path, 2, 2, tmp_path / "campplus")
    assert proc.returncode == 0, proc.stderr
    avg = torch.load(tmp_path / "campplus/train/avg.pt")
    assert avg["progress"]["epoch"] == 4 and torch.equal(avg["model"]["w"], torch.full((3,), 4.0))


def test_recipe_passes_paths_with_commas_quotes_and_spaces_to_hydra_whole(tmp_path):
    """Unquoted, `data.train_root=/d/a,b` is a Hydra sweep over two values, and `=` or a space breaks the
    override: every path the recipe gives train.py and evaluate must come back whole from Hydra's parser."""
    root = tmp_path / "dat a,b=c'd"
    for folder in ("vox2/dev/wav", "vox1", "musan", "RIRS_NOISES"):
        (root / folder).mkdir(parents=True)
    (root / "vox2/train_list.txt").write_text("s1 s1/v/a.wav\n")
    work = tmp_path / "wo,rk"
    (work / "train/checkpoints").mkdir(parents=True)
    (work / "train/checkpoints/last.pt").write_bytes(b"")
    for model in ("train/avg.pt", "lm/avg.pt"):
        (work / model).parent.mkdir(exist_ok=True)
        (work / model).write_bytes(b"")
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "fake_python"  # parses the overrides it is given as train.py and evaluate do
    fake.write_text(f"""#!{sys.executable}
import json, sys
from hydra.core.override_parser.overrides_parser import OverridesParser
overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
parsed = {{o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}}
with open({str(calls)!r}, "a") as f:
    f.write(json.dumps({{k: v if isinstance(v, str) else repr(v) for k, v in parsed.items()}}) + "\\n")
""")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "WORK": str(work), "STOP_STAGE": "5"}
    for stage in ("1", "5"):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "recipe.sh"), "resnet34", root / "vox2", root / "vox1",
                               root / "musan", root / "RIRS_NOISES", stage], capture_output=True, text=True,
                              timeout=60, env={**env, "STOP_STAGE": stage})
        assert proc.returncode == 0, proc.stderr
    train, *evaluations = [json.loads(line) for line in calls.read_text().splitlines()]
    assert train["data.train_root"] == str(root / "vox2/dev/wav")
    assert train["data.train_list"] == str(root / "vox2/train_list.txt")
    assert train["eval.dir"] == str(root / "vox1") and train["augment.musan_dir"] == str(root / "musan")
    assert train["augment.rir_dir"] == str(root / "RIRS_NOISES")
    assert train["hydra.run.dir"] == str(work / "train")
    assert train["trainer.resume"] == str(work / "train/checkpoints/last.pt")
    assert len(evaluations) == 6  # two models, three protocols
    for evaluation in evaluations:
        assert evaluation["eval.dir"] == str(root / "vox1")
        assert evaluation["eval.mean_subtraction.list"] == str(root / "vox2/train_list.txt")
        assert evaluation["eval.mean_subtraction.root"] == str(root / "vox2/dev/wav")


@pytest.mark.parametrize("args,message", [
    (["ecapa", "a", "b", "c", "d"], "RECIPE must be resnet34, ecapa_c1024 or campplus, got 'ecapa'"),
    (["resnet34", "a", "b", "c", "d", "7"], "FROM_STAGE must be 0 to 6, got '7'"),
])
def test_recipe_rejects_bad_arguments_before_writing(tmp_path, args, message):
    env = {**os.environ, "WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "recipe.sh"), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "work").exists()
