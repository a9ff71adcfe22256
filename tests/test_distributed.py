"""DDP on CPU (gloo, 2 processes): training works for every learner, and evaluation counts each image once.

Each run is a `python -m vlprompt.cli` subprocess; Lightning launches the second rank itself, so pytest is never
re-launched inside itself.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlprompt.learners import get_learner_class, list_learners
from vlprompt.learners.registry import hyperparameter_names
from vlprompt.toy import write_toy_dataset

from conftest import REPO, teacher_checkpoint

CONFIGS = REPO / "configs"
TRAINABLE = [name for name in list_learners() if get_learner_class(name).needs_training]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "ToyShapes"
    # 25 test images: an odd count, so 2 ranks cannot split it evenly without padding.
    write_toy_dataset("ToyShapes", root, train_per_class=4, val_per_class=1, test_per_class=1)
    return root


def vlprompt(command: str, learner: str, data: Path, logs: Path, name: str, devices: int, *extra) -> Path:
    args = [sys.executable, "-m", "vlprompt.cli", command, "--config", str(CONFIGS / "learners" / f"{learner}.yaml"),
            "--config", str(CONFIGS / "clip" / "toy.yaml"), "--config", str(CONFIGS / "data" / "toy" / "ToyShapes.yaml"),
            "--data.root", str(data), "--data.shots", "4", "--data.batch_size", "8", "--data.eval_batch_size", "4",
            "--data.num_workers", "0", "--seed_everything", "1", "--trainer.accelerator", "cpu",
            "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.name", name, *extra]
    if devices > 1:  # a learner that may leave prompts unused in a step asks DDP to look for them
        unused = get_learner_class(learner).may_leave_parameters_unused
        args += ["--trainer.strategy", "ddp_find_unused_parameters_true" if unused else "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks share two cores
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=logs.parent, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return logs / name / "version_0"


def test_accuracy(log_dir: Path) -> float:
    rows = [r for r in csv.DictReader((log_dir / "metrics.csv").open()) if r.get("test/acc")]
    return float(rows[-1]["test/acc"])


test_accuracy.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_two_processes_train_and_test_every_image_exactly_once(toy_data, tmp_path):
    logs = tmp_path / "logs"
    fit = vlprompt("fit", "coop", toy_data, logs, "fit", 2, "--trainer.max_epochs", "2")
    checkpoint = fit / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    two = vlprompt("test", "coop", toy_data, logs, "test2", 2, "--ckpt_path", str(checkpoint))
    one = vlprompt("test", "coop", toy_data, logs, "test1", 1, "--ckpt_path", str(checkpoint))
    assert test_accuracy(two) == test_accuracy(one)
    per_class = [(run / "per_class_ToyShapes_all.csv").read_text() for run in (two, one)]
    assert per_class[0] == per_class[1]


@pytest.mark.slow
@pytest.mark.parametrize("learner", [n for n in TRAINABLE if n != "coop"])
def test_two_process_training_completes(learner, toy_data, tmp_path):
    # A learner with a teacher (CasPL's boosting stage) distils the toy CLIP itself here: no download offline.
    teacher = (["--model.init_args.teacher.init_args.name", "vlprompt-tiny",
                "--model.init_args.teacher.init_args.pretrained", "toy"]
               if "teacher" in hyperparameter_names(get_learner_class(learner)) else [])
    if get_learner_class(learner).teacher_recipe is not None:  # PromptKD: a promptsrc teacher on the toy CLIP itself
        import vlprompt as package

        teacher = ["--model.init_args.teacher_checkpoint",
                   teacher_checkpoint(package.load_clip("vlprompt-tiny", pretrained="toy"))]
    fit = vlprompt("fit", learner, toy_data, tmp_path / "logs", learner, 2, "--trainer.max_epochs", "1", *teacher)
    assert (fit / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_mixture_of_prompts_trains_under_ddp_with_experts_left_unused(toy_data, tmp_path):
    # Without the text term only the experts some image picks are encoded: DDP sees the others unused.
    fit = vlprompt("fit", "mocoop", toy_data, tmp_path / "logs", "mocoop", 2, "--trainer.max_epochs", "1",
                   "--model.init_args.text_loss_weight", "0", "--model.init_args.top_k", "1")
    assert (fit / "checkpoints" / "last.ckpt").is_file()


def test_learners_that_may_leave_prompts_unused_must_say_so_under_ddp(tiny_clip):
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy

    from vlprompt.errors import ConfigError
    CoOp = get_learner_class("coop")

    class RoutedCoOp(CoOp):  # stands for a learner whose router may skip some prompts in a step
        may_leave_parameters_unused = True

    learner = RoutedCoOp(clip=tiny_clip, classnames=["cat", "dog"])
    learner.trainer = pl.Trainer(accelerator="cpu", devices=1, strategy=DDPStrategy(), logger=False)
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        learner.on_fit_start()
    learner.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False,
                                 strategy=DDPStrategy(find_unused_parameters=True))
    learner.on_fit_start()
