"""`speakerid summarize` on damaged or foreign inputs: every one is an `error:` naming the file (and line)
and what is wrong, never a traceback."""

import json

import pytest

from speakerid.cli.main import main
from speakerid.summary import read_result

VALIDATION = {"step": 6, "val/eer": 0.1, "val/min_dcf_p0.01": 0.5, "val/min_dcf_p0.05": 0.25}


def write_run(folder, config=b"seed: 1\nname: arsc\n", extra_line=None):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_bytes(config)
    lines = json.dumps(VALIDATION).encode() + b"\n" + (extra_line + b"\n" if extra_line is not None else b"")
    (folder / "metrics.jsonl").write_bytes(lines)
    return folder


def write_evaluation(path, **fields):
    path.write_text(json.dumps({"eer": 0.1, "min_dcf_p0.01": 0.5, **fields}))
    return path


RUN_CASES = {
    "a number line": (dict(extra_line=b"5"), "metrics.jsonl:2: a JSON int, not an object of metrics"),
    "a list line": (dict(extra_line=b'["val/eer"]'), "metrics.jsonl:2: a JSON list, not an object of metrics"),
    "latin-1 bytes": (dict(extra_line=b'{"step": 1, "train/loss": "\xff"}'),
                      "metrics.jsonl:2: not UTF-8 text (invalid start byte at byte 27 of the line, from 0)"),
    "a trainer list": (dict(config=b"seed: 1\ntrainer: [1]\n"), "config.yaml: trainer is a list, not a mapping"),
    "unparsable yaml": (dict(config=b"seed: [1, 2\n"), "config.yaml: not a readable YAML file (while parsing"),
    "a yaml list": (dict(config=b"- 1\n"), "config.yaml: not a run's config (its top level is a list"),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_a_damaged_run_folder_is_an_error_naming_its_file_and_line(tmp_path, capsys, case):
    """A metrics.jsonl line `5` or ["val/eer"], `trainer: [1]` in config.yaml: TypeError / AttributeError
    tracebacks; a non-UTF-8 metrics.jsonl: an error that named no file."""
    kwargs, problem = RUN_CASES[case]
    good = write_run(tmp_path / "good")
    bad = write_run(tmp_path / "bad", **kwargs)
    with pytest.raises(ValueError) as error:
        read_result(bad)
    assert str(error.value).startswith(str(bad / problem.split(":")[0])) and problem in str(error.value)
    assert main(["summarize", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad / problem.split(':')[0]}" in err and problem in err and "Traceback" not in err


@pytest.mark.parametrize("key, value", [("checkpoint", 5), ("checkpoint_sha256", [1]), ("scores", {"a": 1})])
def test_an_evaluation_json_with_a_value_of_the_wrong_type_is_an_error_naming_the_key(tmp_path, capsys, key, value):
    """{"checkpoint": 5}: TypeError in Path(); {"checkpoint_sha256": [1]}: unhashable type."""
    good = write_evaluation(tmp_path / "good.json", checkpoint_sha256="a" * 64)
    bad = write_evaluation(tmp_path / "bad.json", **{key: value})
    assert main(["summarize", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}: {key} is {value!r}, not a string" in err and "Traceback" not in err


def test_the_seed_of_an_evaluation_whose_run_config_is_damaged_is_unknown_with_a_warning(tmp_path, capsys):
    run = write_run(tmp_path / "run", config=b"seed: [1, 2\n")
    evaluation = write_evaluation(tmp_path / "e.json", checkpoint=str(run / "checkpoints" / "best.pt"))
    assert read_result(evaluation).seed is None
    assert main(["summarize", str(evaluation), str(write_evaluation(tmp_path / "f.json"))]) == 0
    err = capsys.readouterr().err
    assert f"{evaluation}: the seed of its checkpoint's run is not known: {run / 'config.yaml'}: not a readable" in err
