"""Base-to-novel runs through the ``vlprompt`` command: fit on the base classes, test on base and novel.

The novel classes are tested with the very prompts learned on the base classes (the checkpoint of the last
epoch), as the CoOp/CoCoOp protocol prescribes; learners with nothing to train are only tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from vlprompt.callbacks import last_checkpoint
from vlprompt.cli import create_cli
from vlprompt.eval.accuracy import harmonic_mean


def cli_test(args: Sequence[str]) -> tuple[float, dict]:
    """``vlprompt test ARGS``: its test accuracy in percent, and what its data module records of the data (the
    split file, whether it was built here, the classes with fewer training images than the shots asked for)."""
    cli = create_cli(["test", *args], record_evaluations=False)  # the suite writes its own metrics.json
    return float(cli.trainer.callback_metrics["test/acc"]), cli.datamodule.provenance()


def fit_checkpoint(args: Sequence[str], subsample: str, resume: Optional[Path] = None) -> str:
    """``vlprompt fit ARGS`` on ``subsample`` (going on from ``resume``, an interrupted fit's ``last.ckpt``);
    returns the path of the last checkpoint."""
    resume_args = ["--ckpt_path", str(resume)] if resume else []
    fit = create_cli(["fit", *args, "--data.subsample", subsample, *resume_args])
    # A resumed fit that had already reached its last epoch saves nothing new: its checkpoint is the one given.
    return str(last_checkpoint(fit.trainer) or resume)


def fit_then_test(args: Sequence[str], subsample: str, trains: bool,
                  resume: Optional[Path] = None) -> tuple[list[str], float, dict]:
    """Fit on ``subsample`` (when the learner trains), test there; returns the args with the checkpoint added, the
    accuracy and the data's record (:func:`cli_test`)."""
    args = list(args)
    if trains:
        args += ["--ckpt_path", fit_checkpoint(args, subsample, resume)]
    return (args, *cli_test([*args, "--data.subsample", subsample]))


def base_to_novel(args: Sequence[str], trains: bool, resume: Optional[Path] = None,
                  transductive: bool = False) -> dict:
    """``base_acc``, ``novel_acc`` and ``hm`` in percent for one learner/data configuration, and ``data``: what
    the base half's data module records (the training data's split and shots). ``transductive``: the fit reads
    every training image of every class, novel included (a learner that reads no label: PromptKD's setting); the
    tests are the same."""
    args = [*args, "--data.shots", "-1"] if transductive else list(args)
    if trains:
        args += ["--ckpt_path", fit_checkpoint(args, "all" if transductive else "base", resume)]
    base, data = cli_test([*args, "--data.subsample", "base"])
    novel, _ = cli_test([*args, "--data.subsample", "novel"])
    return {"base_acc": base, "novel_acc": novel, "hm": harmonic_mean(base, novel), "data": data}


def run_base_to_novel(config_args: Sequence[str], run_dir: Path, name: str, train: bool = True,
                      transductive: bool = False) -> dict:
    """:func:`base_to_novel` with logs and checkpoints in ``run_dir/name``.

    ``config_args`` are ``vlprompt`` arguments (``--config`` files and overrides).
    """
    args = [*map(str, config_args), "--trainer.logger.init_args.save_dir", str(run_dir),
            "--trainer.logger.init_args.name", name, "--trainer.enable_model_summary", "false"]
    return base_to_novel(args, train, transductive=transductive)
