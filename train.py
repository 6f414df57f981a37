"""Train a speaker-verification model: `python train.py [experiment=NAME] [key=value ...]`.

With no arguments it runs the `smoke` experiment on a generated synthetic corpus (see README.md).
"""

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from speakerid.config import ConfigError, check_folder_name
from speakerid.configs import SEARCH_PATH
from speakerid.training import train
from speakerid.training.state import RunFinished, claim_run_folder

log = logging.getLogger("speakerid")
_claimed: dict[tuple[str, str], str] = {}


def runs_of(runs_root: str, name: str) -> str:
    """runs/<name>: where the runs of one name live, side by side (trainer.resume=true looks there)."""
    try:
        check_folder_name(name, "name")
    except ConfigError as e:
        sys.exit(f"error: {e}")
    return str(Path(runs_root) / name)


def claimed_folder(parent: str, stamp: str) -> str:
    """A run folder name under `parent` that no other run has, created now (Hydra's date-and-time name has
    one-second resolution). Under torchrun only rank 0 claims; the others keep their Hydra files apart."""
    key = (parent, stamp)
    if key not in _claimed:  # Hydra may resolve its run dir more than once
        rank = int(os.environ.get("RANK", "0"))
        try:
            _claimed[key] = claim_run_folder(parent, stamp) if rank == 0 else f".ranks/{stamp}-rank{rank}-{os.getpid()}"
        except OSError as e:
            sys.exit(f"error: cannot create a run folder under {parent} ({e.strerror or e}); give a writable "
                     f"folder with runs_root=...")
    return _claimed[key]


OmegaConf.register_new_resolver("speakerid.runs_of", runs_of, replace=True)
OmegaConf.register_new_resolver("speakerid.claim", claimed_folder, replace=True)


@hydra.main(version_base="1.3", config_path=SEARCH_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.run_dir is None:
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        results = train(cfg)
    except RunFinished as e:
        log.info("%s", e)
        discard_unused_run_folder(Path(cfg.run_dir))
        return float("nan")
    except (ValueError, OSError, RuntimeError) as e:
        # Expected user errors (bad config, list, audio or checkpoint): the message says what and where.
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(1)
    if "exit_code" in results:  # stopped by SIGTERM/SIGINT after checkpointing
        sys.exit(results["exit_code"])
    eer = results.get("val/eer")
    if eer is not None:
        log.info("final: EER %.2f%%, minDCF(0.01) %.4f, minDCF(0.05) %.4f; best EER %.2f%%; run folder %s",
                 100 * eer, results["val/min_dcf_p0.01"], results["val/min_dcf_p0.05"], 100 * results["best/eer"],
                 results["run_dir"])
    return eer if eer is not None else float("nan")  # the value Hydra sweepers optimise


def discard_unused_run_folder(run_dir: Path) -> None:
    """Remove the folder this invocation claimed when it trained nothing: it holds only Hydra's record of
    the command and the log (whose message the user has just seen)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
