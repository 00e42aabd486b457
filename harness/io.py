"""Crash-safe file writes: write a temporary sibling, then rename it over the target.

A rename within one folder is atomic, so a reader (or a resumed run) sees either the old file
or the complete new one, never half a file. Every file vsbench writes for later reading (indexes,
split files, checkpoints, feature caches, tables) goes through :func:`atomic_write`.

A temporary file is named ``.<name>.<pid>.<random>.tmp`` after its writer's process id, so a
file left by a killed writer (SIGKILL, power loss) can be told from one still being written:
:func:`remove_stale_temp_files` deletes only those whose process is gone, and every
:func:`atomic_write` does so in its folder first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")  # .<name>.<pid>.<random>.tmp, see atomic_write


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` in ``folder`` whose writer process is
    dead (an interrupted write), never a live writer's; returns the removed paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match and not pid_alive(int(match["pid"])):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    On any error (or interrupt) the temporary file is removed and ``path`` is left untouched;
    temporary files that killed writers left in the folder are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (creating parent folders)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (creating parent folders)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Replace ``path`` with ``obj`` as indented, key-sorted JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")
