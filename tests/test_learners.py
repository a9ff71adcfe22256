"""One test suite, parametrised over every registered learner (as timm tests every registered model)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import vlprompt
from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners import get_learner_class, registry

from conftest import CLASSNAMES, TINY_RESNET, build, class_texts, learned_tensors, model_weights, tiny_config

LEARNERS = vlprompt.list_learners()
# Contract tests pick learners by what they declare, never by name.
TRAINABLE = [name for name in LEARNERS if get_learner_class(name).needs_training]
NOVEL = ["orange moon", "black cross", "white ring"]


def brief_fit(learner, images, labels, root: Path, steps: int = 2) -> pl.Trainer:
    loader = DataLoader(TensorDataset(images, labels), batch_size=3)
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(learner, loader)
    return trainer


def test_every_learner_and_plugin_module_is_found_without_being_listed():
    """Each module under vlprompt/learners/ (a method's own folder included) that registers a learner or a plug-in is
    found by the registry, which lists none."""
    learners_dir = Path(registry.__file__).parent
    registering = {"register_learner": set(), "register_plugin": set()}
    for path in learners_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in registering
                    and node.args and isinstance(node.args[0], ast.Constant)):
                registering[node.func.id].add(node.args[0].value)
    assert registering["register_learner"] == set(LEARNERS)
    assert registering["register_plugin"] == set(registry.list_plugins()) >= {"caspl", "gram"}
    assert {"zeroshot", "coop", "cocoop", "kgcoop", "maple", "ivlp", "promptsrc"} <= set(LEARNERS)


def test_unknown_learner_and_hparam_are_clear():
    with pytest.raises(ConfigError, match="did you mean coop"):
        vlprompt.build_learner("copo", clip=None, classnames=["a"])
    clip = vlprompt.load_clip(tiny_config())
    with pytest.raises(ConfigError, match="did you mean n_ctx"):
        vlprompt.build_learner("coop", clip=clip, classnames=["a"], n_ctxx=3)


@pytest.mark.parametrize("name", LEARNERS)
def test_builds_and_forward_shape(name, tiny_clip, image_batch):
    learner = build(name, tiny_clip)
    images, _ = image_batch
    learner.eval()
    with torch.no_grad():
        logits = learner(images)
    assert logits.shape == (images.shape[0], len(CLASSNAMES))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", TRAINABLE)
def test_one_step_lowers_loss_and_only_prompts_get_gradients(name, tiny_clip, image_batch):
    learner = build(name, tiny_clip)
    learner.train()
    assert not tiny_clip.model.training, "the frozen CLIP must stay in eval mode"
    images, labels = image_batch
    trainable = [p for p in learner.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for p in tiny_clip.model.parameters())
    loss_before = learner.training_loss(images, labels).total
    loss_before.backward()
    assert all(p.grad is None for p in tiny_clip.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    # A small step along the gradient must lower the loss: one whose first-order decrease is 10% of the loss
    # (a fixed rate overshoots where gradients are large, as distillation's on a random tiny CLIP).
    squared_norm = sum(float(p.grad.pow(2).sum()) for p in trainable)
    optimizer = torch.optim.SGD(trainable, lr=min(0.002, 0.1 * float(loss_before) / squared_norm))
    optimizer.step()
    with torch.no_grad():
        loss_after = learner.training_loss(images, labels).total
    assert loss_after < loss_before


@pytest.mark.parametrize("name", TRAINABLE)
def test_training_keeps_clip_bit_identical_and_checkpoint_round_trips(name, tiny_clip, image_batch, tmp_path):
    images, labels = image_batch
    learner = build(name, tiny_clip)
    learned_before = learned_tensors(learner)
    weights = model_weights(tiny_clip)
    trainer = brief_fit(learner, images, labels, tmp_path)
    assert not tiny_clip.model.training
    for key, value in model_weights(tiny_clip).items():
        assert torch.equal(value, weights[key]), f"CLIP tensor {key} changed"
    assert any(not torch.equal(v, learned_before[k]) for k, v in learned_tensors(learner).items()), "nothing learned"

    path = tmp_path / "learner.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert not any(k.startswith("clip.") for k in checkpoint["state_dict"]), "CLIP weights must not be saved"
    assert checkpoint["vlprompt"]["learner"] == name

    restored = vlprompt.load_learner(path, clip=tiny_clip)
    learner.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(learner(images), restored(images))
    rebuilt = vlprompt.load_learner(path)  # the CLIP named in the checkpoint is rebuilt (random weights here)
    assert type(rebuilt) is type(learner) and rebuilt.classnames == CLASSNAMES


@pytest.mark.parametrize("name", TRAINABLE)
def test_the_feature_cache_is_refused_in_one_line_or_exact(name, tiny_clip, shapes, image_batch):
    """The cache holds the frozen tower's features: a learner whose image features are those (derived from what it
    is built of) gives the same logits on cached features as on images; any other is refused before training."""
    import types

    from vlprompt.data import ImageSplitDataModule

    learner = build(name, tiny_clip).eval()
    if learner.image_features_are_frozen:
        images, _ = image_batch
        with torch.no_grad():
            torch.testing.assert_close(learner(learner.frozen_image_features(images)), learner(images))
        return
    data = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", shots=2, num_workers=0,
                                cache_image_features=True)
    data.trainer = types.SimpleNamespace(lightning_module=learner)
    data.setup("fit")
    with pytest.raises(ConfigError, match=f"^{name} changes the image features .* set data.cache_image_features "
                                          "false$"):
        data.train_dataloader()


@pytest.mark.parametrize("name", LEARNERS)
def test_set_classnames_switches_classes_and_keeps_what_was_learned(name, tiny_clip, image_batch):
    images, _ = image_batch
    learner = build(name, tiny_clip).eval()
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.01 * torch.randn_like(p))
        base_logits = learner(images)
        learned = learned_tensors(learner)
        learner.set_classnames(NOVEL, **class_texts(name, NOVEL))
        novel_logits = learner(images)
        assert novel_logits.shape == (images.shape[0], len(NOVEL))
        for key, value in learned_tensors(learner).items():
            assert torch.equal(value, learned[key])
        learner.set_classnames(CLASSNAMES, **class_texts(name, CLASSNAMES))
        assert torch.allclose(learner(images), base_logits, atol=1e-5)


@pytest.mark.parametrize("name", ["coop", "kgcoop"])
def test_untrained_context_from_a_photo_of_a_equals_zero_shot(name, tiny_clip, image_batch):
    images, _ = image_batch
    zeroshot = build("zeroshot", tiny_clip, templates=["a photo of a {}."]).eval()
    learner = build(name, tiny_clip, n_ctx=4, ctx_init="a photo of a").eval()
    with torch.no_grad():
        torch.testing.assert_close(learner(images), zeroshot(images), atol=1e-5, rtol=0)


def test_class_token_positions_and_class_specific_context(tiny_clip, image_batch):
    images, _ = image_batch
    for position in ("end", "middle", "front"):
        learner = build("coop", tiny_clip, class_token_position=position, ctx_init=None, n_ctx=4).eval()
        assert learner(images).shape == (6, len(CLASSNAMES))
    specific = build("coop", tiny_clip, class_specific=True)
    assert specific.prompts.ctx.shape[0] == len(CLASSNAMES)
    with pytest.raises(ConfigError, match="class-specific"):
        specific.set_classnames(NOVEL)


def test_more_context_than_init_words_starts_fully_random_and_says_so(tiny_clip, capsys):
    """As the reference code (MaPLe's, IVLP's, PromptSRC's, CasPL's) starts it; tests/test_caspl_reference.py holds
    the reference's own first draw."""
    learner = build("coop", tiny_clip, n_ctx=8, ctx_init="a photo of a")
    torch.manual_seed(0)
    assert torch.equal(learner.prompts.ctx.detach(), torch.empty(8, tiny_clip.text_width).normal_(std=0.02))
    assert learner.prompts._fixed_ids == [] and learner.prompts.shared_prefix == 1 + 8
    assert "ctx_init 'a photo of a' has 4 tokens, fewer than n_ctx 8: the context starts fully random" in \
        capsys.readouterr().err


