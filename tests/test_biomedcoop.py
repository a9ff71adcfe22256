"""BiomedCoOp: its two terms against their formulas, outlier pruning on a hand-worked example, descriptions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.learners.losses import prune_outlier_descriptions

from conftest import CLASSNAMES


def descriptions(count: int, short: str = "", short_count: int = 0) -> dict[str, list[str]]:
    return {name: [f"{name} number {i} looks {['round', 'dark', 'bright', 'small'][i % 4]}."
                   for i in range(short_count if name == short else count)] for name in CLASSNAMES}


def test_pruning_keeps_descriptions_whose_robust_z_score_is_within_tau():
    # Three classes, five descriptions; the best class logit of each description over a batch of two images:
    # description scores s = [1, 2, 3, 4, 20] (the last an outlier).
    best = torch.tensor([[1.0, 2.0, 3.0, 4.0, 20.0], [1.0, 2.0, 3.0, 4.0, 20.0]])
    logits = torch.stack([best, best - 1, best - 2], dim=1)  # B x C x N, class 0 the best everywhere
    bank = F.normalize(torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    # median 3, MAD median(|s - 3|) = median(2, 1, 0, 1, 17) = 1, z = [-2, -1, 0, 1, 17], mean(z) 3,
    # std(z) (unbiased) = sqrt((25 + 16 + 9 + 4 + 196) / 4) = 7.906; standardised = [-0.632, -0.506, -0.379,
    # -0.253, 1.771]: tau 1.5 keeps the first four, tau 2 keeps all five.
    kept_four = F.normalize(bank[:, :4].mean(dim=1), dim=-1)
    torch.testing.assert_close(prune_outlier_descriptions(logits, bank, 1.5), kept_four)
    torch.testing.assert_close(prune_outlier_descriptions(logits, bank, 2.0), F.normalize(bank.mean(1), dim=-1))
    # Scores that do not vary (MAD 0) keep everything.
    flat = torch.ones(2, 3, 5)
    torch.testing.assert_close(prune_outlier_descriptions(flat, bank, 1.5), F.normalize(bank.mean(1), dim=-1))


def test_loss_terms_equal_their_formulas(tiny_clip, image_batch):
    images, labels = image_batch
    torch.manual_seed(0)
    learner = vlprompt.build_learner("biomedcoop", clip=tiny_clip, classnames=CLASSNAMES, descriptions=descriptions(6),
                                     n_descriptions=6, lambda_sccm=2.0, lambda_kdsp=3.0, tau=1.5)
    loss = learner.training_loss(images, labels)
    assert set(loss.terms) == {"ce", "sccm", "kdsp"}
    with torch.no_grad():
        bank = torch.stack([tiny_clip.encode_text(tiny_clip.tokenize(descriptions(6)[name]), normalize=True)
                            for name in CLASSNAMES])
        image = tiny_clip.encode_image(images, normalize=True)
        text = learner.text_features()
        scale = tiny_clip.logit_scale
        sccm = ((text - F.normalize(bank.mean(1), dim=-1)) ** 2).mean()
        selected = prune_outlier_descriptions(scale * torch.einsum("bd,cnd->bcn", image, bank), bank, 1.5)
        learned = scale * image @ text.t()
        frozen = scale * image @ selected.t()
        kl = F.kl_div(learned.log_softmax(-1), frozen.log_softmax(-1), reduction="sum", log_target=True) / learned.numel()
    torch.testing.assert_close(learner.description_bank(), bank, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss.terms["sccm"], 2.0 * sccm, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loss.terms["kdsp"], 3.0 * kl, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loss.terms["ce"], F.cross_entropy(learned, labels), atol=1e-5, rtol=1e-5)


def test_fewer_descriptions_than_asked_use_the_fewest_any_class_has(tiny_clip):
    learner = vlprompt.build_learner("biomedcoop", clip=tiny_clip, classnames=CLASSNAMES,
                                     descriptions=descriptions(6, short=CLASSNAMES[2], short_count=4), n_descriptions=5)
    with pytest.warns(UserWarning, match=f"class '{CLASSNAMES[2]}' has 4 descriptions, fewer than n_descriptions 5"):
        bank = learner.description_bank()
    assert bank.shape[:2] == (len(CLASSNAMES), 4)


def test_description_features_are_computed_once_per_class_set(tiny_clip, image_batch):
    images, labels = image_batch
    learner = vlprompt.build_learner("biomedcoop", clip=tiny_clip, classnames=CLASSNAMES, descriptions=descriptions(3),
                                     n_descriptions=3)
    calls = []
    original = tiny_clip.encode_text
    tiny_clip.encode_text = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        for _ in range(3):
            learner.training_loss(images, labels)
    finally:
        del tiny_clip.encode_text
    assert len(calls) == 1  # the bank, once (the learned text goes through encode_text_embeddings)
