"""Reports: the stratified report on a hand-worked example with real audio files, seed summaries, system
comparisons, and the calibrate / report / compare / summarize subcommands as a user runs them."""

import json
import math

import numpy as np
import pytest
import soundfile as sf

from speakerid.calibration import read_calibration_file
from speakerid.cli.main import SUBCOMMANDS, main
from speakerid.data.lists import ListFormatError, read_scores
from speakerid.plots import PALETTE, det_comparison_image
from speakerid.report import Bins, file_durations, read_attributes, stratified_report, trial_groups
from speakerid.summary import read_result, summarize

SECONDS = {"a/1.wav": 1.0, "a/2.wav": 3.0, "b/1.wav": 1.0, "b/2.wav": 3.0, "c/1.wav": 5.0, "c/2.wav": 3.0}
# enrol test score label; enrolment durations 1 1 1 1 5 5 5 s, test durations 3 3 3 3 3 3 1 s
TRIALS = """\
a/1.wav a/2.wav 0.9 1
b/1.wav b/2.wav 0.4 1
a/1.wav b/2.wav 0.5 0
b/1.wav a/2.wav 0.1 0
c/1.wav c/2.wav 0.8 1
c/1.wav a/2.wav 0.3 0
c/1.wav b/1.wav 0.2 0
"""


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "wav"
    for path, seconds in SECONDS.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / path, np.zeros(int(8000 * seconds), dtype=np.float32), 8000)
    scores = tmp_path / "trials.scores.txt"
    scores.write_text(TRIALS)
    return root, scores


def test_durations_come_from_the_headers(corpus):
    root, _ = corpus
    assert file_durations(root, list(SECONDS)) == SECONDS


def test_stratified_report_by_hand(corpus):
    """EER and minDCF(p=0.01) per group, worked out by hand (accept when score >= threshold):
    all: targets .9 .8 .4, non-targets .5 .3 .2 .1; FAR stays 1/4 while FRR falls from 1/3 to 0: EER 25%;
         minDCF = min(FRR + 99 FAR) = 1/3 (accept .9 and .8).
    enrolment <2 s: targets .9 .4, non-targets .5 .1; at .5 FAR = FRR = 1/2: EER 50%; minDCF 1/2.
    enrolment 4-6 s: target .8 above non-targets .3 .2: EER 0, minDCF 0.
    test <2 s: one non-target, no target: not measured. test 2-4 s: targets .9 .8 .4, non-targets .5 .3 .1;
         at .5 FAR = FRR = 1/3: EER 1/3; minDCF 1/3."""
    root, path = corpus
    scores = read_scores(path)
    groups = trial_groups(scores.enrol, scores.test, file_durations(root, list(SECONDS)))
    assert groups["enrol_duration"] == ["<2 s"] * 4 + ["4-6 s"] * 3
    assert groups["test_duration"] == ["2-4 s"] * 6 + ["<2 s"]
    rows = stratified_report(scores.scores, scores.labels, scores.enrol, scores.test, groups,
                             p_targets=(0.01,), n_bootstrap=200, seed=1)
    by = {(r["by"], r["group"]): r for r in rows}
    assert [(r["by"], r["group"]) for r in rows] == [
        ("all", "all"), ("enrol_duration", "<2 s"), ("enrol_duration", "4-6 s"),
        ("test_duration", "<2 s"), ("test_duration", "2-4 s")]
    expected = {("all", "all"): (0.25, 1 / 3), ("enrol_duration", "<2 s"): (0.5, 0.5),
                ("enrol_duration", "4-6 s"): (0.0, 0.0), ("test_duration", "2-4 s"): (1 / 3, 1 / 3)}
    for key, (eer, dcf) in expected.items():
        assert by[key]["eer"] == pytest.approx(eer) and by[key]["min_dcf_p0.01"] == pytest.approx(dcf), key
    assert by["test_duration", "<2 s"]["note"] == "no target trials" and "eer" not in by["test_duration", "<2 s"]
    assert by["enrol_duration", "<2 s"]["n_speakers"] == 2 and by["all", "all"]["n_speakers"] == 3
    assert by["enrol_duration", "4-6 s"]["range"] == [4.0, 6.0] and by["enrol_duration", "<2 s"]["range"] == [None, 2.0]
    # Separated in every resample: the interval is a point. Resamples without c leave that group out.
    assert by["enrol_duration", "4-6 s"]["eer_ci"] == [0.0, 0.0]
    assert 0 < by["enrol_duration", "4-6 s"]["n_bootstrap"] < 200 and by["all", "all"]["n_bootstrap"] == 200
    lo, hi = by["all", "all"]["eer_ci"]
    assert 0.0 <= lo <= hi <= 1.0


