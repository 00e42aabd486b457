"""Crash-safe file writes (write a temporary sibling, then rename it over the target) and file locks.

A rename within one folder is atomic, so a reader (or a resumed run) sees either the old file
or the complete new one, never half a file. Every file vsbench writes for later reading (indexes,
split files, checkpoints, feature caches, tables) goes through :func:`atomic_write`.

A temporary file is named ``.<name>.<pid>.<random>.tmp`` after its writer's process id, so a
file left by a killed writer (SIGKILL, power loss) can be told from one still being written:
:func:`remove_stale_temp_files` deletes only those whose process is gone, and every
:func:`atomic_write` does so in its folder first.

Locks keep two processes out of the same files: :func:`file_lock` holds an exclusive
``flock`` on a lock file, which the kernel releases when its holder ends in any way (SIGKILL
too), so a lock is never left behind by a dead process. While held, the file names its holder
(``pid host``), for the message of whoever finds it taken; the holder empties it when it lets go,
so a non-empty file found free was left by a process that died holding it (it is taken over, with
a warning). :func:`run_folder_lock` is the lock of a training run folder (``run.lock``); the
MLflow tracking code locks a sqlite store's creation with :func:`file_lock` too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

RUN_LOCK = "run.lock"
_LOCK_POLL_S = 0.05  # how often a waiting file_lock tries again
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


class LockTimeout(RuntimeError):
    """A lock file stayed held by another process for longer than the caller would wait; the
    message names the file and its holder."""


class RunFolderLocked(RuntimeError):
    """Another process is training in this run folder (the message names the folder and the
    holder of its lock, pid and host), or trained in it after this run read it."""


def _holder(record: str) -> str | None:
    """"pid P on host H" from a lock file's ``pid host`` record; None for an empty record."""
    fields = record.split()
    if not fields:
        return None
    return f"pid {fields[0]} on host {fields[1]}" if len(fields) == 2 else repr(record)


def _wait_for_lock(fd: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _holder(os.pread(fd, 256, 0).decode("utf-8", "replace")) or "a process that has not named itself yet"
                raise LockTimeout(f"{path} is held by {holder}" + (f" (waited {timeout:g} s)" if timeout else "")) from None
            time.sleep(_LOCK_POLL_S)


def _claim(fd: int, path: Path) -> None:
    """Write this process into the lock file just acquired, warning about a holder that died holding it."""
    left = _holder(os.pread(fd, 256, 0).decode("utf-8", "replace"))
    if left:
        log.warning("%s: taking over the lock left by %s, whose process ended without letting go of it", path, left)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created with its folder) for the ``with`` block.

    Waits up to ``timeout`` seconds for another holder to let go (0: not at all), then raises
    :class:`LockTimeout` naming the holder. The lock is released when the block ends, however
    it ends, and by the kernel when the process dies. Not re-entrant: a second ``file_lock`` of
    the same file in the same process waits for the first like any other holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait_for_lock(fd, path, timeout)
        _claim(fd, path)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # let go cleanly: the next holder finds the file empty
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the run folder ``folder`` (its ``run.lock``) for the ``with`` block, so that
    two processes never train into one folder; raises :class:`RunFolderLocked` at once, naming
    the holder, when another process has it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(file_lock(Path(folder) / RUN_LOCK))
        except LockTimeout as err:
            raise RunFolderLocked(f"run folder {folder} is in use: {err}; wait for that run to end, or give this run another "
                                  "output_dir or run_name") from None
        yield


@dataclass(frozen=True)
class RunMemo:
    """A JSON file naming the MLflow run some work logs to and the hash of the configuration it
    belongs to (``mlflow_run.json`` of a run folder, ``suite_run.json`` of a suite's output folder).
    Work started again with the same configuration continues that run, so one logical run is one
    MLflow run however often it was interrupted."""

    path: Path
    config_hash: str

    def recorded(self) -> str | None:
        """The run id the file names, whatever configuration it belongs to (None: no readable file)."""
        return self._read().get("run_id")

    def run_id(self) -> str | None:
        """The run id the file names if it belongs to this configuration."""
        record = self._read()
        if record and record.get("config_hash") != self.config_hash:
            log.info("%s names an MLflow run of another configuration (%s); this one is tracked as a new run", self.path,
                     record.get("config_hash"))
            return None
        return record.get("run_id")

    def remember(self, run_id: str | None) -> None:
        """Write the file (nothing when tracking is off: ``run_id`` None)."""
        if run_id is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"run_id": run_id, "config_hash": self.config_hash})

    def _read(self) -> dict:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return record if isinstance(record, dict) else {}
