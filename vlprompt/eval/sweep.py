"""Sweeps: one suite's configurations spread over worker processes, on one machine or on a SLURM cluster.

    vlprompt suite base2novel --learner configs/learners/coop.yaml --workers 4          # 4 workers, one per GPU
    vlprompt suite base2novel --learner ... --devices 0,1 --runs-per-device 3            # 6 workers, 3 per GPU
    vlprompt suite base2novel --learner ... --launcher slurm --slurm-partition gpu --slurm-time 240

Every worker is the same ``vlprompt suite`` command with ``--worker-index I`` added: it plans the same configurations
and runs each one no other process holds (the run locks of :mod:`vlprompt.eval.runlock`), so workers, a second
sweep, or a plain suite started by hand on the same runs directory share the work, and a stopped sweep resumes as a
suite does. On one machine each worker is pinned to its GPU(s) (``CUDA_VISIBLE_DEVICES``) and gets its share of the
CPU threads; the sweep shows one progress line for all of them and ends with the suite's summary. On a cluster the
workers are the tasks of one SLURM job array, submitted through submitit; ``vlprompt report RUNS`` collects.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from vlprompt.errors import ConfigError

#: The suite options that shape a sweep (not its runs), with whether each takes a value: stripped from the command
#: every worker runs.
SWEEP_OPTIONS = {"--workers": True, "--devices": True, "--runs-per-device": True, "--devices-per-worker": True,
                 "--launcher": True, "--slurm-partition": True, "--slurm-time": True, "--slurm-gpus-per-task": True,
                 "--slurm-cpus-per-task": True, "--slurm-account": True, "--slurm-config": True, "--slurm-wait": False}
LAUNCHERS = ("local", "slurm", "submitit-local")
#: Seconds between looks at the runs directory while workers run.
POLL_SECONDS = 2.0
#: Where the workers' logs and submitit's files go, below the runs directory.
SWEEP_DIR = "sweeps"


def add_sweep_options(parser) -> None:
    group = parser.add_argument_group("sweeps (several runs at once; see vlprompt/eval/sweep.py)")
    group.add_argument("--workers", type=int,
                       help="worker processes sharing the configurations (default: one per GPU slot, see --devices; "
                            "on a machine without GPUs, --runs-per-device); with --launcher slurm: array tasks "
                            "(default: one per configuration not finished yet)")
    group.add_argument("--devices", help="GPUs to use, e.g. 0,1,2,3 (default: every visible GPU when --workers or "
                                         "--runs-per-device is given)")
    group.add_argument("--runs-per-device", type=int, help="runs sharing each GPU at once (default 1): a CoOp run at "
                                                           "batch 32 leaves most of a large GPU idle")
    group.add_argument("--devices-per-worker", type=int, default=1,
                       help="GPUs each worker's runs use (Lightning DDP inside the run; default 1)")
    group.add_argument("--launcher", choices=LAUNCHERS, default="local",
                       help="local: worker processes on this machine; slurm: a SLURM job array through submitit; "
                            "submitit-local: the same array run as local processes by submitit (to try the SLURM "
                            "path on a machine without SLURM)")
    group.add_argument("--slurm-partition", help="SLURM partition")
    group.add_argument("--slurm-time", type=int, default=240, help="minutes per array task (default 240)")
    group.add_argument("--slurm-gpus-per-task", type=int, default=1, help="GPUs per array task (default 1)")
    group.add_argument("--slurm-cpus-per-task", type=int, default=8, help="CPU cores per array task (default 8)")
    group.add_argument("--slurm-account", help="SLURM account to charge")
    group.add_argument("--slurm-config", type=Path,
                       help="YAML of further submitit SLURM parameters (e.g. slurm_qos: high, slurm_constraint: a100, "
                            "slurm_array_parallelism: 16, slurm_setup: [module load cuda])")
    group.add_argument("--slurm-wait", action="store_true",
                       help="stay until the array finishes, showing progress, then print the summary (default: "
                            "submit, print the job id and return)")


def is_sweep(options) -> bool:
    """Whether the suite's options ask for a sweep (else the suite runs in this process, as before)."""
    return (options.worker_index is None
            and (options.workers is not None or options.devices is not None or options.runs_per_device is not None
                 or options.launcher != "local"))


def worker_arguments(argv: Sequence[str]) -> list[str]:
    """The suite's command line (before ``--``) without the sweep options: what every worker runs."""
    kept, index = [], 0
    argv = [str(arg) for arg in argv]
    while index < len(argv):
        arg = argv[index]
        name = arg.split("=", 1)[0]
        if name in SWEEP_OPTIONS:
            index += 2 if SWEEP_OPTIONS[name] and "=" not in arg else 1
            continue
        kept.append(arg)
        index += 1
    return kept