def test_bins_whose_edges_differ_past_six_digits_keep_their_own_labels():
    """Trials are grouped by label: printed with `:g`, 1000000 and 1000001 were both '1e+06' and two bins
    were merged into one row shown twice."""
    bins = Bins((1000000, 1000001, 1000002))
    assert [bins.label(i) for i in range(4)] == ["<1000000", "1000000-1000001", "1000001-1000002", ">=1000002"]
    assert [Bins((2, 4.5)).label(i) for i in range(3)] == ["<2", "2-4.5", ">=4.5"]


def test_attributes_group_by_value_or_bins(corpus, tmp_path):
    _, path = corpus
    scores = read_scores(path)
    lines = ["enrol\ttest\tchannel\tsnr_db"]
    for i, t in enumerate(scores.trials):
        lines.append(f"{t.enrol}\t{t.test}\t{'phone call' if i % 2 else 'studio'}\t{5 * i}")
    attributes_file = tmp_path / "attributes.tsv"
    attributes_file.write_text("\n".join(lines) + "\n")
    attributes = read_attributes(attributes_file)
    assert attributes.names == ["channel", "snr_db"]
    groups = trial_groups(scores.enrol, scores.test, attributes=attributes, bins={"snr_db": Bins((10, 20))})
    assert groups["channel"] == ["studio", "phone call"] * 3 + ["studio"]  # tab-separated: spaces stay
    assert groups["snr_db"] == ["<10", "<10", "10-20", "10-20", ">=20", ">=20", ">=20"]
    assert set(groups) == {"channel", "snr_db"}  # no durations without a root

    lines[3] = lines[3].replace("\t10", "\tloud")
    attributes_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ListFormatError, match=r"attributes.tsv:4: snr_db value 'loud' is not a number"):
        trial_groups(scores.enrol, scores.test, attributes=read_attributes(attributes_file),
                     bins={"snr_db": Bins((10, 20))})
    attributes_file.write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(ListFormatError, match=r"attributes.tsv: has no line for the trial c/1.wav c/2.wav "
                                              r"\(line 5 of .*trials.scores.txt\); 3 of 7 trials"):
        trial_groups(scores.enrol, scores.test, attributes=read_attributes(attributes_file),
                     source=str(path), lines=scores.lines)
    attributes_file.write_text("enrol\ttest\tchannel\na/1.wav\ta/2.wav\n")
    with pytest.raises(ListFormatError, match=r"attributes.tsv:2: 2 fields, but the header \(line 1\) names 3"):
        read_attributes(attributes_file)
    with pytest.raises(ValueError, match="--bins names snr, which is neither"):
        trial_groups(scores.enrol, scores.test, bins={"snr": Bins((1.0,))})


