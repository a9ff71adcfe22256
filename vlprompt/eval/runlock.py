"""Ownership of a suite run directory, so several ``vlprompt suite`` processes share one runs directory.

A run is owned by the process holding an exclusive ``flock`` on ``<run>.lock`` beside the run directory; the
file names the owner (host, process id, start time) for messages. The operating system drops the lock when its
process dies, however it dies (``kill -9`` included), so a lock file left behind by a dead process is stale by
construction: the next suite takes the run over and redoes it. ``flock`` works on local file systems and on
Linux NFS clients (as POSIX locks). Platforms without ``fcntl`` (Windows) get no locking: run one suite at a time
per runs directory there.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class RunLock:
    """``with RunLock(run_dir) as lock: if lock.acquired: ...``; non-blocking."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f"{self.run_dir.name}.lock"
        self._fd: Optional[int] = None
        #: The owner recorded in the lock file before this process took it (a stopped process), if any.
        self.previous_owner: Optional[dict] = None

    @property
    def acquired(self) -> bool:
        return self._fd is not None or fcntl is None

    def owner(self) -> Optional[dict]:
        """Who holds (or last held) the lock, as written in the lock file."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, json.JSONDecodeError):
            return None

    def acquire(self) -> bool:
        if fcntl is None or self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The previous owner may have removed the file between our open and our lock: lock the file that is
            # there now, not an unlinked one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous_owner = self.owner()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def describe_owner(self) -> str:
        owner = self.owner() or {}
        return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started', '?')}"

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