@dataclass
class Worker:
    """One worker process: its index, the GPUs it sees (None: no GPU), its CPU threads, and its log."""

    index: int
    devices: Optional[list[str]]
    threads: int
    log: Path
    process: Any = None
    log_file: Any = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"cuda:{','.join(self.devices)}" if self.devices else "cpu"


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def plan_workers(workers: Optional[int], devices: Optional[str], runs_per_device: Optional[int],
                 devices_per_worker: int, cpus: int, gpus: Callable[[], int] = _visible_gpus) -> list[tuple]:
    """``[(GPU ids or None, CPU threads)]``, one per worker: GPUs in groups of ``devices_per_worker``, each group
    shared by ``runs_per_device`` workers (``workers`` defaults to groups x runs per device and may be fewer); on a
    machine without GPUs, ``workers`` (or ``runs_per_device``) processes share the CPU. ``cpus`` are split evenly."""
    for name, value in (("--workers", workers), ("--runs-per-device", runs_per_device),
                        ("--devices-per-worker", devices_per_worker)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    count = gpus()
    if devices is not None:
        ids = [part.strip() for part in str(devices).split(",") if part.strip()]
        bad = [part for part in ids if not part.isdigit()]
        if not ids or bad:
            raise ConfigError(f"--devices takes GPU numbers separated by commas, such as 0,1,2,3, got {devices!r}")
        if not count:
            raise ConfigError("--devices names GPUs and this machine has none visible; use --workers N to run N "
                              "workers on the CPU")
        missing = [part for part in ids if int(part) >= count]
        if missing:
            raise ConfigError(f"--devices names GPU {', '.join(missing)}, and this machine shows {count} "
                              f"(0 to {count - 1}); pick from those")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"--devices names a GPU twice ({devices}); use --runs-per-device to share a GPU")
    else:
        ids = [str(i) for i in range(count)]
    per_device = runs_per_device or 1
    if not ids:
        total = workers or per_device
        return [(None, max(1, cpus // total))] * total
    if len(ids) % devices_per_worker:
        raise ConfigError(f"{len(ids)} GPUs do not split into groups of --devices-per-worker {devices_per_worker}; "
                          "name a multiple of it with --devices")
    groups = [ids[i:i + devices_per_worker] for i in range(0, len(ids), devices_per_worker)]
    slots = len(groups) * per_device
    total = workers or slots
    if total > slots:
        raise ConfigError(f"--workers {total} is more than {len(groups)} GPU group(s) x {per_device} run(s) per device "
                          f"= {slots}; raise --runs-per-device or lower --workers")
    return [(groups[i % len(groups)], max(1, cpus // total)) for i in range(total)]


def duration_text(seconds: float) -> str:
    """``1 h 05 min``, ``3 min 07 s`` or ``12 s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def is_finished(run) -> bool:
    """Whether a configuration's metrics files are all written (what marks it finished)."""
    return all(path.is_file() for path in run.expected)


def finished_metrics(run) -> Optional[list[dict]]:
    """The metrics of a finished configuration (:func:`is_finished`), else None."""
    from vlprompt.eval.report import load_metrics

    return [load_metrics(path) for path in run.expected] if is_finished(run) else None


class SweepProgress:
    """One line for the whole sweep, printed when it changes: finished, running and waiting configurations, and the
    time left at the rate configurations finished since the sweep started."""

    def __init__(self, runs: Sequence, printer: Callable[[str], None] = print):
        self.runs, self.printer = list(runs), printer
        self.started = time.time()
        self.done_before = sum(is_finished(run) for run in self.runs)
        self.last: Optional[tuple] = None

    @staticmethod
    def _running(run) -> bool:
        from vlprompt.eval.runlock import RunLock

        return RunLock(run.run_dir).path.is_file()  # a held lock's file exists; released ones are removed

    def counts(self) -> tuple[int, int, int]:
        done = sum(is_finished(run) for run in self.runs)
        running = sum(not is_finished(run) and self._running(run) for run in self.runs)
        return done, running, len(self.runs) - done - running

    def update(self, force: bool = False) -> tuple[int, int, int]:
        done, running, waiting = counts = self.counts()
        if counts != self.last or force:
            self.last = counts
            finished_here = done - self.done_before
            left = ""
            if finished_here and done < len(self.runs):
                rate = finished_here / (time.time() - self.started)
                left = f"; about {duration_text((len(self.runs) - done) / rate)} left"
            self.printer(f"[sweep] {done} of {len(self.runs)} done, {running} running, {waiting} waiting{left}")
        return counts


def _worker_command(suite_args: Sequence[str], overrides: Sequence[str], index: int) -> list[str]:
    tail = ["--", *overrides] if overrides else []
    return [sys.executable, "-m", "vlprompt", "suite", *suite_args, "--worker-index", str(index), *tail]


def _worker_environment(worker: Worker, port_base: int) -> dict:
    env = dict(os.environ)
    if worker.devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(worker.devices)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(worker.threads)
    # Each worker's runs may start DDP: distinct rendezvous ports, so workers on one machine never meet.
    env["MASTER_PORT"] = str(port_base + 1 + worker.index)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sweep_locally(runs: Sequence, runs_dir: Path, suite_args: Sequence[str], overrides: Sequence[str],
                  options) -> list[dict]:
    """Start the workers, show the sweep's progress until they end, and return every configuration's metrics."""
    from vlprompt.interrupts import set_resume_hint

    slots = plan_workers(options.workers, options.devices, options.runs_per_device, options.devices_per_worker,
                         os.cpu_count() or 1)
    logs = runs_dir / SWEEP_DIR / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    workers = [Worker(i, devices, threads, logs / f"worker-{i}.log") for i, (devices, threads) in enumerate(slots)]
    where = ", ".join(worker.where for worker in workers)
    print(f"[sweep] {len(workers)} workers ({where}; {workers[0].threads} CPU threads each) on {len(runs)} "
          f"configurations; worker logs in {logs}", flush=True)
    port_base = int(os.environ.get("MASTER_PORT", 29500))
    set_resume_hint("finished runs are kept; run the same suite command again to go on")
    progress = SweepProgress(runs)
    try:
        for worker in workers:
            worker.log_file = open(worker.log, "a")
            worker.process = subprocess.Popen(_worker_command(suite_args, overrides, worker.index),
                                              stdout=worker.log_file, stderr=subprocess.STDOUT,
                                              env=_worker_environment(worker, port_base))
        progress.update(force=True)
        while any(worker.process.poll() is None for worker in workers):
            time.sleep(POLL_SECONDS)
            progress.update()
    except BaseException:
        _stop(workers)
        raise
    finally:
        for worker in workers:
            if worker.log_file is not None:
                worker.log_file.close()
    progress.update()
    failed = [worker for worker in workers if worker.process.returncode != 0]
    if failed:
        for worker in failed:
            tail = worker.log.read_text(errors="replace").splitlines()[-8:]
            sys.stderr.write(f"[sweep] worker {worker.index} ({worker.where}) ended with status "
                             f"{worker.process.returncode}; the end of {worker.log}:\n"
                             + "".join(f"    {line}\n" for line in tail))
        raise SweepFailed(f"{len(failed)} of {len(workers)} workers failed (their logs above); finished runs are "
                          "kept: fix the cause and run the same command again to finish the rest")
    results = []
    for run in runs:
        metrics = finished_metrics(run)
        if metrics is None:  # every worker passed over it: another process outside this sweep holds it
            raise SweepFailed(f"{run.run_dir} is not finished and no worker of this sweep ran it (another process "
                              "holds it); run the same command again once that process has ended")
        results += metrics
    print(f"[sweep] {len(runs)} configurations finished in {duration_text(time.time() - progress.started)} with "
          f"{len(workers)} workers", flush=True)
    return results


class SweepFailed(ConfigError):
    """A worker of a sweep failed; its log says why."""


def _stop(workers: Sequence[Worker], grace_seconds: float = 60.0) -> None:
    """Ask running workers to stop as a scheduler would (SIGTERM: each keeps its last checkpoint), then wait."""
    import signal

    running = [w for w in workers if w.process is not None and w.process.poll() is None]
    for worker in running:
        worker.process.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_seconds
    for worker in running:
        try:
            worker.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            worker.process.kill()


# -- SLURM ------------------------------------------------------------------------------------------------------------

def slurm_parameters(options) -> dict:
    """submitit's parameters (its AutoExecutor's names) from the suite's options and ``--slurm-config``, whose keys
    win."""
    parameters = {"timeout_min": options.slurm_time, "gpus_per_node": options.slurm_gpus_per_task,
                  "cpus_per_task": options.slurm_cpus_per_task, "tasks_per_node": 1, "nodes": 1,
                  "name": "vlprompt-sweep"}
    if options.slurm_partition:
        parameters["slurm_partition"] = options.slurm_partition
    if options.slurm_account:
        parameters["slurm_account"] = options.slurm_account
    if options.slurm_config is not None:
        path = Path(options.slurm_config)
        if not path.is_file():
            raise ConfigError(f"--slurm-config {str(path)!r} does not exist")
        try:
            extra = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"--slurm-config {str(path)!r} is not valid YAML "
                              f"({' '.join(str(err).split())[:160]})") from None
        if not isinstance(extra, dict):
            raise ConfigError(f"--slurm-config {str(path)!r} must be a mapping of submitit parameters "
                              "(slurm_qos: ..., slurm_constraint: ...)")
        parameters.update(extra)
    return parameters


def sweep_on_slurm(runs: Sequence, runs_dir: Path, suite_args: Sequence[str], overrides: Sequence[str],
                   options, task: Callable[[Sequence[str], int], None]) -> Optional[list[dict]]:
    """Submit one job array (one task per worker; by default one per configuration not finished yet). With
    ``--slurm-wait`` (and always for ``submitit-local``) wait for it, showing progress, and return the metrics."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install submitit") from None

    unfinished = [run for run in runs if not is_finished(run)]
    if not unfinished:
        print(f"[sweep] all {len(runs)} configurations are finished already; nothing to submit", flush=True)
        return [metrics for run in runs for metrics in finished_metrics(run)]
    tasks = options.workers or len(unfinished)
    command = [*suite_args, *(["--", *overrides] if overrides else [])]
    cluster = "local" if options.launcher == "submitit-local" else "slurm"
    try:
        executor = submitit.AutoExecutor(folder=runs_dir / SWEEP_DIR / "submitit" / "%j", cluster=cluster)
    except RuntimeError as err:  # submitit looks for srun
        raise ConfigError(f"cannot submit to SLURM ({' '.join(str(err).split())}): run this on a SLURM login node, or "
                          "use --launcher local") from None
    parameters = slurm_parameters(options)
    if cluster == "local":
        parameters["gpus_per_node"] = 0
    try:
        executor.update_parameters(**parameters)
    except (ValueError, TypeError, AssertionError) as err:
        raise ConfigError(f"submitit refused a SLURM parameter ({' '.join(str(err).split())[:200]}); check "
                          "--slurm-config") from None
    try:
        jobs = executor.map_array(task, [command] * tasks, list(range(tasks)))
    except FileNotFoundError as err:
        raise ConfigError(f"cannot submit to SLURM ({err.filename or 'sbatch'} not found): run this on a SLURM login "
                          "node, or use --launcher local") from None
    except subprocess.CalledProcessError as err:
        output = (err.output or b"").decode(errors="replace").strip().splitlines()
        raise ConfigError(f"sbatch refused the job array: {output[-1] if output else err}; check the partition, "
                          "account and --slurm-config") from None
    try:  # submitit's folder pattern itself (the jobs' folders are named by their ids)
        (runs_dir / SWEEP_DIR / "submitit" / "%j").rmdir()
    except OSError:
        pass
    job_id = str(jobs[0].job_id).split("_")[0]
    print(f"[sweep] submitted {tasks} array tasks (job {job_id}) for {len(unfinished)} unfinished configurations; "
          f"task logs in {runs_dir / SWEEP_DIR / 'submitit'}", flush=True)
    if options.launcher == "slurm" and not options.slurm_wait:
        print(f"[sweep] when they end: vlprompt report {runs_dir}; resubmit the same command to finish what a task "
              "left (finished runs are kept)", flush=True)
        return None
    progress = SweepProgress(runs)
    progress.update(force=True)
    while not all(job.done() for job in jobs):
        time.sleep(POLL_SECONDS)
        progress.update()
    progress.update()
    failed = []
    for index, job in enumerate(jobs):
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - submitit wraps the task's error; its log holds the traceback
            failed.append(index)
            lines = str(err).strip().splitlines()
            sys.stderr.write(f"[sweep] array task {index} failed: {lines[-1] if lines else err}; its log: "
                             f"{job.paths.stderr}\n")
    if failed:
        raise SweepFailed(f"{len(failed)} of {tasks} array tasks failed (above); finished runs are kept: fix the "
                          "cause and submit the same command again")
    return [metrics for run in runs for metrics in (finished_metrics(run) or [])]


def sweep(runs: Sequence, runs_dir: Path, suite_args: Sequence[str], overrides: Sequence[str],
          options, task: Callable[[Sequence[str], int], None]) -> Optional[list[dict]]:
    """Run a suite's configurations as a sweep; the metrics of all, or None when they were submitted and not
    waited for. ``task(command, index)`` is what each SLURM array task runs (the suite as worker ``index``)."""
    if options.launcher == "local":
        return sweep_locally(runs, runs_dir, suite_args, overrides, options)
    return sweep_on_slurm(runs, runs_dir, suite_args, overrides, options, task)