@pytest.mark.parametrize("text, message", [
    ("a/1.wav b/1.wav 0.5 1\na/1.wav b/2.wav high 0\n", r"s.txt:2: score 'high' is not a number"),
    ("a/1.wav b/1.wav 0.5 1\n\na/1.wav b/2.wav 0.1\n", r"s.txt:3: 3 fields, but line 1 has 4"),
    ("a/1.wav b/1.wav 0.5 2\n", r"s.txt:1: label must be 0 or 1, got '2'"),
    ("a/1.wav b/1.wav nan 1\n", r"s.txt:1: score 'nan' is not finite"),
    ("a/1.wav 0.5 1 x y\n", r"s.txt:1: expected 4 fields 'enrol test score label'"),
])
def test_score_file_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "s.txt"
    path.write_text(text)
    with pytest.raises(ListFormatError, match=message):
        read_scores(path)


def test_scores_without_labels_cannot_be_measured(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("a/1.wav b/1.wav 0.5\n")
    assert read_scores(path).labels is None
    with pytest.raises(ListFormatError, match=r"s.txt: calibration needs labelled trials"):
        read_scores(path).require_labels("calibration")


def write_run(folder, seed, validations):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed: {seed}\nname: arsc\n")
    with open(folder / "metrics.jsonl", "w") as f:
        for step, (eer, dcf) in enumerate(validations):
            f.write(json.dumps({"step": step, "train/loss": 1.0}) + "\n")
            f.write(json.dumps({"step": step, "val/eer": eer, "val/min_dcf_p0.01": dcf, "val/min_dcf_p0.05": dcf / 2})
                    + "\n")


def test_summary_of_a_seed_sweep(tmp_path):
    # final EERs 0.10, 0.12, 0.14: mean 0.12, sample std 0.02; best EERs 0.09, 0.12, 0.13
    runs = tmp_path / "runs" / "arsc"
    write_run(runs / "2026-11-27_10-00-00_job0", 1, [(0.09, 0.5), (0.10, 0.4)])
    write_run(runs / "2026-11-27_10-00-00_job1", 2, [(0.12, 0.6)])
    write_run(runs / "2026-11-27_10-00-00_job2", 3, [(0.13, 0.7), (0.14, 0.8)])
    results = [read_result(p) for p in sorted(runs.iterdir())]
    assert [r.seed for r in results] == [1, 2, 3]
    summary = summarize(results)
    assert summary["val/eer"]["mean"] == pytest.approx(0.12) and summary["val/eer"]["std"] == pytest.approx(0.02)
    assert summary["best/eer"]["values"] == [0.09, 0.12, 0.13]
    assert summary["val/min_dcf_p0.01"]["mean"] == pytest.approx(0.6)
    assert summary["val/min_dcf_p0.01"]["std"] == pytest.approx(math.sqrt(((0.4 - 0.6) ** 2 + 0 + 0.2 ** 2) / 2))

    # the command: a table with the runs, mean and std, and a JSON
    out = tmp_path / "seeds.json"
    assert main(["summarize", *map(str, sorted(runs.iterdir())), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["runs"]] == [1, 2, 3] and record["summary"]["val/eer"]["n"] == 3
    (runs / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: not a run folder"):
        read_result(runs / "empty")


def test_summary_of_evaluation_jsons(tmp_path):
    paths = []
    for i, eer in enumerate([0.05, 0.07]):
        path = tmp_path / f"seed{i}" / "trials.cosine.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"eer": eer, "min_dcf_p0.01": 0.3, "eer_threshold": 0.4, "n_trials": 10}))
        paths.append(path)
    summary = summarize([read_result(p) for p in paths])
    assert set(summary) == {"eer", "min_dcf_p0.01"}  # thresholds are not metrics
    assert summary["eer"]["mean"] == pytest.approx(0.06) and summary["eer"]["std"] == pytest.approx(math.sqrt(2) / 100)


def validations(run_dir):
    return [json.loads(line)["val/eer"] for line in open(run_dir / "metrics.jsonl") if "val/eer" in line]


def test_summary_of_a_resumed_run_takes_the_best_of_the_whole_run(tiny_cfg, tmp_path, capsys):
    # A real run of 2 epochs, resumed to 4 into a new folder, whose metrics.jsonl logs epochs 3 and 4 only.
    from speakerid.training import train

    first, second = tmp_path / "runs" / "first", tmp_path / "runs" / "second"
    train(tiny_cfg("seed=1", "trainer.epochs=2", run_dir=first))
    train(tiny_cfg("seed=1", "trainer.epochs=4", f"trainer.resume={first / 'checkpoints' / 'last.pt'}",
                   run_dir=second))
    before, after = validations(first), validations(second)
    # the premise of this test (seed 1, CPU): the best validation came before the resume
    assert min(before) < min(after), (before, after)

    result = read_result(second)
    assert result.metrics["best/eer"] == min(before + after)
    assert result.metrics["val/eer"] == after[-1]

    # the interrupted folder and the resumed one are one run: refused, naming both
    assert main(["summarize", str(first), str(second)]) == 1
    assert "second resumes the run of" in capsys.readouterr().err
    # without last.pt the best of the whole run is not known: left out, with a warning
    (second / "checkpoints" / "last.pt").unlink()
    assert math.isnan(read_result(second).metrics["best/eer"])
    assert main(["summarize", str(second)]) == 0
    assert "best/eer left out: the run resumed" in capsys.readouterr().err


def write_evaluation(path, trials, scoring="cosine", eer=0.1, sha="a" * 64, n_trials=10, seed=None, **more):
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"trials": str(trials), "scoring": scoring, "n_trials": n_trials, "checkpoint_sha256": sha,
              "embedding": {"mode": "full", "num_crops": 5, "crop_frames": 300, "max_trim": 0.0025, "batch_size": 64},
              "asnorm": None, "mean_subtraction": None, "eer": eer, "min_dcf_p0.01": 0.5, **more}
    if seed is not None:  # the run folder of its checkpoint, with the seed in config.yaml
        run = path.parent / "run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text(f"seed: {seed}\n")
        record["checkpoint"] = str(run / "checkpoints" / "best.pt")
    path.write_text(json.dumps(record))
    return path


def test_summarize_refuses_evaluations_of_other_trials_or_scorings(tmp_path, capsys):
    trials, small, copy = tmp_path / "trials.txt", tmp_path / "small.txt", tmp_path / "copy" / "trials.txt"
    trials.write_text("1 a/1.wav b/1.wav\n")
    small.write_text("0 a/1.wav c/1.wav\n")
    copy.parent.mkdir()
    copy.write_text(trials.read_text())
    a = write_evaluation(tmp_path / "a.json", trials, sha="a" * 64)
    cases = {"other trials": (write_evaluation(tmp_path / "b.json", small, sha="b" * 64),
                              f"trials: {trials} vs {small}"),
             "other scoring": (write_evaluation(tmp_path / "c.json", trials, "multicrop5", sha="c" * 64),
                               "scoring: cosine vs multicrop5"),
             "the list changed": (write_evaluation(tmp_path / "d.json", trials, n_trials=12, sha="d" * 64),
                                  "n_trials: 10 vs 12"),
             "other crops": (write_evaluation(tmp_path / "e.json", trials, sha="e" * 64,
                                              embedding={"mode": "full", "max_trim": 0.0}),
                             "max_trim: 0.0025 vs 0.0"),
             "with AS-norm": (write_evaluation(tmp_path / "f.json", trials, "cosine_asnorm300", sha="f" * 64,
                                               asnorm={"enabled": True, "top_k": 300, "cohort_list": "c.txt"}),
                              "scoring: cosine vs cosine_asnorm300")}
    for what, (other, difference) in cases.items():
        assert main(["summarize", str(a), str(other)]) == 1, what
        err = capsys.readouterr().err
        assert f"{a} and {other} were not measured alike" in err and difference in err, (what, err)
    # the same list under another path is the same list; another checkpoint of another seed: a summary
    same = write_evaluation(tmp_path / "g.json", copy, sha="0" * 64, eer=0.3)
    assert main(["summarize", str(a), str(same)]) == 0
    assert "mean" in capsys.readouterr().out


def test_summarize_refuses_run_folders_validated_on_other_trials(tmp_path, capsys):
    runs = tmp_path / "runs"
    for job, (seed, trials, mode) in enumerate([(1, "/data/a.txt", "full"), (2, "/data/a.txt", "full"),
                                                 (3, "/data/b.txt", "full"), (4, "/data/a.txt", "multicrop")]):
        write_run(runs / f"job{job}", seed, [(0.1, 0.5)])
        with open(runs / f"job{job}" / "config.yaml", "a") as f:
            f.write(f"eval:\n  name: t\n  trials: {trials}\n  root: /data\n  embedding:\n    mode: {mode}\n")
    assert main(["summarize", str(runs / "job0"), str(runs / "job1")]) == 0
    assert main(["summarize", str(runs / "job0"), str(runs / "job2")]) == 1
    assert "trials: /data/a.txt vs /data/b.txt" in capsys.readouterr().err
    assert main(["summarize", str(runs / "job0"), str(runs / "job3")]) == 1
    assert "scoring: cosine vs multicrop5" in capsys.readouterr().err


def test_summarize_refuses_one_checkpoint_twice_and_warns_of_equal_seeds(tmp_path, capsys):
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/1.wav b/1.wav\n")
    a = write_evaluation(tmp_path / "a" / "t.cosine.json", trials, sha="a" * 64, seed=1, eer=0.1)
    again = write_evaluation(tmp_path / "copy" / "t.cosine.json", trials, sha="a" * 64, seed=1, eer=0.1)
    assert main(["summarize", str(a), str(again)]) == 1
    assert f"{a} and {again} evaluate the same checkpoint (sha256 aaaaaaaaaaaa...)" in capsys.readouterr().err
    assert main(["summarize", str(a), str(a)]) == 1
    assert "the same result given twice" in capsys.readouterr().err

    other = write_evaluation(tmp_path / "b" / "t.cosine.json", trials, sha="b" * 64, seed=1, eer=0.3)
    assert main(["summarize", str(a), str(other)]) == 0
    captured = capsys.readouterr()
    assert f"warning: {a}, {other} have the same seed 1" in captured.err
    assert "20.00" in captured.out  # still summarised: a rerun of a seed is a result, only not a seed's spread


def test_summary_leaves_a_diverged_run_out_of_the_mean(tmp_path, capsys, recwarn):
    runs = tmp_path / "runs"
    write_run(runs / "job0", 1, [(0.10, 0.5)])
    write_run(runs / "job1", 2, [(0.14, 0.7)])
    write_run(runs / "job2", 3, [(float("nan"), 0.9)])
    results = [read_result(p) for p in sorted(runs.iterdir())]
    assert math.isnan(results[2].metrics["best/eer"])  # no finite validation: no best (was inf)
    summary = summarize(results)
    assert summary["val/eer"]["mean"] == pytest.approx(0.12) and summary["val/eer"]["n"] == 2
    assert summary["val/eer"]["left_out"] == 1 and summary["best/eer"]["std"] == pytest.approx(math.sqrt(0.0008))
    assert main(["summarize", *map(str, sorted(runs.iterdir()))]) == 0
    captured = capsys.readouterr()
    assert "inf" not in captured.out and f"val/eer: left out of the mean, not finite in {runs / 'job2'}" in captured.err
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def gaussian_score_file(path, rng, n_speakers=30, separation=2.0):
    """Scores of a speaker-structured list: N(separation, 1) targets, N(0, 1) non-targets."""
    lines = []
    for s in range(n_speakers):
        for k in range(6):
            lines.append(f"s{s}/e{k}.wav s{s}/t{k}.wav {rng.normal(separation, 1):.6f} 1")
        for k in range(20):
            other = (s + 1 + k % (n_speakers - 1)) % n_speakers
            lines.append(f"s{s}/e{k}.wav s{other}/t{k}.wav {rng.normal(0, 1):.6f} 0")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibrate_command_writes_the_model_file_record(tmp_path, capsys):
    scores = gaussian_score_file(tmp_path / "scores.txt", np.random.default_rng(0))
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--scores", str(scores), "--out", str(out), "--target-far", "0.05",
                 "--n-bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert set(record) == {"calibration", "threshold"}
    assert set(record["calibration"]) == {"slope", "offset", "prior"}
    # Equal-variance Gaussians 2 apart with unit variance: llr = 2 s - 2 (within sampling error)
    assert record["calibration"]["slope"] == pytest.approx(2.0, abs=0.35)
    assert record["calibration"]["offset"] == pytest.approx(-2.0, abs=0.4)
    threshold = record["threshold"]
    assert threshold["kind"] == "far" and threshold["target"] == 0.05 and threshold["far"] <= 0.05
    assert threshold["n_bootstrap"] == 200 and threshold["confidence"] == 0.95
    assert threshold["far_ci"][0] <= threshold["far"] <= threshold["far_ci"][1]
    calibration, loaded = read_calibration_file(out)
    assert loaded.score == threshold["score"] and calibration.slope == record["calibration"]["slope"]
    for text in ("Cllr", "minCllr", "actual DCF(p=0.01)", "minDCF", "FAR <= 0.05"):
        assert text in printed

    # never over an existing file, and checked before the work
    assert main(["calibrate", "--scores", str(scores), "--out", str(out)]) == 1
    assert f"--out {out} already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["calibrate", "--scores", str(scores), "--out", str(out), "--overwrite", "--operating-point", "dcf",
                 "--n-bootstrap", "50"]) == 0
    assert json.loads(out.read_text())["threshold"]["kind"] == "dcf"


