"""The real ViT-B/16 architecture (random weights): the papers' parameter counts and one forward per learner."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import vlprompt
from vlprompt.learners import get_learner_class

from conftest import learner_arguments

LEARNERS = vlprompt.list_learners()
CLASSNAMES = ["dog", "cat", "sea turtle"]


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return vlprompt.load_clip("ViT-B-16")


@pytest.mark.parametrize("name", LEARNERS)
def test_parameter_count_is_the_papers_and_forward_runs(name, vit_b16):
    """Each learner declares its paper's count on ViT-B/16 (``paper_trainable_parameters``; MaPLe: "about 3.55
    M"), and builds exactly that many trainable parameters."""
    paper = get_learner_class(name).paper_trainable_parameters
    assert paper is not None, f"{name} declares no paper_trainable_parameters"
    learner = vlprompt.build_learner(name, clip=vit_b16, classnames=CLASSNAMES,
                                     **learner_arguments(name, vit_b16, CLASSNAMES)).eval()
    assert learner.num_trainable_parameters() == paper
    with torch.no_grad():
        logits = learner(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, len(CLASSNAMES)) and torch.isfinite(logits).all()



def test_coop_checkpoint_is_well_under_a_megabyte(vit_b16, tmp_path):
    learner = vlprompt.build_learner("coop", clip=vit_b16, classnames=[f"class {i}" for i in range(100)])
    loader = DataLoader(TensorDataset(torch.randn(2, 3, 224, 224), torch.tensor([0, 1])), batch_size=2)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(learner, loader)
    trainer.save_checkpoint(tmp_path / "coop.ckpt")
    assert (tmp_path / "coop.ckpt").stat().st_size < 100_000
