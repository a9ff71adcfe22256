"""``vlprompt suite``: the CoOp/Dassl evaluation protocols as one resumable command.

Each (dataset, seed, shots) run gets its own directory under ``RUNS/<protocol>/<learner>/<dataset>/``
and ends by writing ``metrics.json``; a run whose ``metrics.json`` exists is skipped when the suite is
started again, and a run without one (interrupted) is redone from scratch.

    vlprompt suite base2novel --learner configs/learners/coop.yaml --clip configs/clip/toy.yaml \\
        --data configs/data/toy/ToyShapes.yaml configs/data/toy/ToyPatterns.yaml --seeds 1 2 3 \\
        --runs runs/suite -- --trainer.max_epochs 25
    vlprompt suite domain-generalization --learner ... --source configs/data/toy/ToyShapes.yaml \\
        --data configs/data/toy/ToyShapes-Noisy.yaml configs/data/toy/ToyShapes-Blurry.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import yaml

from vlprompt.cli import create_cli
from vlprompt.data.benchmarks import CROSS_DATASET_TARGETS, DOMAIN_GENERALIZATION_TARGETS
from vlprompt.errors import ConfigError
from vlprompt.eval.base2novel import base_to_novel, cli_test_accuracy, fit_then_test
from vlprompt.eval.dashboards import WandbOptions, finish_wandb_run, log_suite_summary, wandb_logger_args
from vlprompt.eval.report import aggregate, metric_keys, write_report
from vlprompt.learners import get_learner_class, list_learners

#: Protocols that train once on a source data set and test on other data sets (ImageNet -> the other ten;
#: ImageNet -> V2/Sketch/A/R).
TRANSFER_PROTOCOLS = ("cross-dataset", "domain-generalization")
PROTOCOLS = ("base2novel", "few-shot", *TRANSFER_PROTOCOLS)
FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
METRICS_FILE = "metrics.json"
#: The data configs of a checkout (``configs/data``): the default data sets of each protocol.
STANDARD_DATA_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def standard_data(protocol: str) -> tuple[Optional[str], list[str]]:
    """The papers' data sets for ``protocol``: (source, evaluated data sets), as benchmark names."""
    if protocol == "cross-dataset":
        return "ImageNet", list(CROSS_DATASET_TARGETS)
    if protocol == "domain-generalization":
        return "ImageNet", list(DOMAIN_GENERALIZATION_TARGETS)
    return None, ["ImageNet", *CROSS_DATASET_TARGETS]


def _standard_config(name: str) -> Path:
    path = STANDARD_DATA_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no data config {str(path)!r} for the default data set {name}; pass --data (and --source)")
    return path


class OneLineArgumentParser(argparse.ArgumentParser):
    """Usage mistakes end with one ``<prog>: error: ...`` line and exit status 2 (``--help`` shows the usage)."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}; see {self.prog} --help\n")
        sys.exit(2)


def _learner_class(path: Path):
    """The learner class a learner YAML names (``model.class_path``)."""
    class_path = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("class_path")
    if not class_path:
        raise ConfigError(f"{str(path)!r} names no learner (model.class_path); use a file from configs/learners/")
    module, _, name = str(class_path).rpartition(".")
    for registered in list_learners():
        cls = get_learner_class(registered)
        if cls.__name__ == name and (not module or cls.__module__.startswith(module)):
            return cls
    raise ConfigError(f"{str(path)!r} names {class_path!r}, which is not a registered learner")


def _dataset_name(path: Path) -> str:
    """The benchmark's name (``data.dataset``), else the data set's folder name (``data.root``), else the YAML's."""
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    if data.get("dataset"):
        return str(data["dataset"])
    return Path(str(data["root"])).name if data.get("root") else path.stem


def _run_args(learner_config: Path, clip_config: Optional[Path], data_config: Path, seed: int, shots: int,
              run_dir: Path, overrides: Sequence[str]) -> list[str]:
    configs = ["--config", str(learner_config)] + (["--config", str(clip_config)] if clip_config else [])
    return [*configs, "--config", str(data_config), "--seed_everything", str(seed), "--data.seed", str(seed),
            "--data.shots", str(shots), "--trainer.logger.init_args.save_dir", str(run_dir),
            "--trainer.logger.init_args.name", "logs", "--trainer.enable_model_summary", "false", *overrides]


