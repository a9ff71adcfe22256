"""One base-to-novel run through the ``vlprompt`` command: fit on the base classes, test on base and novel.

The novel classes are tested with the very prompts learned on the base classes (the checkpoint of the last
epoch), as the CoOp/CoCoOp protocol prescribes; learners with nothing to train are only tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vlprompt.cli import create_cli
from vlprompt.eval.accuracy import harmonic_mean


def _test(args: Sequence[str]) -> float:
    cli = create_cli(["test", *args])
    return float(cli.trainer.callback_metrics["test/acc"])


def run_base_to_novel(config_args: Sequence[str], run_dir: Path, name: str, train: bool = True) -> dict:
    """Run one learner/data configuration; return ``base_acc``, ``novel_acc`` and ``hm`` in percent.

    ``config_args`` are ``vlprompt`` arguments (``--config`` files and overrides); logs and checkpoints go to
    ``run_dir/name``.
    """
    args = [*map(str, config_args), "--trainer.logger.init_args.save_dir", str(run_dir),
            "--trainer.logger.init_args.name", name, "--trainer.enable_model_summary", "false"]
    if train:
        fit = create_cli(["fit", *args, "--data.subsample", "base"])
        args += ["--ckpt_path", fit.trainer.checkpoint_callback.last_model_path]
    base = _test([*args, "--data.subsample", "base"])
    novel = _test([*args, "--data.subsample", "novel"])
    return {"base_acc": base, "novel_acc": novel, "hm": harmonic_mean(base, novel)}
