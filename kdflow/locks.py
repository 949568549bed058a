"""Cross-process locks for the single-machine (embedded) default.

:class:`FileLock` serializes critical sections — e.g. alias moves in :func:`kdflow.registry.promote` —
between processes and threads on one machine with ``fcntl.flock`` on a lock file. ``flock`` belongs to
the open file description, so two ``open()`` calls exclude each other even within one process, and the
kernel releases the lock when its holder dies (no stale lock after a crash). It does not work across
machines or on most network file systems: use the Prefect global concurrency limit there
(``tasks/promotion.py``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType


class LockTimeout(TimeoutError):
    """A lock could not be acquired within its timeout."""


class FileLock:
    """An exclusive ``fcntl.flock`` lock on ``path``, usable as a context manager.

    ``timeout`` seconds (``None``: wait forever, ``0``: try once) bound the wait; on timeout
    :class:`LockTimeout` names the file and the pid recorded by the current holder. One instance may be
    shared by threads (each acquisition opens its own descriptor); it is not re-entrant: a thread that
    enters it twice waits for itself until the timeout.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = 60.0, poll_interval: float = 0.05):
        self.path = Path(path)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._held = threading.local()  # per-thread stack of open descriptors

    def acquire(self) -> None:
        """Block until the lock is held (or raise :class:`LockTimeout`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(f"could not acquire lock {self.path} within {self.timeout:g} s "
                                  f"(held by {self._holder() or 'an unknown process'})")
            time.sleep(self.poll_interval)
        # Record the holder for the timeout message of whoever waits next (diagnostics only).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._stack().append(fd)

    def release(self) -> None:
        """Release the lock held by this thread."""
        stack = self._stack()
        if not stack:
            raise RuntimeError(f"lock {self.path} is not held by this thread")
        fd = stack.pop()
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _stack(self) -> list[int]:
        if not hasattr(self._held, "fds"):
            self._held.fds = []
        return self._held.fds

    def _holder(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except OSError:
            return None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r}, timeout={self.timeout!r})"
