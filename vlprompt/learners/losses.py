"""Named, weighted loss terms: a learner declares its loss as a list of terms, each logged as ``train/<name>``.

A training step first produces :class:`StepOutputs` (logits and whatever features the terms need); each
:class:`LossTerm` turns them into one scalar, and the loss is the weighted sum. A term whose weight is 0 is
neither computed nor logged, so every term can be switched off from the command line for an ablation
(``--model.init_args.<weight name> 0``). The reusable distances below are the ones the papers use; each is
written out here against its formula and tested on small tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from vlprompt.errors import ConfigError

DISTANCES = ("cosine", "l1", "mse")


@dataclass
class StepOutputs:
    """What one training forward produced. ``text_features`` is ``C x D`` (or ``B x C x D`` for per-image
    prompts) and ``image_features`` ``B x D``, both normalised; ``extras`` holds learner-specific tensors."""

    logits: torch.Tensor
    labels: torch.Tensor
    text_features: Optional[torch.Tensor] = None
    image_features: Optional[torch.Tensor] = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm(NamedTuple):
    """``weight * compute(outputs)``, logged (weighted) as ``train/<name>``."""

    name: str
    weight: float
    compute: Callable[[StepOutputs], torch.Tensor]


@dataclass
class Loss:
    """The total a training step minimises, its weighted terms by name, and the step's outputs."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    outputs: StepOutputs


def combine(terms: list[LossTerm], outputs: StepOutputs) -> Loss:
    """Weighted sum of the terms with a non-zero weight."""
    values = {term.name: term.weight * term.compute(outputs) for term in terms if term.weight != 0}
    if not values:
        raise ConfigError("every loss term has weight 0; give at least one term a weight")
    names = [term.name for term in terms]
    duplicated = {name for name in names if names.count(name) > 1}
    if duplicated:
        raise ValueError(f"loss term names must be unique, got {sorted(duplicated)} twice")
    return Loss(total=sum(values.values()), terms=values, outputs=outputs)


def cross_entropy(outputs: StepOutputs) -> torch.Tensor:
    """Cross-entropy of the logits against the labels (mean over the batch)."""
    return F.cross_entropy(outputs.logits, outputs.labels)


def feature_distance(learned: torch.Tensor, frozen: torch.Tensor, distance: str) -> torch.Tensor:
    """How far learned features are from frozen ones, over the last dimension:

    - ``cosine``: ``1 - mean cos(learned, frozen)`` (KgCoOp),
    - ``l1``: mean absolute difference over every element (PromptSRC's ``F.l1_loss``),
    - ``mse``: mean squared difference over every element (BiomedCoOp).
    """
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(learned, frozen, dim=-1).mean()
    if distance == "l1":
        return (learned - frozen).abs().mean()
    if distance == "mse":
        return ((learned - frozen) ** 2).mean()
    raise ConfigError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
                       normalize_by: str = "numel") -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T))`` summed over the batch and classes, times ``T^2``, and
    divided by ``normalize_by``: ``numel`` (batch x classes, PromptSRC's reference) or ``batch`` (the batch size,
    CasPL's reference)."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    total = (log_teacher.exp() * (log_teacher - log_student)).sum() * temperature ** 2
    if normalize_by == "numel":
        return total / student.numel()
    if normalize_by == "batch":
        return total / student.shape[0]
    raise ConfigError(f"normalize_by must be 'numel' or 'batch', got {normalize_by!r}")


def grouped_text_supervision(text: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """MoCoOp's grouped text supervision: ``E x C x D`` expert class features against their groups' frozen
    ``E x C x D`` prototypes, ``CE(T_e P_e^T, c)`` over every expert's ``C`` classes as one mean over ``E * C``
    rows, without a logit scale (as the reference)."""
    logits = torch.einsum("ecd,ekd->eck", text, prototypes.to(text.dtype))
    targets = torch.arange(text.shape[1], device=text.device).repeat(text.shape[0])
    return F.cross_entropy(logits.flatten(0, 1).float(), targets)


def routing_loss(router_logits: torch.Tensor, image_features: torch.Tensor, prototypes: torch.Tensor,
                 labels: torch.Tensor, top_k: int = 2, boost: float = 10.0) -> torch.Tensor:
    """MoCoOp's hard-prompt-guided routing loss: soft targets ``softmax(s + boost * top_k(s))`` where
    ``s_bg = f_b . P[g, y_b]`` is the image's similarity to group ``g``'s prototype of its true class and
    ``boost`` is added to its ``top_k`` largest entries; the loss is the soft-target cross-entropy
    ``-sum_g target_bg log_softmax(router_logits)_bg``, mean over the batch. The targets carry no gradient."""
    with torch.no_grad():
        similarity = torch.einsum("bd,ebd->be", image_features.float(), prototypes[:, labels].float())
        top = similarity.topk(top_k, dim=-1).indices
        target = similarity.scatter_add(1, top, torch.full_like(top, boost, dtype=similarity.dtype)).softmax(dim=-1)
    return -(target * F.log_softmax(router_logits.float(), dim=-1)).sum(dim=-1).mean()


def prune_outlier_descriptions(logits: torch.Tensor, bank: torch.Tensor, tau: float) -> torch.Tensor:
    """BiomedCoOp's outlier pruning: from frozen logits ``B x C x N`` of a batch against every class's ``N``
    descriptions and their features ``C x N x D``, the normalised ``C x D`` mean of the descriptions kept.

    Description ``n`` scores ``s_n``, the batch mean of its best class logit; ``z = (s - median(s)) / MAD(s)``
    (torch's median: the lower middle value; ``MAD`` the median absolute deviation); ``n`` is kept when
    ``|(z_n - mean(z)) / std(z)| <= tau`` (``std`` unbiased). All are kept when the scores do not vary or none
    would be."""
    scores = logits.max(dim=1).values.mean(dim=0)
    median = scores.median()
    mad = (scores - median).abs().median()
    z = (scores - median) / mad.clamp_min(torch.finfo(scores.dtype).tiny)
    standardised = (z - z.mean()) / z.std().clamp_min(torch.finfo(scores.dtype).tiny)
    keep = standardised.abs() <= tau
    keep = torch.where(keep.any() & (mad > 0), keep, torch.ones_like(keep))
    weights = keep.to(bank.dtype) / keep.sum()
    return F.normalize(torch.einsum("cnd,n->cd", bank, weights), dim=-1)
