"""``vlprompt suite``: the CoOp/Dassl evaluation protocols as one resumable command.

Each (dataset, seed, shots) run gets its own directory under ``RUNS/<protocol>/<learner>/<dataset>/``
and ends by writing ``metrics.json``; a run whose ``metrics.json`` exists is skipped when the suite is
started again, and a run without one (interrupted) resumes from its ``checkpoints/last.ckpt`` (optimizer,
schedule, epoch and random state included, so it ends as an uninterrupted run would), or starts over when it
has no readable checkpoint yet.

    vlprompt suite base2novel --learner configs/learners/coop.yaml --clip configs/clip/toy.yaml \\
        --data configs/data/toy/ToyShapes.yaml configs/data/toy/ToyPatterns.yaml --seeds 1 2 3 \\
        --runs runs/suite -- --trainer.max_epochs 25
    vlprompt suite domain-generalization --learner ... --source configs/data/toy/ToyShapes.yaml \\
        --data configs/data/toy/ToyShapes-Noisy.yaml configs/data/toy/ToyShapes-Blurry.yaml
"""

from __future__ import annotations

import argparse
import functools
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import yaml

from vlprompt.command_line import OneLineArgumentParser, plugin_option
from vlprompt.errors import ConfigError
from vlprompt.eval.dashboards import WandbOptions, finish_wandb_run, log_suite_summary, wandb_logger_args
from vlprompt.eval.report import aggregate, metric_keys, tables, write_report
from vlprompt.eval.runlock import RunLock
from vlprompt.eval.sweep import (
    add_sweep_options, duration_text, finished_metrics, is_finished, is_sweep, sweep, worker_arguments)
from vlprompt.files import ensure_writable, write_json_atomically
from vlprompt.interrupts import set_resume_hint, signal_of
from vlprompt.recipes import configs_root, resolve_config, resolve_config_args

# Lightning, the learners and the data protocol are imported where runs start, so `vlprompt suite --help` and
# argument mistakes answer at once.

#: Protocols that train once on a source data set and test on other data sets (ImageNet -> the other ten;
#: ImageNet -> V2/Sketch/A/R).
TRANSFER_PROTOCOLS = ("cross-dataset", "domain-generalization")
PROTOCOLS = ("base2novel", "few-shot", *TRANSFER_PROTOCOLS)
FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
METRICS_FILE = "metrics.json"
#: Where a run keeps its checkpoints (``last.ckpt``), below its directory; an interrupted run resumes from there.
CHECKPOINT_DIR = "checkpoints"


def standard_data(protocol: str) -> tuple[Optional[str], list[str]]:
    """The papers' data sets for ``protocol``: (source, evaluated data sets), as benchmark names."""
    from vlprompt.data.benchmarks import CROSS_DATASET_TARGETS, DOMAIN_GENERALIZATION_TARGETS

    if protocol == "cross-dataset":
        return "ImageNet", list(CROSS_DATASET_TARGETS)
    if protocol == "domain-generalization":
        return "ImageNet", list(DOMAIN_GENERALIZATION_TARGETS)
    return None, ["ImageNet", *CROSS_DATASET_TARGETS]


def _standard_config(name: str) -> Path:
    path = configs_root() / "data" / f"{name}.yaml"  # the shipped data configs: the default data sets
    if not path.is_file():
        raise ConfigError(f"no data config {str(path)!r} for the default data set {name}; pass --data (and --source)")
    return path


def _paths(learner_config: Union[Path, Sequence[Path]]) -> list[Path]:
    """The learner YAMLs of a run: one file, or a learner file and recipe files over it
    (``configs/learners/maple.yaml configs/recipes/maple/cross-dataset.yaml``)."""
    return [Path(learner_config)] if isinstance(learner_config, (str, Path)) else [Path(p) for p in learner_config]


def _learner_class(learner_config: Union[Path, Sequence[Path]]):
    """The learner class the learner YAMLs name (the last ``model.class_path`` among them)."""
    from vlprompt.learners import get_learner_class
    from vlprompt.learners.registry import learner_name_of

    named = [(path, (_read_yaml(path).get("model") or {}).get("class_path")) for path in _paths(learner_config)]
    named = [(path, class_path) for path, class_path in named if class_path]
    if not named:
        files = " ".join(str(path) for path in _paths(learner_config))
        raise ConfigError(f"{files!r} names no learner (model.class_path); start --learner with a file from "
                          "configs/learners/")
    path, class_path = named[-1]
    name = learner_name_of(str(class_path))
    if name is None:
        raise ConfigError(f"{str(path)!r} names {class_path!r}, which is not a registered learner")
    return get_learner_class(name)


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({' '.join(str(err).split())[:160]})") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"config file {str(path)!r} must be a mapping of keys (model:, data:, trainer:)")
    return content or {}


def _has_base_to_novel(dataset: str) -> bool:
    from vlprompt.data.benchmarks import BENCHMARKS

    return dataset not in BENCHMARKS or BENCHMARKS[dataset].base_to_novel


def _dataset_name(path: Path) -> str:
    """The benchmark's name (``data.dataset``), else the data set's folder name (``data.root``), else the YAML's."""
    data = _read_yaml(path).get("data") or {}
    if data.get("dataset"):
        return str(data["dataset"])
    return Path(str(data["root"])).name if data.get("root") else path.stem


def _run_args(learner_config: Path, clip_config: Optional[Path], data_config: Path, seed: int, shots: int,
              run_dir: Path, overrides: Sequence[str], max_epochs: Optional[int] = None) -> list[str]:
    epochs = ["--trainer.max_epochs", str(max_epochs)] if max_epochs else []
    configs = [arg for path in _paths(learner_config) for arg in ("--config", str(path))]
    configs += ["--config", str(clip_config)] if clip_config else []
    # Shots 0: a learner that learns nothing (zero-shot CLIP) is tested once per data set and seed.
    shot_args = ["--data.shots", str(shots)] if shots else []
    return [*configs, "--config", str(data_config), "--seed_everything", str(seed), "--data.seed", str(seed),
            *shot_args, "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", "logs",
            "--checkpoint.dirpath", str(run_dir / CHECKPOINT_DIR), "--trainer.enable_model_summary", "false",
            *epochs, *overrides]


