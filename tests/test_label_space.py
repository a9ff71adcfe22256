"""CoOp over label spaces far beyond ImageNet's (issue 30): the class prompts encoded in chunks recomputed in the
backward pass give the features, loss and gradients of encoding them all at once."""

from __future__ import annotations

import pytest
import torch

import vlprompt
from vlprompt.errors import ConfigError

NAMES = [f"class number {i}" for i in range(23)]


@pytest.mark.parametrize("name", ["coop", "kgcoop", "tcp"])
def test_class_chunks_give_the_same_loss_and_gradients(tiny_clip, image_batch, name):
    images, labels = image_batch
    torch.manual_seed(0)
    whole = vlprompt.build_learner(name, tiny_clip, NAMES).train()
    chunked = vlprompt.build_learner(name, tiny_clip, NAMES, class_chunk_size=5).train()
    chunked.load_state_dict(whole.state_dict())
    losses = []
    for learner in (whole, chunked):
        loss = learner.training_loss(images, labels).total
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    for (key, a), b in zip(whole.named_parameters(), chunked.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5 * a.grad.abs().max().item()), key
    with torch.no_grad():
        assert torch.allclose(whole.eval()(images), chunked.eval()(images), atol=1e-5)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_a_class_chunk_that_is_not_a_positive_count_is_refused(tiny_clip, value):
    with pytest.raises(ConfigError, match="class_chunk_size must be a positive number of classes or null"):
        vlprompt.build_learner("coop", tiny_clip, NAMES, class_chunk_size=value)
