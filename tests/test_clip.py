"""The frozen CLIP wrapper against open_clip itself, and its loading routes."""

from __future__ import annotations

import json
import socket

import open_clip
import pytest
import torch

import vlprompt
from vlprompt.clip import FrozenCLIP, frozen
from vlprompt.errors import ConfigError

from conftest import TINY_RESNET, model_weights, tiny_config

TEXTS = ["a photo of a red circle.", "a blue triangle", "x"]


@pytest.mark.parametrize("text_cfg", [
    {},                                        # text_projection as a Parameter
    {"proj_bias": True},                       # as an nn.Linear
    {"proj_type": "none", "width": 32},        # none: the text width is the embedding width
], ids=["parameter", "linear", "none"])
def test_text_features_equal_open_clip(text_cfg):
    clip = vlprompt.load_clip(tiny_config(text_cfg=text_cfg))
    ids = clip.tokenize(TEXTS)
    torch.testing.assert_close(clip.encode_text(ids), clip.model.encode_text(ids), atol=1e-5, rtol=0)


def test_image_features_equal_open_clip(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tiny_clip.encode_image(images), tiny_clip.model.encode_image(images))


def test_cutting_the_sequence_after_the_last_eot_is_exact(tiny_clip):
    ids = tiny_clip.tokenize(TEXTS)
    embeds = tiny_clip.embed_tokens(ids)
    pool = tiny_clip.pool_index(ids)
    # Force the full 77 tokens by pooling at the last position for one extra dummy sequence.
    full_pool = torch.cat([pool, torch.tensor([ids.shape[1] - 1])])
    full = tiny_clip.encode_text_embeddings(torch.cat([embeds, embeds[:1]]), full_pool)[: len(TEXTS)]
    torch.testing.assert_close(tiny_clip.encode_text_embeddings(embeds, pool), full, atol=1e-5, rtol=0)


def test_architecture_facts_are_read_from_the_model(tiny_clip):
    assert (tiny_clip.embed_dim, tiny_clip.text_width, tiny_clip.text_layers) == (32, 32, 9)
    assert (tiny_clip.vision_width, tiny_clip.vision_layers, tiny_clip.context_length) == (48, 9, 77)
    assert tiny_clip.supports_visual_prompts
    resnet = vlprompt.load_clip(TINY_RESNET)
    assert not resnet.supports_visual_prompts
    with pytest.raises(ConfigError, match="ViT image tower"):
        resnet.vision_width


def test_weights_are_frozen_hidden_and_stay_in_eval_mode(tiny_clip):
    assert all(not p.requires_grad for p in tiny_clip.model.parameters())
    assert list(tiny_clip.parameters()) == [] and tiny_clip.state_dict() == {}
    tiny_clip.train()
    assert not tiny_clip.model.training
    assert not any(m.training for m in tiny_clip.model.modules())


def test_prompt_tokens_match_the_tokenizer(tiny_clip):
    tokens = tiny_clip.prompt_tokens(["a photo of a", "red circle", "."])
    expected = tiny_clip.tokenize(["a photo of a red circle."])[0].cpu()
    assert torch.equal(tokens.ids, expected)
    assert tokens.spans[0] == (1, 5) and tokens.length == int(expected.argmax()) + 1
    with pytest.raises(ConfigError, match="longer than the context length"):
        tiny_clip.prompt_tokens(["word " * 80])


def test_deep_text_prompts_replace_the_span_at_their_layer(tiny_clip):
    ids = tiny_clip.tokenize(["a photo of a red circle."])
    embeds, pool = tiny_clip.embed_tokens(ids), tiny_clip.pool_index(ids)
    plain = tiny_clip.encode_text_embeddings(embeds, pool)
    prompts = torch.randn(2, tiny_clip.text_width)
    deep = tiny_clip.encode_text_embeddings(embeds, pool, deep_prompts={3: prompts})
    assert not torch.allclose(plain, deep)
    with pytest.raises(ConfigError, match="out of range 1..8"):
        tiny_clip.encode_text_embeddings(embeds, pool, deep_prompts={0: prompts})


def test_visual_prompts_are_appended_and_dropped_before_pooling(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    prompts = torch.randn(3, tiny_clip.vision_width, requires_grad=True)
    features = tiny_clip.encode_image(images, prompts=prompts, deep_prompts={4: torch.randn(3, tiny_clip.vision_width)})
    assert features.shape == (2, tiny_clip.embed_dim)
    features.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="need input visual prompts"):
        tiny_clip.encode_image(images, deep_prompts={1: prompts})


def test_local_checkpoint_path_loads_the_saved_weights(tmp_path):
    torch.manual_seed(1)
    source = vlprompt.load_clip(tiny_config())
    path = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), path)
    loaded = vlprompt.load_clip(tiny_config(), pretrained=str(path))
    for key, value in model_weights(loaded).items():
        assert torch.equal(value, model_weights(source)[key])


def test_local_dir_loads_config_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = vlprompt.load_clip(tiny_config())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_config()}))
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()},
              tmp_path / "open_clip_model.safetensors")
    loaded = vlprompt.load_clip(f"local-dir:{tmp_path}")
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), source.encode_image(images))


def test_loading_mistakes_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown CLIP architecture 'ViT-B-166'; closest: ViT-B-16"):
        vlprompt.load_clip("ViT-B-166")
    with pytest.raises(ConfigError, match="does not exist"):
        vlprompt.load_clip("ViT-B-32", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="not a pretrained tag of ViT-B-32"):
        vlprompt.load_clip("ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(ConfigError, match="lacks"):
        vlprompt.load_clip({"embed_dim": 8})


def test_pretrained_tags_are_passed_to_open_clip(monkeypatch):
    """A pretrained tag goes to open_clip unchanged (it downloads for users online); a failed download is one line
    that says how to go on."""
    seen = {}

    def fake_create_model(name, pretrained=None, cache_dir=None, **options):
        seen.update(name=name, pretrained=pretrained)
        raise RuntimeError("Failed to download file (network unreachable)")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    monkeypatch.setattr(frozen, "_check_download_reachable", lambda *args: None)  # as if online
    with pytest.raises(ConfigError, match="could not download the 'openai' weights of ViT-B-32 .*configs/clip/toy.yaml"):
        FrozenCLIP("ViT-B-32", pretrained="openai")
    assert seen == {"name": "ViT-B-32", "pretrained": "openai"}


def test_offline_download_fails_at_once_naming_the_ways_on(monkeypatch, tmp_path):
    """Offline (the hub's name does not resolve) no download is tried: no minute of retries."""
    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    def must_not_download(*args, **kwargs):
        raise AssertionError("open_clip.create_model was called although the hub cannot be reached")

    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(open_clip, "create_model", must_not_download)
    with pytest.raises(ConfigError) as error:
        FrozenCLIP("ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    assert "local checkpoint file" in str(error.value) and "--config configs/clip/toy.yaml" in str(error.value)
