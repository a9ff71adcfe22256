"""What a run reports beyond ``test/acc``: per-class accuracy (a file, and a table on wandb), the resolved
config on experiment trackers, and the wandb side of ``vlprompt suite --wandb``.

wandb is never required: it is imported only when a wandb logger or ``--wandb`` is asked for, and works
offline (``WANDB_MODE=offline``; ``wandb sync`` uploads later).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, WandbLogger

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


class SaveAndLogConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the log directory, and the resolved config on experiment trackers
    (a CSV run already keeps that file beside its metrics)."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = self.config.as_dict()
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                logger.log_hyperparams({"config": config})


@dataclass(frozen=True)
class WandbOptions:
    """Where ``vlprompt suite --wandb`` logs."""

    project: str = "vlprompt"
    entity: Optional[str] = None


def wandb_logger_args(options: WandbOptions, save_dir: Path, name: str, group: str, job_type: str,
                      tags: Sequence[str]) -> list[str]:
    """``vlprompt`` arguments that log one suite run to wandb (fit and both tests land in the same run)."""
    args = ["--trainer.logger", "pytorch_lightning.loggers.WandbLogger",
            "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.logger.init_args.project", options.project,
            "--trainer.logger.init_args.name", name, "--trainer.logger.dict_kwargs.group", group,
            "--trainer.logger.dict_kwargs.job_type", job_type, "--trainer.logger.dict_kwargs.tags", str(list(tags))]
    if options.entity:
        args += ["--trainer.logger.dict_kwargs.entity", options.entity]
    return args


def finish_wandb_run(summary: dict) -> None:
    """Put the run's final metrics into the wandb run summary and close the run (the next run opens its own)."""
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(summary)
        wandb.finish()


def log_suite_summary(options: WandbOptions, name: str, group: str, save_dir: Path, rows: Sequence[dict],
                      markdown: str, images: Sequence[Path]) -> None:
    """One wandb run holding a suite's aggregated table (mean, std over seeds) and its plots."""
    import wandb

    from vlprompt.eval.report import TABLE_COLUMNS, metric_keys, table_rows

    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=options.project, entity=options.entity, name=name, group=group, job_type="suite-summary",
                     dir=str(save_dir), reinit="finish_previous")
    run.log({"suite/table": wandb.Table(columns=TABLE_COLUMNS, data=table_rows(rows)),
             "suite/report": wandb.Html(f"<pre>{markdown}</pre>"),
             **{f"suite/{path.stem}": wandb.Image(str(path)) for path in images}})
    run.summary.update({f"{r['dataset']}/shots{r['shots']}/{key}": r[key]["mean"] for r in rows
                        for key in metric_keys(r["protocol"])})
    run.finish()
