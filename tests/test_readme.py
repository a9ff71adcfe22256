"""Every command and code block in README.md runs as written, offline, on a fresh checkout; every command of
docs/reproducing.md resolves its files and learner (``--dry-run``).

A block runs unless the HTML comment on the line before its fence says otherwise:
``<!-- readme-test: dry-run: why -->`` (``vlprompt`` commands are parsed, not run: ``--print_config`` for the
LightningCLI commands, ``--dry-run`` for suites) or ``<!-- readme-test: skip: why -->``. Training budgets are
cut to one short epoch by a ``vlprompt`` on PATH that appends trainer limits to what the block wrote. That
``vlprompt``, and the Python blocks, run in children of one process that imported vlprompt once
(tests/command_server.py: what that can and cannot check is written there); shell commands other than ``vlprompt``
run as they are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from command_server import CLIENT, serving
from conftest import REPO

FENCE = re.compile(r"(?:<!-- readme-test: (?P<mode>[\w-]+)(?::\s*(?P<why>.*?))? -->\n)?```(?P<lang>bash|python)\n"
                   r"(?P<body>.*?)```", re.S)
#: What the injected ``vlprompt`` appends to training commands: one short epoch, quiet.
SMALL_BUDGET = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"]

VLPROMPT_SHIM = f"""#!{sys.executable}
# The README test's vlprompt: the real one, run by the command server, with a one-epoch budget appended (or
# parse-only in dry-run blocks).
{CLIENT}
args, dry = sys.argv[1:], os.environ.get("README_TEST_MODE") == "dry-run"
budget = {SMALL_BUDGET!r}
if args and args[0] in ("fit", "validate", "test"):
    args += ["--print_config"] if dry else budget
elif args and args[0] == "suite":
    args = args[:1] + (["--dry-run"] if dry else []) + args[1:] + ([] if "--" in args else ["--"]) + budget
run_on_server(["vlprompt", *args])
"""
#: ``python -c BLOCK`` through the command server.
PYTHON_CLIENT = f"""{CLIENT}
run_on_server(["--python-code", *sys.argv[1:]])
"""


def blocks(path: Path) -> list[dict]:
    found = []
    text = path.read_text()
    for match in FENCE.finditer(text):
        line = text[:match.start("lang")].count("\n")
        found.append({"id": f"{path.name}:{line}", "mode": match["mode"] or "run", "why": match["why"],
                      "lang": match["lang"], "body": match["body"]})
    return found


README_BLOCKS = blocks(REPO / "README.md")


def test_readme_blocks_are_found_and_every_exception_says_why():
    assert len(README_BLOCKS) >= 10
    for block in README_BLOCKS:
        assert block["mode"] in ("run", "dry-run", "skip"), block["id"]
        if block["mode"] != "run":
            assert block["why"], f"{block['id']}: a block that does not run says why"
    assert sum(block["mode"] == "run" for block in README_BLOCKS) >= 6


def test_readme_says_to_activate_the_environment_before_the_first_command():
    """`make demo` creates .venv; the next block's `vlprompt` is found only in it (issue 31, point 4)."""
    text = (REPO / "README.md").read_text()
    first_command = min(text.index(f"\n{word} ") for word in ("vlprompt", "python"))
    assert "source .venv/bin/activate" in text[:first_command]


def test_readme_lists_every_registered_learner():
    """The tour's `list_learners()` comment is the registry, not a list copied once (issue 27)."""
    import ast

    import vlprompt

    text = (REPO / "README.md").read_text()
    start = text.index("print(vlprompt.list_learners())  # ") + len("print(vlprompt.list_learners())  # ")
    end = text.index("]", start) + 1
    listed = ast.literal_eval(re.sub(r"\n#\s*", " ", text[start:end]))
    assert listed == vlprompt.list_learners()


@contextlib.contextmanager
def readme_workdir(tmp_path_factory) -> Iterator[tuple[Path, dict]]:
    """A fresh directory holding what a checkout holds (configs, tools), a PATH whose vlprompt is the shim, and the
    command server the shim and the Python blocks send their commands to."""
    work = tmp_path_factory.mktemp("readme")
    for name in ("configs", "tools"):
        (work / name).symlink_to(REPO / name)
    bin_dir = tmp_path_factory.mktemp("bin")
    shim = bin_dir / "vlprompt"
    shim.write_text(VLPROMPT_SHIM)
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    # `python` is this interpreter (its environment's bin directory), `vlprompt` the shim in front of it.
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with serving(work, env) as env:
        yield work, env


