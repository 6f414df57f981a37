"""Train a speaker-verification model: `python train.py [experiment=NAME] [key=value ...]`, the same command
as `speakerid train ...` (speakerid/cli/train.py, where it lives).

With no arguments it runs the `smoke` experiment on a generated synthetic corpus (see README.md).
"""

import sys

from speakerid.cli.train import launch

if __name__ == "__main__":
    launch(sys.argv[1:], "python train.py")
