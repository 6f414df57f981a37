"""`speakerid finetune` as a user runs it on a folder of their own speakers (a small generated corpus in the
VoxCeleb layout), from a tiny checkpoint; the speaker split and the trial list it writes; the commands'
--help."""

import argparse
import json
import shlex
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_config, speakerid_cli
from speakerid.checkpoint import load_checkpoint
from speakerid.data.lists import read_train_list, read_trials
from speakerid.data.prepare import _target_pairs, make_trials, split_speakers

TINY_TRAINING = ["data.batch_size=6", "data.crop_frames=60", "data.num_workers=0", "trainer.epochs=1",
                 "trainer.log_every_steps=1", "trainer.progress_bar=false"]


def speakerid(*args):
    return speakerid_cli(*args)


@pytest.mark.parametrize("command", ["train", "check-data", "prepare", "finetune"])
def test_help_of_each_command(command):
    proc = speakerid(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: speakerid {command}" in proc.stdout and f"speakerid {command} " in proc.stdout  # examples


@pytest.fixture(scope="module")
def checkpoint(tiny_corpus_dir, tmp_path_factory):
    from speakerid.training import train

    run_dir = tmp_path_factory.mktemp("pretrained")
    train(compose_config(["debug=tiny", f"data.dir={tiny_corpus_dir}", f"run_dir={run_dir}", "trainer.epochs=1",
                          "~eval"]))
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def own_speakers(tmp_path_factory):
    """Six other speakers (another seed), 2 sessions of 3 utterances each, as <root>/<speaker>/<session>/."""
    from speakerid.data.synthetic import CorpusSpec, ensure_corpus

    root = tmp_path_factory.mktemp("own")
    ensure_corpus(root, CorpusSpec(seed=77, train_speakers=4, test_speakers=2, sessions=2, utterances_per_session=3,
                                   min_seconds=1.0, max_seconds=1.6), workers=1)
    return root / "wav"


def test_finetune_writes_lists_trains_and_reports_eer_before_and_after(checkpoint, own_speakers, tmp_path):
    out = tmp_path / "ft"
    # a mistake in an override stops the command before any scoring or training ...
    proc = speakerid("finetune", "--root", own_speakers, "--model", checkpoint, "--out-dir", out, "head.m=2.0")
    assert proc.returncode == 1 and "head.m=2.0 is not allowed" in proc.stderr and "EER" not in proc.stdout
    # ... and the same --out-dir takes the corrected command
    proc = speakerid("finetune", "--root", own_speakers, "--model", checkpoint, "--out-dir", out,
                     "--held-out", "0.3", "--device", "cpu", *TINY_TRAINING)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "finetune.json").read_text())

    # the split: 2 of 6 speakers held out (0.3 x 6 rounds to 2), the others trained on
    speakers = sorted(p.name for p in own_speakers.iterdir())
    held = summary["held_out_speakers"]
    train_list = read_train_list(out / "train_list.txt", own_speakers)
    assert len(held) == 2 and sorted(train_list.speaker_ids + held) == speakers
    assert Counter(train_list.speakers) == {s: 6 for s in speakers if s not in held}
    trials = read_trials(out / "trials.txt")
    assert {p.split("/")[0] for t in trials for p in (t.enrol, t.test)} == set(held)
    labels = Counter(t.label for t in trials)
    assert labels[1] == labels[0] == 2 * 9  # per speaker, all 3 x 3 pairs across its two sessions
    for t in trials:
        same = t.enrol.split("/")[0] == t.test.split("/")[0]
        assert same == (t.label == 1) and (not same or t.enrol.split("/")[1] != t.test.split("/")[1])

    # trained from the checkpoint's encoder, with a new head for the 4 training speakers
    run_dir = summary["run_dir"]
    final = load_checkpoint(summary["final_model"])
    start = load_checkpoint(checkpoint)
    assert final["config"]["model"] == start["config"]["model"]
    assert final["config"]["features"]["fbank"] == start["config"]["features"]["fbank"]
    assert final["config"]["trainer"]["init_from"] == str(checkpoint) and final["speakers"] == train_list.speaker_ids
    assert "initialised the model from" in open(f"{run_dir}/train.log").read()

    # before: what `speakerid evaluate` measures for the checkpoint on the same trials
    evaluated = speakerid("evaluate", "--model", checkpoint, "--trials", out / "trials.txt", "--root", own_speakers,
                          "--out-dir", tmp_path / "eval", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    before = json.loads((tmp_path / "eval" / "trials.cosine.json").read_text())["eer"]
    assert summary["eer_before"] == pytest.approx(before, abs=1e-12)
    # after: the last epoch's validation on the held-out trials, during training
    val = [json.loads(line)["val/eer"] for line in open(f"{run_dir}/metrics.jsonl") if "val/eer" in line]
    assert summary["eer_after"] == pytest.approx(val[-1], abs=1e-12)
    assert f"before fine-tuning  {100 * before:.2f}%" in proc.stdout
    assert f"after fine-tuning   {100 * val[-1]:.2f}%" in proc.stdout

    # the run's own resume command composes the same model again (from the configs written beside the lists)
    # and finds this run, finished
    assert yaml.safe_load((out / "configs" / "model" / "checkpoint.yaml").read_text()) == start["config"]["model"]
    (resume,) = [shlex.split(line.split(None, 1)[1]) for line in proc.stdout.splitlines()
                 if line.lstrip().startswith("resume ")]
    assert resume[:2] == ["speakerid", "train"] and "model=checkpoint" in resume and resume[-1] == "trainer.resume=true"
    again = speakerid(*resume[1:])
    assert again.returncode == 0 and "already finished (1 of 1 epochs)" in again.stdout, again.stdout + again.stderr


def test_finetune_starts_from_a_model_file(checkpoint, own_speakers, tmp_path):
    """A model file (encoder and configs, no head or training state) was refused as 'not a speakerid checkpoint';
    its encoder is now the start, through <out-dir>/start.pt, with a new head as from a checkpoint."""
    import torch

    model_file = tmp_path / "model.pt"
    exported = speakerid("export", "--model", checkpoint, "--out", model_file)
    assert exported.returncode == 0, exported.stderr
    out = tmp_path / "ft"
    proc = speakerid("finetune", "--root", own_speakers, "--model", model_file, "--out-dir", out,
                     "--held-out", "0.3", "--device", "cpu", *TINY_TRAINING)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["model"] == str(model_file) and summary["model_kind"] == "model file"

    # the start: the model file's encoder weights, bit for bit (the checkpoint's, which it was exported from)
    start = load_checkpoint(out / "start.pt")
    trained_from = load_checkpoint(checkpoint)
    assert start["model"].keys() == trained_from["model"].keys()
    for name, tensor in trained_from["model"].items():
        torch.testing.assert_close(start["model"][name], tensor, rtol=0, atol=0, msg=name)
    final = load_checkpoint(summary["final_model"])
    assert final["config"]["model"] == trained_from["config"]["model"]
    assert final["config"]["features"]["fbank"] == trained_from["config"]["features"]["fbank"]
    assert final["config"]["trainer"]["init_from"] == str(out / "start.pt")
    assert f"initialised the model from {out / 'start.pt'}" in open(f"{summary['run_dir']}/train.log").read()

    # before: what `speakerid evaluate` measures for the model file on the same trials
    evaluated = speakerid("evaluate", "--model", model_file, "--trials", out / "trials.txt", "--root", own_speakers,
                          "--out-dir", tmp_path / "eval", "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    before = json.loads((tmp_path / "eval" / "trials.cosine.json").read_text())["eer"]
    assert summary["eer_before"] == pytest.approx(before, abs=1e-12)


def test_finetune_refuses_what_it_cannot_use(checkpoint, own_speakers, tmp_path):
    flat = tmp_path / "flat"  # files directly under the speaker folders: not the VoxCeleb layout
    (flat / "spk1").mkdir(parents=True)
    (flat / "spk1" / "a.wav").write_bytes(b"")
    proc = speakerid("finetune", "--root", flat, "--model", checkpoint, "--out-dir", tmp_path / "o1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "spk1/a.wav" in proc.stderr and "speaker/session/utterance depth" in proc.stderr

    proc = speakerid("finetune", "--root", tmp_path / "nowhere", "--model", checkpoint, "--out-dir", tmp_path / "o2")
    assert proc.returncode == 1 and "nowhere is not a directory" in proc.stderr

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    proc = speakerid("finetune", "--root", own_speakers, "--model", checkpoint, "--out-dir", used)
    assert proc.returncode == 1 and f"--out-dir {used} is not empty" in proc.stderr
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]

    proc = speakerid("finetune", "--root", own_speakers, "--model", checkpoint, "--out-dir", tmp_path / "o3",
                     "model=resnet34", "trainer.epochs=1")
    assert proc.returncode == 2 and "model=resnet34: finetune sets these" in proc.stderr

    proc = speakerid("finetune", "--root", own_speakers, "--model", checkpoint, "--out-dir", tmp_path / "o4",
                     "--held-out", "0.9")
    assert proc.returncode == 1 and "6 speakers cannot be split" in proc.stderr
    assert not (tmp_path / "o4" / "train_list.txt").exists()


def test_speaker_split_is_seeded_and_keeps_two_speakers_on_each_side():
    speakers = [f"s{i:02d}" for i in range(10)]
    train, held = split_speakers(speakers, 0.2, seed=3)
    assert len(held) == 2 and sorted(train + held) == speakers and train == sorted(train)
    assert split_speakers(list(reversed(speakers)) + speakers[:3], 0.2, seed=3) == (train, held)  # a set
    assert split_speakers(speakers, 0.2, seed=4) != (train, held)
    assert len(split_speakers(speakers, 0.01, seed=3)[1]) == 2  # at least 2 held out
    assert len(split_speakers(speakers, 0.5, seed=3)[1]) == 5
    with pytest.raises(ValueError, match="10 speakers cannot be split"):
        split_speakers(speakers, 0.9, seed=3)  # 9 held out would leave 1 to train on
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_speakers(speakers, 1.0, seed=3)


def test_trials_are_balanced_across_sessions_capped_and_never_repeat():
    rng = np.random.default_rng(0)
    utts = {"a": [f"a/s{s}/{u}.wav" for s in range(3) for u in range(4)],  # 3 sessions: 3 x 16 = 48 targets
            "b": [f"b/s0/{u}.wav" for u in range(5)],                       # one session: all 10 pairs
            "c": [f"c/s{s}/0.wav" for s in range(2)]}                        # 1 target
    trials = make_trials(utts, rng)
    targets = [t for t in trials if t.label == 1]
    assert Counter(t.enrol.split("/")[0] for t in targets) == {"a": 48, "b": 10, "c": 1}
    assert all(t.enrol.split("/")[1] != t.test.split("/")[1] for t in targets if t.enrol[0] != "b")
    nontargets = [t for t in trials if t.label == 0]
    assert len(nontargets) == len(targets) and len({frozenset((t.enrol, t.test)) for t in nontargets}) == len(nontargets)
    assert all(t.enrol.split("/")[0] != t.test.split("/")[0] for t in nontargets)

    capped = make_trials(utts, np.random.default_rng(0), max_targets_per_speaker=5)
    assert Counter(t.enrol.split("/")[0] for t in capped if t.label == 1) == {"a": 5, "b": 5, "c": 1}
    # one speaker with many pairs, one with a single file: only 20 x 1 distinct non-target pairs exist
    lopsided = make_trials({"a": [f"a/s{s}/{u}.wav" for s in range(2) for u in range(10)], "z": ["z/s0/0.wav"]},
                           np.random.default_rng(1))
    assert Counter(t.label for t in lopsided) == {1: 20, 0: 20}
    assert len({frozenset((t.enrol, t.test)) for t in lopsided if t.label == 0}) == 20
    # many speakers, many draws: a pair never comes back reversed (the default synthetic list had 19)
    many = {f"s{i}": [f"s{i}/v{s}/{u}.wav" for s in range(4) for u in range(4)] for i in range(20)}
    drawn = [t for t in make_trials(many, np.random.default_rng([1234, 10**6])) if t.label == 0]
    assert len({frozenset((t.enrol, t.test)) for t in drawn}) == len(drawn) == 1920
    with pytest.raises(ValueError, match="no target trials"):
        make_trials({"a": ["a/s0/0.wav"], "b": ["b/s0/0.wav"]}, np.random.default_rng(0))


def test_capped_target_pairs_are_the_pairs_a_full_listing_would_draw():
    """A capped draw finds the drawn pairs by their numbers instead of listing every pair: against the
    listing itself (every pair of different sessions, or of any when one session; the same rng call), the
    same pairs in the same order, for speakers with interleaved, lopsided and single sessions."""
    def listed(utts, rng, cap):
        session = [u.split("/")[1] for u in utts]
        pairs = [(a, b) for i, a in enumerate(utts) for j, b in enumerate(utts) if j > i and session[i] != session[j]]
        if not pairs and len(set(session)) == 1:
            pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]]
        if cap is not None and len(pairs) > cap:
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), cap, replace=False))]
        return pairs

    shapes = np.random.default_rng(7)
    for case in range(60):
        sessions = shapes.integers(1, 5)
        utts = [f"s/v{shapes.integers(sessions)}/{u}.wav" for u in range(shapes.integers(1, 30))]  # interleaved
        for cap in (None, 1, 3, 17, 1000):
            assert _target_pairs(utts, np.random.default_rng(case), cap) == \
                listed(utts, np.random.default_rng(case), cap), (utts, cap)


