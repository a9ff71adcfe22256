"""A context shared by all classes is encoded once: the causal text tower runs its blocks on the shared prefix
once and per class on the rest only. The features and the context's gradient must equal the full path's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.clip.towers import OpenCLIPTextTower, TextTuning
from vlprompt.learners.context import ContextPrompts

from conftest import CLASSNAMES, learner_arguments



def features_and_gradients(learner, shared: bool, monkeypatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    learner.zero_grad(set_to_none=True)
    with monkeypatch.context() as patched:
        if not shared:
            patched.setattr(ContextPrompts, "shared_prefix", property(lambda self: 0))
        args = [] if type(learner).image_independent_text else [F.normalize(torch.randn(
            2, learner.clip.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)]
        features = learner.text_features(*args)
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
    return features.detach(), {name: p.grad.clone() for name, p in learner.named_parameters() if p.grad is not None}


#: ATPrompt's attribute words and learned tokens before the context are part of the shared prefix.
ATTRIBUTES = [{"name": "atprompt", "attributes": ["colour", "shape"]}]


@pytest.mark.parametrize("plugins", [None, ATTRIBUTES], ids=["alone", "atprompt"])
@pytest.mark.parametrize("name", vlprompt.list_learners())
def test_a_shared_prefix_encoded_once_gives_the_full_paths_features_and_gradients(name, plugins, tiny_clip,
                                                                                  monkeypatch):
    """Every learner whose class prompts come from one shared text context (found by what it is built of), alone
    and with ATPrompt's attribute tokens in front of its context."""
    torch.manual_seed(0)
    learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES,
                                     **learner_arguments(name, tiny_clip, CLASSNAMES))
    if learner.text_context is None or not hasattr(learner, "text_features"):
        pytest.skip(f"{name} has no single text context")
    if learner.text_context.shared_prefix == 0:
        pytest.skip(f"{name}'s prompts share no prefix (its deep prompts differ per class)")
    if plugins:
        torch.manual_seed(0)
        learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=plugins,
                                         **learner_arguments(name, tiny_clip, CLASSNAMES))
    monkeypatch.setattr(tiny_clip, "text_tuning", TextTuning(min_sequences_to_share=2))  # five classes share here
    taken = []
    original = OpenCLIPTextTower._encode_with_shared_prefix
    monkeypatch.setattr(OpenCLIPTextTower, "_encode_with_shared_prefix",
                        lambda self, *args: taken.append(args[4]) or original(self, *args))
    shared, shared_grads = features_and_gradients(learner, True, monkeypatch)
    full, full_grads = features_and_gradients(learner, False, monkeypatch)
    # Per-image prompts (CoCoOp) share their prefix within each image's classes.
    assert taken == [learner.text_context.shared_prefix] and taken[0] >= 2
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    assert shared_grads.keys() == full_grads.keys() and shared_grads
    for key in full_grads:
        torch.testing.assert_close(shared_grads[key], full_grads[key], rtol=1e-3, atol=2e-5)  # sums reassociated


@pytest.mark.parametrize("options", [{"class_token_position": "front"}, {"class_token_position": "middle"},
                                     {"class_specific": True}])
def test_nothing_is_shared_where_the_prompts_do_not_start_alike(options, tiny_clip):
    prompts = ContextPrompts(tiny_clip, CLASSNAMES, n_ctx=4, ctx_init=None, **options)
    assert prompts.shared_prefix == 0


def test_few_classes_take_the_full_path(tiny_clip, monkeypatch):
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES)
    monkeypatch.setattr(OpenCLIPTextTower, "_encode_with_shared_prefix", lambda *args: pytest.fail("shared"))
    assert len(CLASSNAMES) < tiny_clip.text_tuning.min_sequences_to_share
    learner.text_features()


def test_the_shared_prefix_covers_the_start_token_the_context_and_fixed_words(tiny_clip):
    prompts = ContextPrompts(tiny_clip, CLASSNAMES, n_ctx=2, ctx_init="a photo of a")
    assert prompts.shared_prefix == 1 + 2 + 2  # [SOT] ctx ctx "of a"
    row = prompts.embeddings()
    assert torch.equal(row[:, :prompts.shared_prefix], row[:1, :prompts.shared_prefix].expand(len(CLASSNAMES), -1, -1))
    assert not torch.equal(row[0, prompts.shared_prefix], row[1, prompts.shared_prefix])  # the class names differ


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coop", "maple", "cocoop"])
def test_the_shared_prefix_path_compiles_as_one_graph(name, tiny_clip, monkeypatch):
    monkeypatch.setattr(tiny_clip, "text_tuning", TextTuning(min_sequences_to_share=2))
    learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES,
                                     **learner_arguments(name, tiny_clip, CLASSNAMES))
    args = [] if type(learner).image_independent_text else [F.normalize(torch.randn(2, tiny_clip.embed_dim), dim=-1)]
    torch._dynamo.reset()
    compiled = torch.compile(learner.text_features, fullgraph=True, backend="eager")  # a graph break raises here
    torch.testing.assert_close(compiled(*args), learner.text_features(*args))


def test_the_shared_prefix_holds_in_bf16_with_held_weights(monkeypatch):
    """The written-out attention takes bf16 projections and the fp32 causal mask as open_clip's block does: the
    shared path is as close to fp32 as the full path is."""
    from conftest import tiny_config

    results = {}
    for key, dtype, shared in (("fp32", None, False), ("full", torch.bfloat16, False), ("shared", torch.bfloat16, True)):
        torch.manual_seed(0)
        clip = vlprompt.load_clip(tiny_config())
        clip.text_tuning = TextTuning(min_sequences_to_share=2)
        if dtype is not None:
            clip.hold_in(dtype)
        learner = vlprompt.build_learner("coop", clip=clip, classnames=CLASSNAMES)
        results[key] = features_and_gradients(learner, shared, monkeypatch)
    reference, reference_grads = results["fp32"]
    scale = reference_grads["prompts.ctx"].abs().max().item()
    for key in ("full", "shared"):
        features, grads = results[key]
        assert features.dtype == torch.float32
        torch.testing.assert_close(features, reference, rtol=0, atol=1e-2)
        torch.testing.assert_close(grads["prompts.ctx"], reference_grads["prompts.ctx"], rtol=0, atol=0.05 * scale)