def test_report_command_with_a_calibration_from_other_trials(corpus, tmp_path, capsys):
    root, scores = corpus
    held_out = gaussian_score_file(tmp_path / "fit.txt", np.random.default_rng(1))
    calibration = tmp_path / "cal.json"
    assert main(["calibrate", "--scores", str(held_out), "--out", str(calibration), "--n-bootstrap", "50"]) == 0
    out = tmp_path / "report.json"
    assert main(["report", "--scores", str(scores), "--root", str(root), "--calibration", str(calibration),
                 "--n-bootstrap", "100", "--out", str(out)]) == 0
    printed, warned = capsys.readouterr()
    assert "warning: only 3 speakers in the trial list" in warned
    report = json.loads(out.read_text())
    assert report["rows"][0]["eer"] == pytest.approx(0.25) and "25.00" in printed
    assert report["bins"]["enrol_duration"] == [2.0, 4.0, 6.0, 10.0, 20.0]
    assert set(report["calibration"]) >= {"cllr_raw", "cllr", "min_cllr", "actual_dcf_raw", "actual_dcf", "min_dcf",
                                          "threshold"}
    assert "no target trials" in printed

    (tmp_path / "bad.txt").write_text("a/1.wav a/2.wav 0.9 1\na/1.wav b/2.wav 0.5\n")
    assert main(["report", "--scores", str(tmp_path / "bad.txt")]) == 1
    assert "bad.txt:2: 3 fields, but line 1 has 4" in capsys.readouterr().err
    assert main(["report", "--scores", str(scores), "--root", str(tmp_path / "nowhere")]) == 1
    assert "nowhere is not a directory" in capsys.readouterr().err
    (tmp_path / "cal_bad.json").write_text(json.dumps({"calibration": {"slope": 1.0}}))
    assert main(["report", "--scores", str(scores), "--calibration", str(tmp_path / "cal_bad.json")]) == 1
    assert "cal_bad.json: a calibration file has exactly the keys calibration and threshold" in capsys.readouterr().err