def _reads_unlabeled_dir(data_config: Path, overrides: Sequence[str]) -> bool:
    """Whether a run's training images come from ``data.unlabeled_dir`` (its data YAML or an override sets it)."""
    if any(str(arg).split("=", 1)[0] == "--data.unlabeled_dir" for arg in overrides):
        return True
    return bool((_read_yaml(data_config).get("data") or {}).get("unlabeled_dir"))


def _config_record(learner_config: Path, clip_config: Optional[Path], data_config: Path,
                   overrides: Sequence[str]) -> dict:
    """What a run was configured with, kept in its ``metrics.json``."""
    learner = [str(path) for path in _paths(learner_config)]
    return {"learner": learner[0] if len(learner) == 1 else learner, "clip": str(clip_config) if clip_config else None,
            "data": str(data_config), "overrides": list(overrides)}


def _write_metrics(directory: Path, metrics: dict) -> None:
    # Written last, and atomically: its presence is what marks the run as finished.
    write_json_atomically(directory / METRICS_FILE, metrics, indent=2)


def run_one(protocol: str, learner_config: Path, clip_config: Optional[Path], data_config: Path, seed: int,
            shots: int, run_dir: Path, overrides: Sequence[str] = (), wandb: Optional[WandbOptions] = None,
            max_epochs: Optional[int] = None, resume: Optional[Path] = None, label: Optional[str] = None) -> dict:
    """One base2novel or few-shot run; writes and returns its metrics (accuracies in percent). ``label`` names
    the learner in the metrics (``coop+caspl``) when it is not the registered name.

    With ``wandb``, fit and tests log into one wandb run grouped by protocol/learner/data set, whose summary
    gets the final accuracies. ``resume``: the ``last.ckpt`` of an interrupted fit of this run to go on from.
    """
    from vlprompt.eval.base2novel import base_to_novel, fit_then_test

    cls = _learner_class(learner_config)
    name = label or cls.registry_name
    dataset = _dataset_name(data_config)
    args = _run_args(learner_config, clip_config, data_config, seed, shots, run_dir, overrides, max_epochs)
    if wandb:
        args += wandb_logger_args(wandb, run_dir, f"{dataset}-shots{shots}-seed{seed}",
                                  f"{protocol}/{name}/{dataset}", protocol, [protocol, name, dataset])
    started = time.time()
    metrics = {"learner": name, "dataset": dataset, "seed": seed, "shots": shots, "protocol": protocol}
    if protocol == "base2novel":
        transductive = cls.transductive and not _reads_unlabeled_dir(data_config, overrides)
        metrics.update(base_to_novel(args, cls.needs_training, resume, transductive))
        if transductive:
            metrics["transductive"] = True
    elif protocol == "few-shot":
        _, metrics["acc"], metrics["data"] = fit_then_test(args, "all", cls.needs_training, resume)
    else:
        raise ConfigError(f"protocol {protocol!r} is not a single-data-set protocol; use run_transfer")
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["config"] = _config_record(learner_config, clip_config, data_config, overrides)
    if wandb:
        finish_wandb_run({key: metrics[key] for key in metric_keys(protocol)})
    _write_metrics(run_dir, metrics)
    return metrics


def run_transfer(protocol: str, learner_config: Path, clip_config: Optional[Path], source: Path,
                 targets: Sequence[Path], seed: int, shots: int, run_dir: Path,
                 overrides: Sequence[str] = (), wandb: Optional[WandbOptions] = None,
                 max_epochs: Optional[int] = None, resume: Optional[Path] = None,
                 label: Optional[str] = None) -> list[dict]:
    """Train on all classes of ``source`` once, then test the same prompts on the source and every target.

    Each evaluated data set gets ``run_dir/<dataset>/metrics.json`` (``acc`` in percent, ``source`` named).
    With ``wandb``, training and every test log into one wandb run. ``resume`` as in :func:`run_one`.
    """
    from vlprompt.eval.base2novel import cli_test, fit_checkpoint

    cls = _learner_class(learner_config)
    name = label or cls.registry_name
    source_name = _dataset_name(source)
    tracking = wandb_logger_args(wandb, run_dir, f"from-{source_name}-shots{shots}-seed{seed}",
                                 f"{protocol}/{name}/from-{source_name}", protocol,
                                 [protocol, name, source_name]) if wandb else []
    args = _run_args(learner_config, clip_config, source, seed, shots, run_dir, overrides, max_epochs) + tracking
    checkpoint = []
    if cls.needs_training:
        # A learner that reads no labels (PromptKD) trains on every image of the source's classes, as its code does.
        every_image = ["--data.shots", "-1"] if cls.transductive else []
        checkpoint = ["--ckpt_path", fit_checkpoint([*args, *every_image], "all", resume)]
    results, trained_on = [], None
    for data_config in [source, *targets]:
        test_args = _run_args(learner_config, clip_config, data_config, seed, shots, run_dir, overrides,
                              max_epochs) + tracking
        accuracy, data = cli_test([*test_args, *checkpoint])
        trained_on = trained_on or data  # the source's (tested first): its shots are what the prompts trained on
        metrics = {"learner": name, "dataset": _dataset_name(data_config), "seed": seed,
                   "shots": shots, "protocol": protocol, "source": source_name, "acc": accuracy,
                   "data": {**data, "shots_asked": trained_on["shots_asked"],
                            "short_classes": trained_on["short_classes"]},
                   "config": {**_config_record(learner_config, clip_config, data_config, overrides),
                              "source": str(source)}}
        results.append(metrics)
    if wandb:
        targets_only = [m["acc"] for m in results if m["dataset"] != source_name]
        finish_wandb_run({**{f"{m['dataset']}/acc": m["acc"] for m in results},
                          "target_average_acc": sum(targets_only) / max(len(targets_only), 1)})
    for metrics in results:  # last: their presence marks the run as finished
        _write_metrics(run_dir / metrics["dataset"], metrics)
    return results


