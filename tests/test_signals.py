"""SIGTERM and SIGINT stop a fit or a suite with a non-zero status, one line saying how to go on, and a resumable
checkpoint (issue 26, point 1; issue 31, point 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

CONFIGS = REPO / "configs"


def fit_command(shapes: Path, root: Path, epochs: int, *extra) -> list[str]:
    return [sys.executable, "-m", "vlprompt", "fit", "--config", str(CONFIGS / "learners" / "coop.yaml"),
            "--config", str(CONFIGS / "clip" / "tiny-random.yaml"), "--config",
            str(CONFIGS / "data" / "toy" / "ToyShapes.yaml"), "--data.root", str(shapes), "--data.shots", "4",
            "--data.batch_size", "8", "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", str(epochs),
            "--trainer.default_root_dir", str(root), "--seed_everything", "1", *map(str, extra)]


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an inherited "ignore":
    # give the command the SIGINT a terminal's Ctrl-C would reach it with.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_default_sigint)


def wait_for(pattern: str, root: Path, process: subprocess.Popen, timeout: float = 240) -> Path:
    """The first file matching ``pattern`` below ``root``, once the process has written it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {pattern} below {root} within {timeout} s")


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, err = process.communicate(timeout=240)
    return process.returncode, err


def stop_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("vlprompt: stopped by")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_a_fit_with_a_resumable_checkpoint(signum, status, shapes, tmp_path):
    process = start(fit_command(shapes, tmp_path / "runs", 400), tmp_path)
    checkpoint = wait_for("runs/lightning_logs/version_0/checkpoints/last.ckpt", tmp_path, process)
    time.sleep(1.0)  # inside a later epoch
    code, err = stop(process, signum)
    line = stop_line(err)
    assert code == status, err[-3000:]
    assert signal.Signals(signum).name in line and f"--ckpt_path {checkpoint}" in line
    # The checkpoint is whole, and the same command with --ckpt_path goes on to the end (one epoch more than it
    # finished, however many the fit had finished when the signal came).
    finished = int(torch.load(checkpoint, weights_only=True)["epoch"]) + 1
    assert f"{finished} of 400 epochs finished" in line
    result = subprocess.run(fit_command(shapes, tmp_path / "runs", finished + 1, "--ckpt_path", checkpoint),
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states" in result.stderr


@pytest.mark.slow
def test_sigterm_before_the_first_checkpoint_says_nothing_can_be_resumed(shapes, tmp_path):
    process = start(fit_command(shapes, tmp_path / "runs", 400, "--model.init_args.clip.init_args.name", "ViT-B-16"),
                    tmp_path)
    time.sleep(6)  # still importing or building ViT-B/16: no loop is running yet
    code, err = stop(process, signal.SIGTERM)
    line = stop_line(err)
    assert code == 143 and "SIGTERM" in line and "run the same command again" in line, err[-3000:]


@pytest.mark.slow
def test_sigterm_stops_a_suite_which_then_resumes(shapes, tmp_path):
    data = tmp_path / "shapes.yaml"
    data.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n  num_workers: 0\n"
                    "  augment: false\n")
    command = [sys.executable, "-m", "vlprompt", "suite", "base2novel", "--learner",
               str(CONFIGS / "learners" / "coop.yaml"), "--clip", str(CONFIGS / "clip" / "tiny-random.yaml"),
               "--data", str(data), "--seeds", "1", "--shots", "4", "--runs", str(tmp_path / "suite"), "--",
               "--data.batch_size", "8", "--trainer.enable_progress_bar", "false"]
    process = start([*command, "--trainer.max_epochs", "400"], tmp_path)
    checkpoint = wait_for("suite/base2novel/coop/*/shots4_seed1/checkpoints/last.ckpt", tmp_path, process)
    time.sleep(1.0)
    code, err = stop(process, signal.SIGTERM)
    line = stop_line(err)
    assert code == 143 and "run 1 of 1" in line and "same suite command" in line, err[-3000:]
    run_dir = checkpoint.parent.parent
    assert not (run_dir / "metrics.json").exists()
    # Started again (with one epoch more than it finished, so that it ends soon), the suite resumes that run.
    finished = int(torch.load(checkpoint, weights_only=True)["epoch"]) + 1
    result = subprocess.run([*command, "--trainer.max_epochs", str(finished + 1)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoint}" in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["shots"] == 4


def test_a_new_fit_beside_a_stopped_one_says_how_to_go_on_from_it(tmp_path):
    import yaml

    from vlprompt.cli import stopped_fits

    logs = tmp_path / "lightning_logs"
    for version, (finished, planned) in enumerate([(2, 200), (5, 5)]):
        run = logs / f"version_{version}"
        (run / "checkpoints").mkdir(parents=True)
        torch.save({"epoch": finished - 1, "loops": {"fit_loop": {"epoch_progress": {"current": {
            "processed": finished, "completed": finished - 1}}}}}, run / "checkpoints" / "last.ckpt")
        (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": planned},
                                                         "model": {"class_path": "vlprompt.learners.coop.CoOp"}}))
    assert stopped_fits(logs, "vlprompt.learners.coop.CoOp") == []  # the latest fit ended
    (logs / "version_1" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 50},
                                                                    "model": {"class_path": "vlprompt.learners.coop.CoOp"}}))
    assert stopped_fits(logs, "vlprompt.learners.coop.CoOp") == [(logs / "version_1", 5, 50)]
    assert stopped_fits(logs, "vlprompt.learners.kgcoop.KgCoOp") == []


def test_sigterm_outside_a_lightning_loop_stops_at_once_with_the_hint(capsys):
    """Between the runs of a suite no trainer is running: the handler itself stops the command."""
    from vlprompt.interrupts import set_resume_hint, stop_cleanly

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with stop_cleanly():
            set_resume_hint("finished runs are kept; run the same suite command again to go on")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives before this ends
            raise AssertionError("SIGTERM did not stop the command")
    assert stopped.value.code == 143
    assert capsys.readouterr().err == ("vlprompt: stopped by SIGTERM; finished runs are kept; run the same suite "
                                       "command again to go on\n")
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    with pytest.raises(SystemExit) as exited:  # other exits pass through untouched
        with stop_cleanly():
            raise SystemExit(2)
    assert exited.value.code == 2
