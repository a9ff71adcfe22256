"""Errors that describe a user mistake rather than a bug, and how commands report them.

Commands print these as one line (no traceback) and exit with status 2; everything else is a bug and keeps its
traceback.
"""

import contextlib
import errno
import os
import sys
from typing import Iterator, Optional


class VlpromptError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(VlpromptError, ValueError):
    """An argument or configuration value that cannot be used."""


class CheckpointMismatchError(VlpromptError):
    """A checkpoint that does not belong to the learner or CLIP it is loaded into."""


class TrainingDivergedError(VlpromptError):
    """Training produced a non-finite loss or parameter; nothing it learned is a result."""


class StorageError(VlpromptError):
    """A file vlprompt writes could not be written (a full disk, a read-only place, no permission)."""


class UnreadableImageError(ConfigError):
    """An image listed in a split file that is missing, damaged or in a pixel format that cannot be converted."""


#: Operating-system errors that mean "this place cannot be written", whatever was being written.
_STORAGE_ERRORS = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
                   errno.EROFS: "write elsewhere", errno.EACCES: "check its permissions or write elsewhere",
                   errno.EPERM: "check its permissions or write elsewhere"}


def storage_fix(error: OSError) -> str:
    """What to do about a storage error: free space, write elsewhere, check permissions."""
    return _STORAGE_ERRORS.get(error.errno, "write elsewhere")


def user_error_message(err: BaseException) -> Optional[str]:
    """One line for a user mistake or a storage fault behind ``err`` (also when jsonargparse or a DataLoader
    worker wrapped it), or None for a bug, which keeps its traceback."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VlpromptError):
            # A DataLoader worker re-raises the error with the worker's traceback in its message; keep the last line.
            text = str(err).strip()
            if "Original Traceback" in text:
                text = text.splitlines()[-1].split(": ", 1)[-1]
            return text
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRORS and err.filename:
            return f"cannot use {str(err.filename)!r}: {err.strerror}; {_STORAGE_ERRORS[err.errno]}"
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    """Run a command: a user mistake or storage fault ends it with one ``vlprompt: error:`` line and exit 2."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - only user mistakes are reported briefly, the rest re-raised
        message = user_error_message(err)
        if message is None:
            raise
        sys.stderr.write(f"vlprompt: error: {message}\n")
        sys.exit(2)


def warn(message: str) -> None:
    """One ``vlprompt: warning: ...`` line on stderr, from the first process only (DDP starts one per device)."""
    if all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        sys.stderr.write(f"vlprompt: warning: {message}\n")
        sys.stderr.flush()
