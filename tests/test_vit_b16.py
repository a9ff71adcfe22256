"""The real ViT-B/16 architecture (random weights): the papers' parameter counts and one forward per learner."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import vlprompt

#: Trainable parameters on ViT-B/16 as the papers report them (MaPLe: "about 3.55 M").
PAPER_COUNTS = {"coop": 2_048, "kgcoop": 2_048, "cocoop": 35_360, "maple": 3_555_072, "zeroshot": 0}
CLASSNAMES = ["dog", "cat", "sea turtle"]


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return vlprompt.load_clip("ViT-B-16")


def test_every_registered_learner_has_a_paper_count():
    assert set(vlprompt.list_learners()) <= set(PAPER_COUNTS)


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameter_count_and_forward(name, vit_b16):
    learner = vlprompt.build_learner(name, clip=vit_b16, classnames=CLASSNAMES).eval()
    assert learner.num_trainable_parameters() == PAPER_COUNTS[name]
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
