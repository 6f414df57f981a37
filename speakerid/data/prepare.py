"""Build a train list (`speaker relative/path`) by scanning a VoxCeleb-style folder
(`speaker/session/utterance.{wav,flac}`)."""

from __future__ import annotations

import os
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac")


def scan_voxceleb_folder(root: str | os.PathLike, extensions=AUDIO_EXTENSIONS) -> list[tuple[str, str]]:
    """(speaker, relative path) for every audio file at depth speaker/session/file, sorted by path.
    Files at another depth are not VoxCeleb layout and are reported rather than guessed at."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    entries = []
    misplaced = []
    for dirpath, _, files in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in files:
            if not name.lower().endswith(tuple(extensions)):
                continue
            rel = (rel_dir / name).as_posix()
            if len(rel_dir.parts) != 2:
                misplaced.append(rel)
                continue
            entries.append((rel_dir.parts[0], rel))
    if misplaced:
        raise ValueError(
            f"{root}: {len(misplaced)} audio files are not at speaker/session/utterance depth, e.g. "
            + ", ".join(misplaced[:3])
        )
    if not entries:
        raise ValueError(f"{root}: no {'/'.join(extensions)} files found at speaker/session/utterance depth")
    return sorted(entries, key=lambda e: e[1])


def write_train_list(entries: list[tuple[str, str]], out: str | os.PathLike) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(f"{speaker} {path}\n" for speaker, path in entries))
    os.replace(tmp, out)
