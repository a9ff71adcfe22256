"""vMFCoOp (our reading): the vMF estimate against samples of a known distribution, each loss term's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.learners.vmfcoop import (semantic_anchor_loss, spherical_contrastive_loss, symmetric_cross_entropy,
                                       vmf_estimate, vmf_log_normaliser)

from conftest import CLASSNAMES, describe


@pytest.mark.parametrize("kappa, dim", [(20.0, 3), (200.0, 16), (800.0, 64)])
def test_kappa_estimate_recovers_a_known_von_mises_fisher(kappa, dim):
    from scipy.stats import vonmises_fisher

    mu = np.zeros(dim)
    mu[0] = 1.0
    samples = vonmises_fisher(mu, kappa).rvs(20000, random_state=np.random.default_rng(0))
    mean, estimate = vmf_estimate(torch.as_tensor(samples, dtype=torch.float64))
    assert estimate.item() == pytest.approx(kappa, rel=0.05)
    assert mean[0].item() == pytest.approx(1.0, abs=1e-2)


def test_log_normaliser_matches_scipy_and_the_circle():
    from scipy.stats import vonmises_fisher

    kappa = torch.tensor([0.5, 5.0, 50.0], dtype=torch.float64)
    # On the circle (d = 2) C(kappa) = 1 / (2 pi I_0(kappa)).
    from scipy.special import i0
    expected = [-math.log(2 * math.pi * i0(k)) for k in kappa.tolist()]
    torch.testing.assert_close(vmf_log_normaliser(kappa, 2), torch.tensor(expected, dtype=torch.float64))
    # In d = 5, the density at the mean direction: log C + kappa.
    for k in kappa.tolist():
        mu = np.eye(5)[0]
        assert vmf_log_normaliser(torch.tensor([k], dtype=torch.float64), 5).item() + k == pytest.approx(
            vonmises_fisher(mu, k).logpdf(mu), rel=1e-6)


def test_loss_terms_equal_their_formulas():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1)
    anchors = F.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1)
    kappa = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
    expected_anchor = sum(kappa[c] / 12 * (1 - text[c] @ anchors[c]) for c in range(3))
    torch.testing.assert_close(semantic_anchor_loss(text, anchors, kappa), expected_anchor)
    log_c = vmf_log_normaliser(kappa, 5)
    rows = [-torch.log_softmax(torch.stack([kappa[k] * anchors[k] @ text[c] + log_c[k] for k in range(3)]), 0)[c]
            for c in range(3)]
    torch.testing.assert_close(spherical_contrastive_loss(text, anchors, kappa), torch.stack(rows).mean().float())
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [1.0, 0.2, 0.4]])
    labels = torch.tensor([0, 1, 0])
    class_to_image = (-(0.5 * torch.log_softmax(logits[:, 0], 0)[[0, 2]].sum())  # class 0: images 0 and 2
                      - torch.log_softmax(logits[:, 1], 0)[1]) / 2
    expected = 0.5 * (F.cross_entropy(logits, labels) + class_to_image)
    torch.testing.assert_close(symmetric_cross_entropy(logits, labels), expected)


def test_terms_switch_off_and_the_learner_trains(tiny_clip, image_batch):
    images, labels = image_batch
    learner = vlprompt.build_learner("vmfcoop", clip=tiny_clip, classnames=CLASSNAMES, descriptions=describe(CLASSNAMES))
    loss = learner.training_loss(images, labels)
    assert set(loss.terms) == {"ce", "anchor", "spherical"}
    loss.total.backward()
    assert learner.prompts.ctx.grad.abs().sum() > 0
    plain = vlprompt.build_learner("vmfcoop", clip=tiny_clip, classnames=CLASSNAMES, descriptions=describe(CLASSNAMES),
                                   anchor_weight=0, spherical_weight=0, symmetric=False)
    out = plain.training_loss(images, labels)
    assert set(out.terms) == {"ce"}
    torch.testing.assert_close(out.total, F.cross_entropy(out.outputs.logits, labels))


def test_anchors_and_their_log_normaliser_are_fitted_once_per_class_set(tiny_clip, image_batch, monkeypatch):
    from vlprompt.learners import vmfcoop

    images, labels = image_batch
    calls = []
    original = vmfcoop.vmf_log_normaliser
    monkeypatch.setattr(vmfcoop, "vmf_log_normaliser", lambda kappa, dim: calls.append(dim) or original(kappa, dim))
    learner = vlprompt.build_learner("vmfcoop", clip=tiny_clip, classnames=CLASSNAMES, descriptions=describe(CLASSNAMES))
    for _ in range(3):
        learner.training_loss(images, labels).total.backward()
    assert len(calls) == 1  # the host-side Bessel function: once, not per step
    mu, kappa, log_c = learner.anchors()
    text = F.normalize(torch.randn(len(CLASSNAMES), mu.shape[-1]), dim=-1)
    torch.testing.assert_close(spherical_contrastive_loss(text, mu, kappa, log_c),
                               spherical_contrastive_loss(text, mu, kappa))
