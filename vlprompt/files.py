"""Files vlprompt writes for others to read: written whole or not at all, with the user's usual permissions.

A temporary file is written beside the target, given the mode a plain ``open(path, "w")`` would give (the
umask applied to 0666, not ``mkstemp``'s private 0600, so a data set prepared by one user is readable by the
others), then moved into place. Its name records host and process, so a temporary left behind by a process
that was killed mid-write is recognised and removed by the next writer of the same file.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from vlprompt.errors import ConfigError

#: Temporaries of other hosts older than this are removed too (their process cannot be asked).
STALE_TEMPORARY_SECONDS = 24 * 3600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries of ``path`` whose writer is gone (same host, dead process; or older than a day)."""
    path, removed, host = Path(path), [], socket.gethostname()
    prefix = _temporary_prefix(path)
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for candidate in candidates:
        writer_host, _, rest = candidate.name[len(prefix):].rpartition("-pid")
        pid = rest.split("-", 1)[0]
        try:
            age = time.time() - candidate.stat().st_mtime
        except OSError:
            continue
        dead = writer_host == host and pid.isdigit() and not _process_alive(int(pid))
        if dead or age > STALE_TEMPORARY_SECONDS:
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass
    return removed


def write_json_atomically(path: Path, data: Any, replace: bool = True, indent: int | None = None) -> bool:
    """Write ``data`` as JSON to ``path`` whole or not at all; True if this call wrote it.

    With ``replace=False`` an existing ``path`` is kept (returns False), so concurrent writers (DDP ranks
    building the same split) never clobber each other: the first one to finish wins.
    """
    text = json.dumps(data, indent=indent) + ("\n" if indent is not None else "")
    return write_bytes_atomically(path, text.encode("utf-8"), replace)


def write_bytes_atomically(path: Path, data: bytes, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` whole or not at all (a temporary beside it, synced, then moved into place); True
    if this call wrote it. A failed write (a full disk) leaves ``path`` as it was and no temporary behind; the
    ``OSError`` names ``path``. ``replace=False`` as in :func:`write_json_atomically`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    prefix = f"{_temporary_prefix(path)}{socket.gethostname()}-pid{os.getpid()}-"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)  # atomic, and fails if the file exists
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: check, then move (a narrow race, same content)
            if path.exists():
                return False
            os.replace(temporary, path)
            return True
    except OSError as err:
        # The temporary's name means nothing to the user: name the file being written.
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def ensure_writable(directory: Path, what: str) -> None:
    """Create ``directory`` if needed and prove a file can be written there, or a one-line :class:`ConfigError`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".vlprompt-write-check-") as probe:
            probe.write(b"vlprompt")  # a full disk still lets an empty file be created
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise ConfigError(f"cannot write to {what} {str(directory)!r}: {err.strerror or err}; choose a writable "
                          "directory with free space") from None
