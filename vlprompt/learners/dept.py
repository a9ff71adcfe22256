"""DePT's decoupled head as a plug-in: base-specific knowledge goes to a linear head of its own, fused with the
learner's similarity logits on the classes it was trained on.

``plugins: [{name: dept}]`` on any learner whose class text features come from one learned context and whose image
features take the shared path (coop, cocoop, kgcoop, maple, ivlp, promptsrc, tcp, ...; others are refused in one
line).

Zhang et al., "DePT: Decoupled Prompt Tuning", CVPR 2024; reference code Koorye/DePT@d4ff416, ``trainers/elp_coop.py``
(the head, its loss and fusion), ``trainers/elp_maple.py`` (``FiLM``), ``trainers/elp_kgcoop.py``, ``train.py`` and
``trainers/optim.py`` (the staged learning rate). With ``t`` the learner's class text features and ``v`` its image
features, both *before* normalisation:

- channel-wise transforms (``film``) ``FiLM_t(x) = gamma_t * x + beta_t`` and ``FiLM_v`` (``gamma`` from 1, ``beta``
  from 0) and a head ``Linear(D, C)`` over the ``C`` classes the learner is built with (the base classes);
- training: the learner's ``ce`` is scaled by ``1 - weight`` and the term ``dept_head`` (weight ``weight``) is the
  cross-entropy of the head over ``2B`` rows, the FiLM'd class text features of the batch's labels (CoCoOp's: each
  image's own, ``trainers/elp_cocoop.py``) and the FiLM'd image features, both labelled ``y``; the learner's other
  terms (KgCoOp's ``kg``, PromptSRC's) are unchanged;
- evaluation: on classes the head was trained on (all of them, or a subset: ImageNet-A and -R take its rows for their
  200 classes) the logits are ``(1 - weight) * similarity + weight * head(FiLM_v(v))``; on any other class set
  (novel classes, other data sets) the similarity logits alone, as the reference builds no head there
  (``test_time_fusion: false``: the head's logits alone on its classes, as the reference);
- the head and FiLM train at ``lr_scale`` (6.5) times the learner's rate, every other parameter at its own.

Defaults as the reference's ``train.py``: ``weight`` 0.7, ``lr_scale`` 6.5, FiLM on, fusion on. Its recipes
(``configs/recipes/dept/``) set each host as the reference runs it: CoOp with 16 random context tokens at lr 0.0035,
batch 4, 10 epochs; KgCoOp's weight 2.0.

Deliberate differences: the head is built whenever the plug-in is attached (the reference builds none for a
non-ImageNet data set trained on all classes, the few-shot setting, and then reads the FiLM'd features themselves
as the head's logits); head and FiLM are fp32 under autocast (the reference holds the head in fp16); the reference
has no PromptSRC variant, so ``promptsrc`` with ``dept`` is vlprompt's composition (the ``ce`` term scaled, its
other terms kept).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.errors import ConfigError
from vlprompt.learners.losses import LossTerm
from vlprompt.learners.plugins import Plugin
from vlprompt.learners.registry import register_plugin


class FiLM(nn.Module):
    """``gamma * x + beta`` per channel, from the identity; ``gamma`` and ``beta`` are cast to ``x``'s dtype."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.to(x.dtype) * x + self.bias.to(x.dtype)


