"""Text and vision towers: the same learner calls on every open_clip family, offline.

Hugging Face text towers and tokenizers are built from files the tests write (a tiny BERT from a config and a
vocab file; word-level stand-ins with each family's special-token layout for SigLIP's, RoBERTa's and NLLB's
tokenizers), so nothing is downloaded. Image towers are the families' own open_clip configs, random init.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch

import vlprompt
from vlprompt.clip.towers import HFTextTower, OpenCLIPTextTower, TimmViT
from vlprompt.errors import ConfigError

from conftest import CLASSNAMES

transformers = pytest.importorskip("transformers")

WORDS = sorted({word for text in [*CLASSNAMES, "a photo of a x", "a sketch of the", "orange moon", "fox owl"]
                for word in text.split()})
TEXTS = ["a photo of a red circle.", "a sketch of the blue triangle."]


def write_bert(directory: Path, layers: int = 3) -> Path:
    """A tiny random BERT: ``config.json`` and a WordPiece ``vocab.txt``, as the test's only files."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, pad_token_id=0).save_pretrained(directory)
    return directory


def write_word_tokenizer(directory: Path, prefix: list[str], suffix: list[str], pad: str, extra=()) -> Path:
    """A word-level fast tokenizer with a family's special-token layout (``prefix`` words ``suffix``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = list(dict.fromkeys([pad, "<unk>", *prefix, *suffix, *extra]))
    vocab = {word: index for index, word in enumerate([*specials, ".", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    template = " ".join([*prefix, "$A", *suffix])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, vocab[token]) for token in dict.fromkeys([*prefix, *suffix])])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, unk_token="<unk>",
                                         ).save_pretrained(directory)
    return directory


def tiny_bert_clip(tmp_path: Path, layers: int = 3) -> dict:
    """Shaped like BiomedCLIP: a Hugging Face BERT text tower and a timm ViT image tower, both tiny and random."""
    bert = write_bert(tmp_path / "bert", layers)
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": 224, "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "token", "timm_proj": "linear"},
            "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "linear",
                         "hf_pooler_type": "cls_pooler", "context_length": 32}}


def assert_learned_path_equals_open_clip(clip):
    """Token ids through vlprompt's embedding path give open_clip's own ``encode_text`` features."""
    ids = clip.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_text(ids), clip.model.encode_text(ids), atol=1e-5, rtol=1e-5)


def assert_tokens_path_equals_open_clip(clip, images):
    """The image features that come with the patch tokens (KAPT's head reads them) are open_clip's own."""
    with torch.no_grad():
        features, tokens = clip.encode_image_tokens(images)
        torch.testing.assert_close(features, clip.model.encode_image(images), atol=1e-5, rtol=1e-5)
    assert tokens.dim() == 3 and tokens.shape[0] == images.shape[0] and tokens.shape[-1] == clip.embed_dim


def test_tiny_bert_text_tower_takes_learned_tokens_and_deep_prompts(tmp_path):
    torch.manual_seed(0)
    clip = vlprompt.load_clip(tiny_bert_clip(tmp_path))
    assert isinstance(clip._text, HFTextTower) and clip.text_width == 32 and clip.text_layers == 3
    assert isinstance(clip._vision, TimmViT) and clip.vision_layers == 12
    assert_learned_path_equals_open_clip(clip)
    tokens = clip.prompt_tokens(["a photo of a", "red circle", "."])
    expected = clip.tokenize(["a photo of a red circle."])[0].cpu()
    assert torch.equal(tokens.ids, expected) and tokens.spans[0] == (1, 5)  # [CLS] first
    assert (expected != 0).sum() == tokens.length
    images = torch.randn(2, 3, 224, 224)
    assert_tokens_path_equals_open_clip(clip, images)
    zeroshot = vlprompt.build_learner("zeroshot", clip=clip, classnames=CLASSNAMES, templates=["a photo of a {}."])
    coop = vlprompt.build_learner("coop", clip=clip, classnames=CLASSNAMES).eval()
    with torch.no_grad():
        torch.testing.assert_close(coop(images), zeroshot.eval()(images), atol=1e-5, rtol=0)
    coop.train()
    coop.training_loss(images, torch.tensor([0, 1])).total.backward()
    assert coop.prompts.ctx.grad.abs().sum() > 0
    for name, depth in (("ivlp", {"text_depth": 3, "vision_depth": 3}), ("maple", {"prompt_depth": 3})):
        # deep text prompts on BERT, visual prompts on the timm ViT
        learner = vlprompt.build_learner(name, clip=clip, classnames=CLASSNAMES, **depth)
        learner.training_loss(images, torch.tensor([0, 1])).total.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())


def test_deep_text_prompts_on_a_hugging_face_tower_replace_the_span_at_their_layer(tmp_path):
    torch.manual_seed(0)
    clip = vlprompt.load_clip(tiny_bert_clip(tmp_path))
    ids = clip.tokenize(["a photo of a red circle."])
    mask = clip._text.attention_mask(ids)
    embeds = clip.embed_tokens(ids)
    plain = clip.encode_text_embeddings(embeds, clip.pool_index(ids), attention_mask=mask)
    prompts = torch.randn(2, clip.text_width)
    deep = clip.encode_text_embeddings(embeds, clip.pool_index(ids), deep_prompts={2: prompts}, attention_mask=mask)
    assert not torch.allclose(plain, deep)
    # The hook is gone afterwards: the plain features come back.
    torch.testing.assert_close(clip.encode_text_embeddings(embeds, clip.pool_index(ids), attention_mask=mask), plain)


# -- every open_clip family, random init ----------------------------------------------------------------------------
def family_config(name: str, tmp_path: Path) -> dict:
    """The family's open_clip config, with any Hugging Face model or tokenizer it names replaced by local files."""
    config = copy.deepcopy(open_clip.get_model_config(name))
    text = config["text_cfg"]
    if name.startswith("ViT-B-16-SigLIP"):  # SentencePiece (T5 / Gemma): no start token, end token appended
        text["hf_tokenizer_name"] = str(write_word_tokenizer(tmp_path / "tok", [], ["</s>"], "<pad>"))
    if name.startswith("roberta"):
        text["hf_model_name"] = str(write_hf_config(tmp_path / "roberta", transformers.RobertaConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=80, pad_token_id=1)))
        text["hf_tokenizer_name"] = str(write_word_tokenizer(tmp_path / "tok", ["<s>"], ["</s>"], "<pad>"))
    if name.startswith("nllb"):
        text["hf_model_name"] = str(write_hf_config(tmp_path / "nllb", transformers.M2M100Config(
            vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=80,
            pad_token_id=1, scale_embedding=True)))
        text["hf_tokenizer_name"] = str(write_word_tokenizer(tmp_path / "tok", ["eng_Latn"], ["</s>"], "<pad>"))
    return config


