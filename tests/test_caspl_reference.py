"""CasPL's second stage equals its reference code (Martinser/CasPL@9a32364, ``trainers/caspl_maple.py`` and
``trainers/caspl_promptsrc.py`` with its ``clip/model.py``) on shared random ViT-B/16 weights.

The numbers below were printed by that code, run from a scratch folder outside this repository with its Dassl
imports stubbed, ``PREC: fp32`` and its explicit ``.half()`` casts made identities (so it runs in fp32), the KD
options its scripts pass (``scripts/caspl/maple``: ``KD.USE_IVLP True``; ``scripts/caspl/promptsrc``: not), and
every weight below copied into it (docs/reproducing.md, "Equal to the reference code"). Only the numbers are kept.
"""

from __future__ import annotations

import pytest
import torch

import vlprompt

from conftest import save_fitted

CLASSNAMES = ["dog", "cat", "sea turtle"]

#: Logits of the three images against the three classes, as the reference printed them, and its initial context
#: (first four values and norm) where the context is drawn after ``torch.manual_seed(5)``.
REFERENCE = {
    # MaPLe, n_ctx 2 from "a photo of a": [SOT, adapting, "of a", boosting, class].
    "maple": {"n_ctx": 2, "logits": [0.45044, 0.131069, 0.727094, 0.379066, 0.084812, 0.673648, 0.314788, 0.055305,
                                     0.537874]},
    # MaPLe, n_ctx 8: more context than "a photo of a" has words, so it starts fully random.
    "maple8": {"n_ctx": 8, "logits": [0.645891, 0.156988, 0.405357, 0.520665, 0.035096, 0.256248, 0.584156,
                                      0.128394, 0.306926],
               "context": [0.0368466, 0.0103777, -0.0342384, -0.0340276], "context_norm": 1.247754},
    # PromptSRC, depth 9 and 9, under boosting prompts of depth 12: the reference cascades them in layers 1-8 only.
    "promptsrc": {"logits": [1.146037, 0.866469, 1.282245, 1.108348, 0.844735, 1.230504, 1.073539, 0.861185,
                             1.180134]},
}


def seeded(parameters, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """ViT-B-16-quickgelu with random weights (seed 0) and a caspl_boost checkpoint whose 8 + 8 boosting tokens in
    all 12 layers are N(0, 0.02) from a seeded generator (seed 3)."""
    torch.manual_seed(0)
    clip = vlprompt.load_clip("ViT-B-16-quickgelu")
    stage_one = vlprompt.build_learner("caspl_boost", clip=clip, teacher=clip, classnames=CLASSNAMES)
    seeded([p for p in stage_one.parameters() if p.requires_grad], 3)
    return clip, save_fitted(stage_one, tmp_path_factory.mktemp("boost") / "boost.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_the_second_stage_equals_the_reference_code(case, setting):
    clip, boost = setting
    expected = REFERENCE[case]
    name = "promptsrc" if case == "promptsrc" else "maple"
    options = {"n_ctx": expected["n_ctx"]} if "n_ctx" in expected else {}
    torch.manual_seed(5)
    learner = vlprompt.build_learner(name, clip=clip, classnames=CLASSNAMES,
                                     plugins=[{"name": "caspl", "boost_from": boost}], **options)
    context = learner.prompts.ctx
    if "context" in expected:
        assert (context[0, :4] - torch.tensor(expected["context"])).abs().max() <= 1e-6
        assert abs(context.norm().item() - expected["context_norm"]) <= 1e-5
    # The learner's own weights besides the context, from a seeded generator (seed 4), as copied into the reference.
    seeded([p for n, p in learner.named_parameters() if p.requires_grad and "ctx" not in n], 4)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = learner.eval()(images).flatten()
    assert (logits - torch.tensor(expected["logits"])).abs().max() <= 1e-5
