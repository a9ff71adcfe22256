"""The wandb side of ``vlprompt suite --wandb``: one wandb run per suite run, grouped, and a summary run.
(Per-run reporting, per-class accuracy and the resolved config, is in :mod:`vlprompt.callbacks`.)

wandb is never required: it is imported only when a wandb logger or ``--wandb`` is asked for, and works
offline (``WANDB_MODE=offline``; ``wandb sync`` uploads later).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence


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
