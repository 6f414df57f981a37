"""Train a speaker-verification model: `python train.py [experiment=NAME] [key=value ...]`.

With no arguments it runs the `smoke` experiment on a generated synthetic corpus (see README.md).
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from speakerid.configs import SEARCH_PATH
from speakerid.training import train


@hydra.main(version_base="1.3", config_path=SEARCH_PATH, config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.run_dir is None:
        with open_dict(cfg):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        results = train(cfg)
    except (ValueError, OSError, RuntimeError) as e:
        # Expected user errors (bad config, list, audio or checkpoint): the message says what and where.
        logging.getLogger("speakerid").error("%s: %s", type(e).__name__, e)
        sys.exit(1)
    if "exit_code" in results:  # stopped by SIGTERM/SIGINT after checkpointing
        sys.exit(results["exit_code"])
    eer = results.get("val/eer")
    if eer is not None:
        logging.getLogger("speakerid").info(
            "final: EER %.2f%%, minDCF(0.01) %.4f, minDCF(0.05) %.4f; best EER %.2f%%; run folder %s",
            100 * eer, results["val/min_dcf_p0.01"], results["val/min_dcf_p0.05"], 100 * results["best/eer"],
            results["run_dir"])
    return eer if eer is not None else float("nan")  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