@register_plugin("dept")
class DecoupledHead(Plugin):
    """DePT's channel-wise transforms and linear head over the learner's base classes (see the module docstring)."""

    needs = ("unnormalised_features",)
    reads_unnormalised_features = True

    def __init__(self, weight: float = 0.7, lr_scale: float = 6.5, film: bool = True, test_time_fusion: bool = True):
        """``weight``: the head's share of the loss and of the fused logits; ``lr_scale``: the head's and FiLM's
        learning rate over the learner's; ``film``: the channel-wise transforms (off: the head reads the features
        as they are); ``test_time_fusion``: fuse the head's logits in evaluation on its classes (off: the head's
        logits alone there, as the reference)."""
        for name, value in (("weight", weight), ("lr_scale", lr_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"the dept plug-in's {name} must be a number, got {value!r}")
        if not 0 <= weight <= 1:
            raise ConfigError(f"the dept plug-in's weight must be in [0, 1] (the head's share), got {weight}")
        if not lr_scale > 0:
            raise ConfigError(f"the dept plug-in's lr_scale must be above 0, got {lr_scale}")
        super().__init__(weight=weight, lr_scale=lr_scale, film=film, test_time_fusion=test_time_fusion)
        self.weight, self.lr_scale, self.test_time_fusion = float(weight), float(lr_scale), test_time_fusion
        self.film = film
        self.classes: list[str] = []

    def attach(self, learner) -> None:
        if not learner.uses_labels or "ce" not in [term.name for term in learner.loss_terms()]:
            raise ConfigError(f"the dept plug-in trains a head on labels and shares the loss with the learner's "
                              f"cross-entropy ('ce'), which {learner.registry_name} has not; drop the plug-in")
        width = learner.clip.embed_dim
        self.classes = list(learner.classnames)
        self.film_text = FiLM(width) if self.film else nn.Identity()
        self.film_image = FiLM(width) if self.film else nn.Identity()
        self.head = nn.Linear(width, len(self.classes))

    # -- training ----------------------------------------------------------------------------------------------------
    def scaled_terms(self, learner) -> dict[str, float]:
        return {"ce": 1.0 - self.weight}

    def loss_terms(self, learner) -> list[LossTerm]:
        return [LossTerm("dept_head", self.weight, lambda out: self.head_loss(learner, out.labels))]

    def head_loss(self, learner, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the head over the batch's class text features and image features (``2B`` rows)."""
        raw = learner.take_raw_features()
        if list(learner.classnames) != self.classes:
            raise ConfigError(f"the dept head was built for {len(self.classes)} classes ({self.classes[0]!r}, ...) and "
                              f"cannot train on {len(learner.classnames)} others; build the learner for the classes "
                              "it trains on")
        text = raw["text"]
        # Per-image class features (CoCoOp): each image's own feature of its label.
        labelled = text[torch.arange(labels.shape[0], device=labels.device), labels] if text.dim() == 3 else text[labels]
        rows = torch.cat([self.film_text(labelled), self.film_image(raw["image"])])
        return F.cross_entropy(self.head(rows), torch.cat([labels, labels]))

    def parameter_groups(self, learner) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": learner.hparams.lr * self.lr_scale}]

    # -- evaluation ----------------------------------------------------------------------------------------------
    def head_rows(self, classnames: Sequence[str]) -> Optional[list[int]]:
        """The head's rows for ``classnames``, or None when it was not trained on all of them."""
        index = {name: row for row, name in enumerate(self.classes)}
        return [index[name] for name in classnames] if all(name in index for name in classnames) else None

    def adjust_logits(self, learner, logits: torch.Tensor) -> torch.Tensor:
        image = learner.take_raw_features().get("image")
        rows = self.head_rows(learner.classnames)
        if image is None or rows is None:
            return logits
        head = self.head(self.film_image(image))[:, rows].to(logits.dtype)
        return (1 - self.weight) * logits + self.weight * head if self.test_time_fusion else head

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def record(self) -> dict:
        """The classes the head was trained on, in its row order."""
        return {"classes": list(self.classes)}

    def check_record(self, record: dict, where: str) -> None:
        """The checkpoint's head decides: a learner built for other classes (a test on the novel ones) takes the head
        of the classes it was trained on, before its weights load."""
        classes = list(record["classes"])
        if classes != self.classes:
            self.classes = classes
            self.head = nn.Linear(self.head.in_features, len(classes)).to(self.head.weight.device)


__all__ = ["DecoupledHead", "FiLM"]
