"""Inputs that evaluation, embedding, verification, calibration and export once took without a word (or with
a traceback), through the commands and the API a user calls: a repeated or conflicting AS-norm cohort line, a
cohort without spread, out-of-range extraction options, a NaN threshold or a sample rate in kHz, a calibration
applied to scores of another scoring or model, a failed export left behind. A tiny untrained ECAPA-TDNN on
synthetic recordings: the checks are about what is refused and what is written, not about accuracy."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import speakerid
from conftest import speakerid_cli, untrained_checkpoint
from speakerid.config import ConfigError
from speakerid.evaluation import ExtractionOptions, Protocol

RATE = 16000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return untrained_checkpoint(folder / "best.pt", folder, ["a", "b"], {"epoch": 1, "step": 1})


def wave(speaker: int, take: int, seconds: float = 1.2) -> np.ndarray:
    """A gliding tone in noise: the pitch tells the speaker, the noise the take."""
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.default_rng(100 * speaker + take).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * (110 + 45 * speaker) * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t)))
            + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """spk0..spk3/s1/{0,1}.wav, and copyA/s1/0.wav, copyB/s1/0.wav: one file under two names; with the lists
    trials.txt (labelled), pairs.txt (unlabelled) and train.txt."""
    root = tmp_path_factory.mktemp("audio")
    for s in range(4):
        for take in range(2):
            (root / f"spk{s}/s1").mkdir(parents=True, exist_ok=True)
            sf.write(root / f"spk{s}/s1/{take}.wav", wave(s, take), RATE, subtype="FLOAT")
    for copy in ("copyA", "copyB"):
        (root / copy / "s1").mkdir(parents=True)
        shutil.copy(root / "spk3/s1/0.wav", root / copy / "s1/0.wav")
    pairs = [(1, "spk0/s1/0.wav", "spk0/s1/1.wav"), (0, "spk0/s1/0.wav", "spk1/s1/0.wav"),
             (1, "spk1/s1/0.wav", "spk1/s1/1.wav"), (0, "spk1/s1/1.wav", "spk2/s1/0.wav")]
    (root / "trials.txt").write_text("".join(f"{label} {e} {t}\n" for label, e, t in pairs))
    (root / "pairs.txt").write_text("".join(f"{e} {t}\n" for _, e, t in pairs))
    (root / "train.txt").write_text("".join(f"spk{s} spk{s}/s1/{take}.wav\n" for s in range(4) for take in range(2)))
    return root


def evaluate(checkpoint, audio, trials, cohort, out_dir, top_k=2):
    return speakerid_cli("evaluate", "--model", checkpoint, "--trials", audio / trials, "--root", audio, "--out-dir",
                         out_dir, "--device", "cpu", "eval.asnorm.enabled=true", f"eval.asnorm.cohort_list={cohort}",
                         f"eval.asnorm.cohort_root={audio}", f"eval.asnorm.top_k={top_k}")


# ------------------------------------------------------------------------------------------------ AS-norm
def test_a_repeated_cohort_line_counts_once_and_a_file_of_two_speakers_is_refused(checkpoint, audio, tmp_path):
    """The cohort's files are embedded once each, but its speakers were taken per line: a repeated line
    ended in `ValueError: 6 speakers for 5 embeddings` (a traceback)."""
    lines = ["spk2 spk2/s1/0.wav", "spk2 spk2/s1/1.wav", "spk3 spk3/s1/0.wav", "spk3 spk3/s1/1.wav",
             "spk1 spk1/s1/1.wav"]
    (tmp_path / "cohort.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "repeated.txt").write_text("\n".join(lines + [lines[0]]) + "\n")
    clean = evaluate(checkpoint, audio, "trials.txt", tmp_path / "cohort.txt", tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    repeated = evaluate(checkpoint, audio, "trials.txt", tmp_path / "repeated.txt", tmp_path / "repeated")
    assert repeated.returncode == 0, repeated.stderr
    # the same cohort, so the same scores as the list without the repeat
    scores = "trials.cosine_asnorm2.scores.txt"
    assert (tmp_path / "repeated" / scores).read_text() == (tmp_path / "clean" / scores).read_text()

    (tmp_path / "conflict.txt").write_text("spk2 spk2/s1/0.wav\nspk3 spk3/s1/0.wav\nspk1 spk2/s1/0.wav\n")
    run = evaluate(checkpoint, audio, "trials.txt", tmp_path / "conflict.txt", tmp_path / "conflict")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    error = run.stderr.splitlines()[-1]
    assert "conflict.txt" in error and "spk2/s1/0.wav" in error and "spk1" in error and "spk2" in error
    assert not (tmp_path / "conflict" / scores).exists()


@pytest.mark.parametrize("trials", ["trials.txt", "pairs.txt"])
def test_a_cohort_without_spread_is_refused_and_no_score_is_written(checkpoint, audio, tmp_path, trials):
    """Two cohort speakers whose files are copies of one recording, top_k=2: the two top cohort scores of every
    utterance are equal and their standard deviation 0. A labelled list ended in a traceback, a list without
    labels wrote `inf` scores and exited 0."""
    (tmp_path / "copies.txt").write_text("cA copyA/s1/0.wav\ncB copyB/s1/0.wav\n")
    run = evaluate(checkpoint, audio, trials, tmp_path / "copies.txt", tmp_path / "out")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert re.search(r"copies.txt: AS-norm: the top 2 cohort scores of spk\S+ are \(almost\) all equal "
                     r"\(standard deviation 0;.*a larger cohort of distinct speakers or a larger top_k \(now 2\)",
                     run.stderr), run.stderr
    assert not list((tmp_path / "out").glob("*.scores.txt")) and not list((tmp_path / "out").glob("*.json"))


# ------------------------------------------------------------------------------------- extraction options
@pytest.mark.parametrize("option, value, allowed", [
    ("max_trim", 0.9, "a fraction in [0, 0.5)"),
    ("num_crops", 0, "an integer >= 1"),
    ("crop_frames", 0, "an integer >= 10"),
    ("crop_frames", -5, "an integer >= 10"),
    ("batch_size", 0, "an integer >= 1"),
    ("batch_size", -1, "an integer >= 1"),
])
def test_extraction_options_are_refused_as_evaluate_refuses_them(checkpoint, audio, tmp_path, option, value, allowed):
    """evaluate checked eval.embedding.*; embed and the API took --max-trim 0.9 or --batch-size 0 (and
    --num-crops 0 failed with `need at least one array to stack`)."""
    message = f"{option}={value!r} is not allowed: {allowed}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractionOptions(**{option: value})
    with pytest.raises(ConfigError, match=re.escape(f"eval.embedding.{message}")):
        Protocol.from_config({"name": "t", "trials": "t.txt", "root": ".", "embedding": {option: value}})
    out = tmp_path / "e.npz"
    mode = ["--mode", "multicrop"] if option in ("num_crops", "crop_frames") else []
    run = speakerid_cli("embed", "--model", checkpoint, "--folder", audio / "spk0", "--out", out, "--device", "cpu",
                        *mode, f"--{option.replace('_', '-')}", value)
    assert run.returncode == 1 and message in run.stderr and not out.exists()


def test_a_bool_is_not_a_batch_size():
    with pytest.raises(ConfigError, match=re.escape("batch_size=True is not allowed: an integer >= 1")):
        ExtractionOptions(batch_size=True)
    assert ExtractionOptions(max_trim=0, num_crops=1, crop_frames=10, batch_size=1).max_trim == 0


# ---------------------------------------------------------------------------------------------- verify, API
def test_a_threshold_must_be_a_finite_number(checkpoint, audio):
    """`score >= nan` is False: a NaN threshold called every pair `different speakers` (exit 1)."""
    model = speakerid.load(checkpoint, device="cpu")
    a, b = audio / "spk0/s1/0.wav", audio / "spk0/s1/1.wav"
    for bad in (float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            model.verify(a, b, threshold=bad)
    assert model.verify(a, b, threshold=-1.0).same and not model.verify(a, b, threshold=1.01).same
    for text in ("nan", "inf", "-inf"):
        run = speakerid_cli("verify", "--model", checkpoint, "--device", "cpu", f"--threshold={text}", a, b)
        assert run.returncode == 2 and "--threshold: must be a finite number" in run.stderr, run.stderr
        assert "speaker" not in run.stdout


def test_a_waveform_sample_rate_must_be_a_whole_number_of_hz(checkpoint):
    """sample_rate=True (1 Hz) or 16 (kHz meant) resampled to 16 kHz asked for 45 GB; 8000.5 failed inside
    torchaudio."""
    model = speakerid.load(checkpoint, device="cpu")
    x = wave(0, 0)
    for bad in (8000.5, True, 16, 0, -16000, 10 ** 9, "16000"):  # 8000.5 first: the others exhausted memory
        with pytest.raises(ValueError, match=re.escape(f"sample_rate must be a whole number of Hz in [1000, 768000] "
                                                       f"(e.g. 16000, not 16), got {bad!r}")):
            model.embed(x, sample_rate=bad)
    np.testing.assert_array_equal(model.embed(x, sample_rate=np.int64(RATE)), model.embed(x, sample_rate=RATE))


def test_loading_a_folder_names_the_model_files_in_it(checkpoint, tmp_path, audio):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="checkpoints is a folder, not a model file: it holds no .pt files"):
        speakerid.load(folder)
    shutil.copy(checkpoint, folder / "last.pt")
    shutil.copy(checkpoint, folder / "best.pt")
    with pytest.raises(IsADirectoryError, match=r"give one of its .pt files \(best.pt, last.pt\)"):
        speakerid.load(folder)
    run = speakerid_cli("verify", "--model", folder, "--threshold", "0.5", audio / "spk0/s1/0.wav",
                        audio / "spk0/s1/1.wav")
    assert run.returncode == 2 and "is a folder, not a model file" in run.stderr


# ---------------------------------------------------------------------------------------------- calibration
def evaluated_scores(path: Path, scoring: str, model_sha256: str, **record) -> Path:
    """A score file as `speakerid evaluate` names it, with the JSON it writes beside it (the keys calibrate
    reads, and `record`): 20 speakers, overlapping Gaussian target and non-target scores."""
    rng = np.random.default_rng(0)
    lines = []
    for s in range(20):
        for k in range(4):
            lines.append(f"s{s}/a/{k}.wav s{s}/b/{k}.wav {rng.normal(0.6, 0.15):.6f} 1")
            lines.append(f"s{s}/a/{k}.wav s{(s + 1 + k) % 20}/b/{k}.wav {rng.normal(0.3, 0.15):.6f} 0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    name = path.name.removesuffix(".scores.txt")
    path.with_name(f"{name}.json").write_text(json.dumps({"checkpoint_sha256": model_sha256, "scores": str(path),
                                                          "name": name.split(".")[0], "scoring": scoring,
                                                          **record}))
    return path


def test_a_calibration_applies_only_to_scores_of_its_scoring_and_model(checkpoint, audio, tmp_path):
    """calibrate on raw cosine scores, then export with --mean-from: the raw-cosine threshold was applied to
    mean-subtracted scores without a word. Now cal.json records its scores' scoring and model, and export and
    load_calibration refuse another."""
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    cals = {}
    for scoring, model in (("cosine", sha), ("cosine_meansub", sha), ("cosine", "0" * 64)):
        scores = evaluated_scores(tmp_path / f"{scoring}_{model[:4]}" / f"trials.{scoring}.scores.txt", scoring, model)
        cals[scoring, model] = tmp_path / f"{scoring}_{model[:4]}.json"
        run = speakerid_cli("calibrate", "--scores", scores, "--out", cals[scoring, model], "--n-bootstrap", "20")
        assert run.returncode == 0, run.stderr
        assert json.loads(cals[scoring, model].read_text())["source"] == {
            "scores": str(scores.resolve()), "evaluation": str(scores.with_name(f"trials.{scoring}.json").resolve()),
            "scoring": scoring, "model_sha256": model, "model_provenance_sha256": None, "embedding_mean_sha256": None}

    def export(out: str, calibration: Path, *mean: str):
        return speakerid_cli("export", "--model", checkpoint, "--out", tmp_path / out, "--calibration", calibration,
                             "--device", "cpu", *mean)

    mean = ["--mean-from", audio / "train.txt", "--root", audio]
    run = export("raw_on_meansub.pt", cals["cosine", sha], *mean)
    assert run.returncode == 1 and not (tmp_path / "raw_on_meansub.pt").exists()
    assert "was fitted on cosine scores" in run.stderr and "computes cosine_meansub scores" in run.stderr
    run = export("meansub_on_raw.pt", cals["cosine_meansub", sha])
    assert run.returncode == 1 and "(or export with the same --mean-from)" in run.stderr
    run = export("other.pt", cals["cosine", "0" * 64])
    assert run.returncode == 1 and "fitted on scores of another model (SHA-256 0000" in run.stderr
    assert export("raw.pt", cals["cosine", sha]).returncode == 0
    assert export("meansub.pt", cals["cosine_meansub", sha], *mean).returncode == 0

    # the API: a model file exported from the checkpoint is the same model; its mean makes it cosine_meansub
    speakerid.load(tmp_path / "raw.pt", device="cpu").load_calibration(cals["cosine", sha])
    meansub = speakerid.load(tmp_path / "meansub.pt", device="cpu")
    assert meansub.scoring == "cosine_meansub"
    with pytest.raises(ValueError, match="computes cosine_meansub scores"):
        meansub.load_calibration(cals["cosine", sha])
    with pytest.raises(ValueError, match="another model"):
        speakerid.load(checkpoint, device="cpu").load_calibration(cals["cosine", "0" * 64])

    # a cal.json of an older speakerid, without its source: taken, with a warning
    legacy = tmp_path / "legacy.json"
    record = json.loads(cals["cosine_meansub", sha].read_text())
    legacy.write_text(json.dumps({"calibration": record["calibration"], "threshold": record["threshold"]}))
    run = export("legacy.pt", legacy)
    assert run.returncode == 0 and "legacy.json does not record which scores it was fitted on" in run.stderr


def calibrated(tmp_path: Path, name: str, scoring: str, model_sha256: str, **record) -> Path:
    """`speakerid calibrate` of evaluated_scores(...): the calibration file it writes."""
    scores = evaluated_scores(tmp_path / name / f"trials.{scoring}.scores.txt", scoring, model_sha256, **record)
    run = speakerid_cli("calibrate", "--scores", scores, "--out", tmp_path / f"{name}.json", "--n-bootstrap", "20")
    assert run.returncode == 0, run.stderr
    return tmp_path / f"{name}.json"


def test_a_new_mean_embedding_drops_the_calibration_and_threshold_of_the_old_scores(checkpoint, audio, tmp_path,
                                                                                   caplog):
    """A calibrated cosine model given a mean (export --mean-from, or embedding_mean in Python, then save) kept
    the cosine threshold for its cosine_meansub scores: on the hunt's trials it went from FAR 3.7% / FRR 67% to
    rejecting every genuine trial. A new mean now removes them, with a warning; a calibration of another
    mean's scores given with it is refused; one of the mean evaluation subtracted (its .mean.npz) is taken."""
    from speakerid.scoring import mean_sha256

    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    cosine = calibrated(tmp_path, "cosine", "cosine", sha)
    calibrated_file = tmp_path / "cal.pt"
    assert speakerid_cli("export", "--model", checkpoint, "--out", calibrated_file, "--calibration",
                         cosine).returncode == 0
    run = speakerid_cli("export", "--model", calibrated_file, "--out", tmp_path / "A.pt", "--mean-from",
                        audio / "train.txt", "--root", audio, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert "changed (cosine scores -> cosine_meansub scores of mean" in run.stderr and "are removed" in run.stderr
    a = speakerid.load(tmp_path / "A.pt", device="cpu")
    assert a.scoring == "cosine_meansub" and a.calibration is None and a.threshold is None

    model = speakerid.load(checkpoint, device="cpu")  # the API: calibration first, then the mean, then save
    model.load_calibration(cosine)
    with caplog.at_level("WARNING", logger="speakerid"):
        model.embedding_mean = a.embedding_mean
    assert "no longer apply and are removed" in caplog.text
    assert model.calibration is None and model.threshold is None
    model.save(tmp_path / "B.pt")
    assert speakerid.load(tmp_path / "B.pt", device="cpu").threshold is None
    model.embedding_mean = a.embedding_mean  # the same mean again: the scores, and a calibration, stay
    model.threshold = {"score": 0.4, "kind": "eer", "target": None}
    model.embedding_mean = a.embedding_mean
    assert model.threshold["score"] == 0.4

    # a calibration fitted on scores centred on the mean of 2 of the 8 files, exported beside the 8 files' mean
    np.savez(tmp_path / "two.mean.npz", keys=np.array(["mean"]), full=speakerid.load(checkpoint, device="cpu")
             .embed_files(["spk0/s1/0.wav", "spk1/s1/0.wav"], audio).mean()[None])
    two = np.load(tmp_path / "two.mean.npz")["full"][0]
    assert mean_sha256(two) != a.mean_sha256
    meansub = calibrated(tmp_path, "meansub", "cosine_meansub", sha, embedding_mean_sha256=mean_sha256(two),
                         embedding_mean=str(tmp_path / "two.mean.npz"))
    run = speakerid_cli("export", "--model", checkpoint, "--out", tmp_path / "C.pt", "--mean-from", audio / "train.txt",
                        "--root", audio, "--calibration", meansub, "--device", "cpu")
    assert run.returncode == 1 and not (tmp_path / "C.pt").exists()
    assert f"centred on another mean embedding (SHA-256 {mean_sha256(two)[:12]}" in run.stderr
    run = speakerid_cli("export", "--model", checkpoint, "--out", tmp_path / "D.pt", "--mean-from",
                        tmp_path / "two.mean.npz", "--calibration", meansub)
    assert run.returncode == 0, run.stderr
    d = speakerid.load(tmp_path / "D.pt", device="cpu")
    assert d.mean_sha256 == mean_sha256(two) and d.threshold is not None
    # the model file records which scores (and mean) its calibration was fitted on
    assert d.loaded.provenance["calibration_source"]["embedding_mean_sha256"] == mean_sha256(two)


def test_evaluating_a_model_file_with_another_mean_says_so_and_its_calibration_is_refused(checkpoint, audio,
                                                                                          tmp_path):
    """evaluate of a model file with a mean, run with eval.mean_subtraction.enabled=true, silently subtracted the
    list's mean instead, and its JSON still said cosine_meansub with the model file's SHA, so load_calibration
    took a calibration of those scores for the model file's own. Now it warns, records both means, and the
    calibration is refused."""
    from speakerid.scoring import mean_sha256

    model = speakerid.load(checkpoint, device="cpu")
    model.embedding_mean = model.embed_files(["spk2/s1/0.wav", "spk3/s1/0.wav", "spk3/s1/1.wav"], audio).mean()
    model.save(tmp_path / "mean3.pt")
    out = tmp_path / "eval"
    run = speakerid_cli("evaluate", "--model", tmp_path / "mean3.pt", "--trials", audio / "trials.txt", "--root", audio,
                        "--out-dir", out, "--device", "cpu", "eval.mean_subtraction.enabled=true",
                        f"eval.mean_subtraction.list={audio / 'train.txt'}", f"eval.mean_subtraction.root={audio}")
    assert run.returncode == 0, run.stderr
    assert f"replaces the model's own (SHA-256 {model.mean_sha256[:12]})" in run.stderr
    report = json.loads((out / "trials.cosine_meansub.json").read_text())
    used = np.load(out / "trials.cosine_meansub.mean.npz")["full"][0]
    assert report["embedding_mean_sha256"] == mean_sha256(used) != model.mean_sha256
    assert report["mean_subtraction"]["replaced"] == f"the model's own mean embedding (SHA-256 {model.mean_sha256})"
    run = speakerid_cli("calibrate", "--scores", out / "trials.cosine_meansub.scores.txt", "--out", tmp_path / "c.json",
                        "--n-bootstrap", "20")
    assert json.loads((tmp_path / "c.json").read_text())["source"]["embedding_mean_sha256"] == mean_sha256(used)
    with pytest.raises(ValueError, match="centred on another mean embedding"):
        speakerid.load(tmp_path / "mean3.pt", device="cpu").load_calibration(tmp_path / "c.json")
    # without the list, the model file's own mean: recorded as given with it
    run = speakerid_cli("evaluate", "--model", tmp_path / "mean3.pt", "--trials", audio / "trials.txt", "--root",
                        audio, "--out-dir", tmp_path / "own", "--device", "cpu")
    assert run.returncode == 0 and "replaces" not in run.stderr
    report = json.loads((tmp_path / "own" / "trials.cosine_meansub.json").read_text())
    assert report["embedding_mean_sha256"] == model.mean_sha256 and "replaced" not in report["mean_subtraction"]


def test_an_evaluation_or_calibration_of_a_model_file_holds_for_its_checkpoint(checkpoint, audio, tmp_path):
    """verify --model best.pt --threshold-from <evaluation of model.pt> said 'measured with another model', and
    export --model best.pt --calibration <calibration of model.pt's scores> refused it too, while a model file
    is the same model as its checkpoint. The evaluation JSON's provenance_sha256 (or, for an older evaluation,
    the evaluated model file's provenance) names the checkpoint."""
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model_file = tmp_path / "model.pt"
    assert speakerid_cli("export", "--model", checkpoint, "--out", model_file).returncode == 0
    file_sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    out = tmp_path / "eval"
    run = speakerid_cli("evaluate", "--model", model_file, "--trials", audio / "trials.txt", "--root", audio,
                        "--out-dir", out, "--device", "cpu")
    assert run.returncode == 0, run.stderr
    report_path = out / "trials.cosine.json"
    pair = [audio / "spk0/s1/0.wav", audio / "spk0/s1/1.wav"]
    run = speakerid_cli("verify", "--model", checkpoint, "--threshold-from", report_path, *pair, "--device", "cpu")
    assert run.returncode in (0, 1) and "EER threshold of trials, cosine" in run.stdout, run.stderr
    # four trials cannot be calibrated: scores of a larger list, with the evaluation's record of its model
    cal = calibrated(tmp_path, "mf", "cosine", file_sha, checkpoint=json.loads(report_path.read_text())["checkpoint"])
    source = json.loads(cal.read_text())["source"]
    assert (source["model_sha256"], source["model_provenance_sha256"]) == (file_sha, sha)
    run = speakerid_cli("export", "--model", checkpoint, "--out", tmp_path / "y.pt", "--calibration", cal)
    assert run.returncode == 0, run.stderr

    # recorded in the JSON (evaluate writes it), the checkpoint is known without the model file; another
    # checkpoint stays refused
    model_file.unlink()
    report = json.loads(report_path.read_text())
    assert report["provenance_sha256"] == sha
    run = speakerid_cli("verify", "--model", checkpoint, "--threshold-from", report_path, *pair, "--device", "cpu")
    assert run.returncode in (0, 1), run.stderr
    report_path.write_text(json.dumps({**report, "provenance_sha256": "0" * 64}))
    run = speakerid_cli("verify", "--model", checkpoint, "--threshold-from", report_path, *pair, "--device", "cpu")
    assert run.returncode == 2 and "measured with another model" in run.stderr


def test_digital_silence_is_refused_by_verify_and_embed_and_quiet_speech_is_not(checkpoint, audio, tmp_path):
    """Two all-zero recordings verified as the same speaker (score 1.0, exit 0): silence has no voice, and its
    embedding is one fixed vector. Refused now, naming the file, by check-data's rule (all samples zero)."""
    sf.write(tmp_path / "silent.wav", np.zeros(32000, np.float32), RATE)
    sf.write(tmp_path / "silent2.wav", np.zeros(48000, np.int16), RATE, subtype="PCM_16")
    sf.write(tmp_path / "quiet.wav", wave(0, 0) * 1e-3, RATE, subtype="PCM_16")  # a few int16 steps of speech
    model_file = tmp_path / "m.pt"
    model = speakerid.load(checkpoint, device="cpu")
    model.threshold = {"score": 0.5, "kind": "eer", "target": None}
    model.save(model_file)
    run = speakerid_cli("verify", "--model", model_file, tmp_path / "silent.wav", tmp_path / "silent2.wav")
    assert run.returncode == 2 and run.stdout == ""
    assert "2 of the 2 recordings to embed are digital silence (all samples are zero)" in run.stderr
    assert f"{tmp_path / 'silent.wav'}" in run.stderr and f"{tmp_path / 'silent2.wav'}" in run.stderr
    run = speakerid_cli("verify", "--model", model_file, audio / "spk0/s1/0.wav", tmp_path / "silent.wav")
    assert run.returncode == 2 and "1 of the 2 recordings" in run.stderr
    (tmp_path / "list.txt").write_text("quiet.wav\nsilent.wav\n")
    run = speakerid_cli("embed", "--model", model_file, "--list", tmp_path / "list.txt", "--root", tmp_path,
                        "--out", tmp_path / "e.npz")
    assert run.returncode != 0 and "silent.wav" in run.stderr and not (tmp_path / "e.npz").exists()
    with pytest.raises(ValueError, match="waveform 0: all samples are zero"):
        model.embed(np.zeros(RATE, np.float32), sample_rate=RATE)
    run = speakerid_cli("verify", "--model", model_file, tmp_path / "quiet.wav", audio / "spk0/s1/1.wav")
    assert run.returncode in (0, 1), run.stderr


def test_a_recording_that_is_the_mean_embedding_is_an_error_not_different_speakers(checkpoint, audio, tmp_path):
    """A model file whose mean came from one file, verifying that file against itself: the centred embedding
    was a zero vector, the score NaN, and verify exited 1, 'different speakers'. export --mean-from needs 2 files
    now (evaluate's mean list has 2 speakers already), and a recording that is the mean is an error naming it
    (verify: exit 2)."""
    (tmp_path / "one.txt").write_text("spk0/s1/0.wav\nspk0/s1/0.wav\n")  # one file, twice
    run = speakerid_cli("export", "--model", checkpoint, "--out", tmp_path / "one.pt", "--mean-from",
                        tmp_path / "one.txt", "--root", audio)
    assert run.returncode == 1 and "a mean embedding needs at least 2 distinct files, got 1" in run.stderr
    assert not (tmp_path / "one.pt").exists()

    # such a model file made by hand (or by an older speakerid)
    model = speakerid.load(checkpoint, device="cpu")
    model.embedding_mean = model.embed(audio / "spk0/s1/0.wav")
    model.threshold = {"score": 0.5, "kind": "eer", "target": None}
    model.save(tmp_path / "bad.pt")
    same = audio / "spk0/s1/0.wav"
    run = speakerid_cli("verify", "--model", tmp_path / "bad.pt", same, same)
    assert run.returncode == 2 and run.stdout == ""
    assert f"{same}: its embedding is the mean embedding subtracted before scoring" in run.stderr
    with pytest.raises(ValueError, match="waveform 1: its embedding is the mean"):  # the API names it too
        model.score(audio / "spk1/s1/0.wav", sf.read(same, dtype="float32")[0], sample_rate=RATE)


# --------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("format", ["model", "torchscript"])
def test_a_failed_export_check_leaves_no_file_and_an_existing_one_as_it_was(checkpoint, tmp_path, format):
    out = tmp_path / "ex" / "fail.pt"
    run = speakerid_cli("export", "--model", checkpoint, "--out", out, "--format", format, "--tolerance", "-1")
    assert run.returncode == 1 and "differs from the model by more than -1" in run.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temporary file either
    out.write_text("keep me")
    run = speakerid_cli("export", "--model", checkpoint, "--out", out, "--format", format, "--tolerance", "-1",
                        "--overwrite")
    assert run.returncode == 1 and out.read_text() == "keep me" and len(list(out.parent.iterdir())) == 1
    assert speakerid_cli("export", "--model", checkpoint, "--out", out, "--format", format,
                         "--overwrite").returncode == 0
    assert out.read_text(errors="replace") != "keep me"


def test_exporting_the_extractor_of_a_model_file_with_a_mean_and_threshold_warns(checkpoint, tmp_path):
    model = speakerid.load(checkpoint, device="cpu")
    model.embedding_mean = np.full(model.embedding_dim, 0.01)
    model.threshold = {"score": 0.4, "kind": "eer", "target": None}
    model.save(tmp_path / "model.pt")
    run = speakerid_cli("export", "--model", tmp_path / "model.pt", "--format", "torchscript", "--out",
                        tmp_path / "e.ts")
    assert run.returncode == 0 and (tmp_path / "e.ts").exists()
    assert "holds a mean embedding, a threshold, which the torchscript export does not carry" in run.stderr
    run = speakerid_cli("export", "--model", checkpoint, "--format", "torchscript", "--out", tmp_path / "plain.ts")
    assert run.returncode == 0 and "warning" not in run.stderr


def test_verify_with_the_threshold_of_an_evaluation_prints_the_calibrated_llr_of_the_same_scoring(checkpoint, audio,
                                                                                                 tmp_path):
    """--threshold-from printed no LLR even when the evaluation scored as the calibration was fitted."""
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model_file = tmp_path / "model.pt"
    run = speakerid_cli("export", "--model", checkpoint, "--out", model_file, "--calibration",
                        calibrated(tmp_path, "cosine", "cosine", sha))
    assert run.returncode == 0, run.stderr
    run = speakerid_cli("evaluate", "--model", model_file, "--trials", audio / "trials.txt", "--root", audio,
                        "--out-dir", tmp_path / "e", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    pair = [audio / "spk0/s1/0.wav", audio / "spk0/s1/1.wav"]
    expected = speakerid.load(model_file, device="cpu").verify(*pair, threshold=0.0)
    run = speakerid_cli("verify", "--model", model_file, "--threshold-from", tmp_path / "e" / "trials.cosine.json",
                        *pair, "--device", "cpu")
    assert run.returncode in (0, 1) and f"LLR {expected.llr:.4f}" in run.stdout, run.stdout + run.stderr
    # scored otherwise (multicrop), the calibration does not hold: no LLR
    run = speakerid_cli("evaluate", "--model", model_file, "--trials", audio / "trials.txt", "--root", audio,
                        "--out-dir", tmp_path / "m", "--device", "cpu", "eval.embedding.mode=multicrop",
                        "eval.embedding.num_crops=2", "eval.embedding.crop_frames=50")
    assert run.returncode == 0, run.stderr
    [report] = (tmp_path / "m").glob("trials.multicrop*.json")
    run = speakerid_cli("verify", "--model", model_file, "--threshold-from", report, *pair, "--device", "cpu")
    assert run.returncode in (0, 1) and "LLR" not in run.stdout, run.stdout + run.stderr


# ------------------------------------------------------------------------- export, embed and API misuses
def other_checkpoint(checkpoint: Path, path: Path) -> Path:
    """`checkpoint` with other weights (noise added to every weight and bias): another model of the same
    config."""
    import torch

    content = torch.load(checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    content["model"] = {k: v + 0.1 * torch.randn(v.shape, generator=generator) if k.endswith(("weight", "bias"))
                        else v for k, v in content["model"].items()}
    torch.save(content, path)
    return path


def test_an_export_whose_embeddings_are_not_finite_fails_its_check_and_writes_nothing(checkpoint, tmp_path,
                                                                                     monkeypatch):
    """The parity check took max(worst, distance): max(0.0, nan) is 0.0, so a model with a NaN weight, or an
    export giving NaN embeddings, printed 'largest cosine distance to the model 0.00e+00' and was written."""
    import torch

    import speakerid.cli.export as export_command

    # finite weights, but a negative BatchNorm variance: sqrt(var + eps) is NaN, and so is every embedding
    content = torch.load(checkpoint, weights_only=True)
    name = next(k for k in content["model"] if k.endswith("running_var"))
    content["model"][name] = -torch.ones_like(content["model"][name])
    torch.save(content, tmp_path / "nan.pt")
    out = tmp_path / "out" / "nan.ts"
    run = speakerid_cli("export", "--model", tmp_path / "nan.pt", "--format", "torchscript", "--out", out)
    assert run.returncode == 1, run.stdout + run.stderr
    assert (f"the model gives non-finite embeddings (NaN or inf) of input 1 (noise): {tmp_path / 'nan.pt'} holds "
            f"non-finite weights or statistics; {out} is not written") in run.stderr, run.stderr
    assert list(out.parent.iterdir()) == []  # no temporary file either

    real_write = export_command.write

    def nan_export(*args):  # the export itself gives NaN embeddings of a model that is fine
        exported = real_write(*args)
        return lambda x: np.full_like(np.asarray(exported(x)), np.nan)

    monkeypatch.setattr(export_command, "write", nan_export)
    run = speakerid_cli("export", "--model", checkpoint, "--format", "torchscript", "--out", out)
    assert run.returncode == 1 and "the torchscript export gives non-finite embeddings" in run.stderr, run.stderr
    assert list(out.parent.iterdir()) == []


def test_export_refuses_the_mean_of_an_evaluation_of_another_model(checkpoint, audio, tmp_path):
    """export --mean-from <evaluation>.mean.npz took a mean of another model's embeddings without a word (on the
    hunt's trials, scores went from [0.785 0.639 -0.081] to [0.99 0.984 0.926]). The mean file records its model:
    another one is refused, naming both; a model file and the checkpoint it was exported from are one model."""
    from speakerid.scoring import mean_sha256

    other = other_checkpoint(checkpoint, tmp_path / "other.pt")
    assert speakerid_cli("export", "--model", other, "--out", tmp_path / "other_file.pt").returncode == 0
    out = tmp_path / "eval"
    run = speakerid_cli("evaluate", "--model", tmp_path / "other_file.pt", "--trials", audio / "trials.txt", "--root",
                        audio, "--out-dir", out, "--device", "cpu", "eval.mean_subtraction.enabled=true",
                        f"eval.mean_subtraction.list={audio / 'train.txt'}", f"eval.mean_subtraction.root={audio}")
    assert run.returncode == 0, run.stderr
    mean_file = out / "trials.cosine_meansub.mean.npz"
    file_sha = hashlib.sha256((tmp_path / "other_file.pt").read_bytes()).hexdigest()
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    run = speakerid_cli("export", "--model", checkpoint, "--out", tmp_path / "wrong.pt", "--mean-from", mean_file)
    assert run.returncode == 1 and not (tmp_path / "wrong.pt").exists()
    assert (f"{mean_file} is the mean embedding of another model (SHA-256 {file_sha[:12]}, "
            f"{tmp_path / 'other_file.pt'}) than {checkpoint} (SHA-256 {sha[:12]})") in run.stderr, run.stderr

    # the checkpoint the evaluated model file was exported from: the same model, its mean is taken as it is
    run = speakerid_cli("export", "--model", other, "--out", tmp_path / "right.pt", "--mean-from", mean_file)
    assert run.returncode == 0, run.stderr
    expected = np.load(mean_file)["full"][0].astype(np.float64)
    assert speakerid.load(tmp_path / "right.pt", device="cpu").mean_sha256 == mean_sha256(expected)
    # ... also when the mean file has left its evaluation JSON behind: it records that checkpoint itself
    alone = tmp_path / "alone" / mean_file.name
    alone.parent.mkdir()
    shutil.copy(mean_file, alone)
    run = speakerid_cli("export", "--model", other, "--out", tmp_path / "alone.pt", "--mean-from", alone)
    assert run.returncode == 0, run.stderr
    run = speakerid_cli("export", "--model", checkpoint, "--out", tmp_path / "wrong.pt", "--mean-from", alone)
    assert run.returncode == 1 and "is the mean embedding of another model" in run.stderr


def test_a_failed_model_file_check_names_the_out_file_not_its_temporary_file(checkpoint, tmp_path, monkeypatch):
    """export writes the model file to a hidden temporary file and checks it there; a refusal named that file:
    'error: /tmp/.m.pt.3o5g46xn.tmp: sample_rate is 16000 but features.fbank.sample_rate is 8000' (a checkpoint
    the model file check refused and loading did not). Any refusal of that check stands in for it here."""
    import speakerid.model_file as model_file

    def refuse(content, source):
        raise model_file.ModelFileError(f"{source}: sample_rate is 16000 but features.fbank.sample_rate is 8000")

    monkeypatch.setattr(model_file, "check_model_file", refuse)
    out = tmp_path / "out" / "m.pt"
    run = speakerid_cli("export", "--model", checkpoint, "--out", out)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr == (f"error: {out} (the model file of {checkpoint}): sample_rate is 16000 but "
                          f"features.fbank.sample_rate is 8000\n")
    assert list(out.parent.iterdir()) == []


def test_embed_does_not_replace_an_out_file_that_appears_while_it_runs(checkpoint, audio, tmp_path, monkeypatch):
    """embed checked --out at its start and then replaced whatever was there at its end (save_embeddings always
    overwrote): another job's file written meanwhile was lost. Now it is kept, and embed says so (exit 1)."""
    from speakerid.speaker_model import SpeakerModel

    out = tmp_path / "e.npz"
    real_embed_files = SpeakerModel.embed_files

    def embed_while_another_job_writes(self, *args, **kwargs):
        out.write_text("another job's results")
        return real_embed_files(self, *args, **kwargs)

    monkeypatch.setattr(SpeakerModel, "embed_files", embed_while_another_job_writes)
    run = speakerid_cli("embed", "--model", checkpoint, "--folder", audio / "spk0", "--out", out, "--device", "cpu")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"{out} already exists; pass --overwrite" in run.stderr, run.stderr
    assert out.read_text() == "another job's results" and sorted(tmp_path.iterdir()) == [out]
    run = speakerid_cli("embed", "--model", checkpoint, "--folder", audio / "spk0", "--out", out, "--device", "cpu",
                        "--overwrite")
    assert run.returncode == 0, run.stderr
    assert sorted(np.load(out)["keys"]) == ["s1/0.wav", "s1/1.wav"]


def test_embed_crop_options_need_multicrop(checkpoint, audio, tmp_path):
    """--num-crops and --crop-frames without --mode multicrop were silently ignored (full embeddings only)."""
    out = tmp_path / "e.npz"
    for options, named in ((["--num-crops", "3"], "--num-crops applies"),
                           (["--num-crops", "3", "--crop-frames", "50"], "--num-crops, --crop-frames apply")):
        run = speakerid_cli("embed", "--model", checkpoint, "--folder", audio / "spk0", "--out", out, "--device",
                            "cpu", *options)
        assert run.returncode == 2 and f"{named} only to --mode multicrop" in run.stderr, run.stderr
        assert not out.exists()
    run = speakerid_cli("embed", "--model", checkpoint, "--folder", audio / "spk0", "--out", out, "--device", "cpu",
                        "--mode", "multicrop", "--num-crops", "3", "--crop-frames", "50")
    assert run.returncode == 0, run.stderr
    saved = np.load(out)
    assert saved["crops"].shape == (2, 3, saved["full"].shape[1])
    assert json.loads(str(saved["meta"]))["crop_frames"] == 50


def test_load_keeps_multicrop_options_for_embed_files_and_embed_stays_full(checkpoint, audio):
    """speakerid.load(..., options=ExtractionOptions(mode="multicrop")) was silently switched to mode="full":
    embed_files, whose default options they are, gave no crops."""
    paths = ["spk0/s1/0.wav", "spk1/s1/0.wav"]
    options = ExtractionOptions(mode="multicrop", num_crops=3, crop_frames=50)
    multicrop = speakerid.load(checkpoint, device="cpu", options=options)
    full = speakerid.load(checkpoint, device="cpu")
    assert multicrop.options == options
    found = multicrop.embed_files(paths, audio)
    assert found.crops.shape == (2, 3, multicrop.embedding_dim)
    # the crops are those evaluation takes with these options, the full embeddings those of a full-mode model
    expected = full.embed_files(paths, audio, options)
    np.testing.assert_array_equal(found.crops, expected.crops)
    np.testing.assert_array_equal(found.full, full.embed_files(paths, audio).full)
    np.testing.assert_array_equal(multicrop.embed([audio / p for p in paths]), full.embed([audio / p for p in paths]))


def test_api_misuses_get_errors_that_say_what_is_wrong(checkpoint, audio, tmp_path):
    """embed_files("/x/a.flac") took the string's characters for paths ('14 of 12 files do not exist ... a e d'),
    a bfloat16 tensor ended in 'Got unsupported ScalarType BFloat16', and verify said a folder 'does not exist'."""
    import torch

    model = speakerid.load(checkpoint, device="cpu")
    path = str(audio / "spk0/s1/0.wav")
    with pytest.raises(TypeError, match=re.escape(f"embed_files takes a list of paths, got one path ({path!r}): give "
                                                  f"[path], or use embed(path)")):
        model.embed_files(path)
    x = torch.from_numpy(wave(1, 0)).bfloat16()
    # numpy has no bfloat16: the samples as float32 (exactly representable) are what is embedded
    np.testing.assert_array_equal(model.embed(x, sample_rate=RATE),
                                  model.embed(x.float().numpy(), sample_rate=RATE))
    (tmp_path / "sub").mkdir()
    run = speakerid_cli("verify", "--model", checkpoint, "--threshold", "0.5", tmp_path / "sub", path)
    assert run.returncode == 2 and f"{tmp_path / 'sub'} is a folder, not an audio file" in run.stderr, run.stderr
    # Arrays are held to the rules files are: NaN samples (a NaN embedding), a rate whose resampling filter
    # would take gigabytes (11127 Hz is coprime with 16000: 178M taps, seconds a call)
    with_nan = wave(1, 0).copy()
    with_nan[[5, 9]] = np.nan
    with pytest.raises(ValueError, match="waveform 0: 2 samples are NaN or infinite"):
        model.embed(with_nan, sample_rate=RATE)
    with pytest.raises(ValueError, match="waveform 0: 11127 Hz cannot be resampled to 16000 Hz here: .* 178032000 filter"):
        model.embed(wave(1, 0), sample_rate=11127)
    assert model.embed(wave(1, 0)[:len(wave(1, 0)) // 2], sample_rate=8000).shape == model.embed(wave(1, 0),
                                                                                                 sample_rate=RATE).shape
