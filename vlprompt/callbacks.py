"""Lightning callbacks vlprompt runs use: per-class accuracy reports, the resolved config on experiment trackers,
what an interrupted run kept, Gaussian prompt aggregation (PromptSRC's epoch-level weight averaging, usable with
any learner); and the checkpoint writer (whole files or none).

They sit below the learners (PromptSRC adds the aggregation itself) and the command line (:mod:`vlprompt.cli`
adds the reports), and know nothing of either: a learner is any LightningModule here.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.trainer.states import TrainerFn

from vlprompt.errors import StorageError, storage_fix
from vlprompt.files import write_bytes_atomically
from vlprompt.interrupts import note_signal, set_resume_hint, signal_of

PER_CLASS_COLUMNS = ["class", "accuracy"]


class PerClassAccuracyReport(pl.Callback):
    """After each test: ``per_class_<dataset>_<subsample>.csv`` in the log directory, and the same table on wandb."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_class = getattr(pl_module, "per_class_test_accuracy", None)
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if not per_class or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        tag = "_".join(str(part) for part in (getattr(datamodule, "dataset_name", "test"),
                                               getattr(datamodule, "subsample", "all")))
        rows = [[name, round(accuracy, 4)] for name, accuracy in per_class.items()]
        if log_dir:
            path = Path(log_dir) / f"per_class_{tag}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as stream:
                csv.writer(stream).writerows([PER_CLASS_COLUMNS, *rows])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key=f"per_class/{tag}", columns=PER_CLASS_COLUMNS, data=rows)


def run_directory(trainer: pl.Trainer, fitting: bool) -> Path:
    """The directory of this run: where a fit's ``checkpoints/`` go (Lightning's ``<save_dir>/<name>/<version>``
    for every logger, wandb's ``<project>/<run id>`` included, or the parent of an explicit checkpoint dirpath);
    the logger's directory for other stages."""
    callback = trainer.checkpoint_callback
    if fitting and callback is not None and getattr(callback, "dirpath", None):
        return Path(callback.dirpath).parent
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


class SaveAndLogConfig(SaveConfigCallback):
    """The resolved ``config.yaml`` in the run's directory, beside ``checkpoints/`` (for CSV and wandb runs
    alike, so no run overwrites another's), and the resolved config on experiment trackers."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        directory = trainer.strategy.broadcast(str(run_directory(trainer, stage == "fit")))
        if trainer.is_global_zero:
            Path(directory).mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(Path(directory) / self.config_filename), skip_none=False,
                             overwrite=self.overwrite, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = self.config.as_dict()
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                logger.log_hyperparams({"config": config})


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each local checkpoint whole or not at all: serialised in memory, written to a temporary beside its
    place, synced and moved there. When the disk fills or the place cannot be written, the error names the
    checkpoint and its folder, and neither a partial nor an empty file is left (the checkpoints already there are
    untouched). Remote paths (``s3://``) go through Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path = Path(path)
        try:
            write_bytes_atomically(path, buffer.getvalue())
        except OSError as err:
            raise StorageError(f"cannot write the checkpoint {path.name!r} in {str(path.parent)!r}: "
                               f"{err.strerror or err}; {storage_fix(err)} (the checkpoints already in that folder are "
                               "intact)") from None


class InterruptionReport(pl.Callback):
    """When SIGINT or SIGTERM stops a fit, validation or test: what was kept and how to go on, for the one line
    :func:`vlprompt.interrupts.stop_cleanly` prints. A fit keeps the ``last.ckpt`` of its last finished epoch
    (saved at every epoch end), which resumes it exactly; a half-finished epoch is not saved, since resuming
    mid-epoch would not draw the batches an uninterrupted fit draws."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        name = signal_of(exception)
        if name is not None:
            note_signal(name)
            set_resume_hint(resume_hint(trainer))