def test_report_with_a_repeated_p_target_has_one_column_per_prior(corpus, tmp_path, capsys):
    _, scores = corpus
    out = tmp_path / "report.json"
    assert main(["report", "--scores", str(scores), "--p-target", "0.05", "0.05", "0.01", "--n-bootstrap", "20",
                 "--out", str(out)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.count("0.05") == 1 and header.count("0.01") == 1
    report = json.loads(out.read_text())
    assert report["p_targets"] == [0.05, 0.01]


def test_compare_draws_every_system(tmp_path, capsys):
    rng = np.random.default_rng(2)
    a = gaussian_score_file(tmp_path / "a.scores.txt", rng, separation=2.0)
    b = gaussian_score_file(tmp_path / "b.scores.txt", rng, n_speakers=25, separation=3.0)  # other trials
    evaluation = tmp_path / "b.json"
    evaluation.write_text(json.dumps({"eer": 0.1, "scores": str(b)}))
    out = tmp_path / "det.png"
    assert main(["compare", str(a), str(evaluation), "--out", str(out), "--names", "two", "three"]) == 0
    printed = capsys.readouterr()
    assert "two" in printed.out and "three" in printed.out and "different trials" in printed.err
    from PIL import Image

    image = np.asarray(Image.open(out).convert("RGB"))
    for color in PALETTE[:2]:
        assert np.all(image == color, axis=2).sum() > 200  # each curve drawn
    assert main(["compare", str(a), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_det_comparison_image_one_colour_per_system():
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(300), np.zeros(300)]
    systems = [(f"s{i}", np.r_[rng.normal(d, 1, 300), rng.normal(0, 1, 300)], labels) for i, d in enumerate((1, 2, 3))]
    image = det_comparison_image(systems, title="t", size=400)
    assert image.shape == (400, 400, 3)
    assert all(np.all(image == color, axis=2).sum() > 150 for color in PALETTE[:3])
    assert np.all(image == PALETTE[3], axis=2).sum() == 0


@pytest.mark.parametrize("command", ["calibrate", "report", "compare", "summarize"])
def test_help_of_new_subcommands(command, capsys):
    assert command in SUBCOMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"\n    speakerid {command} " in capsys.readouterr().out  # an example line of the module docstring


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_attribute_value_is_refused_naming_its_line(corpus, tmp_path, capsys, value):
    """NaN fell silently into the top bin (searchsorted puts it past every edge), inf into an end bin."""
    root, scores = corpus
    values = ["3", "12", "25", value, "7", "1", "30"]  # line 5 (after the header) holds the bad one
    attributes_file = tmp_path / "attributes.tsv"
    attributes_file.write_text("enrol\ttest\tsnr_db\n" + "".join(
        f"{line.split()[0]}\t{line.split()[1]}\t{v}\n" for line, v in zip(TRIALS.splitlines(), values)))
    scores_list = read_scores(scores)
    with pytest.raises(ListFormatError, match=f"attributes.tsv:5: snr_db value '{value}' is not a finite number"):
        trial_groups(scores_list.enrol, scores_list.test, attributes=read_attributes(attributes_file),
                     bins={"snr_db": Bins((10, 20))})
    assert main(["report", "--scores", str(scores), "--attributes", str(attributes_file), "--bins",
                 "snr_db=10,20", "--n-bootstrap", "10"]) == 1
    assert "attributes.tsv:5: snr_db value" in capsys.readouterr().err
    # unbinned, the value is a group name like any other
    groups = trial_groups(scores_list.enrol, scores_list.test, attributes=read_attributes(attributes_file))
    assert groups["snr_db"] == values


def test_duration_bins_without_root_are_refused(corpus, tmp_path, capsys):
    """Durations come from the audio under --root: without it, --bins enrol_duration=... was ignored."""
    _, scores = corpus
    out = tmp_path / "report.json"
    assert main(["report", "--scores", str(scores), "--bins", "enrol_duration=1,2", "--n-bootstrap", "10",
                 "--out", str(out)]) == 1
    assert "--bins enrol_duration needs --root" in capsys.readouterr().err and not out.exists()