def _config_record(learner_config: Path, clip_config: Optional[Path], data_config: Path,
                   overrides: Sequence[str]) -> dict:
    """What a run was configured with, kept in its ``metrics.json``."""
    return {"learner": str(learner_config), "clip": str(clip_config) if clip_config else None,
            "data": str(data_config), "overrides": list(overrides)}


def _write_metrics(directory: Path, metrics: dict) -> None:
    # Written last, and atomically: its presence is what marks the run as finished.
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (METRICS_FILE + ".partial")
    partial.write_text(json.dumps(metrics, indent=2) + "\n")
    partial.replace(directory / METRICS_FILE)


def run_one(protocol: str, learner_config: Path, clip_config: Optional[Path], data_config: Path, seed: int,
            shots: int, run_dir: Path, overrides: Sequence[str] = (), wandb: Optional[WandbOptions] = None) -> dict:
    """One base2novel or few-shot run; writes and returns its metrics (accuracies in percent).

    With ``wandb``, fit and tests log into one wandb run grouped by protocol/learner/data set, whose summary
    gets the final accuracies.
    """
    cls = _learner_class(learner_config)
    dataset = _dataset_name(data_config)
    args = _run_args(learner_config, clip_config, data_config, seed, shots, run_dir, overrides)
    if wandb:
        args += wandb_logger_args(wandb, run_dir, f"{dataset}-shots{shots}-seed{seed}",
                                  f"{protocol}/{cls.registry_name}/{dataset}", protocol,
                                  [protocol, cls.registry_name, dataset])
    started = time.time()
    metrics = {"learner": cls.registry_name, "dataset": dataset, "seed": seed, "shots": shots, "protocol": protocol}
    if protocol == "base2novel":
        metrics.update(base_to_novel(args, cls.needs_training))
    elif protocol == "few-shot":
        _, metrics["acc"] = fit_then_test(args, "all", cls.needs_training)
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
                 overrides: Sequence[str] = (), wandb: Optional[WandbOptions] = None) -> list[dict]:
    """Train on all classes of ``source`` once, then test the same prompts on the source and every target.

    Each evaluated data set gets ``run_dir/<dataset>/metrics.json`` (``acc`` in percent, ``source`` named).
    With ``wandb``, training and every test log into one wandb run.
    """
    cls = _learner_class(learner_config)
    source_name = _dataset_name(source)
    tracking = wandb_logger_args(wandb, run_dir, f"from-{source_name}-shots{shots}-seed{seed}",
                                 f"{protocol}/{cls.registry_name}/from-{source_name}", protocol,
                                 [protocol, cls.registry_name, source_name]) if wandb else []
    args = _run_args(learner_config, clip_config, source, seed, shots, run_dir, overrides) + tracking
    checkpoint = []
    if cls.needs_training:
        fit = create_cli(["fit", *args, "--data.subsample", "all"])
        checkpoint = ["--ckpt_path", fit.trainer.checkpoint_callback.last_model_path]
    results = []
    for data_config in [source, *targets]:
        test_args = _run_args(learner_config, clip_config, data_config, seed, shots, run_dir, overrides) + tracking
        metrics = {"learner": cls.registry_name, "dataset": _dataset_name(data_config), "seed": seed,
                   "shots": shots, "protocol": protocol, "source": source_name,
                   "acc": cli_test_accuracy([*test_args, *checkpoint]),
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


def _check_files(paths: Sequence[Optional[Path]]) -> None:
    for path in paths:
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")


def _resume(run_dir: Path, expected: Sequence[Path]) -> Optional[list[dict]]:
    """The finished run's metrics, or ``None`` after clearing what an interrupted run left behind."""
    if all(path.is_file() for path in expected):
        print(f"[suite] done already: {run_dir}")
        return [json.loads(path.read_text()) for path in expected]
    if run_dir.exists():  # an interrupted run: start it again from nothing
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return None


def run_suite(protocol: str, learner_config: Path, data_configs: Sequence[Path], seeds: Sequence[int],
              runs: Path, clip_config: Optional[Path] = None, shots: Optional[Sequence[int]] = None,
              overrides: Sequence[str] = (), source: Optional[Path] = None,
              wandb: Optional[WandbOptions] = None) -> list[dict]:
    """Every (data set, shots, seed) run of ``protocol``, skipping finished ones; returns all metrics.

    The transfer protocols train once per (shots, seed) on ``source`` and test on ``data_configs``. Empty
    ``data_configs`` and a missing ``source`` mean the papers' data sets (:func:`standard_data`).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    default_source, default_data = standard_data(protocol)
    if protocol in TRANSFER_PROTOCOLS and source is None:
        source = _standard_config(default_source)
    data_configs = list(data_configs) or [_standard_config(name) for name in default_data]
    _check_files([learner_config, clip_config, source, *data_configs])
    shots = list(shots or (FEW_SHOT_SHOTS if protocol == "few-shot" else (16,)))
    learner = _learner_class(learner_config).registry_name
    results = []
    if protocol in TRANSFER_PROTOCOLS:
        names = [_dataset_name(c) for c in [source, *data_configs]]
        for k in shots:
            for seed in seeds:
                run_dir = runs / protocol / learner / f"from-{names[0]}" / f"shots{k}_seed{seed}"
                done = _resume(run_dir, [run_dir / name / METRICS_FILE for name in names])
                if done is None:
                    print(f"[suite] running {protocol} {learner} {names[0]} -> {', '.join(names[1:])} shots={k} "
                          f"seed={seed} -> {run_dir}")
                    done = run_transfer(protocol, learner_config, clip_config, source, data_configs, seed, k,
                                        run_dir, overrides, wandb)
                results += done
        return results
    for data_config in data_configs:
        dataset = _dataset_name(data_config)
        for k in shots:
            for seed in seeds:
                run_dir = runs / protocol / learner / dataset / f"shots{k}_seed{seed}"
                done = _resume(run_dir, [run_dir / METRICS_FILE])
                if done is None:
                    print(f"[suite] running {protocol} {learner} {dataset} shots={k} seed={seed} -> {run_dir}")
                    done = [run_one(protocol, learner_config, clip_config, data_config, seed, k, run_dir, overrides,
                                    wandb)]
                results += done
    return results


def main(argv: Sequence[str]) -> None:
    parser = OneLineArgumentParser(prog="vlprompt suite", description="Run an evaluation protocol (resumable).")
    parser.add_argument("protocol", choices=PROTOCOLS)
    parser.add_argument("--learner", type=Path, required=True, help="learner YAML, e.g. configs/learners/coop.yaml")
    parser.add_argument("--clip", type=Path, help="CLIP YAML, e.g. configs/clip/toy.yaml")
    parser.add_argument("--data", type=Path, nargs="+", default=[],
                        help="data YAMLs, one per data set (the test sets, for the transfer protocols); default: the "
                             "papers' (the 11 data sets; the other 10 for cross-dataset; ImageNet-V2/-Sketch/-A/-R "
                             "for domain-generalization), from configs/data")
    parser.add_argument("--source", type=Path,
                        help="training data YAML of cross-dataset / domain-generalization (default: ImageNet)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=int, nargs="+", help="default: 16 (base2novel), 1 2 4 8 16 (few-shot)")
    parser.add_argument("--runs", type=Path, default=Path("runs/suite"))
    parser.add_argument("--wandb", action="store_true",
                        help="log every run to wandb (grouped by protocol/learner/data set) and a summary run at the "
                             "end; WANDB_MODE=offline logs locally for `wandb sync` later")
    parser.add_argument("--wandb-project", default="vlprompt", help="wandb project (default: vlprompt)")
    parser.add_argument("--wandb-entity", help="wandb entity (default: your default entity)")
    argv = list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    tracker = WandbOptions(options.wandb_project, options.wandb_entity) if options.wandb else None
    if tracker:  # fit and tests of one suite run share a wandb run on purpose
        warnings.filterwarnings("ignore", message="There is a wandb run already in progress")
    results = run_suite(options.protocol, options.learner, options.data, options.seeds, options.runs, options.clip,
                        options.shots, overrides, options.source, tracker)
    if tracker:
        learner = results[0]["learner"]
        report_dir = options.runs / options.protocol / learner / "report"
        rows = aggregate(results)
        rendered, images = write_report(rows, report_dir)
        log_suite_summary(tracker, f"{options.protocol}-{learner}-summary", f"{options.protocol}/{learner}",
                          report_dir, rows, rendered["md"], images)
        print(f"[suite] wandb summary run logged; tables and plots also in {report_dir}")
