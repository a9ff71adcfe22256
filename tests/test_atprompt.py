"""ATPrompt, the plug-in: the prompt it builds, what it learns, its options and refusals; and equality with its
reference code (zhengli97/ATPrompt@86980a1) on shared random ViT-B/16 weights.

The reference numbers were printed by ``trainers/coop_atp.py`` and ``trainers/maple_atp.py`` (with
``clip/model_atp.py``), run from a scratch folder outside this repository with its Dassl imports stubbed and its
``.half()`` casts made identities (fp32), ``ATT_NUM 2``, ``ATT1_TEXT color``, ``ATT2_TEXT shape``, ``N_ATT1-3 =
N_CTX = 2``, and every learned tensor copied from the vlprompt learner below (docs/reproducing.md, "Equal to the
reference code"; the command: ``python run_ref.py coop|maple``). Only the numbers are kept.
"""

from __future__ import annotations

import pytest
import torch

import vlprompt
from vlprompt.errors import CheckpointMismatchError, ConfigError

from conftest import fill_learned, reference_images



CLASSNAMES = ["dog", "cat", "sea turtle"]

REFERENCE = {
    "coop": {
        "parameters": 3_072,  # used: ctx 2 + A1 2 + A2 2 tokens of 512 (the reference also allocates an unused A3)
        "logits": [0.4828816, 0.4706655, 0.6676739, 0.4489799, 0.409488, 0.5561991, 0.4625185, 0.4142968, 0.5425946],
        "loss": 1.117820382118225,
        "gradient_norms": [0.36167749762535095, 0.4401763081550598, 0.4623624086380005],
        "logits_after_step": [0.4945962, 0.4822193, 0.6656394, 0.4603732, 0.4213376, 0.5538555, 0.472137, 0.424376,
                              0.5411012],
    },
    "maple": {
        "parameters": 3_557_120,
        "logits": [0.1557254, 0.1011227, 0.2803498, 0.2016457, 0.1323148, 0.2244351, 0.1714008, 0.0877998, 0.2018811],
        "loss": 1.1098546981811523,
        "gradient_norms": [0.3965143859386444, 0.47512367367744446, 0.5610092878341675],
        "logits_after_step": [0.1759888, 0.1256134, 0.2706729, 0.2207354, 0.1583193, 0.2144602, 0.1864751, 0.109195,
                              0.1953912],
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("host", sorted(REFERENCE))
def test_atprompt_equals_the_reference_code(host, reference_vit_b16):
    expected = REFERENCE[host]
    learner = vlprompt.build_learner(host, clip=reference_vit_b16, classnames=CLASSNAMES, n_ctx=2,
                                     plugins=[{"name": "atprompt", "attributes": ["color", "shape"]}])
    fill_learned(learner)
    assert learner.num_trainable_parameters() == expected["parameters"]
    images = reference_images()
    labels = torch.tensor([0, 1, 2])
    learner.eval()
    with torch.no_grad():
        assert (learner(images).flatten() - torch.tensor(expected["logits"])).abs().max() <= 1e-5
    learner.train()
    loss = learner.training_loss(images, labels).total
    assert abs(loss.item() - expected["loss"]) <= 1e-5
    loss.backward()
    stepped = [learner.prompts.ctx, *learner.plugins[0].attribute_tokens]
    norms = torch.tensor([parameter.grad.norm().item() for parameter in stepped])
    assert (norms - torch.tensor(expected["gradient_norms"])).abs().max() <= 1e-5
    hp = learner.hparams
    torch.optim.SGD(learner.parameter_groups(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay).step()
    learner.eval()
    with torch.no_grad():
        assert (learner(images).flatten() - torch.tensor(expected["logits_after_step"])).abs().max() <= 1e-5


def build(tiny_clip, name="coop", plugins=None, **options):
    torch.manual_seed(0)
    spec = {"name": "atprompt", "attributes": ["colour", "shape"], **(plugins or {})}
    return vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=[spec], **options)


def test_the_prompt_is_attribute_tokens_and_words_then_the_context_then_the_class(tiny_clip):
    learner = build(tiny_clip, n_ctx=2)
    # The reference's prompt text: N_ATT "X" per attribute before its word, then the (random) context's "X"s.
    expected = tiny_clip.prompt_tokens(["X X colour X X shape X X dog."]).ids
    assert torch.equal(learner.prompts.token_ids[0], expected[:learner.prompts.token_ids.shape[1]])
    embeddings = learner.prompts.embeddings()
    attributes = learner.plugins[0].attribute_tokens
    torch.testing.assert_close(embeddings[:, 1:3], attributes[0].expand(3, -1, -1))
    torch.testing.assert_close(embeddings[:, 4:6], attributes[1].expand(3, -1, -1))
    torch.testing.assert_close(embeddings[:, 7:9], learner.prompts.ctx.expand(3, -1, -1))
    words = tiny_clip.embed_tokens(torch.tensor(tiny_clip.encode_words("colour shape")))
    torch.testing.assert_close(embeddings[0, [3, 6]], words)
    assert learner.prompts.prompt_start == 1 + 2 * (2 + 1)  # deep prompts replace the context only


def test_it_learns_k_times_n_att_tokens_from_n_0_001_and_restarts_the_context_as_the_reference(tiny_clip):
    plain = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, n_ctx=4)
    learner = build(tiny_clip, n_ctx=4)
    width = tiny_clip.text_width
    assert learner.num_trainable_parameters() == plain.num_trainable_parameters() + 2 * 4 * width
    tokens = torch.cat(list(learner.plugins[0].attribute_tokens))
    assert tokens.std().item() == pytest.approx(0.01, rel=0.3)
    # "a photo of a" is not used: the context starts from N(0, 0.02), as every *_ATP trainer starts it.
    assert learner.prompts.ctx.std().item() == pytest.approx(0.02, rel=0.3)
    kept = build(tiny_clip, plugins={"context_init": "learner"}, n_ctx=4)
    torch.testing.assert_close(kept.prompts.ctx, plain.prompts.ctx)
    assert build(tiny_clip, plugins={"n_att": 3}).plugins[0].attribute_tokens[0].shape == (3, width)


def test_every_loss_term_and_parameter_gets_a_gradient_through_the_attributes(tiny_clip, image_batch):
    learner = build(tiny_clip, "maple")
    images, labels = image_batch
    learner.training_loss(images, labels[:images.shape[0]] % 3).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.plugins[0].attribute_tokens)


