"""Argument parsing shared by ``vlprompt suite`` and ``vlprompt report``."""

from __future__ import annotations

import argparse
import sys


class OneLineArgumentParser(argparse.ArgumentParser):
    """Usage mistakes end with one ``<prog>: error: ...`` line and exit status 2 (``--help`` shows the usage)."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}; see {self.prog} --help\n")
        sys.exit(2)
