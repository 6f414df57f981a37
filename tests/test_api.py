"""The Python API (`speakerid.load`) and model files: on real speech the same embeddings and scores as the
evaluation pipeline, files at 8 kHz resampled, model files that round-trip, load with weights_only and
cannot run code; the `speakerid` subcommands' help, and verify's exit codes."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

import speakerid
from conftest import ARSC_DIR, REPO, compose_config, requires_arsc, untrained_checkpoint
from speakerid.builders import UnsafeFileConfigError, extractor_from_checkpoint
from speakerid.checkpoint import average_checkpoints, load_checkpoint, save_atomic
from speakerid.cli.main import SUBCOMMANDS, main
from speakerid.data.lists import ListFormatError, read_file_list, read_trials, trial_files
from speakerid.evaluation import Evaluation, Protocol
from speakerid.model_file import FORMAT, ModelFileError

WAV = ARSC_DIR / "wav"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "best.pt", ARSC_DIR, ["ar00001", "ar00002"],
                                {"epoch": 3, "step": 120, "best_eer": 0.25})


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """The tiny encoder trained on arsc for one epoch (56 steps): enough to tell its speakers apart (about 30%
    EER on the trials), so that how far a score moves means something."""
    from speakerid.training import train

    run_dir = tmp_path_factory.mktemp("trained")
    train(compose_config(["experiment=arsc", f"data.dir={ARSC_DIR}", f"run_dir={run_dir}", "model=ecapa_tdnn_tiny",
                          "data.crop_frames=100", "data.num_workers=0", "trainer.epochs=1", "trainer.device=cpu",
                          "trainer.progress_bar=false", "optim.lr=0.005", "features.specaugment.enabled=false",
                          "~eval"]))
    return run_dir / "checkpoints" / "last.pt"


def waves(n: int, seconds: float = 1.5, rate: int = 16000) -> list[np.ndarray]:
    """Speech-like test signals (a gliding tone in noise), different for each i."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(1)
    return [(0.3 * np.sin(2 * np.pi * (110 + 40 * i) * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t)))
             + 0.05 * rng.standard_normal(len(t))).astype(np.float32) for i in range(n)]


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------ on real speech
@requires_arsc()
def test_api_gives_the_evaluation_pipelines_embeddings_and_scores(checkpoint, tmp_path):
    trials = read_trials(ARSC_DIR / "trials.txt")[::250]  # 24 trials (10 target), 46 files
    listed = tmp_path / "trials.txt"
    listed.write_text("".join(t.line() + "\n" for t in trials))
    extractor, _ = extractor_from_checkpoint(load_checkpoint(checkpoint))  # evaluate's way, not the API's
    evaluation = Evaluation(Protocol(name="subset", trials=str(listed), root=str(WAV)))

    model = speakerid.load(checkpoint, device="cpu")
    files = trial_files(trials)
    embeddings = model.embed([WAV / f for f in files])
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(files), model.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    row = {f: i for i, f in enumerate(files)}
    enrol = embeddings[[row[t.enrol] for t in trials]]
    test = embeddings[[row[t.test] for t in trials]]
    cache = {"cache_dir": tmp_path / "embeddings", "model_id": "m"}  # the second run reuses the embeddings
    np.testing.assert_allclose(model.score_embeddings(enrol, test), evaluation.run(extractor, **cache).scores,
                               rtol=0, atol=1e-12)

    # With a mean embedding: evaluation's mean subtraction, and a float64 re-derivation.
    mean = unit(embeddings[:10]).mean(axis=0)
    model.embedding_mean = mean
    scores = model.score_embeddings(enrol, test)
    np.testing.assert_allclose(scores, evaluation.run(extractor, mean=mean, **cache).scores, rtol=0, atol=1e-12)
    expected = np.einsum("ij,ij->i", unit(unit(enrol) - mean), unit(unit(test) - mean))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)  # evaluation stores centred float32
    assert np.abs(expected - np.einsum("ij,ij->i", unit(enrol), unit(test))).max() > 0.01  # the mean matters

    # A waveform in memory (numpy, torch, int16) is embedded as its file is.
    samples, rate = sf.read(str(WAV / files[0]), dtype="float32")
    one = model.embed(WAV / files[0])
    np.testing.assert_array_equal(model.embed(samples, sample_rate=rate), one)
    np.testing.assert_array_equal(model.embed([torch.from_numpy(samples)], sample_rate=rate)[0], one)
    as_int16, _ = sf.read(str(WAV / files[0]), dtype="int16")
    np.testing.assert_allclose(model.embed(as_int16, sample_rate=rate), one, atol=1e-6)


