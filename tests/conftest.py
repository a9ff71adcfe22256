"""Shared fixtures: tiny CLIPs built from config dicts, fixed image batches, generated image folders.

torch is imported inside the functions that use it: pytest-xdist's controller loads this file before it starts the
workers, and never runs a test, so a torch import here would hold every run back by its 3 s.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pytest
import yaml

import vlprompt

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
TINY_RANDOM_YAML = REPO / "configs" / "clip" / "tiny-random.yaml"


def tiny_config(**changes) -> dict:
    """The tiny ViT CLIP of ``configs/clip/tiny-random.yaml`` as a dict, with optional top-level changes."""
    config = yaml.safe_load(TINY_RANDOM_YAML.read_text())["model"]["init_args"]["clip"]["init_args"]["name"]
    config = copy.deepcopy(config)
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


#: A tiny ResNet CLIP (ModifiedResNet image tower) for the text-only learners and the refusal of visual prompts.
TINY_RESNET = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

def describe(classnames) -> dict[str, list[str]]:
    """Made-up per-class descriptions: one sentence naming the class, one every class shares."""
    return {name: [f"A {name} looks like a {name}.", f"The {name} is {name.split()[0]} and bold.",
                   "It is often seen in pictures."] for name in classnames}


def class_texts(name: str, classnames) -> dict:
    """What a learner needs beside class names to switch to ``classnames`` (descriptions, if it reads them)."""
    from vlprompt.learners import get_learner_class

    return {"descriptions": describe(classnames)} if get_learner_class(name).needs_descriptions else {}


def learner_arguments(name: str, clip, classnames) -> dict:
    """Arguments a learner requires besides ``clip`` and ``classnames``: the frozen models it takes (a
    ``teacher``), all given as ``clip`` itself, as the shared tests build every learner the same way; a teacher
    checkpoint (:func:`teacher_checkpoint`, on ``clip``) for learners distilled from one; and made-up descriptions
    for learners that read them."""
    import inspect

    from vlprompt.learners import get_learner_class

    parameters = inspect.signature(get_learner_class(name).__init__).parameters
    frozen = {key: clip for key, parameter in parameters.items()
              if key != "clip" and "FrozenCLIP" in str(parameter.annotation)}
    if "teacher_checkpoint" in parameters:
        frozen["teacher_checkpoint"] = teacher_checkpoint(clip)
    return {**frozen, **class_texts(name, classnames)}


def learned_tensors(learner) -> dict[str, torch.Tensor]:
    """A copy of every tensor in the learner's state dict; a module's extra state (PromptKD's teacher text features
    by class name) is not a learned tensor and is left out."""
    import torch

    return {k: v.detach().clone() for k, v in learner.state_dict().items() if torch.is_tensor(v)}


def save_fitted(learner, path) -> str:
    """Write a learner as the ``last.ckpt`` of its fit would hold it (what plug-ins and teachers read), without a
    trainer; returns the path."""
    import torch

    checkpoint = {"state_dict": learner.state_dict(), "hyper_parameters": dict(learner.hparams)}
    learner.on_save_checkpoint(checkpoint)  # the learner's own record (the vlprompt entry), as a fit writes it
    torch.save(checkpoint, path)
    return str(path)


@pytest.fixture(scope="session")
def reference_vit_b16():
    """open_clip ViT-B-16-quickgelu with random weights (``torch.manual_seed(0)``): the CLIP the reference-equality
    tests share with the reference code (QuickGELU, as OpenAI's). Tests must not change it."""
    import torch

    torch.manual_seed(0)
    return vlprompt.load_clip("ViT-B-16-quickgelu")


#: Tolerance of a comparison with numbers the reference code printed on another machine. Equality with the reference
#: code is measured on one machine within 1e-5 (docs/reproducing.md); float32 rounding of a ViT-B/16 forward then
#: differs between CPUs: on one 2-core AMD EPYC machine the thread count alone (1 against 2) moves MMRL's logits by
#: 5e-6, and MMRL's and PromptKD's stored numbers moved by up to 1.1e-5 between two machines.
STORED_REFERENCE_TOLERANCE = 2e-5


def fill_learned(learner, ones: tuple[str, ...] = ()) -> None:
    """Every trainable tensor of ``learner`` drawn from N(0, 0.02) by a generator seeded 4, in parameter order (``1 +``
    that for names ending in one of ``ones``: FiLM scales): the values the reference-equality tests copy into the
    reference code."""
    import torch

    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in learner.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02
                                + (1.0 if name.endswith(ones) and ones else 0.0))


def reference_images() -> torch.Tensor:
    """The three N(0, 1) ViT-B/16 images (seed 0) the reference-equality tests feed both sides."""
    import torch

    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


_TEACHERS: dict[str, str] = {}


