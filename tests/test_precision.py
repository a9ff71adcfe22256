"""Speed options that must not change results: frozen weights held in the compute dtype under mixed precision,
and the opt-in compiled paths (``compile``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import vlprompt
from vlprompt.errors import ConfigError
from vlprompt.learners import get_learner_class, list_learners

from conftest import CLASSNAMES, learner_arguments, tiny_config

TRAINABLE = [name for name in list_learners() if get_learner_class(name).needs_training]


def fresh_learner(name: str, **hparams):
    """A learner on its own tiny CLIP: holding weights in bf16 changes the CLIP, which other tests share."""
    torch.manual_seed(0)
    clip = vlprompt.load_clip(tiny_config())
    return vlprompt.build_learner(name, clip=clip, classnames=CLASSNAMES, **learner_arguments(name, clip, CLASSNAMES),
                                  **hparams)


def matrix_weights(clip) -> list[torch.Tensor]:
    return [m.weight for m in clip.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("name", TRAINABLE)
def test_weights_held_in_bf16_give_what_autocast_gives_and_learned_parameters_stay_fp32(name, image_batch):
    images, labels = image_batch
    learner = fresh_learner(name).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_logits = learner(images).float()
    for model in learner.frozen_models.values():
        model.hold_in(torch.bfloat16)
    assert all(w.dtype == torch.bfloat16 for w in matrix_weights(learner.clip))
    learner.train().eval()  # drops the cached text features
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        held_logits = learner(images).float()
    # Autocast casts an fp32 weight to the very bf16 tensor that is now held: the same numbers.
    torch.testing.assert_close(held_logits, autocast_logits, rtol=0, atol=0)
    learner.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = learner.training_loss(images, labels).total
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    assert all(p.grad is not None for p in learner.parameters() if p.requires_grad and p.grad is not None)


def test_a_held_clip_called_without_autocast_computes_in_its_dtype_and_answers_in_fp32(image_batch):
    images, _ = image_batch
    clip = vlprompt.load_clip(tiny_config())
    full = clip.encode_image(images, normalize=True)
    ids = clip.tokenize(["a photo of a red circle."])
    text = clip.encode_text(ids, normalize=True)
    clip.hold_in(torch.bfloat16)
    held, held_text = clip.encode_image(images, normalize=True), clip.encode_text(ids, normalize=True)
    assert held.dtype == held_text.dtype == torch.float32
    # Within bf16 rounding of the fp32 features (unit vectors), and not the same numbers.
    torch.testing.assert_close(held, full, rtol=0, atol=5e-2)
    torch.testing.assert_close(held_text, text, rtol=0, atol=5e-2)
    assert not torch.equal(held, full)


def test_holding_weights_is_once_and_can_be_switched_off():
    clip = vlprompt.load_clip(tiny_config())
    with pytest.raises(ConfigError, match="bfloat16 or float16"):
        clip.hold_in(torch.float64)
    clip.hold_in(torch.bfloat16)
    clip.hold_in(torch.bfloat16)  # again: nothing to do
    with pytest.raises(ConfigError, match="already held in torch.bfloat16; build another CLIP"):
        clip.hold_in(torch.float16)
    kept = vlprompt.load_clip(tiny_config(), low_precision_weights=False)
    kept.hold_in(torch.bfloat16)
    assert kept.compute_dtype is None and all(w.dtype == torch.float32 for w in matrix_weights(kept))


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend: dynamo traces the real methods (a graph break or a wrong binding shows)
    without paying for code generation on 2 cores; the inductor path runs in the slow test and on the GPU bench."""
    original = torch.compile
    modes = []

    def compile_eagerly(function, mode=None, **kwargs):
        modes.append(mode)
        return original(function, backend="eager", **kwargs)
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    return modes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coop", "cocoop", "maple"])
def test_compiled_paths_give_the_same_loss_and_follow_a_deep_copy(name, image_batch, eager_compile):
    images, labels = image_batch
    learner = fresh_learner(name, compile="reduce-overhead")
    expected = learner.training_loss(images, labels).total
    learner.compile_paths()
    assert eager_compile and set(eager_compile) == {"reduce-overhead"}
    loss = learner.training_loss(images, labels).total
    loss.backward()
    torch.testing.assert_close(loss, expected)
    # Weight averaging deep-copies the learner: the copy's compiled methods compute with the copy's parameters.
    twin = copy.deepcopy(learner)
    assert twin.text_features.__self__ is twin and twin.image_features.__self__ is twin
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.add_(0.5)
        assert not torch.allclose(twin.text_features(*([] if twin.image_independent_text else
                                                         [twin.image_features(images)])),
                                  learner.text_features(*([] if learner.image_independent_text else
                                                          [learner.image_features(images)])))