def test_cocoops_image_bias_reaches_the_context_only(tiny_clip):
    learner = build(tiny_clip, "cocoop", n_ctx=2)
    ctx = learner.prompts.ctx + torch.randn(4, 1, tiny_clip.text_width)
    per_image = learner.prompts.embeddings(ctx)
    assert torch.equal(per_image[0, :, :7], per_image[3, :, :7])  # SOT, A1, colour, A2, shape: the same per image
    assert not torch.equal(per_image[0, :, 7:9], per_image[3, :, 7:9])


def test_novel_classes_keep_the_learned_attributes(tiny_clip):
    learner = build(tiny_clip)
    learner.set_classnames(["purple ring", "red star"])
    embeddings = learner.prompts.embeddings()
    torch.testing.assert_close(embeddings[:, 1:5], learner.plugins[0].attribute_tokens[0].expand(2, -1, -1))


def test_a_word_of_several_tokens_is_embedded_whole(tiny_clip):
    learner = build(tiny_clip, plugins={"attributes": ["playfulness", "energy"]}, n_ctx=2)
    pieces = len(tiny_clip.encode_words("playfulness")) + len(tiny_clip.encode_words("energy"))
    assert pieces > 2
    assert learner.prompts.prompt_start == 1 + 2 * 2 + pieces


def test_the_attributes_default_to_the_data_sets(tiny_clip):
    torch.manual_seed(0)
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, attributes=["colour"],
                                     plugins=[{"name": "atprompt"}])
    assert learner.plugins[0].words == ["colour"] and len(learner.plugins[0].attribute_tokens) == 1


@pytest.mark.parametrize("plugin, options, message", [
    ({"name": "atprompt"}, {}, "needs attribute words: set data.attributes"),
    ({"name": "atprompt", "attributes": "colour"}, {}, "must be a list of words"),
    ({"name": "atprompt", "attributes": []}, {}, "is empty"),
    ({"name": "atprompt", "attributes": ["colour"], "n_att": 0}, {}, "n_att must be a number of tokens"),
    ({"name": "atprompt", "attributes": ["colour"], "context_init": "words"}, {}, "context_init must be one of"),
    ({"name": "atprompt", "attributes": ["colour"]}, {"class_token_position": "front"},
     "needs one learned text context (ContextPrompts) with the class name at the end"),
])
def test_bad_atprompt_settings_are_one_line_errors(tiny_clip, plugin, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=[plugin], **options)


