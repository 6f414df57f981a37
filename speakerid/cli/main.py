"""`speakerid`: one command for everything after (and including) training.

    speakerid train experiment=arsc data.dir=/data/arsc      # Hydra overrides, exactly as train.py takes them
    speakerid evaluate --model best.pt eval=vox1_o eval.dir=/data/voxceleb1
    speakerid verify --model model.pt a.wav b.wav            # exit 0 same speaker, 1 different, 2 error
    speakerid <subcommand> --help                            # options and examples of each

Each subcommand is a module of `speakerid.cli` with `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int` (the exit status), and its module docstring (with examples) as its `--help` text. A module
with `PASS_THROUGH = True` gets its arguments unparsed, as `args.overrides` (train: Hydra's overrides and
flags, which argparse would take for its own); its --help is still this parser's.
Options have one name across subcommands: --model (a checkpoint, an averaged checkpoint or a model file),
--trials, --root, --scores (a score file), --out (one file), --out-dir (a folder), --device.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under speakerid.cli. One line per subcommand; the order is the order of `--help`.
SUBCOMMANDS: dict[str, str] = {
    "train": "train",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "embed": "embed",
    "verify": "verify",
    "export": "export",
    "average": "average",
    "check-data": "check_data",
    "prepare": "prepare",
    "calibrate": "calibrate",
    "report": "report",
    "compare": "compare",
    "summarize": "summarize",
}

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speakerid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from speakerid import __version__
    parser.add_argument("--version", action="version", version=f"speakerid {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"speakerid.cli.{module_name}")
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in SUBCOMMANDS and not {"-h", "--help"} & set(argv[1:]):
        module = importlib.import_module(f"speakerid.cli.{SUBCOMMANDS[argv[0]]}")
        if getattr(module, "PASS_THROUGH", False):  # its arguments are another parser's (train: Hydra's)
            return module.run(argparse.Namespace(command=argv[0], overrides=argv[1:]))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
