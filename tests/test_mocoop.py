"""MoCoOp: experts from template groups, per-image top-k routing, its two extra loss terms, learner-owned
LayerNorms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.errors import ConfigError
from vlprompt.learners.losses import grouped_text_supervision, routing_loss

from conftest import CLASSNAMES, model_weights

GROUPS = [["a photo of a {}.", "a good photo of a {}."], ["a sketch of a {}.", "a drawing of the {}."],
          ["{} texture.", "a close-up of {}."], ["a photo of the small {}.", "a photo of the big {}."]]


def build(clip, **hparams):
    torch.manual_seed(0)
    return vlprompt.build_learner("mocoop", clip=clip, classnames=CLASSNAMES, template_groups=GROUPS, **hparams)


def test_experts_start_from_their_groups_first_template_without_its_period(tiny_clip):
    """As the reference: the "." is taken out of the template; the prompts the text term supervises end with a
    frozen "." (the template as written, for templates that end with one)."""
    learner = build(tiny_clip).eval()
    with torch.no_grad():
        text, supervised = learner.text_features(), learner.text_features(supervised=True)
        for expert, group in enumerate(GROUPS):
            for features, template in ((text, group[0].replace(".", "")), (supervised, group[0])):
                frozen = tiny_clip.encode_text(tiny_clip.tokenize([template.format(n) for n in CLASSNAMES]),
                                               normalize=True)
                torch.testing.assert_close(features[expert], frozen, atol=1e-5, rtol=1e-5)
    # Words before and after the class name are learned: "a photo of a"; "texture" after only.
    assert [expert.ctx.shape[0] for expert in learner.experts] == [4, 4, 1, 5]


def steer_router(learner, image_features, experts_per_image):
    """Router weights that give image b its experts ``experts_per_image[b]`` (highest logits first)."""
    with torch.no_grad():
        learner.router.weight.zero_()
        learner.router.bias.zero_()
        for b, experts in enumerate(experts_per_image):
            for rank, e in enumerate(experts):
                learner.router.weight[e] += (10.0 - rank) * image_features[b]


def test_routing_is_per_image_and_mixes_the_top_k_by_softmax(tiny_clip, image_batch):
    images, _ = image_batch
    learner = build(tiny_clip).eval()
    with torch.no_grad():
        features = learner.image_features(images[:2])
        # Two nearly orthogonal images: the first picks experts 0 and 1, the second 2 and 3.
        features_2 = torch.stack([features[0], F.normalize(features[1] - (features[1] @ features[0]) * features[0],
                                                           dim=-1)])
        steer_router(learner, features_2, [[0, 1], [2, 3]])
        router_logits, chosen, weights = learner.route(features_2)
        assert chosen.tolist() == [[0, 1], [2, 3]]
        torch.testing.assert_close(weights, router_logits.gather(1, chosen).softmax(-1))
        text = learner.text_features()
        logits = learner.mixed_logits(features_2, text, chosen, weights)
        for b in range(2):
            expected = sum(weights[b, k] * learner.clip.logit_scale * features_2[b] @ text[chosen[b, k]].t()
                           for k in range(2))
            torch.testing.assert_close(logits[b], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_picks_k_distinct_experts(k, tiny_clip, image_batch):
    images, labels = image_batch
    learner = build(tiny_clip, top_k=k)
    with torch.no_grad():
        _, chosen, weights = learner.route(learner.image_features(images))
    assert chosen.shape == (len(images), k) and all(len(set(row)) == k for row in chosen.tolist())
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(images)))
    assert learner.training_loss(images, labels).total.isfinite()


def test_top_k_beyond_the_experts_is_refused(tiny_clip):
    with pytest.raises(ConfigError, match="top_k must be between 1 and the number of experts \\(4"):
        build(tiny_clip, top_k=5)


def test_routing_loss_equals_its_formula():
    torch.manual_seed(0)
    router_logits = torch.randn(3, 4)
    image = F.normalize(torch.randn(3, 5), dim=-1)
    prototypes = F.normalize(torch.randn(4, 6, 5), dim=-1)
    labels = torch.tensor([0, 5, 2])
    expected = 0.0
    for b in range(3):
        similarity = torch.stack([image[b] @ prototypes[g, labels[b]] for g in range(4)])
        boosted = similarity.clone()
        for g in similarity.argsort(descending=True)[:2]:
            boosted[g] += 10.0
        target = boosted.softmax(0)
        expected -= (target * router_logits[b].log_softmax(0)).sum() / 3
    torch.testing.assert_close(routing_loss(router_logits, image, prototypes, labels, 2, 10.0), expected)


def test_grouped_text_supervision_equals_its_formula():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(3, 4, 5), dim=-1)
    prototypes = F.normalize(torch.randn(3, 4, 5), dim=-1)
    rows = [F.cross_entropy((text[e] @ prototypes[e].t())[c:c + 1], torch.tensor([c]))
            for e in range(3) for c in range(4)]
    torch.testing.assert_close(grouped_text_supervision(text, prototypes), torch.stack(rows).mean())


def test_loss_terms_are_named_and_weighted_and_prototypes_are_group_means(tiny_clip, image_batch):
    images, labels = image_batch
    learner = build(tiny_clip)
    loss = learner.training_loss(images, labels)
    assert set(loss.terms) == {"ce", "text", "gate"}
    prototypes = learner.group_prototypes()
    with torch.no_grad():
        for g, group in enumerate(GROUPS):
            each = torch.stack([tiny_clip.encode_text(tiny_clip.tokenize([t.format(n) for n in CLASSNAMES]),
                                                      normalize=True) for t in group])
            torch.testing.assert_close(prototypes[g], F.normalize(each.mean(0), dim=-1), atol=1e-5, rtol=1e-5)
    expected_text = 5.0 * grouped_text_supervision(loss.outputs.extras["supervised_text"], prototypes)
    torch.testing.assert_close(loss.terms["text"], expected_text)


def test_without_the_text_term_unselected_experts_get_no_gradient(tiny_clip, image_batch):
    images, labels = image_batch
    learner = build(tiny_clip, text_loss_weight=0.0)
    with torch.no_grad():
        features = learner.image_features(images)
    steer_router(learner, features, [[0, 1]] * len(images))  # every image picks experts 0 and 1
    learner.training_loss(images, labels).total.backward()
    assert all(learner.experts[e].ctx.grad is not None for e in (0, 1))
    assert all(learner.experts[e].ctx.grad is None for e in (2, 3))
    assert learner.may_leave_parameters_unused


def test_layernorms_are_the_learners_own_and_train_at_a_tenth_of_the_rate(tiny_clip, image_batch):
    images, labels = image_batch
    learner = build(tiny_clip)
    blocks = len(tiny_clip.model.visual.transformer.resblocks)
    assert len(learner.layernorms) == blocks * 2 * 2  # ln_1 and ln_2, weight and bias
    with torch.no_grad():  # untrained copies give the frozen features
        torch.testing.assert_close(learner.image_features(images), tiny_clip.encode_image(images, normalize=True),
                                   atol=1e-5, rtol=1e-5)
    groups = learner.parameter_groups()
    assert groups[1]["lr"] == pytest.approx(0.032 * 0.1)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in learner.layernorms}
    frozen = model_weights(tiny_clip)
    optimizer = torch.optim.SGD([{"params": g["params"], "lr": g.get("lr", 0.5)} for g in groups], lr=0.5)
    learner.training_loss(images, labels).total.backward()
    optimizer.step()
    assert any(not torch.equal(p, tiny_clip.model.visual.get_parameter(n))
               for n, p in zip(learner._layernorm_names, learner.layernorms))
    assert all(torch.equal(v, frozen[k]) for k, v in model_weights(tiny_clip).items())
    assert all(key.startswith(("experts.", "router.", "correction", "layernorms.")) for key in learner.state_dict())
    assert build(tiny_clip, finetune_vision_layernorm=False).num_trainable_parameters() == \
        learner.num_trainable_parameters() - sum(p.numel() for p in learner.layernorms)


def test_a_checkpoint_evaluates_on_a_data_set_with_other_template_groups(tiny_clip, image_batch, tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from vlprompt.errors import CheckpointMismatchError

    images, labels = image_batch
    learner = build(tiny_clip)
    trainer = pl.Trainer(max_steps=2, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(learner, DataLoader(TensorDataset(images, labels), batch_size=3))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert checkpoint["vlprompt"]["expert_templates"] == [group[0] for group in GROUPS]
    # Another data set's two groups: the experts become the checkpoint's four again before its weights load.
    other = vlprompt.build_learner("mocoop", clip=tiny_clip, classnames=CLASSNAMES,
                                   template_groups=[["a photo of a {}."], ["{} texture."]])
    other.on_load_checkpoint(checkpoint)
    other.load_state_dict(checkpoint["state_dict"])
    learner.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(images), learner(images))
    resumed = vlprompt.build_learner("mocoop", clip=tiny_clip, classnames=CLASSNAMES,
                                     template_groups=[["a photo of a {}."], ["{} texture."]])
    refit = pl.Trainer(max_steps=3, max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="other template groups"):
        refit.fit(resumed, DataLoader(TensorDataset(images, labels), batch_size=3), ckpt_path=tmp_path / "m.ckpt")


#: dyabel/mocoop@04b5d2a (prompting/moe.py's CustomCLIP) run on the weights of ``reference_setting``, with its Dassl
#: imports stubbed and ``PREC: fp32``, from a scratch folder outside this repository: ``python run_ref.py`` (see
#: docs/reproducing.md, "Equal to the reference code"). Only the numbers it printed are kept here.
REFERENCE = {
    "parameters": 43_010,
    "logits": [0.1373268, -0.1276468, -0.0408283, 0.1438452, -0.1347652, -0.0346359, -0.0709006, -0.2845819,
               -0.2372305],
    "loss": 7.1081085205078125,
    # experts 0 and 1, router weight, router bias, correction
    "gradient_norms": [0.6124661564826965, 0.574989378452301, 0.015379193238914013, 0.013829114846885204,
                       0.007476475555449724],
    "logits_after_step": [0.1244543, -0.0553601, 0.0028753, 0.1300785, -0.0501787, 0.0157846, -0.0887698,
                          -0.2115694, -0.1834482],
}


def reference_setting():
    """The reference's setting: open_clip ViT-B-16-quickgelu, random weights (seed 0) rounded to fp16 (the
    reference's build_model holds fp16 weights), two template groups, the router from a seeded generator."""
    torch.manual_seed(0)
    clip = vlprompt.load_clip("ViT-B-16-quickgelu")
    with torch.no_grad():
        for tensor in [*clip.model.parameters(), *clip.model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    groups = [["a photo of a {}.", "a bad photo of a {}."], ["a photo of a small {}.", "itap of a {}."]]
    learner = vlprompt.build_learner("mocoop", clip=clip, classnames=["dog", "cat", "sea turtle"],
                                     template_groups=groups)
    router = torch.Generator().manual_seed(2)
    with torch.no_grad():
        learner.router.weight.copy_(torch.randn(learner.router.weight.shape, generator=router) * 0.02)
        learner.router.bias.copy_(torch.randn(learner.router.bias.shape, generator=router) * 0.02)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return learner, images, torch.tensor([0, 1, 2])


@pytest.mark.slow
def test_logits_loss_gradients_and_one_step_equal_the_reference_code():
    learner, images, labels = reference_setting()
    assert learner.num_trainable_parameters() == REFERENCE["parameters"]
    learner.eval()
    with torch.no_grad():
        logits = learner(images).flatten()
    assert (logits - torch.tensor(REFERENCE["logits"])).abs().max() <= 1e-5
    learner.train()
    loss = learner.training_loss(images, labels).total
    assert abs(loss.item() - REFERENCE["loss"]) <= 1e-5
    loss.backward()
    stepped = [*(expert.ctx for expert in learner.experts), learner.router.weight, learner.router.bias,
               learner.correction]
    norms = torch.tensor([parameter.grad.norm().item() for parameter in stepped])
    assert (norms - torch.tensor(REFERENCE["gradient_norms"])).abs().max() <= 1e-5
    with torch.no_grad():  # the block LayerNorms' gradients differ by design (constant routing targets): not stepped
        for parameter in stepped:
            parameter -= 0.032 * parameter.grad
    learner.eval()
    with torch.no_grad():
        after = learner(images).flatten()
    assert (after - torch.tensor(REFERENCE["logits_after_step"])).abs().max() <= 1e-5