def block_process(block: dict, workdir: tuple[Path, dict], **env) -> subprocess.CompletedProcess:
    """A shell block under bash's strict mode; a Python block as `python -c`, in a child of the command server."""
    work, block_env = workdir
    command = (["bash", "-euo", "pipefail", "-c", block["body"]] if block["lang"] == "bash"
               else [sys.executable, "-c", PYTHON_CLIENT, block["body"]])
    return subprocess.run(command, cwd=work, env={**block_env, "README_TEST_MODE": block["mode"], **env},
                          capture_output=True, text=True, timeout=900)


def run_block(block: dict, workdir: tuple[Path, dict]) -> None:
    result = block_process(block, workdir)
    assert result.returncode == 0, f"{block['id']} failed:\n{block['body']}\n--- stderr ---\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, f"{block['id']}:\n{result.stderr[-4000:]}"


@pytest.mark.slow(minutes=3)
def test_every_readme_block_runs_in_order(tmp_path_factory):
    """In README order, in one directory, as a reader would: later blocks use what earlier ones wrote."""
    with readme_workdir(tmp_path_factory) as workdir:
        for block in README_BLOCKS:
            if block["mode"] == "run":
                run_block(block, workdir)
    work, _ = workdir
    assert (work / "runs" / "readme" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert (work / "runs" / "suite" / "report" / "paper.md").is_file()


@pytest.mark.slow
def test_every_readme_command_for_real_weights_parses(tmp_path_factory):
    """The dry-run blocks (real weights, data sets or GPUs) are parsed in a directory of their own: they read
    nothing the other blocks write, so they run beside the walk-through instead of after it."""
    dry_runs = [block for block in README_BLOCKS if block["mode"] == "dry-run"]
    assert dry_runs
    with readme_workdir(tmp_path_factory) as workdir:
        for block in dry_runs:
            run_block(block, workdir)


@pytest.mark.slow
def test_the_command_server_hands_back_status_output_and_errors(tmp_path_factory):
    """What the walk-through's checks rely on: a failing command fails its block, with its own message."""
    with readme_workdir(tmp_path_factory) as workdir:
        def run(block: dict) -> subprocess.CompletedProcess:
            return block_process({**block, "mode": "run"}, workdir, MARK="m1")

        work, _ = workdir
        missing = run({"lang": "bash", "body": "vlprompt fit --config configs/learners/nope.yaml\necho not reached"})
        assert missing.returncode == 2 and "not reached" not in missing.stdout
        assert "config file 'configs/learners/nope.yaml' does not exist" in missing.stderr
        helped = run({"lang": "bash", "body": "vlprompt report --help | head -1"})
        assert helped.returncode == 0 and helped.stdout.startswith("usage: vlprompt report")
        snippet = run({"lang": "python", "body": "import os, sys\nprint(os.getcwd(), os.environ['MARK'], sys.path[0])"})
        assert snippet.returncode == 0 and snippet.stdout.split() == [str(work), "m1"]
        raised = run({"lang": "python", "body": "raise ValueError('from the block')"})
        assert raised.returncode == 1 and "ValueError: from the block" in raised.stderr
        stopped = run({"lang": "python", "body": "import sys\nsys.exit(3)"})
        assert stopped.returncode == 3


def test_reproducing_commands_resolve_their_files_and_learners(tmp_path, monkeypatch, capsys):
    """Every `vlprompt suite` command of docs/reproducing.md plans its runs (--dry-run): files exist, learners are
    registered, options parse."""
    from vlprompt.commands import main

    text = (REPO / "docs" / "reproducing.md").read_text()
    commands = sorted(set(re.findall(r"`(vlprompt suite [^`]+)`", text)))
    assert len(commands) >= 10
    monkeypatch.chdir(REPO)
    for command in commands:
        args = shlex.split(command)[1:]
        cut = args.index("--") if "--" in args else len(args)  # the suite's own options go before the separator
        main(args[:cut] + ["--dry-run", "--runs", str(tmp_path)] + args[cut:])
        out = capsys.readouterr().out
        assert "[suite] run 1 of" in out and "vlprompt fit --config" in out, command
    for path in set(re.findall(r"configs/[\w/.-]+\.yaml", text)):
        assert (REPO / path).is_file(), path


@pytest.mark.slow
def test_demo_runs(tmp_path):
    """What `make demo` runs (README's first block), with one epoch."""
    result = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--epochs", "1", "--data",
                             str(tmp_path / "data"), "--runs", str(tmp_path / "runs")], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HM" in result.stdout and list((tmp_path / "runs").glob("demo-*"))