def teacher_checkpoint(clip) -> str:
    """A PromptKD teacher: a promptsrc learner on ``clip`` whose prompts are seeded N(0, 0.1) values, saved once
    per CLIP architecture (the global random state is left as it was)."""
    import json
    import tempfile

    import torch

    key = json.dumps(clip.identity, sort_keys=True, default=str)
    if key not in _TEACHERS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            # As deep as the CLIP allows (a ResNet has no visual prompts, the tiny ResNet's text tower 2 layers).
            vit = clip.identity["arch"]["visual"] == "VisionTransformer"
            depths = {"text_depth": min(9, clip.text_layers), "vision_depth": min(9, clip.vision_layers) if vit else 0}
            teacher = vlprompt.build_learner("promptsrc", clip=clip, classnames=CLASSNAMES, **depths)
            for parameter in teacher.parameters():
                if parameter.requires_grad:
                    parameter.data.normal_(std=0.1)
        _TEACHERS[key] = save_fitted(teacher, Path(tempfile.mkdtemp(prefix="vlprompt-teacher-")) / "teacher.ckpt")
    return _TEACHERS[key]


#: Trainable parameters of the learners whose paper states no count and which have no public code (our reading),
#: counted by hand from the architecture's widths, so a test compares the code with an independent count.
OUR_READING_COUNTS = {
    # CoOp's context (4 tokens) + the attention-pooling head: query (D), key and value Linear(D, D), alpha.
    "kapt": lambda text_width, embed_dim: 4 * text_width + embed_dim + 2 * (embed_dim * embed_dim + embed_dim) + 1,
    # CoOp's context only (4 tokens): the anchors are fitted, not learned.
    "vmfcoop": lambda text_width, embed_dim: 4 * text_width,
}
#: The widths of the backbones the papers count on.
BACKBONE_WIDTHS = {"ViT-B/16": {"text_width": 512, "embed_dim": 512}, "BiomedCLIP": {"text_width": 768, "embed_dim": 512}}


def expected_parameters(name: str, clip=None) -> Optional[int]:
    """A learner's trainable parameters: its paper's count (on its paper's backbone; None on another ``clip``), or
    for a learner of our reading, ours, on ``clip``'s widths or its paper's backbone's."""
    from vlprompt.learners import get_learner_class

    cls = get_learner_class(name)
    if cls.paper_trainable_parameters is not None:
        return cls.paper_trainable_parameters if clip is None else None
    assert name in OUR_READING_COUNTS, f"{name} states no paper count: count it in tests/conftest.py OUR_READING_COUNTS"
    widths = BACKBONE_WIDTHS[cls.paper_backbone] if clip is None else {"text_width": clip.text_width,
                                                                         "embed_dim": clip.embed_dim}
    return OUR_READING_COUNTS[name](**widths)


def pytest_configure(config):
    """Under pytest-xdist (setup.cfg's addopts: ``-n auto``) every worker computes on one CPU thread, and so do the
    programs its tests start: N workers on N cores, not N x cores threads fighting over them (up to 10x slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The longest tests first: those that give ``slow(minutes=...)``, longest first, then the other slow ones (each
    file's tests keep their order). Parallel workers take them early and end together, instead of one worker
    finishing the README walk-through alone."""
    def minutes(item) -> float:
        slow = item.get_closest_marker("slow")
        return 0.0 if slow is None else float(slow.kwargs.get("minutes", 0.5))

    items.sort(key=minutes, reverse=True)


CLASSNAMES = ["red circle", "green square", "blue triangle", "yellow star", "purple heart"]


def build(name: str, clip, classnames=CLASSNAMES, **hparams):
    """A registered learner on ``clip`` (seeded 0) with the arguments it requires (:func:`learner_arguments`);
    ``hparams`` override them."""
    import torch

    torch.manual_seed(0)
    return vlprompt.build_learner(name, clip=clip, classnames=classnames,
                                  **{**learner_arguments(name, clip, classnames), **hparams})


@pytest.fixture(scope="session", autouse=True)
def private_cache_directory(tmp_path_factory):
    """Tests (and the programs they start) keep vlprompt's cached help texts in their own folder."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("VLPROMPT_CACHE_DIR", str(tmp_path_factory.mktemp("vlprompt-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_clip():
    import torch

    torch.manual_seed(0)
    return vlprompt.load_clip(tiny_config())


@pytest.fixture(scope="session")
def image_batch():
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    return images, labels


def model_weights(clip) -> dict[str, torch.Tensor]:
    """A copy of every CLIP tensor (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in clip.model.state_dict().items()}


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """A small ToyShapes data set (4 train, 2 val, 2 test images per class); tests that damage it copy it first."""
    from vlprompt.toy import write_toy_dataset

    root = tmp_path_factory.mktemp("shapes")
    write_toy_dataset("ToyShapes", root, train_per_class=4, val_per_class=2, test_per_class=2)
    return root


@pytest.fixture(scope="session")
def toy_data_config(tmp_path_factory) -> Path:
    """A data YAML for a small ToyShapes set (4 train, 2 val, 2 test images per class), read as the suite's tests run
    it: no loader workers, batch 8, no augmentation."""
    from vlprompt.toy import write_toy_dataset

    root = tmp_path_factory.mktemp("data")
    write_toy_dataset("ToyShapes", root / "ToyShapes", train_per_class=4, val_per_class=2, test_per_class=2)
    config = root / "ToyShapes.yaml"
    config.write_text(f"data:\n  root: {root / 'ToyShapes'}\n  split_file: split_zhou_ToyShapes.json\n"
                      "  num_workers: 0\n  batch_size: 8\n  augment: false\n")
    return config