def resume_hint(trainer: pl.Trainer) -> str:
    """What an interrupted run kept and how to go on."""
    if trainer.state.fn != TrainerFn.FITTING:
        return f"the {trainer.state.fn.value} wrote no result; run the same command again"
    path = last_checkpoint(trainer)
    if path is None:
        return "no epoch had finished, so there is no checkpoint to resume from; run the same command again"
    try:
        finished = finished_epochs(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:  # noqa: BLE001 - only for the message: an unreadable count is left out
        finished = None
    done = f"{finished} of {trainer.max_epochs} epochs finished; " if finished is not None else ""
    return f"{done}resume with the same command and --ckpt_path {path}"


def last_checkpoint(trainer: pl.Trainer) -> Optional[Path]:
    """The ``last.ckpt`` of this fit (written by this process, or by the ranks it started, or left by the fit it
    resumed), if there is one. Ranks started by ``ddp_spawn`` or ``ddp_fork`` hand back only ``best_model_path``,
    which lies beside it."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    last = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
    candidates = [callback.last_model_path,
                  getattr(callback, "dirpath", None) and Path(callback.dirpath) / last,
                  callback.best_model_path and Path(callback.best_model_path).with_name(last)]
    return next((Path(path) for path in candidates if path and Path(path).is_file()), None)


def finished_epochs(checkpoint: dict) -> int:
    """How many epochs the fit that saved ``checkpoint`` had finished."""
    # Saved at an epoch's end, before Lightning counts it "completed": "processed" counts it, as a resumed fit does.
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", -1)) + 1


class GaussianPromptAggregation(WeightAveraging):
    """Gaussian prompt aggregation (Khattak et al., "Self-regulating Prompts", ICCV 2023): what is evaluated and
    saved is ``sum_e w_e theta_e`` over the epochs ``e = 1..E`` of the fit, with ``w_e`` a Gaussian density of the
    epoch (``mean``, ``std``) normalised to sum to 1.

    Built on Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging`: the aggregate is updated at the
    end of every epoch as a running weighted mean (after epoch ``e`` it is ``sum_{i<=e} w_i theta_i / sum_{i<=e}
    w_i``, so after the last epoch it is the normalised sum), validation sees the aggregate, ``last.ckpt`` holds
    it as its ``state_dict`` (the current prompts go to ``current_model_state``, so resuming a fit mid-way keeps
    both), and the learner ends the fit holding it. The reference instead scales and sums whole state dicts at
    each epoch end; the result is the same up to floating-point rounding. The weights are computed in log space,
    so epochs far from ``mean`` never make 0/0. Only learned parameters are averaged (buffers are token ids).

    Add it to any learner with ``--trainer.callbacks+=vlprompt.callbacks.GaussianPromptAggregation``
    (``--trainer.callbacks.mean``, ``--trainer.callbacks.std``); PromptSRC adds it itself.
    """

    def __init__(self, mean: float = 15.0, std: float = 1.0):
        if not std > 0:
            raise ValueError(f"GaussianPromptAggregation std must be positive, got {std}")
        super().__init__(use_buffers=False, avg_fn=self._average)
        self.mean, self.std = float(mean), float(std)
        self._epoch = 0

    def log_weight(self, epoch: int) -> float:
        """Log of the unnormalised Gaussian weight of ``epoch`` (1-based); the constant factor cancels."""
        return -((epoch - self.mean) ** 2) / (2 * self.std ** 2)

    def weights(self, epochs: int) -> list[float]:
        """The normalised weights ``w_1 .. w_E`` (they sum to 1)."""
        logs = [self.log_weight(e) for e in range(1, epochs + 1)]
        top = max(logs)
        raw = [math.exp(value - top) for value in logs]
        return [value / sum(raw) for value in raw]

    def fraction(self, epoch: int) -> float:
        """``w_e / sum_{i<=e} w_i``: how far the running aggregate moves towards epoch ``e``'s parameters."""
        logs = [self.log_weight(e) for e in range(1, epoch + 1)]
        top = max(logs)
        return math.exp(logs[-1] - top) / sum(math.exp(value - top) for value in logs)

    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        return epoch_idx is not None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = trainer.current_epoch + 1
        super().on_train_epoch_end(trainer, pl_module)

    def _average(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        return averaged + self.fraction(self._epoch) * (current - averaged)
