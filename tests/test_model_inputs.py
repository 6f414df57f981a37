"""What --model and speakerid.load are given and cannot use is refused with a message naming the file and what is
wrong with it, never a traceback nor torch's advice to load unsafely: a checkpoint with a part missing or of
another type, a model whose weights are not finite, a TorchScript or ONNX export."""

import pathlib
import re

import numpy as np
import pytest
import soundfile as sf
import torch

import speakerid
from conftest import ARSC_DIR, small_extractor, untrained_checkpoint
from speakerid.checkpoint import CheckpointError, last_epoch_checkpoints, load_checkpoint
from speakerid.cli.main import main
from speakerid.data.audio import AudioError, read_full
from speakerid.evaluation import extract_embeddings
from speakerid.export import export_onnx, export_torchscript
from speakerid.model_file import ModelFileError

TORCH_ADVICE = ("weights_only", "file an issue", "Unsupported operand", "add_safe_globals")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("model") / "best.pt", ARSC_DIR, ["ar00001", "ar00002"],
                                {"epoch": 3, "step": 120, "position": 0, "best_eer": 0.25})


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> pathlib.Path:
    """A folder with two 1.5 s noise recordings and list.txt naming them."""
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.wav"):
        sf.write(str(folder / name), (0.1 * rng.standard_normal(24000)).astype(np.float32), 16000, subtype="FLOAT")
    (folder / "list.txt").write_text("a.wav\nb.wav\n")
    return folder