def test_compile_option_is_checked():
    assert fresh_learner("coop", compile=True).compile_mode == "default"
    assert fresh_learner("coop").compile_mode is None
    with pytest.raises(ConfigError, match="compile must be true, false or one of default, reduce-overhead"):
        fresh_learner("coop", compile="fastest")


@pytest.mark.slow
def test_a_compiled_learner_fits_in_bf16_with_inductor(image_batch, tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    learner = fresh_learner("coop", compile=True)
    trainer = pl.Trainer(max_epochs=1, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(learner, DataLoader(TensorDataset(*image_batch), batch_size=3))
    assert learner._compiled and learner.clip.compute_dtype == torch.bfloat16
    assert all(torch.isfinite(p).all() for p in learner.parameters())


def kept_bytes(run) -> int:
    """Bytes autograd keeps for the backward pass during ``run`` (each storage once)."""
    seen, total = set(), [0]

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            total[0] += tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total[0]


@pytest.mark.parametrize("name", TRAINABLE)
def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less(name, tiny_clip, image_batch):
    """Every learner with visual prompts on the shared image path (found by what it is built of)."""
    images, labels = image_batch
    arguments = learner_arguments(name, tiny_clip, CLASSNAMES)
    if not vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, **arguments).visual_prompts():
        pytest.skip(f"{name} has no visual prompts")
    losses, gradients, kept = {}, {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES,
                                         activation_checkpointing=checkpointing,
                                         **learner_arguments(name, tiny_clip, CLASSNAMES)).train()

        def run():
            losses[checkpointing] = learner.training_loss(images, labels).total
        kept[checkpointing] = kept_bytes(run)
        losses[checkpointing].backward()
        gradients[checkpointing] = {k: p.grad for k, p in learner.named_parameters() if p.grad is not None}
    torch.testing.assert_close(losses[True], losses[False])
    assert gradients[True].keys() == gradients[False].keys()
    for key, gradient in gradients[False].items():
        torch.testing.assert_close(gradients[True][key], gradient, rtol=1e-5, atol=1e-7)
    assert kept[True] < kept[False] / 2, kept


def test_activation_checkpointing_recomputes_an_eva_block_with_its_prompts_counted_as_prefix():
    # EVA-02 counts the prompt tokens as prefix tokens (outside the rotary embedding) only while they are in: the
    # recomputation in the backward pass must count them again.
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224",
                             "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": "linear"},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    torch.manual_seed(0)
    clip = vlprompt.load_clip(config)
    prompts = torch.randn(2, clip.vision_width, requires_grad=True)
    deep = {1: torch.randn(2, clip.vision_width, requires_grad=True)}
    images = torch.randn(2, 3, 224, 224)
    gradients = []
    for checkpoint in (False, True):
        features = clip.encode_image(images, prompts=prompts, deep_prompts=deep, checkpoint=checkpoint)
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
        gradients.append((prompts.grad.clone(), deep[1].grad.clone()))
        prompts.grad, deep[1].grad = None, None
    prefix = [block.attn.num_prefix_tokens for block in clip.model.visual.trunk.blocks]
    assert prefix == [clip.model.visual.trunk.num_prefix_tokens] * len(prefix)  # restored after every call
    for plain, recomputed in zip(*gradients):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-7)