#: Options every suite run gets from the suite itself, and the suite option that sets each: given after ``--`` they
#: would silently beat the suite's value while the run directory, metrics.json and tables said otherwise.
SUITE_OWNED_OPTIONS = {
    "data.shots": "--shots", "data.seed": "--seeds", "seed_everything": "--seeds",
    "data.subsample": "the protocol (base2novel trains on base and tests base and novel; the others use all)",
    "data.root": "--data (one YAML per data set)", "data.dataset": "--data (one YAML per data set)",
    "trainer.default_root_dir": "--runs", "trainer.logger": "--runs (and --wandb)", "checkpoint.dirpath": "--runs",
    "ckpt_path": "nothing: the suite resumes interrupted runs itself",
}
#: The plug-in the suite hands to every run itself (CasPL's boosting prompts, from ``--boost``).
SUITE_OWNED_PLUGIN = "caspl"
PLUGINS_KEY = "model.init_args.plugins"


def _plugin_names_in(value) -> list[str]:
    """The plug-in names a ``plugins`` value holds (a YAML string after ``--``, or a list read from a file)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return []
    items = value if isinstance(value, list) else [value]
    return [item["name"] for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)]


def _names_owned_plugin(value) -> bool:
    """Whether a ``plugins`` value holds the caspl plug-in."""
    return SUITE_OWNED_PLUGIN in _plugin_names_in(value)


def _override_plugin_names(overrides: Sequence[str], names: Sequence[str] = ()) -> list[str]:
    """The plug-ins a learner has after the overrides after ``--``, from ``names`` (its YAMLs'): ``--config`` files and
    ``plugins`` options in order (a ``plugins=`` list or a file's list replaces them, ``plugins+=`` adds one)."""
    overrides, names = [str(arg) for arg in overrides], list(names)
    for index, arg in enumerate(overrides):
        key, _, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-"):
            continue
        value = value if "=" in arg else overrides[index + 1] if index + 1 < len(overrides) else ""
        if key in ("config", "c") and Path(value).is_file():
            names = _plugin_names(Path(value)) or names
        elif key == PLUGINS_KEY:
            names = _plugin_names_in(value)
        elif key == PLUGINS_KEY + "+":
            names += _plugin_names_in(value)
    return names


def _owned_option(key: str) -> Optional[str]:
    """The suite-owned option that ``key`` (a dotted key such as ``data.shots`` or ``trainer.logger.init_args.x``)
    sets, or None."""
    for owned in SUITE_OWNED_OPTIONS:
        if key == owned or key.startswith(owned + "."):
            return owned
    return None


def _flattened(content: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in content.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _flattened(value, f"{prefix}{key}.")
    return keys


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse, in one line, an option after ``--`` (or in a ``--config`` file given there) that the suite sets
    itself for every run (:data:`SUITE_OWNED_OPTIONS`)."""
    overrides = [str(arg) for arg in overrides]
    for index, arg in enumerate(overrides):
        if not arg.startswith("-"):
            continue
        key = arg.lstrip("-").split("=", 1)[0]
        if key in ("config", "c"):
            path = Path(arg.split("=", 1)[1] if "=" in arg else overrides[index + 1] if index + 1 < len(overrides)
                        else "")
            if path.is_file():
                content = _read_yaml(path)
                for inner in _flattened(content):
                    owned = _owned_option(inner)
                    if owned:
                        raise ConfigError(f"{str(path)!r} (after --) sets {inner}, which the suite sets for every run "
                                          f"from {SUITE_OWNED_OPTIONS[owned]}; remove it from that file")
                if _names_owned_plugin(((content.get("model") or {}).get("init_args") or {}).get("plugins")):
                    raise ConfigError(f"{str(path)!r} (after --) gives the {SUITE_OWNED_PLUGIN} plug-in, which the suite "
                                      "gives every run from --boost (and fits its boosting stage); remove it from that "
                                      "file")
            continue
        if key.rstrip("+") == PLUGINS_KEY:
            value = arg.split("=", 1)[1] if "=" in arg else overrides[index + 1] if index + 1 < len(overrides) else ""
            if _names_owned_plugin(value):
                raise ConfigError(f"the {SUITE_OWNED_PLUGIN} plug-in after -- is refused: the suite gives it to every "
                                  "run from --boost (and fits its boosting stage); use --boost instead")
            continue
        owned = _owned_option(key)
        if owned:
            raise ConfigError(f"--{key} after -- is refused: the suite sets {owned} for every run and records it (from "
                              f"{SUITE_OWNED_OPTIONS[owned]}); use that instead")


def stage_one_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides after ``--`` that also reach CasPL's boosting stage: ``--trainer.*`` and ``--data.*`` (the
    training budget and data loading); ``--model.*`` and ``--config`` files are the second-stage learner's."""
    overrides, kept, index = [str(arg) for arg in overrides], [], 0
    while index < len(overrides):
        arg = overrides[index]
        takes_value = "=" not in arg and index + 1 < len(overrides) and not overrides[index + 1].startswith("--")
        span = overrides[index:index + (2 if takes_value else 1)]
        if arg.startswith(("--trainer.", "--data.")):
            kept += span
        index += len(span)
    return kept


def _check_files(paths: Sequence[Optional[Path]]) -> None:
    for path in paths:
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")


@dataclass
class _Run:
    """One configuration of a suite: where it lives, the metrics files that mark it finished, how to run it
    (``execute(resume)``, with ``resume`` the checkpoint of an interrupted fit or None)."""

    run_dir: Path
    expected: list[Path]
    title: str
    execute: Callable[..., list[dict]]
    fit_args: list[str]
    #: The data config it trains on, its seed and shots (what a first stage is fitted for).
    trained_on: Path
    seed: int
    shots: int


#: Seconds between looks at runs that another suite process is running.
WAIT_POLL_SECONDS = 2.0


def _resumable_checkpoint(run_dir: Path) -> Optional[Path]:
    """The ``last.ckpt`` an interrupted run can go on from; None when it has none or it cannot be read (a fit
    killed while writing it)."""
    from vlprompt.learners.checkpoint import read_checkpoint

    path = run_dir / CHECKPOINT_DIR / "last.ckpt"
    if not path.is_file():
        return None
    try:
        read_checkpoint(path)
    except ConfigError as err:
        print(f"[suite] cannot resume from {path} ({err}); starting the run over")
        return None
    return path


class _Progress:
    """``run i of N`` lines with an estimate of the time left, from the runs this process has timed."""

    def __init__(self, total: int):
        self.total, self.seen, self.durations = total, 0, []

    def start(self, run: _Run, resume: Optional[Path]) -> float:
        self.seen += 1
        how = f"resuming from {resume}" if resume else "starting"
        print(f"[suite] run {self.seen} of {self.total}: {run.title} ({how}) -> {run.run_dir}", flush=True)
        return time.time()

    def skip(self, run: _Run, why: str) -> None:
        self.seen += 1
        print(f"[suite] run {self.seen} of {self.total}: {run.title}: {why}", flush=True)

    def finish(self, started: float, remaining: int) -> None:
        self.durations.append(time.time() - started)
        mean = sum(self.durations) / len(self.durations)
        left = f"; about {duration_text(mean * remaining)} left for {remaining} more" if remaining else ""
        print(f"[suite] finished in {duration_text(self.durations[-1])}{left}", flush=True)


def _run_if_free(run: _Run, progress: _Progress, remaining: Callable[[], int]) -> tuple[Optional[list[dict]], str]:
    """``(metrics, how)``: finished already, run here now, or ``(None, "busy")`` while another process owns it."""
    done = finished_metrics(run)
    if done is not None:
        return done, "done already"
    with RunLock(run.run_dir) as lock:
        if not lock.acquired:
            return None, "busy"
        done = finished_metrics(run)  # finished by its owner between our first look and the lock
        if done is not None:
            return done, "done already"
        if lock.previous_owner:
            owner = lock.previous_owner
            print(f"[suite] taking over {run.run_dir} from pid {owner.get('pid')} on {owner.get('host')}, "
                  "which stopped before finishing it")
        resume = _resumable_checkpoint(run.run_dir) if run.run_dir.exists() else None
        if run.run_dir.exists() and resume is None:  # interrupted before its first checkpoint: start over
            shutil.rmtree(run.run_dir)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        started = progress.start(run, resume)
        try:
            metrics = run.execute(resume=resume)
        except BaseException as error:
            if signal_of(error) is not None:  # the suite, not the fit inside it, says how to go on
                set_resume_hint(f"run {progress.seen} of {progress.total} ({run.title}) was stopped, finished runs "
                                "are kept; run the same suite command again to go on (that run resumes from the last "
                                f"epoch it finished, in {run.run_dir})")
            raise
        progress.finish(started, remaining())
        return metrics, "ran"


def _run_all(runs: Sequence[_Run]) -> list[dict]:
    """Run every configuration not finished yet; configurations another suite process is running are waited for
    (and taken over if that process stops), so concurrent suites on one runs directory share the work."""
    started = time.time()
    set_resume_hint("finished runs are kept; run the same suite command again to go on")
    outcomes: dict[int, list[dict]] = {}
    counts = {"ran": 0, "done already": 0, "by another process": 0}
    waiting = []
    progress = _Progress(len(runs))
    # Runs this process may still have to run: not finished, not handed to the waiting list.
    pending = set(range(len(runs)))

    def remaining() -> int:
        return len(pending - set(outcomes)) - 1

    for index, run in enumerate(runs):
        done, how = _run_if_free(run, progress, remaining)
        pending.discard(index)
        if done is None:
            waiting.append(index)
            continue
        outcomes[index] = done
        counts[how] += 1
        if how == "done already":
            progress.skip(run, f"done already ({run.run_dir})")
    announced = set()
    while waiting:
        for index in list(waiting):
            run = runs[index]
            done, how = _run_if_free(run, progress, lambda: len(waiting) - 1)
            if done is None:
                if index not in announced:
                    print(f"[suite] waiting for {run.run_dir}: run by {RunLock(run.run_dir).describe_owner()}")
                    announced.add(index)
                continue
            outcomes[index] = done
            counts["by another process" if how == "done already" else how] += 1
            waiting.remove(index)
        if waiting:
            time.sleep(WAIT_POLL_SECONDS)
    print(f"[suite] {len(runs)} configurations finished in {duration_text(time.time() - started)}: {counts['ran']} here, "
          f"{counts['by another process']} by another suite process, {counts['done already']} earlier")
    return [metrics for index in range(len(runs)) for metrics in outcomes[index]]


def _run_as_worker(runs: Sequence[_Run], worker: int) -> list[dict]:
    """A sweep worker's share: every configuration no other process holds, starting at the ``worker``-th (so workers
    start on different runs), passing over those another process runs instead of waiting for them; another pass
    follows while one ran something (a run whose owner stopped meanwhile is taken over then)."""
    set_resume_hint("finished runs are kept; run the same suite command again to go on")
    progress = _Progress(len(runs))
    order = [runs[(worker + offset) % len(runs)] for offset in range(len(runs))] if runs else []
    results, ran_any = [], True
    while ran_any:
        ran_any = False
        for run in order:
            if is_finished(run):
                continue
            done, how = _run_if_free(run, progress, lambda: sum(not is_finished(r) for r in runs) - 1)
            if how == "ran":
                results += done
                ran_any = True
    return results


def _epochs_for(shots: int, schedule: Optional[dict[int, int]]) -> Optional[int]:
    if not schedule:
        return None
    if shots not in schedule:
        raise ConfigError(f"--max-epochs-by-shots gives no epochs for {shots} shots; add {shots}=EPOCHS")
    return schedule[shots]


def run_suite(protocol: str, learner_config: Path, data_configs: Sequence[Path], seeds: Sequence[int],
              runs: Path, clip_config: Optional[Path] = None, shots: Optional[Sequence[int]] = None,
              overrides: Sequence[str] = (), source: Optional[Path] = None,
              wandb: Optional[WandbOptions] = None, epochs_by_shots: Optional[dict[int, int]] = None,
              dry_run: bool = False, boost: Optional[Sequence[Path]] = None,
              teacher: Optional[Sequence[Path]] = None, worker: Optional[int] = None) -> list[dict]:
    """Every (data set, shots, seed) run of ``protocol``, skipping finished ones; returns all metrics.

    ``worker``: run as worker ``worker`` of a sweep (:mod:`vlprompt.eval.sweep`): runs other processes hold are left
    to them instead of waited for, and the first run tried is the ``worker``-th, so workers start on different runs;
    returns the metrics of the runs this process finished.
    """
    planned, stage = plan_suite(protocol, learner_config, data_configs, seeds, runs, clip_config, shots, overrides,
                                source, wandb, epochs_by_shots, dry_run, boost, teacher)
    if dry_run:
        return _show(planned, stage)
    return _run_planned(planned, worker)


def _run_planned(planned: Sequence[_Run], worker: Optional[int]) -> list[dict]:
    """Run planned configurations in this process: all of them (waiting for those others hold), or as a worker."""
    return _run_all(planned) if worker is None else _run_as_worker(planned, worker)


def plan_suite(protocol: str, learner_config: Path, data_configs: Sequence[Path], seeds: Sequence[int],
               runs: Path, clip_config: Optional[Path] = None, shots: Optional[Sequence[int]] = None,
               overrides: Sequence[str] = (), source: Optional[Path] = None,
               wandb: Optional[WandbOptions] = None, epochs_by_shots: Optional[dict[int, int]] = None,
               dry_run: bool = False, boost: Optional[Sequence[Path]] = None,
               teacher: Optional[Sequence[Path]] = None) -> tuple[list[_Run], Optional[FirstStage]]:
    """The configurations of a suite (:func:`run_suite`), checked and in order, and the first stage they build on;
    runs nothing.

    The transfer protocols train once per (shots, seed) on ``source`` and test on ``data_configs``. Empty
    ``data_configs`` and a missing ``source`` mean the papers' data sets (:func:`standard_data`). Several suite
    processes may share ``runs``: each configuration is run by one of them (:class:`RunLock`).
    ``epochs_by_shots`` (``{1: 50, 2: 100, ...}``) sets ``trainer.max_epochs`` per shot count, as CoOp's few-shot
    schedule does; overrides after it still win. ``dry_run`` prints each run's training command and runs nothing.
    ``boost``: the YAMLs of CasPL's boosting stage (``configs/learners/caspl_boost.yaml`` and the teacher's); its
    prompts are fitted once per (training data set, seed) and cascaded under the learner's (``<learner>+caspl``).
    ``teacher``: the YAMLs of a distilled learner's teacher (PromptKD; default: the learner's ``teacher_recipe``),
    fitted once per (training data set, shots, seed) on the classes the protocol trains on, with labels; plug-ins its
    YAMLs give name the runs (``promptkd+atprompt``).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    check_overrides(overrides)
    default_source, default_data = standard_data(protocol)
    if protocol in TRANSFER_PROTOCOLS and source is None:
        source = _standard_config(default_source)
    data_configs = list(data_configs) or [_standard_config(name) for name in default_data]
    _check_files([*_paths(learner_config), clip_config, source, *data_configs, *(boost or []), *(teacher or [])])
    if not dry_run:
        ensure_writable(runs, "the suite's runs directory (--runs)")
    shots = list(shots or (FEW_SHOT_SHOTS if protocol == "few-shot" else (16,)))
    cls = _learner_class(learner_config)
    # Plug-ins name the runs (coop+atprompt), so they never share a run folder with the learner alone.
    learner = "+".join([cls.registry_name, *_override_plugin_names(overrides, _plugin_names(learner_config))])
    stage = None
    if boost:
        # What the class alone tells; the learner's text context is checked when its first run builds it.
        if not cls.needs_training or not cls.has_shared_image_path():
            raise ConfigError(f"{learner} cannot take boosting prompts (--boost): CasPL's second stage needs a learner "
                              "that trains a text context and computes image features on the shared path (coop, "
                              "kgcoop, cocoop, maple, ivlp, promptsrc, ...)")
        _learner_class(boost)  # names the boosting learner
        stage, learner = boosting_stage(list(boost), clip_config, runs, stage_one_overrides(overrides)), f"{learner}+caspl"
    if cls.teacher_recipe is not None:
        if stage is not None:
            raise ConfigError(f"{learner} is distilled from a teacher and cannot take CasPL's boosting prompts (--boost)")
        configs = list(teacher) if teacher else [resolve_config(Path("configs") / p) for p in cls.teacher_recipe]
        _learner_class(configs)  # names the teacher's learner
        added = _plugin_names(configs)
        stage = teacher_stage(configs, runs, stage_one_overrides(overrides), protocol)
        learner = "+".join([learner, *added])
    elif teacher:
        raise ConfigError(f"--teacher is for learners distilled from a fitted teacher (promptkd); {learner} has none")
    if not cls.needs_training:  # its accuracy does not depend on the shots: one run, recorded as 0 shots
        shots = [0]
    epochs = {k: _epochs_for(k, epochs_by_shots) if k else None for k in shots}
    planned = []
    if protocol in TRANSFER_PROTOCOLS:
        names = [_dataset_name(c) for c in [source, *data_configs]]
        for k in shots:
            for seed in seeds:
                run_dir = runs / protocol / learner / f"from-{names[0]}" / f"shots{k}_seed{seed}"
                planned.append(_Run(
                    run_dir, [run_dir / name / METRICS_FILE for name in names],
                    f"{protocol} {learner} {names[0]} -> {', '.join(names[1:])} shots={k} seed={seed}",
                    functools.partial(_transfer_run, protocol, learner_config, clip_config, source, data_configs, seed,
                                      k, run_dir, overrides, wandb, epochs[k], stage=stage, label=learner),
                    _run_args(learner_config, clip_config, source, seed, k, run_dir, overrides, epochs[k]), source,
                    seed, k))
        return planned, stage
    for data_config in data_configs:
        dataset = _dataset_name(data_config)
        if protocol == "base2novel" and not _has_base_to_novel(dataset):
            print(f"[suite] {dataset} has no base-to-novel setting in its paper (BiomedCoOp evaluates it few-shot "
                  "only); skipped", flush=True)
            continue
        for k in shots:
            for seed in seeds:
                run_dir = runs / protocol / learner / dataset / f"shots{k}_seed{seed}"
                planned.append(_Run(run_dir, [run_dir / METRICS_FILE],
                                    f"{protocol} {learner} {dataset} shots={k} seed={seed}",
                                    functools.partial(_single_run, protocol, learner_config, clip_config, data_config,
                                                      seed, k, run_dir, overrides, wandb, epochs[k], stage=stage,
                                                      label=learner),
                                    _run_args(learner_config, clip_config, data_config, seed, k, run_dir, overrides,
                                              epochs[k]), data_config, seed, k))
    return planned, stage


def _show(runs: Sequence[_Run], stage: Optional["FirstStage"] = None) -> list[dict]:
    """``--dry-run``: what each run would train with, as ``vlprompt fit`` command lines (a first stage's first, once per
    training data set and seed, and the option that hands its checkpoint to the run)."""
    shown = set()
    for index, run in enumerate(runs, 1):
        print(f"[suite] run {index} of {len(runs)}: {run.title} -> {run.run_dir}")
        fit_args = run.fit_args
        if stage is not None:
            run_dir = stage.run_dir(run.trained_on, run.seed, run.shots)
            if run_dir not in shown:
                shown.add(run_dir)
                done = " (fitted already)" if (run_dir / stage.record).is_file() else ""
                print(f"  {stage.title}{done}: vlprompt fit "
                      + shlex.join(stage.fit_args(run.trained_on, run.seed, run.shots)))
            fit_args = [*fit_args, *stage.hand_over(stage.expected_checkpoint(run.trained_on, run.seed, run.shots))]
        print("  vlprompt fit " + shlex.join(fit_args))
    return []


def boosting_plugin(checkpoint: Path) -> list[str]:
    """The fit option that adds the caspl plug-in with ``checkpoint``'s boosting prompts to the learner's plug-ins."""
    return [plugin_option(SUITE_OWNED_PLUGIN, boost_from=checkpoint)]


def teacher_option(checkpoint: Path) -> list[str]:
    """The fit option that gives a distilled learner its teacher."""
    return ["--model.init_args.teacher_checkpoint", str(checkpoint)]


def _plugin_names(configs: Union[Path, Sequence[Path]]) -> list[str]:
    """The plug-ins the YAMLs give a learner (``model.init_args.plugins``; a later file's list replaces an earlier)."""
    names = []
    for path in _paths(configs):
        plugins = ((_read_yaml(path).get("model") or {}).get("init_args") or {}).get("plugins")
        names = _plugin_names_in(plugins) if plugins else names
    return names


def _with_first_stage(args: tuple, overrides_at: int, stage: Optional["FirstStage"], trained_on: Path, seed: int,
                      shots: int) -> tuple:
    """The run's positional arguments with the first stage's checkpoint for (``trained_on``, ``seed``, ``shots``)
    handed over after its overrides (at ``overrides_at``: after a plug-in list they give, not replaced by it); the
    stage runs first if it has not yet."""
    if stage is None:
        return args
    overrides = [*args[overrides_at], *stage.hand_over(stage.checkpoint(trained_on, seed, shots))]
    return (*args[:overrides_at], overrides, *args[overrides_at + 1:])


def _single_run(*args, resume: Optional[Path] = None, stage: Optional["FirstStage"] = None,
                label: Optional[str] = None) -> list[dict]:
    # run_one(protocol, learner, clip, data, seed, shots, run_dir, overrides, ...)
    return [run_one(*_with_first_stage(args, 7, stage, args[3], args[4], args[5]), resume=resume, label=label)]


def _transfer_run(*args, resume: Optional[Path] = None, stage: Optional["FirstStage"] = None,
                  label: Optional[str] = None) -> list[dict]:
    # run_transfer(protocol, learner, clip, source, targets, seed, shots, run_dir, overrides, ...)
    return run_transfer(*_with_first_stage(args, 8, stage, args[3], args[5], args[6]), resume=resume, label=label)


#: Where CasPL's boosting stage and distilled learners' teachers go below the runs directory.
BOOST_DIR, TEACHER_DIR = "caspl_boost", "teachers"


@dataclass
class FirstStage:
    """A fit every run of a suite builds on: run once per (training data set, seed; a teacher also per shots), shared
    by every run and suite process that needs it, resumable, and handed to each run as an option. CasPL's boosting
    prompts (:func:`boosting_stage`) and a distilled learner's teacher (:func:`teacher_stage`)."""

    #: How the dry run names it, and what its fit's progress line calls it.
    title: str
    what: str
    directory: str
    #: The file in its run directory that marks it fitted (and names its checkpoint).
    record: str
    configs: list[Path]
    clip_config: Optional[Path]
    runs: Path
    #: The overrides after ``--`` that reach this stage (:func:`stage_one_overrides`).
    overrides: list[str]
    #: The classes it trains on, and whether it takes the run's shots (else every training image).
    subsample: str
    per_shots: bool
    #: The fit options that give a run the stage's checkpoint.
    hand_over: Callable[[Path], list[str]]

    def run_dir(self, data_config: Path, seed: int, shots: int) -> Path:
        folder = self.runs / self.directory / _dataset_name(data_config)
        return folder / (f"shots{shots}_seed{seed}" if self.per_shots else f"seed{seed}")

    def fit_args(self, data_config: Path, seed: int, shots: int) -> list[str]:
        """The stage's ``vlprompt fit`` arguments, with the overrides that reach it."""
        return _run_args(self.configs, self.clip_config, data_config, seed, shots if self.per_shots else -1,
                         self.run_dir(data_config, seed, shots), self.overrides)

    def expected_checkpoint(self, data_config: Path, seed: int, shots: int) -> Path:
        """Where the stage's checkpoint for (``data_config``, ``seed``, ``shots``) is, or will be once fitted."""
        record = self.run_dir(data_config, seed, shots) / self.record
        if record.is_file():
            return Path(_read_stage_record(record)["checkpoint"])
        return (self.run_dir(data_config, seed, shots) / CHECKPOINT_DIR / "last.ckpt").resolve()

    def checkpoint(self, data_config: Path, seed: int, shots: int) -> Path:
        run_dir = self.run_dir(data_config, seed, shots)
        record = run_dir / self.record
        while True:
            if record.is_file():
                content = _read_stage_record(record)
                if list(content.get("overrides", [])) != self.overrides:
                    raise ConfigError(
                        f"{str(run_dir)!r} ({self.what}) was fitted with the overrides "
                        f"{shlex.join(content.get('overrides', [])) or '(none)'} and this suite passes "
                        f"{shlex.join(self.overrides) or '(none)'} to that stage; use another --runs, or delete that "
                        "folder to fit it again")
                return Path(content["checkpoint"])
            with RunLock(run_dir) as lock:
                if lock.acquired and not record.is_file():
                    self._fit(data_config, seed, shots, run_dir, record)
                    continue
            if not lock.acquired:
                time.sleep(WAIT_POLL_SECONDS)  # another suite process is fitting it

    def _fit(self, data_config: Path, seed: int, shots: int, run_dir: Path, record: Path) -> None:
        from vlprompt.eval.base2novel import fit_checkpoint

        resume = _resumable_checkpoint(run_dir) if run_dir.exists() else None
        if run_dir.exists() and resume is None:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[suite] {self.what} for {_dataset_name(data_config)} seed={seed}"
              f"{f' shots={shots}' if self.per_shots else ''} ({'resuming' if resume else 'starting'}) -> {run_dir}",
              flush=True)
        checkpoint = fit_checkpoint(self.fit_args(data_config, seed, shots), self.subsample, resume)
        write_json_atomically(record, {"checkpoint": str(Path(checkpoint).resolve()), "overrides": self.overrides},
                              indent=2)


def boosting_stage(configs: list[Path], clip_config: Optional[Path], runs: Path, overrides: list[str]) -> FirstStage:
    """CasPL's first stage (``--boost``): the boosting learner on the student's CLIP, on every training image and
    class name without labels (the paper's setting), handed to each run as the caspl plug-in."""
    return FirstStage("CasPL stage 1", "boosting prompts (CasPL stage 1)", BOOST_DIR, "boost.json", configs,
                      clip_config, runs, overrides, "all", False, boosting_plugin)


def teacher_stage(configs: list[Path], runs: Path, overrides: list[str], protocol: str) -> FirstStage:
    """A distilled learner's teacher: its YAMLs (which name its CLIP), with labels on the run's shots of the classes
    the protocol trains on (base-to-novel: the base half), handed over as ``teacher_checkpoint``."""
    return FirstStage("Teacher (stage 1)", "teacher (stage 1)", TEACHER_DIR, "teacher.json", configs, None, runs,
                      overrides, "base" if protocol == "base2novel" else "all", True, teacher_option)


def _read_stage_record(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{str(path)!r} is damaged; delete its folder to fit that stage again") from None


def _data_read_by(protocol: str, data_configs: Sequence[Path], source: Optional[Path]) -> list[Path]:
    """The data configs a suite reads: the source of a transfer protocol, then every evaluated data set (the papers'
    by default; base-to-novel leaves out those without that setting, as the suite does)."""
    default_source, default_data = standard_data(protocol)
    configs = list(data_configs) or [_standard_config(name) for name in default_data]
    if protocol in TRANSFER_PROTOCOLS:
        return [source or _standard_config(default_source), *configs]
    if protocol == "base2novel":
        configs = [config for config in configs if _has_base_to_novel(_dataset_name(config))]
    return configs


def _epochs_schedule(values: Sequence[str]) -> dict[int, int]:
    schedule = {}
    for value in values:
        shots, _, epochs = value.partition("=")
        if not (shots.isdigit() and epochs.isdigit()):
            raise ConfigError(f"--max-epochs-by-shots takes SHOTS=EPOCHS pairs such as 1=50 2=100, got {value!r}")
        schedule[int(shots)] = int(epochs)
    return schedule


def main(argv: Sequence[str]) -> None:
    parser = OneLineArgumentParser(prog="vlprompt suite", description="Run an evaluation protocol (resumable).",
                                   epilog="Everything after -- is passed to every run, e.g. -- --trainer.max_epochs 5. "
                                          "Afterwards: vlprompt report RUNS")
    parser.add_argument("protocol", choices=PROTOCOLS)
    parser.add_argument("--learner", type=Path, nargs="+", required=True,
                        help="learner YAML, e.g. configs/learners/coop.yaml, and recipe files over it, e.g. "
                             "configs/learners/maple.yaml configs/recipes/maple/cross-dataset.yaml")
    parser.add_argument("--clip", type=Path, help="CLIP YAML, e.g. configs/clip/toy.yaml")
    parser.add_argument("--data", type=Path, nargs="+", default=[],
                        help="data YAMLs, one per data set (the test sets, for the transfer protocols); default: the "
                             "papers' (the 11 data sets; the other 10 for cross-dataset; ImageNet-V2/-Sketch/-A/-R "
                             "for domain-generalization), from configs/data")
    parser.add_argument("--source", type=Path,
                        help="training data YAML of cross-dataset / domain-generalization (default: ImageNet)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=int, nargs="+", help="default: 16 (base2novel), 1 2 4 8 16 (few-shot)")
    parser.add_argument("--max-epochs-by-shots", nargs="+", default=[], metavar="SHOTS=EPOCHS",
                        help="epochs per shot count, e.g. CoOp's 1=50 2=100 4=100 8=200 16=200 (default: the learner "
                             "YAML's trainer.max_epochs for every shot count)")
    parser.add_argument("--runs", type=Path, default=Path("runs/suite"))
    parser.add_argument("--dry-run", action="store_true", help="print each run's training command; run nothing")
    parser.add_argument("--skip-data-check", action="store_true",
                        help="start without checking the data sets first (by default every data set's folder, split "
                             "file and listed images are checked before the first run: vlprompt data check)")
    parser.add_argument("--boost", type=Path, nargs="+",
                        help="CasPL: the boosting stage's YAMLs (configs/learners/caspl_boost.yaml, and the teacher's); "
                             "fitted once per data set and seed, then cascaded under the learner (<learner>+caspl)")
    parser.add_argument("--teacher", type=Path, nargs="+",
                        help="PromptKD: the teacher's YAMLs (default: configs/learners/promptsrc.yaml "
                             "configs/recipes/promptkd/teacher.yaml, ViT-L/14); fitted once per data set, shots and seed "
                             "on the protocol's training classes, then distilled into the learner")
    parser.add_argument("--wandb", action="store_true",
                        help="log every run to wandb (grouped by protocol/learner/data set) and a summary run at the "
                             "end; WANDB_MODE=offline logs locally for `wandb sync` later")
    parser.add_argument("--wandb-project", default="vlprompt", help="wandb project (default: vlprompt)")
    parser.add_argument("--wandb-entity", help="wandb entity (default: your default entity)")
    add_sweep_options(parser)
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by a sweep for each worker
    argv = [str(arg) for arg in argv]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    suite_args = argv[: argv.index("--")] if "--" in argv else argv
    given_overrides = list(overrides)
    options = parser.parse_args(suite_args)
    # configs/... as the README writes them: the shipped files when they are not where the command runs.
    overrides = resolve_config_args(overrides)
    options.learner = [resolve_config(path) for path in options.learner]
    options.data = [resolve_config(path) for path in options.data]
    options.boost = [resolve_config(path) for path in options.boost] if options.boost else options.boost
    options.teacher = [resolve_config(path) for path in options.teacher] if options.teacher else options.teacher
    options.clip, options.source = (resolve_config(path) if path else path for path in (options.clip, options.source))
    schedule = _epochs_schedule(options.max_epochs_by_shots)
    tracker = WandbOptions(options.wandb_project, options.wandb_entity) if options.wandb else None
    if tracker:  # fit and tests of one suite run share a wandb run on purpose
        warnings.filterwarnings("ignore", message="There is a wandb run already in progress")
    # A resumed run's checkpoint folder is not empty (the command line's own noise is silenced where it is built).
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    suite = (options.protocol, options.learner, options.data, options.seeds, options.runs, options.clip, options.shots,
             overrides, options.source, tracker, schedule, options.dry_run, options.boost, options.teacher)
    planned, stage = plan_suite(*suite)  # the suite's own mistakes first
    if options.dry_run:  # shows the runs, however a sweep would spread them
        _show(planned, stage)
        return
    if not (options.skip_data_check or options.worker_index is not None):
        from vlprompt.data.check import check_before_runs

        check_before_runs(_data_read_by(options.protocol, options.data, options.source), overrides)
    if is_sweep(options):
        results = sweep(planned, options.runs, worker_arguments(suite_args), given_overrides, options, run_worker)
        if results is None:  # submitted, not waited for
            return
    else:
        results = _run_planned(planned, options.worker_index)
    if options.worker_index is not None:
        print(f"[suite] worker {options.worker_index}: {len(results)} results from the runs it finished; nothing "
              "else is left to it", flush=True)
        return
    rows = aggregate(results)
    print("\n" + tables(rows)["md"])
    if tracker:
        learner = results[0]["learner"]
        report_dir = options.runs / options.protocol / learner / "report"
        rendered, images = write_report(rows, report_dir)
        log_suite_summary(tracker, f"{options.protocol}-{learner}-summary", f"{options.protocol}/{learner}",
                          report_dir, rows, rendered["md"], images)
        print(f"[suite] wandb summary run logged; tables and plots also in {report_dir}")
    print(f"[suite] mean ± std over seeds above; tables (Markdown, CSV, LaTeX) and plots of everything in "
          f"{options.runs}: vlprompt report {options.runs}")


def run_worker(command: Sequence[str], index: int) -> None:
    """What each SLURM array task runs: the suite ``command`` (its arguments, ``--`` and overrides) as worker
    ``index``, in the task's own process (SLURM pins its GPUs)."""
    from vlprompt.errors import report_user_errors
    from vlprompt.interrupts import stop_cleanly

    command = list(command)
    at = command.index("--") if "--" in command else len(command)
    with stop_cleanly(), report_user_errors():
        main([*command[:at], "--worker-index", str(index), *command[at:]])
