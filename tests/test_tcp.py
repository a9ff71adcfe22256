"""TCP: its class-aware tokens, loss terms, options and refusals; and equality with its reference code
(htyao89/Textual-based_Class-aware_prompt_tuning@bd97bec) on shared random ViT-B/16 weights.

The reference numbers were printed by ``trainers/tcp.py`` (``CustomCLIP`` with ``trainers/clip_text/model.py``), run
from a scratch folder outside this repository with its Dassl imports stubbed, ``.cuda()`` and ``.half()`` made
identities (fp32), its second CLIP (``load_clip_to_cpu``) given the same random weights, ``DATASET.NAME
OxfordPets`` (learned template "X X X X {}, a type of pet.", prior "a photo of a {}, a type of pet."), ``N_CTX 4``,
and the context and ``meta_net`` copied from the vlprompt learner below (docs/reproducing.md, "Equal to the
reference code"; the command: ``python run_ref.py``). One SGD step at lr 0.002, momentum 0.9, weight decay 5e-4. Only
the numbers are kept.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.errors import ConfigError

from conftest import fill_learned, reference_images

CLASSNAMES = ["dog", "cat", "sea turtle"]
PET_TEMPLATE = "a photo of a {}, a type of pet."
REFERENCE = {
    "parameters": 331_904,
    "logits": [0.9371935, 0.7625132, 0.6632088, 0.9042621, 0.716876, 0.5431408, 0.8604863, 0.7036436, 0.6518149],
    "ce": 1.08633553981781,
    "kg": 2.626014232635498,
    "gradient_norms": [18.788124084472656, 0.503058135509491, 0.7129902243614197],  # ctx, linear1, linear2 weights
    "logits_after_step": [0.8009347, 0.6216772, 0.5765593, 0.7683712, 0.5690724, 0.4623914, 0.6906535, 0.5183405,
                          0.5417438],
}


@pytest.mark.slow
def test_tcp_equals_the_reference_code(reference_vit_b16):
    learner = vlprompt.build_learner("tcp", clip=reference_vit_b16, classnames=CLASSNAMES, templates=[PET_TEMPLATE])
    fill_learned(learner)
    assert learner.num_trainable_parameters() == REFERENCE["parameters"]
    assert learner.tke_layer == 8
    images = reference_images()
    labels = torch.tensor([0, 1, 2])
    learner.eval()
    with torch.no_grad():
        assert (learner(images).flatten() - torch.tensor(REFERENCE["logits"])).abs().max() <= 1e-5
    learner.train()
    loss = learner.training_loss(images, labels)
    for name in ("ce", "kg"):
        assert abs(loss.terms[name].item() - REFERENCE[name]) <= 1e-5
    loss.total.backward()
    stepped = [learner.prompts.ctx, learner.tke.linear1.weight, learner.tke.linear2.weight]
    norms = torch.tensor([parameter.grad.norm().item() for parameter in stepped])
    assert (norms - torch.tensor(REFERENCE["gradient_norms"])).abs().max() <= 1e-5
    torch.optim.SGD(learner.parameter_groups(), lr=0.002, momentum=0.9, weight_decay=5e-4).step()
    learner.eval()
    with torch.no_grad():
        assert (learner(images).flatten() - torch.tensor(REFERENCE["logits_after_step"])).abs().max() <= 1e-5


def build(tiny_clip, classnames=CLASSNAMES, **options):
    torch.manual_seed(0)
    return vlprompt.build_learner("tcp", clip=tiny_clip, classnames=classnames, templates=[PET_TEMPLATE], **options)


def test_the_prompt_ends_as_the_template_and_the_context_starts_random(tiny_clip):
    learner = build(tiny_clip)
    assert learner.prompts.class_suffix == ", a type of pet."
    ids = learner.prompts.token_ids[2].tolist()
    words = tiny_clip.encode_words("sea turtle , a type of pet .")
    assert ids[5:5 + len(words)] == words  # [SOT] X X X X sea turtle, a type of pet. [EOT]
    assert learner.prompts.ctx.std().item() == pytest.approx(0.02, rel=0.3)
    assert build(tiny_clip, class_suffix=".").prompts.class_suffix == "."


def test_the_class_tokens_replace_the_context_at_their_block(tiny_clip, image_batch):
    """Each class's tokens come from its own frozen feature through the knowledge embedding; from ``tke_layer`` on
    they replace the context, so a context change reaches the features only through the blocks before it."""
    learner = build(tiny_clip)
    prior = learner.hand_text_features()
    tokens = learner.class_tokens()
    assert tokens.shape == (3, 4, tiny_clip.text_width)
    assert torch.allclose(tokens, learner.tke(prior).view(3, 4, -1))
    by_hand = tiny_clip.encode_text_embeddings(learner.prompts.embeddings(), learner.prompts.pool_index,
                                               deep_prompts={learner.tke_layer: tokens}, prompt_start=1)
    assert torch.allclose(learner.text_features(), F.normalize(by_hand, dim=-1), atol=1e-6)
    without = tiny_clip.encode_text_embeddings(learner.prompts.embeddings(), learner.prompts.pool_index)
    assert not torch.allclose(learner.text_features(), F.normalize(without, dim=-1), atol=1e-3)
    assert learner.prompts.shared_prefix == 0  # the prompts part ways at the class-aware tokens: nothing is shared


def test_novel_classes_get_tokens_from_their_own_features(tiny_clip):
    learner = build(tiny_clip)
    learner.set_classnames(["sea turtle", "dog"])
    tokens = learner.class_tokens()
    learner.set_classnames(CLASSNAMES)
    assert torch.allclose(tokens, learner.class_tokens()[[2, 0]], atol=1e-6)


def test_loss_terms_follow_their_formulas(tiny_clip, image_batch):
    images, labels = image_batch
    labels = labels % 3
    learner = build(tiny_clip)
    loss = learner.training_loss(images, labels)
    text, image = learner.text_features(), learner.image_features(images)
    expected_ce = F.cross_entropy(tiny_clip.logit_scale * image @ text.t(), labels)
    expected_kg = 8.0 * (1 - F.cosine_similarity(text, learner.hand_text_features(), dim=-1).mean())
    assert torch.allclose(loss.terms["ce"], expected_ce, atol=1e-6)
    assert torch.allclose(loss.terms["kg"], expected_kg, atol=1e-6)
    off = build(tiny_clip, lambda_kg=0.0).training_loss(images, labels)
    assert torch.allclose(off.total, off.terms["ce"])


def test_trains_with_adam_at_the_reference_eps(tiny_clip):
    from vlprompt.learners.base import build_optimizer

    learner = build(tiny_clip)
    built = build_optimizer(learner.parameter_groups(), learner.hparams)
    assert isinstance(built, torch.optim.Adam)
    assert built.defaults["eps"] == 1e-3 and built.defaults["lr"] == 0.002 and built.defaults["weight_decay"] == 5e-4
    coop = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, optimizer="adamw")
    assert isinstance(build_optimizer(coop.parameter_groups(), coop.hparams), torch.optim.AdamW)


def test_the_block_scales_with_the_tower_and_bad_options_are_refused(tiny_clip):
    layers = tiny_clip.text_layers
    assert build(tiny_clip).tke_layer == min(max(round(8 * layers / 12), 1), layers - 1)
    with pytest.raises(ConfigError, match="tke_layer must be between 1 and"):
        build(tiny_clip, tke_layer=layers)
    with pytest.raises(ConfigError, match="tke_reduction"):
        build(tiny_clip, tke_reduction=0)
    with pytest.raises(ConfigError, match="class_token_position 'end'"):
        build(tiny_clip, class_token_position="front")
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, adam, adamw"):
        build(tiny_clip, optimizer="rmsprop")
