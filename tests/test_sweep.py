"""Sweeps (issue 30): a suite's configurations over worker processes on one machine, or a SLURM job array through
submitit; one progress line, one summary, the same resume and locking rules as the suite."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from vlprompt.commands import main
from vlprompt.errors import ConfigError
from vlprompt.eval.suite import METRICS_FILE
from vlprompt.eval.sweep import (
    SweepProgress, Worker, _worker_environment, plan_workers, slurm_parameters, worker_arguments)

from conftest import REPO

CONFIGS = REPO / "configs"


def suite_args(data: Path, runs: Path, seeds=("1", "2", "3"), *sweep) -> list:
    return ["suite", "base2novel", "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
            CONFIGS / "clip" / "tiny-random.yaml", "--data", data, "--seeds", *seeds, "--shots", "4", "--runs", runs,
            *sweep, "--", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]


# -- placing workers ---------------------------------------------------------------------------------------------------
def test_workers_are_one_per_gpu_by_default_and_share_a_gpu_with_runs_per_device():
    four = lambda: 4  # noqa: E731 - a machine with four GPUs
    assert plan_workers(None, None, None, 1, 32, four) == [(["0"], 8), (["1"], 8), (["2"], 8), (["3"], 8)]
    assert [d for d, _ in plan_workers(None, "1,3", 3, 1, 12, four)] == [["1"], ["3"]] * 3
    assert plan_workers(None, "1,3", 3, 1, 12, four)[0][1] == 2  # 12 cores over 6 workers
    assert [d for d, _ in plan_workers(None, None, None, 2, 8, four)] == [["0", "1"], ["2", "3"]]
    assert [d for d, _ in plan_workers(3, None, None, 1, 8, four)] == [["0"], ["1"], ["2"]]


def test_without_gpus_workers_share_the_cpu_threads():
    none = lambda: 0  # noqa: E731
    assert plan_workers(2, None, None, 1, 2, none) == [(None, 1), (None, 1)]
    assert plan_workers(None, None, 3, 1, 12, none) == [(None, 4)] * 3
    assert plan_workers(4, None, None, 1, 2, none) == [(None, 1)] * 4  # never below one thread


@pytest.mark.parametrize("workers, devices, per_device, per_worker, gpus, message", [
    (None, "0,1", None, 1, 0, "this machine has none visible"),
    (None, "0,7", None, 1, 4, "names GPU 7, and this machine shows 4"),
    (None, "0,x", None, 1, 4, "GPU numbers separated by commas"),
    (None, "1,1", None, 1, 4, "names a GPU twice"),
    (5, "0,1", 2, 1, 4, "--workers 5 is more than 2 GPU group(s) x 2 run(s) per device"),
    (None, "0,1,2", None, 2, 4, "do not split into groups of --devices-per-worker 2"),
    (0, None, None, 1, 0, "--workers must be at least 1"),
])
def test_worker_placement_mistakes_are_one_line_errors(workers, devices, per_device, per_worker, gpus, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_workers(workers, devices, per_device, per_worker, 8, lambda: gpus)


def test_each_worker_sees_its_gpus_its_threads_and_a_port_of_its_own(tmp_path):
    env = _worker_environment(Worker(2, ["4", "5"], 3, tmp_path / "w.log"), 29500)
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5" and env["OMP_NUM_THREADS"] == "3" and env["MASTER_PORT"] == "29503"
    cpu_worker = _worker_environment(Worker(0, None, 1, tmp_path / "w.log"), 29500)
    assert cpu_worker.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # left as it was


def test_workers_run_the_suite_command_without_the_sweep_options():
    argv = ["base2novel", "--learner", "a.yaml", "--workers", "4", "--devices=0,1", "--runs-per-device", "2",
            "--launcher", "slurm", "--slurm-time", "60", "--slurm-wait", "--seeds", "1", "2"]
    assert worker_arguments(argv) == ["base2novel", "--learner", "a.yaml", "--seeds", "1", "2"]


def test_one_progress_line_counts_done_running_and_waiting_and_the_time_left(tmp_path):
    class Run:
        def __init__(self, name):
            self.run_dir = tmp_path / name
            self.expected = [self.run_dir / METRICS_FILE]

    runs = [Run(f"r{i}") for i in range(4)]
    lines = []
    progress = SweepProgress(runs, lines.append)
    progress.started -= 60  # a minute into the sweep
    (tmp_path / "r1.lock").write_text("{}")  # held by a worker
    runs[0].run_dir.mkdir()
    (runs[0].run_dir / METRICS_FILE).write_text("{}")
    assert progress.update() == (1, 1, 2)
    assert lines[-1].startswith("[sweep] 1 of 4 done, 1 running, 2 waiting; about 3 min")
    progress.update()
    assert len(lines) == 1  # printed when it changes


def test_slurm_parameters_come_from_options_and_the_yaml_which_wins(tmp_path):
    extra = tmp_path / "slurm.yaml"
    extra.write_text("slurm_qos: high\nslurm_array_parallelism: 8\ntimeout_min: 30\n")
    options = Namespace(slurm_time=240, slurm_gpus_per_task=2, slurm_cpus_per_task=16, slurm_partition="gpu",
                        slurm_account="proj", slurm_config=extra)
    parameters = slurm_parameters(options)
    assert parameters["slurm_partition"] == "gpu" and parameters["slurm_account"] == "proj"
    assert parameters["gpus_per_node"] == 2 and parameters["slurm_qos"] == "high" and parameters["timeout_min"] == 30
    extra.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        slurm_parameters(options)


# -- SLURM: the sbatch script submitit writes -----------------------------------------------------------------------------
@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch`` and ``srun`` on PATH that keep the script they are given and answer as SLURM does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kept = tmp_path / "submitted.sh"
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {kept}\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


def test_slurm_launcher_submits_one_array_task_per_unfinished_configuration(toy_data_config, tmp_path, fake_slurm,
                                                                             capsys):
    extra = tmp_path / "slurm.yaml"
    extra.write_text("slurm_qos: high\nslurm_constraint: h100\n")
    runs = tmp_path / "runs"
    main(suite_args(toy_data_config, runs, ("1", "2", "3"), "--launcher", "slurm", "--slurm-partition", "gpu",
                    "--slurm-account", "proj1", "--slurm-time", "90", "--slurm-gpus-per-task", "1",
                    "--slurm-config", extra))
    out = capsys.readouterr().out
    assert "submitted 3 array tasks (job 4242) for 3 unfinished configurations" in out
    assert f"vlprompt report {runs}" in out
    script = fake_slurm.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj1", "#SBATCH --time=90", "#SBATCH --array=0-2",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --qos=high", "#SBATCH --constraint=h100",
                 "#SBATCH --job-name=vlprompt-sweep"):
        assert line in script, line
    assert "submitit.core._submit" in script
    assert not list(runs.rglob(METRICS_FILE))  # submitted, nothing ran here


def test_slurm_launcher_off_a_cluster_and_a_refused_parameter_are_one_line_errors(toy_data_config, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no srun, no sbatch
    with pytest.raises(SystemExit) as stopped:
        main(suite_args(toy_data_config, tmp_path / "runs", ("1",), "--launcher", "slurm"))
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "cannot submit to SLURM" in err and "--launcher local" in err
    assert len(err.splitlines()) == 1


def test_sweep_options_are_checked_before_anything_starts(toy_data_config, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(suite_args(toy_data_config, tmp_path / "runs", ("1",), "--devices", "0,1"))
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "--devices names GPUs and this machine has none visible" in err
    assert not (tmp_path / "runs" / "sweeps").exists() or not any((tmp_path / "runs" / "sweeps").iterdir())


# -- end to end -------------------------------------------------------------------------------------------------------------
def _started(logs: Path) -> list[str]:
    return [line.split("-> ")[-1] for log in sorted(logs.rglob("worker-*.log"))
            for line in log.read_text().splitlines() if "(starting)" in line]


@pytest.mark.slow
def test_two_workers_share_the_runs_each_once_and_a_rerun_runs_none(toy_data_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    main(suite_args(toy_data_config, runs, ("1", "2", "3", "4"), "--workers", "2"))
    out = capsys.readouterr().out
    assert "[sweep] 2 workers (cpu, cpu; " in out and "[sweep] 4 of 4 done, 0 running, 0 waiting" in out
    assert "| coop | 4 | ToyShapes |" in out  # the suite's summary, once, from the whole sweep
    started = _started(runs / "sweeps")
    assert len(started) == 4 and len(set(started)) == 4  # every configuration run once, by one worker
    assert len(list((runs / "sweeps").rglob("worker-*.log"))) == 2  # which worker ran what is the machine's timing
    metrics = sorted(json.loads(p.read_text())["seed"] for p in runs.rglob(METRICS_FILE))
    assert metrics == [1, 2, 3, 4]
    time.sleep(1.1)  # a new sweep folder (named by the second)
    main(suite_args(toy_data_config, runs, ("1", "2", "3", "4"), "--workers", "2"))
    assert "| coop | 4 | ToyShapes |" in capsys.readouterr().out
    assert len(_started(runs / "sweeps")) == 4  # nothing ran again


@pytest.mark.slow
def test_a_failing_worker_stops_the_sweep_with_its_log_and_keeps_finished_runs(toy_data_config, tmp_path, capsys):
    args = suite_args(toy_data_config, tmp_path / "runs", ("1", "2"), "--workers", "2")
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--model.init_args.n_ctx", "0"])  # every run refuses it
    captured = capsys.readouterr()
    assert stopped.value.code == 2
    assert "2 of 2 workers failed" in captured.err and "n_ctx must be at least 1" in captured.err
    assert "Traceback" not in captured.err.splitlines()[-1]


@pytest.mark.slow
def test_submitit_local_executor_runs_the_array_and_ends_with_the_summary(toy_data_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    main(suite_args(toy_data_config, runs, ("1", "2"), "--launcher", "submitit-local", "--workers", "2"))
    out = capsys.readouterr().out
    assert "submitted 2 array tasks" in out and "| coop | 4 | ToyShapes |" in out
    assert sorted(json.loads(p.read_text())["seed"] for p in runs.rglob(METRICS_FILE)) == [1, 2]
    main(suite_args(toy_data_config, runs, ("1", "2"), "--launcher", "submitit-local"))
    assert "all 2 configurations are finished already; nothing to submit" in capsys.readouterr().out
