"""The help text of ``vlprompt fit|validate|test --help``, kept on disk after the first time.

Building that text means importing Lightning (its Trainer's signature is read), and Lightning imports
torchmetrics, which imports transformers, torchvision's detection ops and scipy.signal: about 3.5x a bare
``import torch`` on a laptop, for every ``--help``. The text only depends on the code that builds it, so it is
kept under the cache directory, in a file of its own per environment (Python executable and vlprompt's location),
keyed by everything it is made from: the vlprompt sources (path, size, mtime), the versions of the packages whose
signatures it shows and the Python executable. It is laid out
:data:`HELP_WIDTH` columns wide whatever the terminal, so the text ``make install`` keeps (it asks once) is the one
a later terminal gets. A changed key builds and keeps it again; a cache that cannot be read or written is ignored.

Only a bare ``COMMAND --help`` (or ``-h``) is served from the cache: with ``--config`` files or other arguments
the parser itself answers. ``VLPROMPT_HELP_CACHE=0`` switches the cache off; ``VLPROMPT_CACHE_DIR`` moves it
(default ``$XDG_CACHE_HOME/vlprompt``, else ``~/.cache/vlprompt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

#: Distributions whose code or signatures shape the help text.
SHAPING_DISTRIBUTIONS = ("pytorch-lightning", "lightning", "lightning-utilities", "jsonargparse", "torch",
                         "torchmetrics", "open_clip_torch", "docstring-parser", "typeshed-client")
HELP_FLAGS = ("-h", "--help")
#: The width the kept help texts are laid out at (argparse reads it from ``COLUMNS``).
HELP_WIDTH = 100


def cache_directory() -> Path:
    if os.environ.get("VLPROMPT_CACHE_DIR"):
        return Path(os.environ["VLPROMPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlprompt"


def is_plain_help(argv: Sequence[str]) -> bool:
    """``COMMAND --help`` and nothing else: the only call whose answer the cache may give."""
    return len(argv) == 2 and argv[1] in HELP_FLAGS and os.environ.get("VLPROMPT_HELP_CACHE", "1") != "0"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "-"


def help_key(command: str) -> str:
    """A digest of everything ``command --help`` is built from."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for part in (command, sys.executable, sys.version, str(HELP_WIDTH),
                 *(f"{name}={_version(name)}" for name in SHAPING_DISTRIBUTIONS)):
        digest.update(part.encode() + b"\0")
    for source in sorted(package.rglob("*.py")):
        status = source.stat()
        digest.update(f"{source.relative_to(package)}:{status.st_size}:{status.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _cache_file(command: str) -> Path:
    """One file per command and environment (Python executable and vlprompt's location): two virtual environments
    on one machine each keep their own text instead of replacing each other's at every call."""
    environment = hashlib.sha256(f"{sys.executable}\0{Path(__file__).resolve().parent}".encode()).hexdigest()[:16]
    return cache_directory() / f"help-{command}-{environment}.json"


def cached_help(command: str) -> Optional[str]:
    """The kept help text of ``command``, or None when there is none for the current key."""
    try:
        entry = json.loads(_cache_file(command).read_text())
        return entry["text"] if entry.get("key") == help_key(command) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def build_and_keep_help(command: str, build: Callable[[], None]) -> None:
    """Run ``build`` (which prints the help and exits), print what it printed and keep it for next time."""
    captured, columns = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        with contextlib.redirect_stdout(captured):
            build()
    except SystemExit as exit_:
        sys.stdout.write(captured.getvalue())
        if exit_.code in (0, None) and captured.getvalue():
            from vlprompt.files import write_json_atomically

            with contextlib.suppress(OSError):
                write_json_atomically(_cache_file(command), {"key": help_key(command), "text": captured.getvalue()})
        raise
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    sys.stdout.write(captured.getvalue())
