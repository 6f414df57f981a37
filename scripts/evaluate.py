#!/usr/bin/env python
"""Evaluate a checkpoint on a trial protocol: `python scripts/evaluate.py --help`. The command lives in the
package (speakerid/cli/evaluate.py), so an installed speakerid runs it as `python -m speakerid.cli.evaluate`."""

import sys

from speakerid.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