def commands_refuse(model: pathlib.Path, audio: pathlib.Path, out: pathlib.Path, capsys) -> list[str]:
    """The stderr of `embed` and `export` (a model file and TorchScript) given `model`, each checked to exit 1
    without a traceback and without writing its output."""
    errors = []
    for args in (["embed", "--list", str(audio / "list.txt"), "--out", str(out / "e.npz"), "--device", "cpu"],
                 ["export", "--out", str(out / "m.pt")],
                 ["export", "--format", "torchscript", "--out", str(out / "m.ts")]):
        assert main([args[0], "--model", str(model), *args[1:]]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and not any(out.glob("[em].*")), err
        errors.append(err)
    return errors


def set_part(content: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        content = content[key]
    if value is DELETE:
        del content[last]
    else:
        content[last] = value


DELETE = object()


# -------------------------------------------------------------------------------- malformed checkpoints
@pytest.mark.parametrize("part, value, message", [
    ("format_version", "1", r"format_version must be a positive integer, got '1'"),
    ("format_version", None, r"format_version must be a positive integer, got None"),
    ("format_version", 0, r"format_version must be a positive integer, got 0"),
    ("format_version", 2, r"written by a newer speakerid \(format 2; this one reads up to 1\)"),
    ("progress", None, r"progress must be a dict, got None"),
    ("progress.step", "120", r"progress\.step must be a count \(an integer >= 0\), got '120'"),
    ("model", DELETE, r"lacks model, needed to embed with it"),
    ("model", [1.0, 2.0], r"model must be a state dict \(names -> tensors\), got a list"),
    ("config", None, r"config must be a dict, got None"),
    ("config.data", DELETE, r"lacks config\.data\.sample_rate, needed to embed with it"),
    ("config.features", DELETE, r"lacks config\.features\.fbank, needed to embed with it"),
    ("config.data.sample_rate", "16000", r"config\.data\.sample_rate must be a positive integer, got '16000'"),
    ("config.data.sample_rate", 0, r"config\.data\.sample_rate must be a positive integer, got 0"),
    ("config.data.resample", "no", r"config\.data\.resample must be true or false, got 'no'"),
    ("config.model.channels", torch.tensor(16), r"config\.model\.channels: a Tensor cannot be stored"),
], ids=["fv_str", "fv_none", "fv_0", "fv_newer", "progress_none", "step_str", "no_model", "model_list",
        "config_none", "no_data", "no_features", "rate_str", "rate_0", "resample_str", "config_tensor"])
def test_a_malformed_checkpoint_is_refused_naming_the_file_and_the_part(checkpoint, audio, tmp_path, capsys, part,
                                                                       value, message):
    content = torch.load(checkpoint, weights_only=True)
    set_part(content, part, value)
    torch.save(content, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'bad.pt'}: {message}"):
        speakerid.load(tmp_path / "bad.pt", device="cpu")
    for err in commands_refuse(tmp_path / "bad.pt", audio, tmp_path, capsys):
        assert f"error: {tmp_path / 'bad.pt'}: " in err and len(re.findall(message, err)) == 1, err


def test_a_checkpoint_whose_audio_and_fbank_rates_differ_is_refused(checkpoint, audio, tmp_path, capsys):
    content = torch.load(checkpoint, weights_only=True)
    content["config"]["data"]["sample_rate"] = 8000  # files would be resampled to 8 kHz, analysed as 16 kHz
    torch.save(content, tmp_path / "bad.pt")
    message = "audio is read at 8000 Hz for this model, but its fbank is built for 16000 Hz"
    with pytest.raises(ModelFileError, match=message):
        speakerid.load(tmp_path / "bad.pt", device="cpu")
    assert all(message in err for err in commands_refuse(tmp_path / "bad.pt", audio, tmp_path, capsys))

    # a model file whose fbank config leaves the rate out builds the fbank's default, 16 kHz
    model_file = speakerid.load(checkpoint, device="cpu").save(tmp_path / "model.pt")
    content = torch.load(model_file, weights_only=True)
    content["sample_rate"] = 8000
    del content["config"]["features"]["fbank"]["sample_rate"]
    torch.save(content, tmp_path / "bad_model.pt")
    with pytest.raises(ModelFileError, match=message):
        speakerid.load(tmp_path / "bad_model.pt", device="cpu")


def test_a_checkpoint_as_training_writes_it_still_loads_and_averages(checkpoint, tmp_path):
    model = speakerid.load(checkpoint, device="cpu")
    assert model.sample_rate == 16000 and model.loaded.provenance["epoch"] == 3
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    content = torch.load(checkpoint, weights_only=True)
    content["config"]["trainer"]["epochs"] = 3
    torch.save(content, run / "step-000000120.pt")
    (run / "last.pt").hardlink_to(run / "step-000000120.pt")
    assert last_epoch_checkpoints(tmp_path / "run", 1) == [run / "step-000000120.pt"]

    content["progress"] = None  # `average --last` read progress["epoch"] of it: a TypeError
    torch.save(content, run / "last.pt.new")
    (run / "last.pt.new").replace(run / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: progress must be a dict, got None"):
        last_epoch_checkpoints(tmp_path / "run", 1)
    del content["progress"]
    torch.save(content, run / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: lacks progress\.epoch, needed to tell whether the run "
                                              r"finished"):
        last_epoch_checkpoints(tmp_path / "run", 1)


# -------------------------------------------------------------------------------- non-finite weights
def test_a_model_with_a_nan_weight_is_refused_naming_the_tensor(checkpoint, audio, tmp_path, capsys):
    path = speakerid.load(checkpoint, device="cpu").save(tmp_path / "model.pt")
    content = torch.load(path, weights_only=True)
    key = sorted(k for k in content["extractor"] if k.startswith("model.") and k.endswith(".bias"))[0]
    content["extractor"][key][0] = float("nan")
    torch.save(content, tmp_path / "nan.pt")
    message = rf"nan\.pt: 1 of the model's \d+ tensors hold NaN or infinite values \({key}\)"
    with pytest.raises(ModelFileError, match=message):
        speakerid.load(tmp_path / "nan.pt", device="cpu")
    for err in commands_refuse(tmp_path / "nan.pt", audio, tmp_path, capsys):
        assert len(re.findall(message, err)) == 1 and "samples" not in err, err


def test_a_diverged_checkpoint_can_be_inspected_but_not_embedded_with(checkpoint, tmp_path):
    content = torch.load(checkpoint, weights_only=True)
    keys = sorted(k for k in content["model"] if k.endswith("running_var"))[:2]  # buffers count too
    for key in keys:
        content["model"][key][-1] = float("inf")
    torch.save(content, tmp_path / "diverged.pt")
    inspected = load_checkpoint(tmp_path / "diverged.pt")
    assert all(torch.isinf(inspected["model"][k][-1]) for k in keys) and inspected["progress"]["epoch"] == 3
    with pytest.raises(ModelFileError, match=rf"diverged\.pt: 2 of .* \(model\.{keys[0]}, model\.{keys[1]}\), so no "
                                             r"embedding it computes is finite"):
        speakerid.load(tmp_path / "diverged.pt", device="cpu")


def test_a_non_finite_embedding_blames_the_model_when_the_samples_are_finite(audio, tmp_path):
    bad = small_extractor(channels=16, emb_dim=8)
    with torch.no_grad():
        next(bad.model.parameters()).view(-1)[0] = float("nan")  # what load_extractor now refuses
    assert np.isfinite(read_full(audio / "a.wav")).all()
    with pytest.raises(AudioError, match=r"the samples are finite, so the model computed it: a weight that is NaN "
                                         r"or infinite.* for 2 of 2 files") as caught:
        extract_embeddings(bad, audio, ["a.wav", "b.wav"])
    assert "samples in the file" not in str(caught.value)

    # read_full refuses NaN samples, naming the file, before any model sees them
    wave = read_full(audio / "a.wav")
    wave[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN or infinite samples"):
        read_full(tmp_path / "nan.wav")
    # audio given in memory was not read by read_full: the message says when its samples are the cause
    good = small_extractor(channels=16, emb_dim=8)
    with pytest.raises(AudioError, match=r"\(NaN or infinite samples in the audio given\) for 1 of 2 files"):
        extract_embeddings(good, ".", ["x", "y"], waveforms={"x": wave, "y": read_full(audio / "b.wav")})


# -------------------------------------------------------------------------------- exports given as --model
def assert_refused_as_export(path: pathlib.Path, kind: str, audio: pathlib.Path, capsys) -> None:
    message = (f"{path} is {kind} export of the extractor", "--model (and speakerid.load) take a checkpoint or a model "
                                                            "file (speakerid export --format model)")
    with pytest.raises(CheckpointError) as caught:
        speakerid.load(path, device="cpu")
    assert all(m in str(caught.value) for m in message), caught.value
    assert not any(advice in str(caught.value) for advice in TORCH_ADVICE), caught.value
    for args, status in ((["embed", "--list", str(audio / "list.txt"), "--out", str(path.parent / "e.npz")], 1),
                         (["verify", str(audio / "a.wav"), str(audio / "b.wav"), "--threshold", "0.5"], 2)):
        assert main([args[0], "--model", str(path), *args[1:]]) == status
        err = capsys.readouterr().err
        assert all(m in err for m in message) and not any(advice in err for advice in TORCH_ADVICE), err


def test_a_torchscript_export_given_as_model_is_named_as_one(audio, tmp_path, capsys):
    path = export_torchscript(small_extractor(channels=16, emb_dim=8), tmp_path / "extractor.ts")
    assert_refused_as_export(path, "a TorchScript", audio, capsys)


def test_an_onnx_export_given_as_model_is_named_as_one(audio, tmp_path, capsys):
    pytest.importorskip("onnx")
    path = export_onnx(small_extractor(channels=16, emb_dim=8), tmp_path / "extractor.onnx")
    assert_refused_as_export(path, "an ONNX", audio, capsys)
    # cut short, it is no ONNX model any more: refused as unreadable, still without torch's advice
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.onnx: not a speakerid model .*not a file torch\.save writes") \
            as caught:
        speakerid.load(tmp_path / "cut.onnx", device="cpu")
    assert not any(advice in str(caught.value) for advice in TORCH_ADVICE)


def test_a_file_holding_other_python_objects_is_refused_naming_them_without_torchs_advice(tmp_path):
    torch.save({"format_version": 1, "config": {}, "note": pathlib.PurePosixPath("x")}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match=r"objects\.pt: not a speakerid model .*it holds Python objects "
                                              r"\(pathlib\.PurePosixPath\) besides tensors") as caught:
        speakerid.load(tmp_path / "objects.pt", device="cpu")
    assert not any(advice in str(caught.value) for advice in TORCH_ADVICE)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: not a speakerid model .*: the file is empty$"):
        speakerid.load(tmp_path / "empty.pt", device="cpu")
