"""OpenAI's CLIP weights were trained with QuickGELU: every documented way of loading them must build QuickGELU.

The weights are written by the test (a tiny architecture) in each of OpenAI's formats and through each loading
route; features must equal those of a QuickGELU model built from the same state dict.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from torch import nn

import vlprompt
from vlprompt.clip import frozen
from vlprompt.clip.frozen import OPENAI_METADATA_KEYS, _register_config_dict

from conftest import tiny_config

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
TEXTS = ["a photo of a cat.", "a sketch of a dog.", "a red square."]


@pytest.fixture(scope="module")
def reference():
    """A QuickGELU model with random weights, its state dict and its features."""
    torch.manual_seed(3)
    name = _register_config_dict(tiny_config())
    model = open_clip.create_model(name, force_quick_gelu=True).eval()
    ids = open_clip.get_tokenizer(name)(TEXTS)
    with torch.no_grad():
        features = model.encode_image(IMAGES), model.encode_text(ids)
    return name, model.state_dict(), features


def openai_state(state: dict) -> dict:
    """The state dict as OpenAI's TorchScript files hold it: fp16 weights plus their metadata entries."""
    result = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    result.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    assert set(OPENAI_METADATA_KEYS) <= set(result)
    return result


def write_torchscript_archive(state: dict, path) -> None:
    """A TorchScript archive whose state dict is ``state``, as OpenAI's ``ViT-B-16.pt`` is."""
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


def assert_same_features(clip, reference_features):
    images, texts = reference_features
    with torch.no_grad():
        got_images = clip.encode_image(IMAGES)
        got_texts = clip.encode_text(clip.tokenize(TEXTS))
    assert clip.uses_quick_gelu
    # fp16 storage rounds the weights; the reference is rebuilt from the same rounded weights where it matters.
    torch.testing.assert_close(got_images, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_texts, texts, atol=1e-5, rtol=0)


def rounded_reference(name, state):
    """Features of a QuickGELU model built from the fp16-rounded state dict (what OpenAI's files hold)."""
    model = open_clip.create_model(name, force_quick_gelu=True).eval()
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in state.items()})
    ids = open_clip.get_tokenizer(name)(TEXTS)
    with torch.no_grad():
        return model.encode_image(IMAGES), model.encode_text(ids)


def test_torchscript_file_loads_with_quick_gelu(reference, tmp_path):
    name, state, _ = reference
    write_torchscript_archive(openai_state(state), tmp_path / "ViT-tiny.pt")
    clip = vlprompt.load_clip(tiny_config(), pretrained=str(tmp_path / "ViT-tiny.pt"))
    assert_same_features(clip, rounded_reference(name, state))


def test_openai_state_dict_file_loads_with_quick_gelu(reference, tmp_path):
    name, state, _ = reference
    torch.save(openai_state(state), tmp_path / "openai_state.pt")
    clip = vlprompt.load_clip(tiny_config(), pretrained=str(tmp_path / "openai_state.pt"))
    assert_same_features(clip, rounded_reference(name, state))


def test_pretrained_tag_recorded_as_quick_gelu_loads_with_quick_gelu(reference, tmp_path, monkeypatch):
    """The ``pretrained="openai"`` route: open_clip's record of the tag says quick_gelu; the plain name does not."""
    name, state, features = reference
    torch.save(state, tmp_path / "weights.pt")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name,
                        {"openai": {"file": str(tmp_path / "weights.pt"), "quick_gelu": True}})
    clip = vlprompt.load_clip(name, pretrained="openai")
    assert_same_features(clip, features)


def test_local_dir_with_open_clip_config_loads_with_quick_gelu(reference, tmp_path):
    name, state, features = reference
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**tiny_config(), "quick_gelu": True}}))
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    assert_same_features(vlprompt.load_clip(f"local-dir:{tmp_path}"), features)


@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-B-32", "ViT-L-14", "RN50"])
def test_documented_openai_tags_build_quick_gelu_models(name, monkeypatch):
    """What the shipped configs and README load (``ViT-B-16``, ``openai``), without downloading: the model is built
    with open_clip's QuickGELU switch on."""
    seen = {}

    def create_model(model_name, **kwargs):
        seen.update(kwargs)
        return nn.Module()

    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(frozen, "_check_download_reachable", lambda *args: None)
    frozen._create_model(name, "openai", None)
    assert seen.get("force_quick_gelu") is True and seen.get("pretrained") == "openai"


def test_non_openai_weights_keep_the_named_activation(reference, tmp_path):
    _, state, _ = reference
    torch.save(state, tmp_path / "plain.pt")
    assert not vlprompt.load_clip(tiny_config(), pretrained=str(tmp_path / "plain.pt")).uses_quick_gelu


def test_unreadable_pretrained_file_is_one_line(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(vlprompt.ConfigError, match="cannot be read"):
        vlprompt.load_clip(tiny_config(), pretrained=str(tmp_path / "broken.pt"))


def test_checkpoint_records_the_activation(tiny_clip):
    assert tiny_clip.identity["arch"]["quick_gelu"] is False
