"""The ``vlprompt`` command: LightningCLI with learner/data YAML composition and one-line errors.

    vlprompt fit --config configs/learners/coop.yaml --config configs/data/toy/ToyShapes.yaml \\
        --model.init_args.n_ctx 8 --trainer.max_epochs 5
    vlprompt test --config ... --ckpt_path runs/coop/version_0/checkpoints/last.ckpt

The protocols (``vlprompt suite``, ``vlprompt report``) sit above this module; :mod:`vlprompt.commands` is the
``vlprompt`` program that dispatches to them or to :func:`main` here.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.strategies.launchers import _MultiProcessingLauncher

from vlprompt.data import ImageSplitDataModule
from vlprompt.callbacks import (AtomicCheckpointIO, InterruptionReport, PerClassAccuracyReport, SaveAndLogConfig,
                                finished_epochs, last_checkpoint)
from vlprompt.command_line import names_a_checkpoint_file
from vlprompt.cli_errors import (candidate_keys, configured_learner_names, configured_learners, one_line_error,
                                 owners_of_keys)
from vlprompt.errors import CheckpointMismatchError, ConfigError, report_user_errors
from vlprompt.files import ensure_writable, write_json_atomically
from vlprompt.interrupts import stop_cleanly
from vlprompt.learners import PromptLearner, get_learner_class, list_learners
from vlprompt.learners.checkpoint import read_checkpoint
from vlprompt.learners.hyperparameters import check_hyperparameters
from vlprompt.learners.registry import learner_name_of
from vlprompt.recipes import configs_root, resolve_config_args

#: Where runs go unless --trainer.default_root_dir says otherwise (a logger's own save_dir, when set, wins).
DEFAULT_ROOT_DIR = "runs"
TRAINER_DEFAULTS = {
    # Few-shot epochs are short (16 shots x 10 classes / 32 = 5 steps): every step is logged, so each named loss
    # term reaches the logs however short the epoch (Lightning's default of 50 would log none).
    "log_every_n_steps": 1,
    "default_root_dir": DEFAULT_ROOT_DIR,
    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": DEFAULT_ROOT_DIR}},
}
#: Logger ``save_dir`` values that mean "not chosen": the default above and the loggers' own (wandb's ".").
_UNCHOSEN_SAVE_DIRS = (None, "", ".", DEFAULT_ROOT_DIR)

class VlpromptArgumentParser(LightningArgumentParser):
    """Prints parse errors as a single ``vlprompt: error: ...`` line and exits with status 2."""

    #: The arguments being parsed (set by :class:`VlpromptCLI`), to know which learner is configured.
    arguments: Sequence[str] = ()

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error:  # a sub-parser: the main parser reports
            return super().error(message, ex)
        learners = configured_learner_names([str(a) for a in self.arguments])
        line = one_line_error(message, candidate_keys(self, learners), owners_of_keys(learners), learners)
        sys.stderr.write(f"vlprompt: error: {line}\n")
        sys.exit(2)


class VlpromptCLI(LightningCLI):
    """LightningCLI with vlprompt's defaults. ``record_evaluations``: a ``test`` or ``validate`` writes its
    ``metrics.json`` beside its logs for ``vlprompt report`` (the suite, which writes its own, turns it off)."""

    def __init__(self, *args, record_evaluations: bool = True, **kwargs):
        self.record_evaluations = record_evaluations
        quiet_known_noise()
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in SUBCOMMANDS}

    def _set_seed(self) -> None:
        # Unless --seed_everything is given, runs are seeded with data.seed (the seed the few-shot sample is drawn
        # with), not Lightning's 0 with a "No seed found" warning.
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("seed_everything") in (True, None) and config.get("data") is not None:
            config["seed_everything"] = int(config["data"].get("seed", 1))
        super()._set_seed()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The learned prompts of the last epoch are what papers evaluate, so keep `last.ckpt`.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Saved at the end of each training epoch, after epoch-level weight averaging (Gaussian prompt aggregation)
        # has taken that epoch in, so the final last.ckpt holds the whole aggregate even when validation runs.
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_on_train_epoch_end": True})
        # Every test also reports accuracy per class (a CSV beside the logs; a table on wandb).
        parser.add_lightning_class_args(PerClassAccuracyReport, "per_class")
        # Class names and hand templates belong to the dataset; the learner receives them.
        parser.link_arguments("data.classnames", "model.init_args.classnames", apply_on="instantiate")
        parser.link_arguments("data.templates", "model.init_args.templates", apply_on="instantiate")
        parser.link_arguments("data.class_descriptions", "model.init_args.descriptions", apply_on="instantiate")
        parser.link_arguments("data.template_groups", "model.init_args.template_groups", apply_on="instantiate")
        parser.link_arguments("data.attributes", "model.init_args.attributes", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        # Kept to tell explicit command-line overrides from values that came from config files.
        self.command_line = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(
            args, dict) else []
        VlpromptArgumentParser.arguments = self.command_line  # every (sub)parser that may report an error
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Refuse a checkpoint that is unreadable or disagrees with the configured learner or an explicit
        ``--model`` override, before Lightning merges the checkpoint's hyper-parameters over the config."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if names_a_checkpoint_file(ckpt_path):
            checkpoint = read_checkpoint(ckpt_path)
            check_configuration_matches_checkpoint(self.config[subcommand]["model"], checkpoint, str(ckpt_path),
                                                   explicit_model_overrides(self.command_line))
            if subcommand == "fit":
                check_epochs_left(checkpoint, self.config[subcommand]["trainer"].get("max_epochs"), str(ckpt_path))
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs):
        # Not a command-line option: every run says how to go on when a signal stops it.
        extra_callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        # Checkpoints written whole or not at all, unless the user brings a checkpoint writer of their own.
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            trainer_config["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = self._instantiate_trainer(trainer_config, [*extra_callbacks, InterruptionReport()])
        for logger in trainer.loggers:
            # Lightning always hands wandb an `anonymous` setting, which wandb now warns has no effect.
            init = getattr(logger, "_wandb_init", None)
            if isinstance(init, dict) and init.get("anonymous") is None:
                init.pop("anonymous", None)
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Before the CLIP is built: a NaN momentum or an infinite loss weight is refused by name, not trained.
        model_args = config["model"].get("init_args") or {}
        check_hyperparameters(model_args.as_dict() if hasattr(model_args, "as_dict") else model_args,
                              "model.init_args.")
        for section in ("data", "trainer"):
            values = config.get(section) or {}
            check_hyperparameters(values.as_dict() if hasattr(values, "as_dict") else values, f"{section}.")
        # Lightning's convention: default_root_dir decides where a run goes, for the default CSV logger and for a
        # logger (wandb) given without a save_dir of its own.
        trainer = config["trainer"]
        logger = trainer.get("logger")
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if self.subcommand in EVALUATIONS and init_args is not None:
            self._evaluate_beside_the_run(config, logger, init_args)
        if init_args is not None and "save_dir" in init_args and init_args["save_dir"] in _UNCHOSEN_SAVE_DIRS:
            init_args["save_dir"] = trainer.get("default_root_dir") or DEFAULT_ROOT_DIR

    def _evaluate_beside_the_run(self, config, logger, init_args) -> None:
        """``test`` / ``validate`` of a fit's checkpoint, with no output place chosen: its metrics and per-class table
        go into that run's folder (``RUN/tests/version_N``, ``RUN/validation/version_N``), not a new folder of
        ``runs/lightning_logs``."""
        ckpt_path = config.get("ckpt_path")
        if not names_a_checkpoint_file(ckpt_path):
            return
        checkpoint = Path(ckpt_path)
        run_dir = checkpoint.parent.parent
        unchosen = (str(logger.get("class_path", "")).endswith("CSVLogger")
                    and init_args.get("save_dir") in _UNCHOSEN_SAVE_DIRS
                    and init_args.get("name") in (None, "lightning_logs")
                    and config["trainer"].get("default_root_dir") in (None, DEFAULT_ROOT_DIR))
        if unchosen and checkpoint.parent.name == "checkpoints" and os.access(run_dir, os.W_OK):
            init_args["save_dir"], init_args["name"] = str(run_dir), EVALUATIONS[self.subcommand]

    def _check_output_directory(self) -> None:
        logger = self.trainer.logger
        directory = getattr(logger, "save_dir", None) or self.trainer.default_root_dir
        ensure_writable(Path(directory), "the output directory (--trainer.default_root_dir)")

    def _settle_run_directory(self, stage: str) -> None:
        """Under a launcher that starts every rank from this process and only waits for them (``ddp_spawn``,
        ``ddp_fork``, ``ddp_notebook``), fix the run's version folder and checkpoint folder here first: rank 0 writes
        into them, and this process, which reports afterwards, must name the same ones rather than the next free
        version. Both are handed to the ranks with the trainer. A logger that names its version only once its run
        exists (wandb) leaves the checkpoint folder to rank 0, which hands its checkpoint back
        (:func:`~vlprompt.callbacks.last_checkpoint`)."""
        trainer = self.trainer
        if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
            return
        versions = [logger.version for logger in trainer.loggers]  # computed on first use, then kept
        if stage == "fit" and None not in versions:
            with warnings.catch_warnings():  # about a non-empty checkpoint folder: rank 0 warns itself
                warnings.simplefilter("ignore")
                for callback in trainer.checkpoint_callbacks:
                    callback.setup(trainer, self.model, stage)

    def before_fit(self) -> None:
        self._check_output_directory()
        self._settle_run_directory("fit")
        if not self.config["fit"].get("ckpt_path"):
            self._point_at_stopped_fits()

    def _point_at_stopped_fits(self) -> None:
        """Starting a fit where an earlier one of the same learner stopped early (Ctrl-C, SIGTERM) begins anew in
        a new version folder; say how to go on from the stopped one instead."""
        logger = self.trainer.logger
        if not isinstance(logger, CSVLogger) or not self.trainer.is_global_zero:
            return
        class_path = str(self.config["fit"]["model"].get("class_path") or "")
        for run_dir, finished, planned in stopped_fits(Path(logger.save_dir) / str(logger.name), class_path):
            sys.stderr.write(f"vlprompt: note: {run_dir} holds a fit of this learner stopped after {finished} of "
                             f"{planned} epochs; this one starts anew in {logger.log_dir} (to go on from that one "
                             f"instead, run this command with --ckpt_path {run_dir / 'checkpoints' / 'last.ckpt'})\n")

    def after_fit(self) -> None:
        checkpoint = last_checkpoint(self.trainer)
        if self.trainer.is_global_zero and checkpoint is not None:
            run_dir = checkpoint.parent.parent
            config = f", config {run_dir / 'config.yaml'}" if (run_dir / "config.yaml").is_file() else ""
            print(f"vlprompt: checkpoint {checkpoint}{config}", flush=True)

    def before_validate(self) -> None:
        self._check_output_directory()
        self._settle_run_directory("validate")
        self._warn_if_untrained()

    def before_test(self) -> None:
        self._check_output_directory()
        self._settle_run_directory("test")
        self._warn_if_untrained()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        # vlprompt prints its own result line (after_test), naming the data set, classes and split.
        if subcommand in EVALUATIONS and not any(arg.startswith("--verbose") for arg in self.command_line):
            kwargs["verbose"] = False
        return kwargs

    def after_validate(self) -> None:
        self._report_evaluation("val")

    def after_test(self) -> None:
        self._report_evaluation("test")

    def _report_evaluation(self, split: str) -> None:
        """One line: the accuracy, on which data set, classes and split, and where its files are; and, for a
        ``vlprompt test`` run from the command line, a ``metrics.json`` there that ``vlprompt report`` reads."""
        trainer, data = self.trainer, self.datamodule
        where = trainer.log_dir  # a collective under DDP: every rank asks
        accuracy = trainer.callback_metrics.get(f"{split}/acc")
        if accuracy is None or not trainer.is_global_zero:
            return
        subsample = getattr(data, "subsample", "all")
        classes = f"{'all' if subsample == 'all' else subsample} classes ({len(getattr(data, 'classnames', []))})"
        images = len(getattr(data, "split", {}).get(split, []))
        metrics = {"learner": getattr(self.model, "registry_name", type(self.model).__name__),
                   "dataset": data.dataset_name if subsample == "all" else f"{data.dataset_name} ({subsample})",
                   "seed": getattr(data, "seed", None), "shots": getattr(data, "shots", None),
                   "protocol": split, "acc": float(accuracy), "subsample": subsample,
                   "checkpoint": str(self.config[self.subcommand].get("ckpt_path") or ""),
                   "data": data.provenance() if hasattr(data, "provenance") else {}}
        if self.record_evaluations and where:
            write_json_atomically(Path(where) / "metrics.json", metrics, indent=2)
        print(f"vlprompt: {split} accuracy {float(accuracy):.2f}% on {data.dataset_name}, {classes}, {split} split "
              f"({images} images); metrics in {where}", flush=True)

    def _warn_if_untrained(self) -> None:
        if not self.config[self.subcommand].get("ckpt_path") and getattr(self.model, "needs_training", False):
            name = getattr(self.model, "registry_name", type(self.model).__name__)
            sys.stderr.write(f"vlprompt: warning: {self.subcommand} of {name} without --ckpt_path scores its untrained "
                             "prompts (their initialisation); pass --ckpt_path RUN/checkpoints/last.ckpt for the "
                             "trained ones\n")


#: Lightning's subcommands that vlprompt offers (its own ``vlprompt predict`` classifies a user's images).
SUBCOMMANDS = ("fit", "validate", "test")
#: The evaluating subcommands, and the folder of a fit's run that each writes into (``RUN/tests/version_N``).
EVALUATIONS = {"test": "tests", "validate": "validation"}


def stopped_fits(logs: Path, class_path: str) -> list[tuple[Path, int, int]]:
    """``[(run directory, epochs finished, epochs planned)]`` when the latest fit under a CSV logger's ``logs``
    folder (the last version with a checkpoint) is one of ``class_path`` whose ``last.ckpt`` has fewer epochs than
    its ``config.yaml`` planned; else ``[]`` (an earlier stopped fit may have been resumed since)."""
    import torch
    import yaml

    found = []
    def version(run_dir: Path) -> int:
        number = run_dir.name[len("version_"):]
        return int(number) if number.isdigit() else -1

    runs = sorted(logs.glob("version_*"), key=version)
    for run_dir in reversed(runs):
        checkpoint, config = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
        if not (checkpoint.is_file() and config.is_file()):
            continue
        try:
            saved = yaml.safe_load(config.read_text()) or {}
            planned = (saved.get("trainer") or {}).get("max_epochs")
            finished = finished_epochs(torch.load(checkpoint, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - only a note: a run that cannot be read is passed over
            continue
        if (saved.get("model") or {}).get("class_path") == class_path and planned and 0 < finished < planned:
            found.append((run_dir, finished, planned))
        break
    return found


def explicit_model_overrides(command_line: Sequence[str]) -> list[str]:
    """Learner hyper-parameters set on the command line (``--model.init_args.n_ctx 8`` gives ``n_ctx``)."""
    names = []
    for token in command_line:
        if not token.startswith("--model."):
            continue
        parts = token[2:].split("=", 1)[0].split(".")[1:]
        if parts and parts[0] in ("init_args", "dict_kwargs"):
            parts = parts[1:]
        if len(parts) == 1 and parts[0] not in names:
            names.append(parts[0])
    return names


def _comparable(value):
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_configuration_matches_checkpoint(model_config, checkpoint: dict, path: str,
                                           explicit: Sequence[str]) -> None:
    """One line when the configured learner or an explicit override disagrees with what the checkpoint holds."""
    saved = checkpoint["vlprompt"]["learner"]
    class_path = str(model_config.get("class_path") or "")
    configured = learner_name_of(class_path) or class_path
    if configured and configured != saved:
        raise CheckpointMismatchError(
            f"--ckpt_path {path} holds a {saved!r} learner, but the configuration names {configured!r}; use "
            f"--config configs/learners/{saved}.yaml (or --model {saved}), or vlprompt.load_learner(path)")
    hparams = checkpoint.get("hyper_parameters") or {}
    init_args = {}
    for part in ("init_args", "dict_kwargs"):
        values = model_config.get(part) or {}
        init_args.update(values.as_dict() if hasattr(values, "as_dict") else values)
    for name in explicit:
        if name in hparams and name in init_args and _comparable(init_args[name]) != _comparable(hparams[name]):
            raise CheckpointMismatchError(
                f"--model.init_args.{name} {init_args[name]!r} disagrees with --ckpt_path {path}, which was trained "
                f"with {name}={hparams[name]!r}; drop the override (the checkpoint's hyper-parameters are used)")


def check_epochs_left(checkpoint: dict, max_epochs: Optional[int], path: str) -> None:
    """A fit resumed with fewer epochs than its checkpoint has finished cannot go on: say so in one line."""
    finished = finished_epochs(checkpoint)
    if max_epochs is not None and max_epochs >= 0 and finished > max_epochs:
        raise ConfigError(f"--ckpt_path {path} has finished {finished} epochs, more than --trainer.max_epochs "
                          f"{max_epochs}; pass --trainer.max_epochs {finished} or more to go on from it")


def resolve_learner_names(args: Sequence[str]) -> list[str]:
    """``--model NAME`` brings that learner's recipe (``configs/learners/NAME.yaml``: the paper's
    hyper-parameters, batch size and epochs) as the first config file, so every other file and option overrides
    it. Naming another learner than a ``--config`` file does is refused: it would train one learner with the
    other's recipe. Class paths pass through, and a learner without a recipe in this checkout (a plug-in) gets
    its class defaults."""
    args = [str(arg) for arg in args]
    for i, arg in enumerate(list(args)):
        if arg == "--model" and i + 1 < len(args):
            value, span = args[i + 1], 2
        elif arg.startswith("--model="):
            value, span = arg.split("=", 1)[1], 1
        else:
            continue
        if not re.fullmatch(r"\w+", value):
            continue
        class_names = {get_learner_class(n).__name__: n for n in list_learners()}
        cls = get_learner_class(class_names.get(value, value))  # unknown names: a ConfigError naming the closest
        name = cls.registry_name
        configured = configured_learners(args)
        others = {path: learner for path, learner in configured.items() if learner != name}
        if others:
            path, learner = next(iter(others.items()))
            raise ConfigError(f"--model {value} would train {name} with the recipe of {path} ({learner}: its batch "
                              f"size, epochs and learning rate); use --config {_recipe_hint(name)} instead of both")
        recipe = learner_recipe(name)
        rest = args[:i] + args[i + span:]
        if configured:  # the learner's own YAML is given already
            return resolve_learner_names(rest)
        if not recipe.is_file():
            return rest[:i] + ["--model", f"{cls.__module__}.{cls.__qualname__}"] + rest[i:]
        # First, so that every other config file and option given overrides the recipe.
        start = 1 if rest and rest[0] in SUBCOMMANDS else 0
        return rest[:start] + ["--config", str(recipe)] + rest[start:]
    return args


def learner_recipe(name: str) -> Path:
    """The shipped recipe of learner ``name`` (``configs/learners/NAME.yaml``: a checkout's, or the installed
    package's copy)."""
    return configs_root() / "learners" / f"{name}.yaml"


def _recipe_hint(name: str) -> str:
    recipe = learner_recipe(name)
    try:
        return str(recipe.relative_to(Path.cwd()))
    except ValueError:
        return str(recipe)


#: Warnings every vlprompt command would otherwise print that say nothing about the run (a regular expression each).
NOISE = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",           # Lightning's own use of torch's pytree
    r"The dirpath has changed from",                               # a checkpoint tested or resumed in another folder
    r".*LightningCLI's args parameter is intended to run from within Python",  # vlprompt hands it the resolved argv
)


