"""A lock on a run folder: one ``njetify finetune`` writes into a folder at a time.

The lock is an OS file lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) on the hidden
file ``OUT/.njetify-finetune.lock``, which also names the holder (pid, host, start time)
for the message. The OS drops the lock when its process ends, however it ends (a crash,
``kill -9``), so a lock is never stale: a folder whose writer died can be used at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".njetify-finetune.lock"


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class RunLock:
    """The lock on run folder ``folder`` (created when missing). Use as a context manager, or
    :meth:`acquire` / :meth:`release`. A held lock is a :class:`UserError` naming the holder."""

    def __init__(self, folder: Path, option: str = "--out"):
        self.folder, self.option = Path(folder), option
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retried only when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = _read(fd)
                os.close(fd)
                raise UserError(
                    f"{self.option}: {str(self.folder)!r} is in use by another 'njetify finetune' ({holder}); "
                    f"wait for it to end, or choose another {self.option}"
                )
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the holder before us removed it after we opened it
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
                self.fd = fd
                return self
            os.close(fd)
        raise UserError(f"{self.option}: could not lock {str(self.path)!r}; try again")

    def release(self) -> None:
        """Remove the lock file and drop the lock (the folder is left as it is)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: a process waiting on the old file retries
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that is starting"
