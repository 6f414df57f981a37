"""Hydra overrides on a command line: read as Hydra itself reads them (quotes, `+key=`, flags such as -m and
their values), and written so that Hydra reads back the exact value, whatever a path holds (',' would make a
sweep of it, '=' or a space a syntax error, 'true' or 'null' another type)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

_parser = OverridesParser.create()


def hydra_arguments(argv: list[str]) -> tuple[bool, list[Override]]:
    """(multirun, overrides) of a Hydra command line. A word Hydra cannot parse is left out, and so is a
    command line its argument parser refuses: Hydra names what is wrong itself when it reads them."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            args, _ = get_args_parser().parse_known_args(argv)
        except SystemExit:  # --version, a flag without its value
            return False, []
    overrides = []
    for word in args.overrides:
        try:
            overrides.append(_parser.parse_override(word))
        except HydraException:
            continue
    mode = last_override(overrides, "hydra.mode")
    return bool(args.multirun) or (mode is not None and str(mode.value()) == "MULTIRUN"), overrides


def last_override(overrides: list[Override], key: str) -> Override | None:
    """The override that decides `key` (`key=`, `+key=`, `++key=` or `~key`): the last one naming it."""
    return next((o for o in reversed(overrides) if o.key_or_group == key), None)


def hydra_override(key: str, value: str) -> str:
    """`key=value` such that Hydra reads back the string `value` exactly (hydra_value)."""
    return f"{key}={hydra_value(value)}"


def hydra_value(value: str, always_quoted: bool = False) -> str:
    """`value` as Hydra reads back the string exactly: as it is when Hydra already does (a plain path; unless
    `always_quoted`, as an element of a list needs), else quoted, with Hydra's escapes: the quote escaped, the
    backslashes before it or at the end doubled, and `${` escaped (OmegaConf reads an interpolation even
    within quotes)."""
    if not always_quoted and "${" not in value and "\\" not in value and reads_back(f"key={value}", value):
        return value
    quote = "'" if '"' in value else '"'  # in double quotes the shell-quoted word stays readable
    escaped = re.sub(rf"(\\*)({quote}|\Z)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), value)
    # OmegaConf reads \${ as a literal ${ and \\ before it as one backslash: a path's own backslashes there doubled
    escaped = re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", escaped)
    return f"{quote}{escaped}{quote}"


def reads_back(word: str, value: str) -> bool:
    """Whether Hydra reads the override `word` as the one string `value`."""
    try:
        override = _parser.parse_override(word)
    except HydraException:
        return False
    return not override.is_sweep_override() and override.value() == value and isinstance(override.value(), str)


def join(*words: str) -> str:
    """A command line that a POSIX shell reads back as these words."""
    return " ".join(shlex.quote(w) for w in words)
