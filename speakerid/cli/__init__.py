"""The `speakerid` console command (`speakerid.cli.main`), one module per subcommand, shipped with the
package so that an installed speakerid has it too (`python -m speakerid.cli.main ...` without the script)."""

import sys


def usage_error(command: str, message: str) -> int:
    """A wrong combination of options, reported as argparse reports a wrong option: exit status 2."""
    print(f"speakerid {command}: error: {message}", file=sys.stderr)
    return 2
