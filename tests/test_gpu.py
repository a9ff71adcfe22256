"""What only a GPU can show: the CasPL and PromptKD teachers leaving the device once their features are cached, a fit
with the frozen weights held in bf16 and the learner compiled with CUDA graphs, CoCoOp's text chunks chosen from the
device's free memory, and a sweep's workers pinned to a GPU. Skipped without CUDA (tools/gpu_checks.sh runs them on a
lent GPU)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import vlprompt

from conftest import CLASSNAMES, save_fitted, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class UnaugmentedData(pl.LightningDataModule):
    """Fixed images without augmentation: what lets CasPL cache its teacher."""

    augment = False

    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels = images, labels

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=4, shuffle=True)


def trainer(tmp_path, **options) -> pl.Trainer:
    return pl.Trainer(accelerator="cuda", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      limit_val_batches=0, num_sanity_val_steps=0, **options)


class WhereModelsAre(pl.Callback):
    """The devices of the student and the teacher during training (a fit's end moves the learner to the CPU)."""

    def on_train_epoch_end(self, trainer, learner):
        self.seen = (learner.clip.device.type, learner.teacher.device.type, learner.teacher_offloaded,
                     len(learner._teacher_cache))


def test_caspl_offloads_its_teacher_once_every_image_is_cached(tmp_path):
    torch.manual_seed(0)
    student = vlprompt.load_clip(tiny_config())
    teacher = vlprompt.load_clip(tiny_config(text_cfg={"width": 48, "heads": 3}))
    learner = vlprompt.build_learner("caspl_boost", clip=student, teacher=teacher, classnames=CLASSNAMES, lr=0.05,
                                     warmup_epochs=0)
    images = torch.randn(12, 3, 32, 32)
    before = learner.prompts.ctx.detach().clone()
    where = WhereModelsAre()
    trainer(tmp_path, callbacks=[where]).fit(learner, datamodule=UnaugmentedData(images, torch.full((12,), -1)))
    assert where.seen == ("cuda", "cpu", True, 12)
    assert not torch.equal(learner.prompts.ctx.detach().cpu(), before)


def test_promptkd_offloads_its_teacher_once_every_image_is_cached(tmp_path):
    torch.manual_seed(0)
    student = vlprompt.load_clip(tiny_config())
    teacher_clip = vlprompt.load_clip(tiny_config(text_cfg={"width": 48, "heads": 3}))
    teacher = save_fitted(vlprompt.build_learner("promptsrc", clip=teacher_clip, classnames=CLASSNAMES),
                          tmp_path / "teacher.ckpt")
    learner = vlprompt.build_learner("promptkd", clip=student, teacher_checkpoint=teacher, classnames=CLASSNAMES,
                                     lr=0.05, warmup_epochs=0)
    images = torch.randn(12, 3, 32, 32)
    before = learner.vision_prompts[0].detach().clone()
    where = WhereModelsAre()
    trainer(tmp_path, callbacks=[where]).fit(learner, datamodule=UnaugmentedData(images, torch.full((12,), -1)))
    assert where.seen == ("cuda", "cpu", True, 12)
    assert not torch.equal(learner.vision_prompts[0].detach().cpu(), before)


def test_a_fit_in_bf16_holds_the_weights_and_runs_compiled_with_cuda_graphs(tmp_path):
    torch.manual_seed(0)
    clip = vlprompt.load_clip(tiny_config())
    learner = vlprompt.build_learner("coop", clip=clip, classnames=CLASSNAMES, compile="reduce-overhead")
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % len(CLASSNAMES)
    before = learner.prompts.ctx.detach().clone()
    trainer(tmp_path, precision="bf16-mixed").fit(learner, DataLoader(TensorDataset(images, labels), batch_size=4))
    assert clip.compute_dtype == torch.bfloat16 and learner._compiled
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in learner.parameters())
    assert not torch.equal(learner.prompts.ctx.detach().cpu(), before)


def test_cocoop_auto_chunks_come_from_the_free_memory_of_a_real_gpu(tmp_path):
    torch.manual_seed(0)
    clip = vlprompt.load_clip(tiny_config())
    learner = vlprompt.build_learner("cocoop", clip=clip, classnames=CLASSNAMES, activation_checkpointing=True)
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % len(CLASSNAMES)
    before = learner.meta_net.linear2.weight.detach().clone()
    trainer(tmp_path).fit(learner, DataLoader(TensorDataset(images, labels), batch_size=4))
    # A tiny model's class prompts are a few MB: the whole batch is one chunk, in training and in evaluation.
    assert learner._auto_chunks == {(4, len(CLASSNAMES), True): 4}
    learner = learner.cuda().eval()
    with torch.no_grad():
        learner(images.cuda())
    assert learner._auto_chunks[(16, len(CLASSNAMES), False)] == 16
    assert not torch.equal(learner.meta_net.linear2.weight.detach().cpu(), before)


def test_a_sweep_puts_two_runs_on_one_gpu_and_each_worker_sees_only_it(tmp_path, capsys):
    """`--devices 0 --runs-per-device 2`: two workers pinned to GPU 0 (CUDA_VISIBLE_DEVICES), each training its runs
    there."""
    from vlprompt.commands import main
    from vlprompt.toy import write_toy_dataset

    from conftest import REPO

    write_toy_dataset("ToyShapes", tmp_path / "ToyShapes", train_per_class=4, val_per_class=2, test_per_class=2)
    config = tmp_path / "ToyShapes.yaml"
    config.write_text(f"data:\n  root: {tmp_path / 'ToyShapes'}\n  split_file: split_zhou_ToyShapes.json\n"
                      "  num_workers: 0\n  batch_size: 8\n")
    runs = tmp_path / "runs"
    main(["suite", "base2novel", "--learner", str(REPO / "configs" / "learners" / "coop.yaml"), "--clip",
          str(REPO / "configs" / "clip" / "toy.yaml"), "--data", str(config), "--seeds", "1", "2", "--shots", "4",
          "--runs", str(runs), "--devices", "0", "--runs-per-device", "2", "--", "--trainer.max_epochs", "1"])
    assert "[sweep] 2 workers (cuda:0, cuda:0;" in capsys.readouterr().out
    logs = sorted((runs / "sweeps").rglob("worker-*.log"))
    assert len(logs) == 2
    assert any("GPU available: True (cuda), used: True" in log.read_text() for log in logs)
