"""Refactoring the learners must not change what they compute: logits, loss and one SGD step of CoOp, CoCoOp,
KgCoOp and MaPLe on a fixed seed, against values stored before the learner architecture was redesigned.

Regenerate (only for a deliberate change of results) with ``python tests/test_learner_invariance.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import vlprompt

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CLASSNAMES, tiny_config  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "learner_reference.pt"
LEARNERS = ("coop", "cocoop", "kgcoop", "maple")


def compute(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    clip = vlprompt.load_clip(tiny_config())
    torch.manual_seed(0)
    learner = vlprompt.build_learner(name, clip=clip, classnames=CLASSNAMES,
                                     templates=["a photo of a {}.", "a sketch of a {}."])
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    learner.eval()
    with torch.no_grad():
        logits = learner(images)
    learner.train()
    loss = learner_loss(learner, images, labels)
    optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.01)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    learner.eval()
    with torch.no_grad():
        stepped = learner(images)
    return {"logits": logits, "loss": loss.detach(), "logits_after_step": stepped}


def learner_loss(learner, images, labels) -> torch.Tensor:
    """The training loss through whatever API the learner offers (the total of its named terms)."""
    result = learner.training_loss(images, labels)
    return result[0] if isinstance(result, tuple) else result.total


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_outputs_are_unchanged(name):
    reference = torch.load(REFERENCE, weights_only=True)[name]
    got = compute(name)
    for key, value in reference.items():
        assert (got[key] - value).abs().max() <= 1e-6, f"{name} {key} changed"


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    torch.save({name: compute(name) for name in LEARNERS}, REFERENCE)
    print(f"wrote {REFERENCE}")