class _DropTips(logging.Filter):
    """Lightning's advertisements for its cloud services."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_known_noise() -> None:
    """Silence :data:`NOISE` and Lightning's tips (idempotent)."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero_log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropTips())


def create_cli(args: Optional[Sequence[str]] = None, run: bool = True, record_evaluations: bool = True) -> VlpromptCLI:
    """Parse ``args`` (``sys.argv`` when ``None``) and run the subcommand; the CLI keeps trainer and model.
    ``record_evaluations``: see :class:`VlpromptCLI`."""
    return VlpromptCLI(
        PromptLearner,
        ImageSplitDataModule,
        subclass_mode_model=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=SaveAndLogConfig,
        save_config_kwargs={"overwrite": True},
        args=None if args is None else resolve_learner_names(resolve_config_args(args)),
        auto_configure_optimizers=False,
        parser_class=VlpromptArgumentParser,
        # No prefix matching: a typo such as --trainer.max_epoch must not silently set max_epochs.
        parser_kwargs={"allow_abbrev": False, **{name: {"allow_abbrev": False} for name in SUBCOMMANDS}},
        run=run,
        record_evaluations=record_evaluations,
    )


def main(args: Optional[Sequence[str]] = None) -> None:
    """``vlprompt fit|validate|test``; user mistakes end with one ``vlprompt: error:`` line and exit 2."""
    with stop_cleanly(), report_user_errors():
        create_cli(sys.argv[1:] if args is None else args)


if __name__ == "__main__":
    main()
