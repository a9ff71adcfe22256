"""Reading a command line before any parser does (cheap checks, picking the configured learner): the values given
to an option, and whether a ``--ckpt_path`` names a file; and the parser of the commands that are not Lightning's
(``suite``, ``report``, ``predict``, ``export``, ``data check``). Nothing heavy is imported here."""

from __future__ import annotations

import argparse
import json
import sys

from typing import Sequence

#: ``--ckpt_path`` values Lightning resolves itself (no file to check).
CHECKPOINT_ALIASES = ("last", "best", "hpc")


def option_values(args: Sequence[str], *options: str) -> list[str]:
    """The values given to ``options`` (``--opt VALUE`` or ``--opt=VALUE``), in the order they appear."""
    values = []
    for index, arg in enumerate(args):
        for option in options:
            if arg == option and index + 1 < len(args):
                values.append(args[index + 1])
            elif arg.startswith(option + "="):
                values.append(arg.split("=", 1)[1])
    return values


def names_a_checkpoint_file(ckpt_path) -> bool:
    """Whether a ``--ckpt_path`` value is a file path, not one of Lightning's aliases (``last``, ``registry:...``)."""
    value = str(ckpt_path)
    return bool(ckpt_path) and value not in CHECKPOINT_ALIASES and not value.startswith("registry:")


def plugin_option(name: str, **options) -> str:
    """The ``vlprompt fit`` option that adds plug-in ``name`` with ``options`` to the learner's plug-ins (after any
    plug-ins its YAML gives): ``--model.init_args.plugins+={"name": ..., ...}``."""
    return "--model.init_args.plugins+=" + json.dumps({"name": name, **{k: str(v) for k, v in options.items()}})


class OneLineArgumentParser(argparse.ArgumentParser):
    """Usage mistakes end with one ``<prog>: error: ...`` line and exit status 2 (``--help`` shows the usage)."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}; see {self.prog} --help\n")
        sys.exit(2)
