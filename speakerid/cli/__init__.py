"""Command-line entry points that ship with the package, so an installed speakerid has them too
(`python -m speakerid.cli.evaluate ...`)."""

import sys


def usage_error(command: str, message: str) -> int:
    """A wrong combination of options, reported as argparse reports a wrong option: exit status 2."""
    print(f"speakerid {command}: error: {message}", file=sys.stderr)
    return 2