@pytest.mark.slow
@requires_arsc()
def test_an_8khz_file_is_resampled_and_scores_close_to_its_16khz_original(trained_checkpoint, tmp_path):
    model = speakerid.load(trained_checkpoint, device="cpu")
    trials = read_trials(ARSC_DIR / "trials.txt")[::250]
    original = WAV / trials[0].enrol
    others = [WAV / f for f in trial_files(trials)[1:13]]
    samples, rate = sf.read(str(original), dtype="float32")
    narrow = AF.resample(torch.from_numpy(samples), rate, 8000).numpy()
    sf.write(str(tmp_path / "8k.wav"), narrow, 8000, subtype="FLOAT")

    # The reference: the 8 kHz samples brought back to 16 kHz by torchaudio here, embedded one at a time.
    back = AF.resample(torch.from_numpy(narrow), 8000, rate)
    with torch.no_grad():
        reference = F.normalize(model.extractor(back[None]), dim=1)[0].numpy()
    from_file = model.embed(tmp_path / "8k.wav")
    np.testing.assert_allclose(from_file, reference, atol=1e-5)
    np.testing.assert_allclose(model.embed(narrow, sample_rate=8000), reference, atol=1e-5)

    # Scored against other speakers' and its own speaker's files, the 8 kHz copy scores about as its original
    # does; the same samples taken for 16 kHz ones (half as long, every frequency doubled) score nothing
    # alike. Measured: the copy within 0.23-0.34 of the original's scores with a correlation of 0.95, the
    # misread copy within 1.47 and a correlation of -0.89. This one-epoch model is trained on wide-band audio
    # only, and how far the narrow band moves it changes with the threads and the CPU that trained it: the
    # checks compare the two readings rather than fixing a margin.
    rest = model.embed(others)

    def scores(embedding: np.ndarray) -> np.ndarray:
        return model.score_embeddings(np.tile(embedding, (len(rest), 1)), rest)

    wide, resampled, misread = scores(model.embed(original)), scores(from_file), scores(model.embed(narrow, 16000))
    assert np.abs(resampled - wide).max() < 0.5 * np.abs(misread - wide).max()
    assert np.corrcoef(resampled, wide)[0, 1] > 0.8 > 0.2 > np.corrcoef(misread, wide)[0, 1]


