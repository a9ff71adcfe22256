"""DDP on CPU (gloo, 2 processes): training works for every learner, and evaluation counts each image once.

Each run is a ``vlprompt`` process, never pytest itself. The exactly-once check runs ``--trainer.strategy ddp`` in
fresh processes, as on a GPU node: Lightning starts the second rank as a new ``python -m vlprompt.cli``. The runs of
every learner go through the command server (tests/command_server.py) with ``ddp_fork``, whose ranks are forked
from the command's process: what they check is the learner under DDP (gradient all-reduce, unused prompts), which
does not depend on how the ranks were started, and they check that vlprompt reports the folders its rank 0 wrote
when the command's own process only waits for the ranks.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlprompt.learners import get_learner_class, list_learners
from vlprompt.learners.registry import hyperparameter_names
from vlprompt.toy import write_toy_dataset

from command_server import VLPROMPT_CLIENT, serving
from conftest import REPO, teacher_checkpoint

CONFIGS = REPO / "configs"
TRAINABLE = [name for name in list_learners() if get_learner_class(name).needs_training]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "ToyShapes"
    # 25 test images: an odd count, so 2 ranks cannot split it evenly without padding.
    write_toy_dataset("ToyShapes", root, train_per_class=4, val_per_class=1, test_per_class=1)
    return root


#: Two ranks share two cores.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def server(toy_data) -> dict:
    """The environment of ``vlprompt`` commands run through a command server started with one thread."""
    with serving(toy_data.parent, ONE_THREAD) as env:
        yield env


def toy_arguments(learner: str, data: Path, logs: Path, name: str, devices: int) -> list[str]:
    return ["--config", str(CONFIGS / "learners" / f"{learner}.yaml"), "--config", str(CONFIGS / "clip" / "toy.yaml"),
            "--config", str(CONFIGS / "data" / "toy" / "ToyShapes.yaml"), "--data.root", str(data), "--data.shots", "4",
            "--data.batch_size", "8", "--data.eval_batch_size", "4", "--data.num_workers", "0", "--seed_everything",
            "1", "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.enable_progress_bar",
            "false", "--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.name", name]


def strategy(learner: str, launcher: str) -> str:
    """``ddp`` or ``ddp_fork``; a learner that may leave prompts unused in a step asks DDP to look for them."""
    unused = get_learner_class(learner).may_leave_parameters_unused
    return f"{launcher}_find_unused_parameters_true" if unused else launcher


def run_ok(program: list[str], cwd: Path, env: dict) -> str:
    run = subprocess.run(program, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def vlprompt(command: str, learner: str, data: Path, logs: Path, name: str, devices: int, *extra) -> Path:
    """A fresh ``python -m vlprompt.cli`` process; with 2 devices, under ``ddp``."""
    args = toy_arguments(learner, data, logs, name, devices) + list(extra)
    if devices > 1:
        args += ["--trainer.strategy", strategy(learner, "ddp")]
    run_ok([sys.executable, "-m", "vlprompt.cli", command, *args], logs.parent, ONE_THREAD)
    return logs / name / "version_0"


def on_server(server: dict, cwd: Path, *args: str) -> str:
    """``vlprompt ARGS`` run by the command server; its output."""
    return run_ok([sys.executable, "-c", VLPROMPT_CLIENT, *args], cwd, server)


def forked_ranks(server: dict, command: str, learner: str, data: Path, logs: Path, name: str, *extra) -> str:
    """``vlprompt COMMAND`` through the command server on two ranks forked from it (``ddp_fork``); its output."""
    args = [*toy_arguments(learner, data, logs, name, 2), "--trainer.strategy", strategy(learner, "ddp_fork"), *extra]
    return on_server(server, logs.parent, command, *args)


def fitted(output: str, logs: Path, name: str) -> Path:
    """The checkpoint a fit's output names, checked to be its run's ``last.ckpt``."""
    checkpoint = logs / name / "version_0" / "checkpoints" / "last.ckpt"
    assert f"vlprompt: checkpoint {checkpoint}" in output, output[-2000:]
    assert checkpoint.is_file()
    return checkpoint


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
def test_two_process_training_completes(learner, toy_data, server, tmp_path):
    # A learner with a teacher (CasPL's boosting stage) distils the toy CLIP itself here: no download offline.
    teacher = (["--model.init_args.teacher.init_args.name", "vlprompt-tiny",
                "--model.init_args.teacher.init_args.pretrained", "toy"]
               if "teacher" in hyperparameter_names(get_learner_class(learner)) else [])
    if get_learner_class(learner).teacher_recipe is not None:  # PromptKD: a promptsrc teacher on the toy CLIP itself
        import vlprompt as package

        teacher = ["--model.init_args.teacher_checkpoint",
                   teacher_checkpoint(package.load_clip("vlprompt-tiny", pretrained="toy"))]
    logs = tmp_path / "logs"
    fitted(forked_ranks(server, "fit", learner, toy_data, logs, learner, "--trainer.max_epochs", "1", *teacher),
           logs, learner)


@pytest.mark.slow
def test_mixture_of_prompts_trains_under_ddp_with_experts_left_unused(toy_data, server, tmp_path):
    # Without the text term only the experts some image picks are encoded: DDP sees the others unused.
    logs = tmp_path / "logs"
    fitted(forked_ranks(server, "fit", "mocoop", toy_data, logs, "mocoop", "--trainer.max_epochs", "1",
                        "--model.init_args.text_loss_weight", "0", "--model.init_args.top_k", "1"), logs, "mocoop")


@pytest.mark.slow
def test_forked_ranks_report_the_folders_their_rank_0_wrote(toy_data, server, tmp_path):
    """Under ``ddp_fork`` (as ``ddp_spawn`` and ``ddp_notebook``) the command's process only starts the ranks and
    waits; its report names the checkpoint and folders rank 0 wrote, and a suite tests the checkpoint it fitted."""
    logs = tmp_path / "logs"
    checkpoint = fitted(forked_ranks(server, "fit", "coop", toy_data, logs, "fit", "--trainer.max_epochs", "1"),
                        logs, "fit")
    tested = forked_ranks(server, "test", "coop", toy_data, logs, "test", "--ckpt_path", str(checkpoint))
    run = logs / "test" / "version_0"
    assert f"metrics in {run}" in tested
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".json" or p.name.startswith("per_class")) == [
        "metrics.json", "per_class_ToyShapes_all.csv"]
    assert not (logs / "test" / "version_1").exists()
    (tmp_path / "ranks.yaml").write_text("trainer:\n  accelerator: cpu\n  devices: 2\n  strategy: ddp_fork\n"
                                        "  max_epochs: 1\n  enable_progress_bar: false\n"
                                        "data:\n  num_workers: 0\n  batch_size: 8\n  eval_batch_size: 4\n")
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "ToyShapes").symlink_to(toy_data)  # where ToyShapes.yaml's data.root points
    on_server(server, tmp_path, "suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"),
              str(tmp_path / "ranks.yaml"), "--clip", str(CONFIGS / "clip" / "toy.yaml"), "--data",
              str(CONFIGS / "data" / "toy" / "ToyShapes.yaml"), "--seeds", "1", "--shots", "4", "--runs",
              str(tmp_path / "suite"))
    run = tmp_path / "suite" / "base2novel" / "coop" / "ToyShapes" / "shots4_seed1"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert {"base_acc", "novel_acc", "hm"} <= set(json.loads((run / "metrics.json").read_text()))
    # wandb names its version (the run id) only once rank 0 starts the run: the checkpoints go into that folder.
    wandb = forked_ranks({**server, "WANDB_MODE": "offline"}, "fit", "coop", toy_data, logs, "wandb",
                         "--trainer.max_epochs", "1", "--trainer.logger", "WandbLogger",
                         "--trainer.logger.init_args.project", "proj")
    [checkpoint] = (logs / "proj").glob("*/checkpoints/last.ckpt")  # save_dir/project/run id
    assert checkpoint.parent.parent.name != "version_None" and f"vlprompt: checkpoint {checkpoint}" in wandb


def test_the_last_checkpoint_is_found_beside_the_one_ranks_hand_back(tmp_path):
    """Ranks started by ddp_spawn/ddp_fork hand their command's process only ``best_model_path``."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from vlprompt.callbacks import last_checkpoint

    callback = ModelCheckpoint(save_last=True)
    trainer = type("Trainer", (), {"checkpoint_callback": callback})()
    assert last_checkpoint(trainer) is None
    callback.best_model_path = str(tmp_path / "epoch=0-step=6.ckpt")
    assert last_checkpoint(trainer) is None  # no last.ckpt there
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert last_checkpoint(trainer) == tmp_path / "last.ckpt"
    callback.last_model_path = str(tmp_path / "other" / "last.ckpt")  # this process's own, when it exists, first
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "last.ckpt").write_bytes(b"")
    assert last_checkpoint(trainer) == tmp_path / "other" / "last.ckpt"


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