def test_zero_shot_ensembles_normalised_template_features(tiny_clip, image_batch):
    images, _ = image_batch
    templates = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}."]
    ensemble = build("zeroshot", tiny_clip, templates=templates).eval()
    singles = [build("zeroshot", tiny_clip, templates=[t]).hand_text_features() for t in templates]
    expected = torch.nn.functional.normalize(torch.stack(singles).mean(0), dim=-1)
    torch.testing.assert_close(ensemble.hand_text_features(), expected)
    with pytest.raises(ConfigError, match="exactly one"):
        build("zeroshot", tiny_clip, templates=["no slot"])


def test_zero_shot_refuses_to_fit(tiny_clip, image_batch, tmp_path):
    images, labels = image_batch
    with pytest.raises(ConfigError, match="nothing to train"):
        brief_fit(build("zeroshot", tiny_clip), images, labels, tmp_path)


def test_cocoop_trains_at_any_batch_size_and_chunks_exactly(tiny_clip, image_batch):
    images, _ = image_batch
    whole = build("cocoop", tiny_clip).eval()
    chunked = build("cocoop", tiny_clip, text_chunk_size=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(chunked(images), whole(images), atol=1e-5, rtol=0)
        single = torch.cat([whole(images[i:i + 1]) for i in range(images.shape[0])])
        torch.testing.assert_close(whole(images), single, atol=1e-5, rtol=0)


def test_cocoop_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_clip, image_batch):
    images, labels = image_batch
    plain = build("cocoop", tiny_clip).train()
    recomputed = build("cocoop", tiny_clip, text_chunk_size=2, activation_checkpointing=True).train()
    recomputed.load_state_dict(plain.state_dict())
    losses = []
    for learner in (plain, recomputed):
        loss = learner.training_loss(images, labels).total
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    for (name, a), (_, b) in zip(plain.named_parameters(), recomputed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_cocoop_auto_chunks_from_free_gpu_memory_when_chunks_bound_it(tiny_clip, monkeypatch):
    from vlprompt.learners import cocoop

    learner = build("cocoop", tiny_clip, activation_checkpointing=True).train()
    assert learner.text_chunk_size == "auto"
    assert learner.text_chunk_size_for(32, torch.device("cpu")) == 32  # no GPU: the whole batch
    per_image = learner.chunk_bytes_per_image(gradients=True)
    positions = len(CLASSNAMES) * learner.prompts.token_embeds.shape[1] * tiny_clip.text_width
    assert per_image == positions * tiny_clip.text_layers * 32
    assert learner.chunk_bytes_per_image(gradients=False) == positions * 48
    gpu = torch.device("cuda", 0)
    free = {"bytes": 10 * per_image}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 80 * 2**30))
    held = {"reserved": 2 * per_image, "allocated": per_image}
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: held["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: held["allocated"])
    assert learner.text_chunk_size_for(32, gpu) == 5  # half of 10 + 1 images' worth free
    free["bytes"] = 1000 * per_image
    assert learner.text_chunk_size_for(32, gpu) == 5  # decided once per batch size and class count
    assert learner.text_chunk_size_for(16, gpu) == 16
    learner.set_classnames(CLASSNAMES[:3])
    assert learner.text_chunk_size_for(32, gpu) == 32
    free["bytes"], held["reserved"], held["allocated"] = 10 * learner.chunk_bytes_per_image(gradients=False), 0, 0
    with torch.no_grad():  # evaluation: one layer's activations per image at a time
        assert learner.text_chunk_size_for(32, gpu) == 5
    assert build("cocoop", tiny_clip).text_chunk_size_for(32, gpu) == 32  # trained without recomputation: all kept
    assert cocoop.auto_chunk_size(32, per_image, per_image) == 1  # at least one image
    assert build("cocoop", tiny_clip, text_chunk_size=None).text_chunk_size_for(8, gpu) == 8
    assert build("cocoop", tiny_clip, text_chunk_size=3).text_chunk_size_for(8, gpu) == 3
    for wrong in (0, -2, "half", True, 2.5):
        with pytest.raises(ConfigError, match="text_chunk_size must be"):
            build("cocoop", tiny_clip, text_chunk_size=wrong)


def test_checkpoint_from_another_architecture_or_learner_is_refused(tiny_clip, image_batch, tmp_path):
    images, labels = image_batch
    learner = build("coop", tiny_clip)
    trainer = brief_fit(learner, images, labels, tmp_path, steps=1)
    path = tmp_path / "coop.ckpt"
    trainer.save_checkpoint(path)
    wider = vlprompt.load_clip(tiny_config(text_cfg={"width": 64, "heads": 4}))
    with pytest.raises(CheckpointMismatchError, match="different clip architecture.*text_width: 32 vs 64"):
        vlprompt.load_learner(path, clip=wider)
    checkpoint = torch.load(path, weights_only=True)
    with pytest.raises(CheckpointMismatchError, match="holds a 'coop' learner, not 'kgcoop'"):
        build("kgcoop", tiny_clip).on_load_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match="does not exist"):
        vlprompt.load_learner(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("name", LEARNERS)
def test_learners_run_on_a_resnet_clip_or_say_they_need_a_vit(name, tiny_clip, image_batch):
    """Learners whose image features are the frozen tower's (derived from what they are built of) run on any image
    tower; the others run on it too, or, where they need a ViT's tokens, say so in one line."""
    frozen_images = build(name, tiny_clip).image_features_are_frozen
    clip = vlprompt.load_clip(TINY_RESNET)
    try:
        learner = build(name, clip).eval()
    except ConfigError as error:
        assert not frozen_images and "visual prompts need a ViT image tower" in str(error), str(error)
        assert "ModifiedResNet" in str(error)
        return
    images, _ = image_batch
    with torch.no_grad():
        assert learner(images).shape == (6, len(CLASSNAMES))


def test_maple_checks_prompt_depth(tiny_clip):
    with pytest.raises(ConfigError, match="prompt_depth must be between 1 and 9"):
        build("maple", tiny_clip, prompt_depth=12)
    assert build("maple", tiny_clip, prompt_depth=1).num_trainable_parameters() > 0


@pytest.mark.parametrize("name", TRAINABLE)
def test_bf16_autocast_keeps_fp32_weights(name, tiny_clip, image_batch):
    images, labels = image_batch
    learner = build(name, tiny_clip)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = learner.training_loss(images, labels).total
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    assert all(p.dtype == torch.float32 for p in tiny_clip.model.parameters())


@pytest.mark.parametrize("name", ["coop", "kgcoop"])
def test_evaluation_encodes_class_prompts_once_while_training_encodes_every_step(name, tiny_clip, image_batch):
    images, _ = image_batch
    learner = build(name, tiny_clip)
    calls = []
    original = learner.text_features
    learner.text_features = lambda: calls.append(1) or original()
    learner.eval()
    with torch.no_grad():
        first = learner(images)
        for _ in range(3):
            torch.testing.assert_close(learner(images), first)
    assert len(calls) == 1
    learner.train()
    learner(images), learner(images)
    assert len(calls) == 3  # training sees the prompts change, so it encodes every step
    learner.eval()
    learner.set_classnames(["a", "b"])
    with torch.no_grad():
        assert learner(images).shape[1] == 2
    assert len(calls) == 4