def write_hf_config(directory: Path, config) -> Path:
    config.save_pretrained(directory)
    return directory


#: family -> (takes learned text tokens, takes visual prompts)
FAMILIES = {
    "ViT-B-16": (True, True),
    "RN50": (True, False),
    "EVA02-B-16": (True, True),
    "convnext_base": (True, False),
    "MobileCLIP-S1": (True, False),
    "coca_ViT-B-32": (False, True),
    "ViT-B-16-SigLIP": (True, True),
    "ViT-B-16-SigLIP2": (True, True),
    "nllb-clip-base": (True, True),
    "roberta-ViT-B-32": (True, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_runs_zero_shot_and_the_learners_its_towers_can_take(name, tmp_path):
    torch.manual_seed(0)
    clip = vlprompt.load_clip(family_config(name, tmp_path))
    takes_text, takes_visual = FAMILIES[name]
    assert clip.supports_learned_text == takes_text and clip.supports_visual_prompts == takes_visual
    size = clip.preprocess_cfg["size"]
    images = torch.randn(2, 3, *(size if isinstance(size, (tuple, list)) else (size, size)))
    classes = CLASSNAMES[:3]
    with torch.no_grad():
        logits = vlprompt.build_learner("zeroshot", clip=clip, classnames=classes).eval()(images)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    labels = torch.tensor([0, 2])
    if takes_text:
        assert_learned_path_equals_open_clip(clip)
        coop = vlprompt.build_learner("coop", clip=clip, classnames=classes)
        coop.training_loss(images, labels).total.backward()
        assert coop.prompts.ctx.grad.abs().sum() > 0
    else:
        with pytest.raises(ConfigError, match="cannot take learned tokens"):
            vlprompt.build_learner("coop", clip=clip, classnames=classes)
    if takes_visual and takes_text:
        ivlp = vlprompt.build_learner("ivlp", clip=clip, classnames=classes, text_depth=2, vision_depth=2)
        ivlp.training_loss(images, labels).total.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ivlp.vision_prompts)
    elif not takes_visual:
        with pytest.raises(ConfigError, match="visual prompts need a ViT image tower"):
            vlprompt.build_learner("ivlp", clip=clip, classnames=classes)
    if takes_visual and takes_text:
        assert_tokens_path_equals_open_clip(clip, images)
    elif takes_visual:  # CoCa: attention pooling, no patch tokens in the joint space
        with pytest.raises(ConfigError, match="pools with attention"):
            clip.encode_image_tokens(images)
    if isinstance(clip._text, OpenCLIPTextTower) and not clip._text.cut_after_last_token:
        # No causal mask (SigLIP, MobileCLIP): prompts keep the whole padded context.
        assert vlprompt.build_learner("coop", clip=clip, classnames=classes).prompts.token_ids.shape[1] == \
            clip.context_length


def test_families_list_matches_open_clip():
    assert set(FAMILIES) <= set(open_clip.list_models())
    assert json.dumps(sorted(FAMILIES))  # a fixed, documented list
