"""No host-device synchronisation in any learner's training step: torch.compile traces the text-feature path as one
graph, and a whole step (loss, backward, optimiser) calls no operation that makes the host wait for a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.learners import get_learner_class

from torch.utils._python_dispatch import TorchDispatchMode

from conftest import CLASSNAMES, learner_arguments

TRAINABLE = [name for name in vlprompt.list_learners() if get_learner_class(name).needs_training]
#: Operations whose result the host must read back from a GPU (a scalar, a data-dependent shape) or that copy
#: Python data onto it; ``index`` counts only with a boolean mask.
WAITING_OPERATIONS = {"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique", "_unique2",
                      "unique_dim", "unique_consecutive", "equal", "repeat_interleave", "lift_fresh"}


class WaitingOperations(TorchDispatchMode):
    """Records every operation of ``WAITING_OPERATIONS`` dispatched while on (a CPU run shows what a GPU run would
    wait for)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masked = name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or [])
        if name in WAITING_OPERATIONS or masked:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


#: Learners whose class text features are learned (zero-shot's are frozen hand-template features).
LEARNED_TEXT = [name for name in vlprompt.list_learners() if hasattr(get_learner_class(name), "text_features")]


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNED_TEXT)
def test_text_feature_path_compiles_as_one_graph(name, tiny_clip):
    learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES,
                                     **learner_arguments(name, tiny_clip, CLASSNAMES))
    # Per-image prompts (CoCoOp) take the images' features.
    args = [] if get_learner_class(name).image_independent_text else [F.normalize(torch.randn(2, tiny_clip.embed_dim),
                                                                                   dim=-1)]
    expected = learner.text_features(*args)  # eager first: what a learner prepares once (PromptKD's teacher text)
    torch._dynamo.reset()
    compiled = torch.compile(learner.text_features, fullgraph=True, backend="eager")  # a graph break raises here
    torch.testing.assert_close(compiled(*args), expected)


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_training_step_calls_nothing_that_waits_for_the_device(name, tiny_clip, image_batch):
    """Loss, backward and an SGD step, as tools/bench.py --gpu-speed times them; a fit adds Lightning's logging,
    whose progress bar reads the loss back at each refresh (and the finite-loss check that rides on it)."""
    images, labels = image_batch
    learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES,
                                     **learner_arguments(name, tiny_clip, CLASSNAMES)).train()
    optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = learner.training_loss(images, labels).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step()  # the first step builds what later steps reuse (caches, momentum buffers)
    with WaitingOperations() as probe:
        step()
    assert probe.seen == []


def test_the_probe_sees_an_operation_that_waits():
    with WaitingOperations() as probe:
        values = torch.tensor([1.0, -2.0, 3.0])
        values[values > 0].sum().item()
    assert {"aten.lift_fresh.default", "aten.index.Tensor", "aten._local_scalar_dense.default"} <= set(probe.seen)


def test_the_short_prompt_attention_kernels_trace_as_one_graph_and_change_no_result():
    from vlprompt.clip.towers import TextTuning, attention_for

    short = TextTuning().short_sequence
    assert attention_for("cpu", 13, short).__class__.__name__ == "nullcontext"
    assert attention_for("cuda", short + 1, short).__class__.__name__ == "nullcontext"
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 6, 2, 13, 8).unbind(0)
    mask = torch.full((13, 13), float("-inf")).triu(1)

    def attend(query, key, value):
        # The GPU's kernel choice entered on a CPU, where torch picks among the kernels it leaves in.
        with attention_for("cuda", 13, short):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    compiled = torch.compile(attend, fullgraph=True, backend="eager")
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    torch.testing.assert_close(compiled(query, key, value), expected)
    torch.testing.assert_close(attend(query, key, value), expected)