@requires_arsc()
def test_verify_exits_0_for_the_same_speaker_1_for_different_2_on_an_error(checkpoint, tmp_path, capsys):
    model = speakerid.load(checkpoint, device="cpu")
    trials = read_trials(ARSC_DIR / "trials.txt")[::250]
    files = trial_files(trials)
    embedded = dict(zip(files, model.embed([WAV / f for f in files])))
    # The model is untrained: take the target trial that scores highest and the lowest non-target.
    same, different = (pick((t for t in trials if t.label == label),
                            key=lambda t: model.score_embeddings(embedded[t.enrol], embedded[t.test]))
                       for label, pick in ((1, max), (0, min)))
    scores = {t: model.score(WAV / t.enrol, WAV / t.test) for t in (same, different)}  # as verify scores a pair
    assert scores[same] > scores[different]
    threshold = (scores[same] + scores[different]) / 2
    calibration = tmp_path / "cal.json"
    calibration.write_text(json.dumps({"calibration": {"slope": 5.0, "offset": -5.0 * threshold},
                                       "threshold": {"score": threshold, "kind": "eer", "target": None}}))
    model_file = tmp_path / "model.pt"
    assert main(["export", "--model", str(checkpoint), "--out", str(model_file), "--calibration",
                 str(calibration)]) == 0
    capsys.readouterr()

    def verify(*args: str) -> tuple[int, str, str]:
        code = main(["verify", "--model", str(model_file), "--device", "cpu", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = verify(WAV / same.enrol, WAV / same.test)
    assert code == 0 and "same speaker" in out and f"threshold {threshold:.4f} (model file: eer)" in out
    assert f"score {scores[same]:.4f}" in out and f"LLR {5.0 * scores[same] - 5.0 * threshold:.4f}" in out
    code, out, _ = verify(WAV / different.enrol, WAV / different.test)
    assert code == 1 and "different speakers" in out and f"LLR {5.0 * scores[different] - 5.0 * threshold:.4f}" in out
    code, out, _ = verify(WAV / same.enrol, WAV / same.test, "--threshold", scores[same] + 0.01)
    assert code == 1 and "(given)" in out
    code, out, err = verify(WAV / same.enrol, tmp_path / "missing.wav")
    assert code == 2 and "missing.wav does not exist" in err and out == ""
    code = main(["verify", "--model", str(checkpoint), str(WAV / same.enrol), str(WAV / same.test)])
    assert code == 2 and "stores no threshold" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- model files
def test_a_model_file_round_trips_and_loads_with_weights_only(checkpoint, tmp_path):
    model = speakerid.load(checkpoint, device="cpu")
    a, b, *rest = waves(5)
    mean = unit(model.embed(rest, sample_rate=16000)).mean(axis=0)
    model.embedding_mean = mean  # first: a new mean removes the calibration and threshold of the old scores
    model.calibration = {"slope": 4.0, "offset": -2.0, "trials": 6000}
    model.threshold = {"score": 0.25, "kind": "far", "target": 0.01, "far": 0.0098}
    path = model.save(tmp_path / "model.pt")

    content = torch.load(path, weights_only=True)
    assert content["format"] == FORMAT == "speakerid-model/1"
    assert set(content) == {"format", "extractor", "config", "sample_rate", "provenance", "embedding_mean",
                            "calibration", "threshold"}
    assert set(content["config"]) == {"model", "features"} and content["sample_rate"] == 16000
    assert content["config"]["model"]["_target_"] == "speakerid.models.ECAPATDNN"
    assert {k.split(".")[0] for k in content["extractor"]} == {"fbank", "model"}
    provenance = content["provenance"]
    assert provenance["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert provenance["checkpoint"] == str(checkpoint.resolve()) and provenance["epoch"] == 3
    assert content["calibration"] == {"slope": 4.0, "offset": -2.0, "trials": 6000}
    assert content["threshold"]["far"] == 0.0098 and content["embedding_mean"] == pytest.approx(list(mean))

    loaded = speakerid.load(path, device="cpu")
    assert loaded.loaded.kind == "model file" and loaded.threshold == model.threshold
    np.testing.assert_array_equal(loaded.embed([a, b], sample_rate=16000), model.embed([a, b], sample_rate=16000))
    result = loaded.verify(a, b, sample_rate=16000)
    ea, eb = model.embed([a, b], sample_rate=16000)
    score = unit(unit(ea) - mean) @ unit(unit(eb) - mean)  # float64 re-derivation
    assert result.score == pytest.approx(score, abs=1e-6)
    assert result.llr == pytest.approx(4.0 * result.score - 2.0, abs=1e-12)
    assert result.same == (result.score >= 0.25) and result.threshold == 0.25

    before = path.read_bytes()
    model.embedding_mean = None
    with pytest.raises(FileExistsError, match="--overwrite"):
        model.save(path)
    assert path.read_bytes() == before
    model.save(path, overwrite=True)
    assert torch.load(path, weights_only=True)["embedding_mean"] is None
    assert path.stat().st_size < 0.5 * 1024 * 1024  # the tiny encoder: weights only, no head or optimizer


def test_a_model_file_cannot_make_the_program_run_code(checkpoint, tmp_path):
    path = speakerid.load(checkpoint, device="cpu").save(tmp_path / "model.pt")
    content = torch.load(path, weights_only=True)
    victim = tmp_path / "created-by-the-model-file.txt"
    evil = dict(content, config={**content["config"], "model": {"_target_": "builtins.open", "file": str(victim),
                                                                  "mode": "w"}})
    torch.save(evil, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileConfigError, match=r"model\._target_='builtins.open'.*does not build from a file"):
        speakerid.load(tmp_path / "evil.pt")
    assert not victim.exists()
    nested = dict(content, config={**content["config"], "model": {**content["config"]["model"], "channels": {
        "_target_": "builtins.open", "_args_": [str(victim), "w"]}}})
    torch.save(nested, tmp_path / "nested.pt")
    with pytest.raises(UnsafeFileConfigError, match="nested"):
        speakerid.load(tmp_path / "nested.pt")
    assert not victim.exists()

    for change, message in [({"format": "speakerid-model/2"}, "written by a newer speakerid"),
                            ({"optimizer": {}}, "unknown keys optimizer"),
                            ({"threshold": {"score": 0.3, "kind": "magic"}}, "threshold: threshold kind must be"),
                            ({"calibration": {"slope": -1.0, "offset": 0.0}}, "slope must be positive"),
                            ({"sample_rate": 8000}, "features.fbank.sample_rate is 16000")]:
        torch.save({**content, **change}, tmp_path / "bad.pt")
        with pytest.raises(ModelFileError, match=message):
            speakerid.load(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="neither a speakerid checkpoint nor a model file"):
        speakerid.load(tmp_path / "other.pt")


def test_an_averaged_checkpoint_loads_like_the_others(checkpoint, tmp_path):
    first = load_checkpoint(checkpoint)
    second = {**first, "model": {k: v + 0.01 if v.is_floating_point() else v for k, v in first["model"].items()},
              "progress": {**first["progress"], "step": 240}}
    torch.save(second, tmp_path / "second.pt")
    save_atomic(average_checkpoints([checkpoint, tmp_path / "second.pt"]), tmp_path / "avg.pt")
    model = speakerid.load(tmp_path / "avg.pt", device="cpu")
    assert model.loaded.kind == "averaged checkpoint" and len(model.loaded.provenance["averaged_from"]) == 2
    averaged = {k: (v + 0.005).to(v.dtype) if v.is_floating_point() else v for k, v in first["model"].items()}
    state = model.extractor.model.state_dict()
    for key, value in averaged.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


def test_import_speakerid_is_light_and_using_a_model_needs_no_hydra(checkpoint, tmp_path):
    path = speakerid.load(checkpoint, device="cpu").save(tmp_path / "model.pt")
    code = ("import sys, numpy as np\n"
            "import speakerid\n"
            "assert 'torch' not in sys.modules, 'import speakerid imported torch'\n"
            f"model = speakerid.load({str(path)!r}, device='cpu')\n"
            "print(model.embed(np.zeros(16000, np.float32) + 0.1, sample_rate=16000).shape)\n"
            "assert 'hydra' not in sys.modules, 'using a model imported hydra'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(32,)"


# -------------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_has_help_with_examples(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: speakerid {name}") and f"    speakerid {name} " in out


def test_the_console_command_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "speakerid.cli.main", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("positional arguments:")[1]
    assert set(SUBCOMMANDS) <= set(listed.split()), proc.stdout


def test_export_checks_the_calibration_json_and_keeps_existing_files(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.pt"
    for text, message in [('{"calibration": {"slope": 2, "offset": 0}}', "has exactly the keys calibration and "
                                                                          "threshold"),
                          ('{"calibration": {"slope": 2}, "threshold": {"score": 0.1, "kind": "eer", "target": null}}',
                           "cal.json: calibration lacks offset"),
                          ('{"calibration": {"slope": 2, "offset": 0}, "threshold": {"score": "high", "kind": "eer", '
                           '"target": null}}', "cal.json: threshold score must be a number, got 'high'"),
                          ('{"calibration": {"slope": -2, "offset": 0}, "threshold": {"score": 0.1, "kind": "eer", '
                           '"target": null}}', "cal.json: calibration: slope must be positive"),
                          ("not json", "not a readable calibration file")]:
        (tmp_path / "cal.json").write_text(text)
        assert main(["export", "--model", str(checkpoint), "--out", str(out), "--calibration",
                     str(tmp_path / "cal.json")]) == 1
        assert message in capsys.readouterr().err and not out.exists()
    out.write_text("keep me")
    assert main(["export", "--model", str(checkpoint), "--out", str(out)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "keep me"


def test_embed_reads_its_list_as_every_list_is_read(checkpoint, tmp_path, capsys):
    listed = tmp_path / "files.txt"
    listed.write_bytes("\ufeffa/1.wav\nb/2.flac\n# comment\n\n".encode("utf-8"))
    assert read_file_list(listed) == ["a/1.wav", "b/2.flac"]  # the byte-order mark is not part of a path
    listed.write_text("spk a/1.wav\nspk b/2.flac\n")
    assert read_file_list(listed) == ["a/1.wav", "b/2.flac"]  # a train list
    for line, why in [("../outside.wav", "goes up with '..'"), ("/etc/passwd", "is absolute"),
                      ("spk a/1.wav extra", "expected 'path' or 'speaker path', got 3 fields"),
                      ("spk b/2.flac", "has 2 field\\(s\\), but line 1 .* has 1"),
                      ("b/my file.wav", "has 2 field.*a path cannot contain whitespace")]:
        listed.write_text(f"a/1.wav\n{line}\n")
        with pytest.raises(ListFormatError, match=f"files.txt:2: .*{why}"):
            read_file_list(listed)
        assert main(["embed", "--model", str(checkpoint), "--list", str(listed), "--out",
                     str(tmp_path / "e.npz")]) == 1
        assert "files.txt:2: " in capsys.readouterr().err and not (tmp_path / "e.npz").exists()


def test_export_stores_the_mean_embedding_of_a_list(checkpoint, tmp_path, capsys):
    for i, wave in enumerate(waves(3)):
        sf.write(str(tmp_path / f"{i}.wav"), wave, 16000, subtype="FLOAT")
    (tmp_path / "train.txt").write_text("spk0 0.wav\nspk1 1.wav\nspk1 2.wav\n")
    out = tmp_path / "model.pt"
    assert main(["export", "--model", str(checkpoint), "--out", str(out), "--mean-from", str(tmp_path / "train.txt"),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    model = speakerid.load(checkpoint, device="cpu")
    expected = unit(model.embed([tmp_path / f"{i}.wav" for i in range(3)])).mean(axis=0)
    stored = torch.load(out, weights_only=True)["embedding_mean"]
    np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(speakerid.load(out, device="cpu").embedding_mean, expected, rtol=0, atol=1e-7)

    # evaluate on that model file subtracts its mean, and says so in the names of what it writes
    (tmp_path / "trials.txt").write_text("1 1.wav 2.wav\n0 0.wav 1.wav\n0 0.wav 2.wav\n")
    assert main(["evaluate", "--model", str(out), "--trials", str(tmp_path / "trials.txt"), "--root", str(tmp_path),
                 "--out-dir", str(tmp_path / "eval"), "--device", "cpu"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "trials.cosine_meansub.json").read_text())
    assert report["scoring"] == "cosine_meansub" and report["mean_subtraction"]["given"] == "with the model"
    centred = unit(unit(model.embed([tmp_path / f"{i}.wav" for i in range(3)])) - expected)
    scores = [float(line.split()[2]) for line in (tmp_path / "eval" / "trials.cosine_meansub.scores.txt")
              .read_text().splitlines()]
    np.testing.assert_allclose(scores, [centred[1] @ centred[2], centred[0] @ centred[1], centred[0] @ centred[2]],
                               rtol=0, atol=1e-5)
