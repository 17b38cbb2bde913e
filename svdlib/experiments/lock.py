"""One run per output folder: an advisory lock on ``<folder>/.lock`` for the whole run.

The lock is an OS file lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on a file
holding the owner's PID and host name. The OS drops it when the owner exits, however it
exits, so the lock file a killed run leaves behind is free and the next run takes it over;
a second run while the owner lives is refused with :class:`RunLockedError`, which names the
lock file and the owner's PID.
"""
from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["LOCK_NAME", "RunLockedError", "run_lock"]

#: Name of the lock file inside the output folder.
LOCK_NAME = ".lock"


class RunLockedError(FileExistsError):
    """Another live process holds the output folder's lock."""


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of ``fd`` without waiting; False when another process has it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError (EWOULDBLOCK) when held
        return False
    return True


def _owner(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().split()
    except OSError:
        text = []
    return f"PID {text[0]} on {text[1]}" if len(text) >= 2 else "PID unknown (just starting)"


def _is_still(fd: int, path: str) -> bool:
    """Whether ``fd`` is still the file at ``path`` (an owner removes it when it releases)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _acquire(path: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise RunLockedError(
                f"{os.path.dirname(path)} is in use by another run: its lock file {path} is held "
                f"by {_owner(path)}; wait for that run to finish or choose another output folder")
        if _is_still(fd, path):
            break
        os.close(fd)  # we locked a file its owner had just removed: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _release(path: str, fd: int) -> None:
    try:
        os.unlink(path)  # while still locked, so no one can take the file being removed
    except OSError:  # Windows cannot remove an open file; the lock is still dropped below
        pass
    os.close(fd)


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike):
    """Hold the lock of ``directory`` (which must exist) for the ``with`` block.

    Raises
    ------
    RunLockedError
        A live process holds it; the message names the lock file and the owner's PID.
    """
    path = os.path.join(os.fspath(directory), LOCK_NAME)
    fd = _acquire(path)
    try:
        yield path
    finally:
        _release(path, fd)
