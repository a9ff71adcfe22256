"""The same learners, unedited, on other open_clip architectures (random weights): widths come from the model."""

from __future__ import annotations

import pytest
import torch

import vlprompt

from conftest import build


# ViT-L-14 (428 M random weights, about 20 s on two cores) with the slow tests; ViT-B-32 in every run.
@pytest.fixture(scope="module", params=["ViT-B-32", pytest.param("ViT-L-14", marks=pytest.mark.slow)])
def backbone(request):
    torch.manual_seed(0)
    return vlprompt.load_clip(request.param)


@pytest.mark.parametrize("name", vlprompt.list_learners())
def test_learner_runs_on_other_backbones(name, backbone):
    learner = build(name, backbone, ["cat", "dog"]).eval()
    size = backbone.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    with torch.no_grad():
        assert learner(torch.randn(1, 3, size, size)).shape == (1, 2)
    if name in ("coop", "kgcoop"):
        assert learner.num_trainable_parameters() == 4 * backbone.text_width
    if name == "maple":
        assert learner.proj.out_features == backbone.vision_width
        assert len(learner.deep_projections) == 8