def test_training_overrides_give_hydra_the_exact_paths_whatever_they_hold(tmp_path):
    """Paths reach train.py as Hydra overrides: a ',' makes a sweep, '=' or a space a syntax error, `${` an
    interpolation, and a backslash or an accent were mangled by the old quoting."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from speakerid.cli.finetune import training_overrides

    odd = tmp_path / "d\u00e9j\u00e0 a,b=c'd\\e ${HOME}"
    args = argparse.Namespace(overrides=[], root=odd / "wav", device="cpu")
    words = training_overrides(args, None, 16000, odd / "start.pt", odd / "out")
    parsed = OmegaConf.create({o.key_or_group.replace(".", "/"): o.value()  # as the config reads them, ${ as text
                               for o in OverridesParser.create().parse_overrides(words)})
    assert parsed["data/train_root"] == parsed["eval/root"] == str(odd / "wav")
    assert parsed["data/dir"] == parsed["runs_root"] == str(odd / "out")
    assert parsed["trainer/init_from"] == str(odd / "start.pt")
    assert list(parsed["hydra/searchpath"]) == [f"file://{odd / 'out' / 'configs'}"]


def test_finetune_refuses_only_the_overrides_of_keys_it_sets():
    from speakerid.cli.finetune import sets_a_key_of_this_command

    for override in ("model=resnet34", "model.channels=8", "features=fbank", "features.fbank.n_mels=64",
                     "+data.dir=x", "data.train_list=l.txt", "eval=vox1_o", "eval.trials=t.txt", "eval.root=r",
                     "trainer.init_head=true", "~trainer.init_from", "hydra.run.dir=x", "experiment=arsc"):
        assert sets_a_key_of_this_command(override), override
    for override in ("features.specaugment.enabled=false", "eval.embedding.mode=multicrop", "eval.asnorm.enabled=true",
                     "data.batch_size=8", "data.resample=true", "trainer.epochs=3", "optim.lr=1e-4", "debug=tiny",
                     "head.m=0.3", "named=x"):
        assert not sets_a_key_of_this_command(override), override


def test_finetune_checks_the_batch_against_its_train_list_before_training(checkpoint, own_speakers, tmp_path):
    """4 training speakers x 6 files: a batch of 32 used to fail inside training, leaving a run folder that made
    --out-dir taken for the corrected command."""
    out = tmp_path / "ft"
    proc = speakerid("finetune", "--root", own_speakers, "--model", checkpoint, "--out-dir", out, "--device", "cpu",
                     "data.batch_size=32")
    assert proc.returncode == 1 and "data.batch_size=32 is larger than the train list (24)" in proc.stderr, \
        proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "EER" not in proc.stdout and not (out / "train").exists()  # stopped before scoring and training


def test_out_dir_of_a_failed_start_is_taken_again_but_never_one_that_trained(tmp_path):
    from speakerid.cli.finetune import check_out_dir

    out = tmp_path / "ft"
    failed = out / "train" / "2026-01-01_00-00-00"  # what a run that stopped before its first checkpoint leaves
    (failed / ".hydra").mkdir(parents=True)
    (failed / "train.log").write_text("error: ...")
    (out / "train_list.txt").write_text("s1 s1/a/1.wav\n")
    check_out_dir(out)
    assert (failed / "train.log").read_text() == "error: ..."  # kept: the next run goes beside it

    # a run still training there, before its first checkpoint: taken (another process holds its claim)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
                               str(failed / ".run.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=r"is not empty \(it holds train\)"):
            check_out_dir(out)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    check_out_dir(out)  # the process ended: a failed start again

    trained = out / "train" / "2026-01-02_00-00-00" / "checkpoints"
    trained.mkdir(parents=True)
    (trained / "last.pt").write_bytes(b"weights")
    with pytest.raises(FileExistsError, match=r"is not empty \(it holds train\)"):
        check_out_dir(out)
    assert (trained / "last.pt").read_bytes() == b"weights" and (failed / "train.log").exists()
