"""MMRL: representation tokens inserted into both towers, its two branches, loss terms, decoupled evaluation, options
and refusals; and equality with its reference code (yunncheng/MMRL@27d8821) on shared random ViT-B/16 weights.

The reference numbers were printed by ``trainers/mmrl.py`` (``CustomCLIP``, ``MMRL_Loss``,
``_get_text_base_features_zero_shot``) with ``clip/model_mmrl.py`` (``build_model_MMRL``, "MMRL" and "CLIP" models),
run from a scratch folder outside this repository with its Dassl imports stubbed, ``.cuda()`` and ``.half()`` made
identities (fp32), ``REP_LAYERS 6..12``, ``N_REP_TOKENS 5``, ``REP_DIM 512``, ``ALPHA 0.7``, ``REG_WEIGHT 2.0``,
``DATASET.NAME OxfordPets`` ("a photo of a {}, a type of pet."), the CLIP's logit scale set to ln(100) (the
reference's fixed 100) and every learned tensor copied from the vlprompt learner below (docs/reproducing.md, "Equal
to the reference code"; the command: ``python run_ref.py``). One SGD step at lr 0.001, momentum 0.9, weight decay
5e-4. Only the numbers are kept.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.errors import ConfigError

from conftest import STORED_REFERENCE_TOLERANCE, TINY_RESNET, fill_learned, reference_images, save_fitted

CLASSNAMES = ["dog", "cat", "sea turtle"]
PET_TEMPLATE = "a photo of a {}, a type of pet."
REFERENCE = {
    "parameters": 4_992_256,
    "fused_logits": [1.453064, -0.260663, -0.441016, 2.416059, 1.149161, 0.498859, 1.055864, -0.24691, -0.244157],
    "class_token_logits": [1.849549, -0.28298, -1.218617, 1.854451, -0.347343, -1.621414, 0.62944, -1.340651,
                           -2.100034],
    "ce": 1.8008779287338257, "ce_rep": 0.9633614420890808, "image_reg": 0.00036984682083129883,
    "text_reg": 0.08954715728759766, "loss": 1.7294570207595825,
    # rep tokens, proj_rep, to_vision.0.weight, to_text.6.weight
    "gradient_norms": [2.272977590560913, 8.949003219604492, 0.11463940143585205, 0.5137760043144226],
    "fused_logits_after_step": [1.450975, -0.157552, -0.545106, 2.392257, 1.277574, 0.407756, 1.012735, -0.157537,
                                -0.306899],
}


@pytest.mark.slow
def test_mmrl_equals_the_reference_code():
    torch.manual_seed(0)
    clip = vlprompt.load_clip("ViT-B-16-quickgelu")
    with torch.no_grad():
        clip.model.logit_scale.fill_(math.log(100.0))
    learner = vlprompt.build_learner("mmrl", clip=clip, classnames=CLASSNAMES, templates=[PET_TEMPLATE], reg_weight=2.0)
    fill_learned(learner)
    assert learner.num_trainable_parameters() == REFERENCE["parameters"] and learner.rep_layers == list(range(6, 13))
    images = reference_images()
    labels = torch.tensor([0, 1, 2])
    learner.eval()
    with torch.no_grad():
        fused = learner(images).flatten()
        assert (fused - torch.tensor(REFERENCE["fused_logits"])).abs().max() <= STORED_REFERENCE_TOLERANCE
        class_token = learner.logits(learner.image_features(images), learner.text_features())
        expected = torch.tensor(REFERENCE["class_token_logits"])
        assert (class_token.flatten() - expected).abs().max() <= STORED_REFERENCE_TOLERANCE
    learner.train()
    loss = learner.training_loss(images, labels)
    weights = {"ce": 0.7, "ce_rep": 0.3, "image_reg": 2.0, "text_reg": 2.0}
    for name, weight in weights.items():
        assert abs(loss.terms[name].item() - weight * REFERENCE[name]) <= STORED_REFERENCE_TOLERANCE, name
    assert abs(loss.total.item() - REFERENCE["loss"]) <= STORED_REFERENCE_TOLERANCE
    loss.total.backward()
    stepped = [learner.rep_tokens, learner.proj_rep, learner.to_vision[0].weight, learner.to_text[6].weight]
    norms = torch.tensor([parameter.grad.norm().item() for parameter in stepped])
    # Relative: a norm of 9 summed over 393,216 fp32 entries holds about 6 significant digits.
    torch.testing.assert_close(norms, torch.tensor(REFERENCE["gradient_norms"]), rtol=STORED_REFERENCE_TOLERANCE,
                               atol=1e-6)
    torch.optim.SGD(learner.parameter_groups(), lr=0.001, momentum=0.9, weight_decay=5e-4).step()
    learner.eval()
    with torch.no_grad():
        after = learner(images).flatten()
        assert (after - torch.tensor(REFERENCE["fused_logits_after_step"])).abs().max() <= STORED_REFERENCE_TOLERANCE


def build(tiny_clip, classnames=CLASSNAMES, **options):
    torch.manual_seed(0)
    return vlprompt.build_learner("mmrl", clip=tiny_clip, classnames=classnames, templates=[PET_TEMPLATE], **options)


def test_tokens_are_inserted_after_the_start_token_and_replaced_in_later_blocks(tiny_clip):
    """By hand: the text blocks run on the hand template, the tokens inserted at the first representation block,
    replaced at the later ones, under a causal mask of the grown length; pooled at the end token moved by ``n``."""
    learner = build(tiny_clip, rep_layers=[3, 5])
    owner = tiny_clip.model
    x = learner.token_embeds + owner.positional_embedding[:learner.token_embeds.shape[1]]
    tokens = [project(learner.rep_tokens) for project in learner.to_text]
    for index, block in enumerate(owner.transformer.resblocks):
        if index == 2:
            x = torch.cat([x[:, :1], tokens[0].expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        if index == 4:
            x = torch.cat([x[:, :1], tokens[1].expand(x.shape[0], -1, -1), x[:, 1 + 5:]], dim=1)
        length = x.shape[1]
        mask = owner.attn_mask[:length, :length] if index < 2 else torch.full((length, length), float("-inf")).triu(1)
        x = block(x, attn_mask=mask)
    x = owner.ln_final(x)
    pooled = x[torch.arange(3), learner.pool_index + 5] @ owner.text_projection
    torch.testing.assert_close(learner.text_features(), F.normalize(pooled, dim=-1), rtol=1e-5, atol=1e-6)


def test_the_representation_feature_pools_the_inserted_tokens(tiny_clip, image_batch):
    images, _ = image_batch
    learner = build(tiny_clip, rep_layers=[3, 5])
    visual = tiny_clip.model.visual
    x = visual._embeds(images)
    tokens = [project(learner.rep_tokens) for project in learner.to_vision]
    for index, block in enumerate(visual.transformer.resblocks):
        if index == 2:
            x = torch.cat([x[:, :1], tokens[0].expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        if index == 4:
            x = torch.cat([x[:, :1], tokens[1].expand(x.shape[0], -1, -1), x[:, 6:]], dim=1)
        x = block(x)
    image = visual.ln_post(x[:, 0]) @ visual.proj
    rep = visual.ln_post(x[:, 1:6]).mean(dim=1) @ learner.proj_rep
    got_image, got_rep = learner.image_features_both(images)
    torch.testing.assert_close(got_image, F.normalize(image, dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_rep, F.normalize(rep, dim=-1), rtol=1e-5, atol=1e-6)


def test_loss_terms_follow_their_formulas(tiny_clip, image_batch):
    images, labels = image_batch
    labels = labels % 3
    learner = build(tiny_clip, alpha=0.6, reg_weight=3.0)
    loss = learner.training_loss(images, labels)
    text, (image, rep) = learner.text_features(), learner.image_features_both(images)
    scale = tiny_clip.logit_scale
    frozen_image = tiny_clip.encode_image(images, normalize=True)
    frozen_text = tiny_clip.encode_text(tiny_clip.tokenize([PET_TEMPLATE.format(c) for c in CLASSNAMES]), normalize=True)
    expected = {
        "ce": 0.6 * F.cross_entropy(scale * image @ text.t(), labels),
        "ce_rep": 0.4 * F.cross_entropy(scale * rep @ text.t(), labels),
        "image_reg": 3.0 * (1 - F.cosine_similarity(image, frozen_image, dim=-1).mean()),
        "text_reg": 3.0 * (1 - F.cosine_similarity(text, frozen_text, dim=-1).mean()),
    }
    for name, value in expected.items():
        torch.testing.assert_close(loss.terms[name], value, rtol=1e-5, atol=1e-6)
    off = build(tiny_clip, reg_weight=0.0).training_loss(images, labels)
    assert sorted(off.terms) == ["ce", "ce_rep"]


def test_evaluation_fuses_on_the_classes_it_was_built_with_only(tiny_clip, image_batch):
    images, _ = image_batch
    learner = build(tiny_clip).eval()
    with torch.no_grad():
        text, (image, rep) = learner.text_features(), learner.image_features_both(images)
        scale = tiny_clip.logit_scale
        torch.testing.assert_close(learner(images), 0.7 * scale * image @ text.t() + 0.3 * scale * rep @ text.t())
        learner.set_classnames(["horse", "dog"])  # novel: the class-token logits alone
        novel = learner.text_features()
        torch.testing.assert_close(learner(images), scale * image @ novel.t())
        learner.set_classnames(["cat"])  # within the classes it was built with: fused
        assert learner.fuses


def test_a_checkpoint_round_trip_keeps_both_branches(tiny_clip, image_batch, tmp_path):
    images, _ = image_batch
    learner = build(tiny_clip).eval()
    path = save_fitted(learner, tmp_path / "mmrl.ckpt")
    loaded = vlprompt.load_learner(path, clip=tiny_clip).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), learner(images))


def test_layers_scale_with_the_tower_and_bad_options_are_refused(tiny_clip):
    depth = min(tiny_clip.text_layers, tiny_clip.vision_layers)
    assert build(tiny_clip).rep_layers == list(range(depth // 2, depth + 1))
    for layers in ([1, 2], [4, 3], [depth + 1], []):
        with pytest.raises(ConfigError, match="rep_layers must be increasing block numbers"):
            build(tiny_clip, rep_layers=layers)
    with pytest.raises(ConfigError, match="alpha must be in"):
        build(tiny_clip, alpha=1.5)
    from vlprompt.learners.base import build_optimizer

    learner = build(tiny_clip)
    optimizer = build_optimizer(learner.optimizer_groups(), learner.hparams)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-3


def test_towers_that_cannot_take_inserted_tokens_are_refused_in_one_line():
    torch.manual_seed(0)
    resnet = vlprompt.load_clip(TINY_RESNET)
    with pytest.raises(ConfigError, match="needs a ViT|take MMRL's representation tokens"):
        vlprompt.build_learner("mmrl", clip=resnet, classnames=CLASSNAMES)
    biomedical = vlprompt.load_clip("vlprompt-bert-tiny", pretrained="toy")  # a timm ViT and a Hugging Face BERT
    with pytest.raises(ConfigError, match="after the class token of an open_clip ViT"):
        vlprompt.build_learner("mmrl", clip=biomedical, classnames=CLASSNAMES)


def test_a_checkpoint_keeps_the_classes_it_was_built_with(tiny_clip, image_batch):
    """A test on the novel classes builds the learner for them and loads the checkpoint: it must still know the base
    classes, so it does not fuse on the novel ones."""
    images, _ = image_batch
    learner = build(tiny_clip)
    checkpoint = {"state_dict": learner.state_dict()}
    novel = build(tiny_clip, classnames=["horse", "cow"])
    novel.load_state_dict(checkpoint["state_dict"])
    assert novel.fit_classes == CLASSNAMES and not novel.fuses
    novel.eval()
    with torch.no_grad():
        torch.testing.assert_close(novel(images), novel.logits(novel.image_features(images), novel.text_features()))