def test_learners_without_a_text_context_refuse_it(tiny_clip):
    with pytest.raises(ConfigError, match="plug-in 'atprompt' needs one learned text context"):
        vlprompt.build_learner("zeroshot", clip=tiny_clip, classnames=CLASSNAMES,
                               plugins=[{"name": "atprompt", "attributes": ["colour"]}])


def test_a_checkpoint_records_its_attributes_and_refuses_others(tiny_clip):
    from vlprompt.learners.base import check_plugin_records

    learner = build(tiny_clip)
    checkpoint = {"state_dict": learner.state_dict()}
    learner.on_save_checkpoint(checkpoint)
    assert checkpoint["vlprompt"]["plugins"]["atprompt"]["attributes"] == ["colour", "shape"]
    assert "plugins.0.attribute_tokens.1" in checkpoint["state_dict"]
    again = build(tiny_clip)
    check_plugin_records(checkpoint, again)
    again.load_state_dict(checkpoint["state_dict"])
    torch.testing.assert_close(again.plugins[0].attribute_tokens[1], learner.plugins[0].attribute_tokens[1])
    with pytest.raises(CheckpointMismatchError, match=r"learned attribute tokens for \['colour', 'shape'\]"):
        check_plugin_records(checkpoint, build(tiny_clip, plugins={"attributes": ["shape", "colour"]}))
    with pytest.raises(CheckpointMismatchError, match="trained with the 'atprompt' plug-in; pass it"):
        check_plugin_records(checkpoint, vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES))


# -- the attribute search ----------------------------------------------------------------------------------------
def test_the_search_enumerates_combinations_of_the_given_sizes():
    from vlprompt.learners.atprompt.search import combinations

    assert combinations(["a", "b", "c"], [1, 2]) == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c")]
    assert len(combinations(list("abcde"), [3, 4, 5])) == 16  # the reference code's r > 2
    with pytest.raises(ConfigError, match="between 1 and the 3 candidates"):
        combinations(["a", "b", "c"], [4])


def test_the_search_mixes_each_combinations_coop_logits_by_softmax_weights(tiny_clip, image_batch):
    from vlprompt.learners.atprompt.search import AttributeSearch

    torch.manual_seed(0)
    search = AttributeSearch(tiny_clip, CLASSNAMES, ["colour", "shape"], sizes=[1, 2], n_ctx=2, n_att=2)
    assert search.combinations == [("colour",), ("shape",), ("colour", "shape")]
    assert [p.plugins[0].words for p in search.prompts] == [["colour"], ["shape"], ["colour", "shape"]]
    images, _ = image_batch
    with torch.no_grad():
        each = torch.stack([prompt(images) for prompt in search.prompts])
        expected = (torch.softmax(search.alpha, 0)[:, None, None] * each).sum(0)
        torch.testing.assert_close(search(images), expected)
    with pytest.raises(ConfigError, match="repeat a word"):
        AttributeSearch(tiny_clip, CLASSNAMES, ["colour", "colour"])


@pytest.mark.slow
def test_the_search_alternates_prompt_steps_on_training_batches_and_weight_steps_on_validation_batches(tiny_clip,
                                                                                                       shapes):
    from vlprompt.data import ImageSplitDataModule
    from vlprompt.learners.atprompt import search as search_module

    data = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", shots=2, subsample="base",
                                batch_size=8, num_workers=0, augment=False)
    seen = []
    original = search_module.AttributeSearch._validation_batch
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(search_module.AttributeSearch, "_validation_batch",
                        lambda self: seen.append(1) or original(self))
        ranking = search_module.search_attributes(tiny_clip, data, ["colour", "shape"], epochs=2, sizes=[1, 2],
                                                  n_ctx=2, n_att=2, accelerator="cpu")
    assert len(seen) == 2 * len(data.train_dataloader())  # one weight step per prompt step
    assert sorted(c for c, _ in ranking) == [("colour",), ("colour", "shape"), ("shape",)]
    assert sum(w for _, w in ranking) == pytest.approx(1.0) and ranking[0][1] >= ranking[-1][1]


def test_the_search_tool_refuses_bad_candidates_in_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "one.txt").write_text("colour\n")
    for candidates, message in (
            (tmp_path / "missing.txt", "does not exist; --candidates is a text file with one attribute word per line"),
            (tmp_path / "one.txt", "must list at least two attribute words, one per line (got ['colour'])")):
        result = subprocess.run([sys.executable, str(REPO / "tools" / "search_attributes.py"), "--data",
                                 str(REPO / "configs" / "data" / "DTD.yaml"), "--candidates", str(candidates)],
                                capture_output=True, text=True)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"search_attributes: error: {candidates} {message}"]
