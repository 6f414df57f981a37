"""Atomic file writing, the one way speakerid writes anything a user keeps (checkpoints, scores, lists,
reports): a temporary file in the same folder, flushed and fsynced, then renamed over the final name. A
crash, a kill or a full disk leaves the previous file intact and never a half-written one."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (ffmpeg, an exporter); renamed
    to `path` when the block succeeds, removed when it fails. With overwrite=False an existing `path` is a
    FileExistsError, raised before the block runs and again, race-free, when the file is put in place."""
    path = Path(path)
    if not overwrite and path.exists():
        raise _exists(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; keep the permissions of a normal write
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # unlike a rename, fails when the name was taken in the meantime
            except FileExistsError:
                raise _exists(path) from None
            except OSError:  # a file system without hard links: checked above, so only a race slips through
                os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _exists(path: Path, what: str = "", flag: str = "--overwrite") -> FileExistsError:
    """The one refusal to replace a file, whether found before the work (check_new_file) or at its end."""
    return FileExistsError(f"{what} {path}".strip() + f" already exists; pass {flag} (overwrite=True from Python) "
                                                      f"to replace it")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", overwrite: bool = True) -> Iterator[IO[Any]]:
    """An open file ("w" text in UTF-8, or "wb") that becomes `path` when the block succeeds."""
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, record: Any, indent: int = 2) -> None:
    """`record` as standard JSON: a non-finite float (an `accept nothing` threshold, a NaN) is written as null,
    since Python's Infinity and NaN are not JSON and other readers reject them."""
    write_text_atomic(path, json.dumps(finite_or_none(record), indent=indent, allow_nan=False) + "\n")


def finite_or_none(value: Any) -> Any:
    """`value` (dicts, lists and tuples inside it too) with every non-finite float replaced by None."""
    if isinstance(value, float):  # numpy's float64 too
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The content of a JSON file, with errors that name it (as `what`) and what is wrong."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable {what} ({e})") from None


def check_writable(path: str | os.PathLike, folder: bool = False, what: str = "output") -> None:
    """Fail now, not after hours of work, when `path` (a file, or a folder with folder=True) cannot be
    written: a file name that is a folder, a parent that is a file, a read-only or full disk."""
    target = Path(path)
    if not folder and target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} {target} is a folder; give a file name")
    existing = target if folder else target.parent
    while not existing.exists() and existing != existing.parent:  # creates nothing: the probe goes where the
        existing = existing.parent                                  # folders would be made
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OSError(e.errno, f"{what} {target} is not writable ({e.strerror or e})") from None


def check_new_file(path: str | os.PathLike, overwrite: bool = False, what: str = "output",
                   flag: str = "--overwrite") -> None:
    """check_writable for a file a command is about to write, and refuse to replace an existing one unless
    `overwrite` (the command's `flag`): a command never overwrites a user's file silently."""
    if Path(path).exists() and not Path(path).is_dir() and not overwrite:
        raise _exists(Path(path), what, flag)
    check_writable(path, what=what)


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (not every platform or file system allows fsync on a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
