"""KAPT (our reading): TF-IDF knowledge keywords, where they sit in the prompt, the attention-pooling head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.errors import ConfigError
from vlprompt.learners.kapt import AttentionPoolingHead, knowledge_keywords

from conftest import CLASSNAMES, describe

DESCRIPTIONS = {
    "red circle": ["It is round.", "Its colour is red.", "It is a common sight."],
    "blue square": ["It has four corners.", "Its colour is blue.", "It is a common sight."],
    "green star": ["It has five points.", "Its colour is green. It is a common sight."],
}


def test_keywords_are_the_highest_tf_idf_words_without_stop_or_own_words():
    # Hand-computed (scikit-learn's smooth idf = ln((1 + n) / (1 + df)) + 1, n = 3 documents): words of one class
    # ("round", "corners", "points") weigh ln(4/2) + 1 = 1.69, words of all three ("colour", "common", "sight")
    # weigh 1; "it", "is", "four", "five" are stop words; a class's own name words ("red", "blue", "green") are
    # left out; ties go alphabetically ("colour" before "common").
    assert knowledge_keywords(list(DESCRIPTIONS), DESCRIPTIONS, 2) == {
        "red circle": ["round", "colour"], "blue square": ["corners", "colour"], "green star": ["points", "colour"]}
    assert knowledge_keywords(list(DESCRIPTIONS), DESCRIPTIONS, 1) == {
        "red circle": ["round"], "blue square": ["corners"], "green star": ["points"]}
    assert knowledge_keywords(list(DESCRIPTIONS), DESCRIPTIONS, 0) == {name: [] for name in DESCRIPTIONS}


def test_toy_descriptions_give_informative_keywords():
    from vlprompt.toy.world import describe_classes

    described = describe_classes("ToyShapes")
    keywords = knowledge_keywords(list(described), described, 3)
    # The shape's fact ranks first (other classes have other shapes); the style sentence every class shares
    # never ranks.
    assert all(keywords[f"{colour} circle"][0] == "round" for colour in ("red", "yellow", "green", "blue", "purple"))
    assert not any({"picture", "sketch"} & set(words) for words in keywords.values())


def test_keywords_sit_after_the_class_name_and_novel_classes_use_their_own(tiny_clip):
    learner = vlprompt.build_learner("kapt", clip=tiny_clip, classnames=list(DESCRIPTIONS), descriptions=DESCRIPTIONS,
                                     n_keywords=1)
    assert learner.knowledge_names() == ["red circle, round", "blue square, corners", "green star, points"]
    expected = tiny_clip.tokenize(["X X X X red circle, round."])[0]
    ids = learner.prompts.token_ids[0]
    assert torch.equal(ids[5:ids.argmax() + 1].cpu(), expected[5:expected.argmax() + 1])
    novel = {"white ring": ["It has a hole.", "It is white."], "black cross": ["It has two bars.", "It is black."]}
    learner.set_classnames(list(novel), descriptions=novel)
    assert learner.knowledge_names() == ["white ring, hole", "black cross, bars"]


def test_without_keywords_or_head_kapt_is_coop(tiny_clip, image_batch):
    images, _ = image_batch
    descriptions = describe(CLASSNAMES)
    torch.manual_seed(0)
    kapt = vlprompt.build_learner("kapt", clip=tiny_clip, classnames=CLASSNAMES, descriptions=descriptions,
                                  n_keywords=0, adaptation_head=False).eval()
    torch.manual_seed(0)
    coop = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES).eval()
    with torch.no_grad():
        torch.testing.assert_close(kapt(images), coop(images))
    assert kapt.num_trainable_parameters() == coop.num_trainable_parameters()


def test_head_is_attention_pooling_added_to_the_pooled_feature():
    torch.manual_seed(0)
    head = AttentionPoolingHead(6, residual=0.3)
    with torch.no_grad():
        head.key.weight.add_(0.1 * torch.randn(6, 6))
        head.value.bias.add_(0.1)
    features = F.normalize(torch.randn(2, 6), dim=-1)
    tokens = F.normalize(torch.randn(2, 5, 6), dim=-1)
    weights = torch.softmax((tokens @ head.key.weight.t() + head.key.bias) @ head.query / math.sqrt(6), dim=1)
    cue = F.normalize((weights.unsqueeze(-1) * tokens).sum(1) @ head.value.weight.t() + head.value.bias, dim=-1)
    expected = F.normalize(features + 0.3 * cue, dim=-1)
    torch.testing.assert_close(head(features, tokens), expected)


def test_head_reads_each_image_alone_and_the_backbone_gets_no_gradient(tiny_clip, image_batch):
    images, labels = image_batch
    learner = vlprompt.build_learner("kapt", clip=tiny_clip, classnames=CLASSNAMES, descriptions=describe(CLASSNAMES))
    with torch.no_grad():
        together = learner.image_features(images)
        alone = torch.cat([learner.image_features(images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    learner.training_loss(images, labels).total.backward()
    assert all(p.grad is None for p in tiny_clip.model.parameters())
    assert learner.head.alpha.grad is not None and learner.head.query.grad.abs().sum() > 0


def test_kapt_refuses_to_build_without_descriptions_or_with_a_resnet(tiny_clip):
    with pytest.raises(ConfigError, match="needs per-class descriptions: pass --data.descriptions"):
        vlprompt.build_learner("kapt", clip=tiny_clip, classnames=CLASSNAMES)
    with pytest.raises(ConfigError, match="n_keywords must be 0 or more"):
        vlprompt.build_learner("kapt", clip=tiny_clip, classnames=CLASSNAMES, descriptions=describe(CLASSNAMES),
                               n_keywords=-1)
