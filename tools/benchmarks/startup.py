"""Start-up times of the ``vlprompt`` program against a bare ``import torch`` (``--startup``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import replace_section, seconds_of

STARTUP_TARGET = 2.0
STARTUP_HEADING = "## Start-up"


def write_startup_section(out: Path, repeats: int) -> None:
    """The start-up times of the ``vlprompt`` program against a bare ``import torch``, side by side, as the
    ``## Start-up`` section of ``out`` (the rest of the file is kept)."""
    python, program = sys.executable, [sys.executable, "-m", "vlprompt"]
    with tempfile.TemporaryDirectory() as cache:
        kept = {**os.environ, "VLPROMPT_CACHE_DIR": cache}
        rows = [("`python -c 'import torch'` (the yardstick)", [python, "-c", "import torch"], None),
                ("`python -c 'import pytorch_lightning'`", [python, "-c", "import pytorch_lightning"], None),
                ("`vlprompt --help`", [*program, "--help"], None),
                ("`vlprompt suite --help`", [*program, "suite", "--help"], None),
                ("`vlprompt report --help`", [*program, "report", "--help"], None),
                ("`vlprompt fit --help`, built (first call; `VLPROMPT_HELP_CACHE=0`)", [*program, "fit", "--help"],
                 {**os.environ, "VLPROMPT_HELP_CACHE": "0"}),
                ("`vlprompt fit --help`, kept (every later call)", [*program, "fit", "--help"], kept)]
        repeats = max(repeats, 5)
        subprocess.run(rows[0][1], check=True)  # warm the file cache for every measurement alike
        subprocess.run(rows[-1][1], check=True, capture_output=True, env=kept)  # the first call keeps the text
        timed = [(label, seconds_of(command, repeats, env)) for label, command, env in rows]
    torch_seconds = timed[0][1]
    built_ratio, kept_ratio = timed[-2][1] / torch_seconds, timed[-1][1] / torch_seconds
    lines = [STARTUP_HEADING, "", f"`python tools/bench.py --startup`: median of {repeats} fresh processes each, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.", "",
             "| command | seconds | x `import torch` |", "|---|---:|---:|"]
    lines += [f"| {label} | {seconds:.2f} | {seconds / torch_seconds:.2f} |" for label, seconds in timed]
    lines += ["", f"Target: `vlprompt fit --help` within {STARTUP_TARGET:g}x `import torch`: "
              f"{'met' if kept_ratio <= STARTUP_TARGET else 'not met'} ({kept_ratio:.2f}x) once the text is kept; "
              f"building it (the first call after vlprompt or its packages change, unless `make install` did) takes "
              f"{built_ratio:.2f}x. vlprompt imports open_clip (and the Hugging Face, timm and CoCa code it pulls in) "
              "only when a CLIP is built, and its packages load their modules on first use, so `vlprompt --help`, "
              "`suite --help` and `report --help` load neither torch nor Lightning. Building `fit --help` needs "
              "Lightning's own import (the LightningCLI reads the Trainer's signature), and that import is the "
              "floor: it brings in torchmetrics, which imports transformers, scipy.signal and torchvision's "
              "detection ops eagerly. So the built text is kept (`vlprompt/help_cache.py`: keyed by vlprompt's "
              "sources, the versions of the packages it shows and the Python; laid out 100 columns wide; "
              "`VLPROMPT_HELP_CACHE=0` turns it off) and a plain `COMMAND --help` reads it back without torch. "
              "`make install` builds it once for each Lightning subcommand, so after installing even the first call "
              "is the fast one.", ""]
    replace_section(out, STARTUP_HEADING, lines)
