"""Overrides that speakerid prints for Hydra (the end block's resume line, prepare's `train with:`, the refusal
of a folder in use) are read back by a shell and then by Hydra as the exact paths, whatever a path holds: ','
(Hydra would sweep over it), '=', spaces, quotes, backslashes, `${` or a word Hydra reads as another type."""

import re
import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from speakerid.cli.overrides import hydra_arguments, hydra_override, join
from speakerid.configs import compose

ODD_PATHS = ["/data/plain/list.txt", "pc,x/w=v", "/runs/sp ace=y/last.pt", "it's", 'say "hi"', "both'\"",
             "trailing\\", "a\\b", "a\\'b", "${HOME}/x", "true", "null", "123", "é/ü", " lead", "[1]", "~/x",
             "a\\${x}", "a\\\\${x}/y"]  # backslashes before ${: OmegaConf's escapes too


def hydra_reads(word: str):
    """The value the config gets from an override word: Hydra's parser, then OmegaConf (which resolves `${`)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({"value": OverridesParser.create().parse_override(word).value()}).value


@pytest.mark.parametrize("path", ODD_PATHS)
def test_an_override_word_reads_back_the_exact_path_through_a_shell_and_hydra(path):
    (word,) = shlex.split(join(hydra_override("data.train_list", path)))
    assert word.startswith("data.train_list=") and hydra_reads(word) == path


def test_a_path_hydra_already_reads_as_it_is_stays_unquoted():
    assert join(hydra_override("data.train_list", "/data/vox2/train_list.txt")) == "data.train_list=/data/vox2/train_list.txt"


def test_the_end_block_resume_line_gives_hydra_the_run_folders_checkpoint(tmp_path):
    """A run folder given by hand is resumed by naming its checkpoint: with '=' or ',' in its path the printed
    line used to fail in Hydra's parser (mismatched input '=')."""
    from speakerid.cli.train import end_block

    overrides = ["debug=tiny", "data.dir='/data/a,b'"]
    cfg = compose("train", [*overrides, f"runs_root={tmp_path}", "~eval"])
    run_dir = tmp_path / "elsewhere" / "sp ace=y,z"
    block = end_block({"run_dir": str(run_dir), "epochs": 1, "best/eer": float("nan")}, cfg, overrides,
                      "python train.py")
    (line,) = [line for line in block.splitlines() if line.split()[0] == "resume"]
    words = shlex.split(line)[3:]
    assert hydra_arguments(words)[1][-1].key_or_group == "trainer.resume"
    resumed = compose("train", words)
    assert resumed.trainer.resume == str(run_dir / "checkpoints" / "last.pt") and resumed.data.dir == "/data/a,b"


def test_the_refusal_of_a_folder_in_use_names_its_checkpoint_as_hydra_reads_it(tmp_path):
    from speakerid.cli.train import launch

    run = tmp_path / "old run=1,2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    with pytest.raises(SystemExit) as refused:
        launch(["debug=tiny", f"run_dir='{run}'"], "python train.py")
    suggested = re.search(r"resume that run in place with (.*)$", str(refused.value.code))[1]
    (word,) = shlex.split(suggested)
    assert word.startswith("trainer.resume=") and hydra_reads(word) == str(run / "checkpoints" / "last.pt")
