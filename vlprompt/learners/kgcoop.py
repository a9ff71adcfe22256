"""KgCoOp: CoOp kept close to the hand-crafted prompt's text features."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from vlprompt.clip import FrozenCLIP
from vlprompt.learners.coop import CoOp
from vlprompt.learners.registry import register_learner


@register_learner("kgcoop")
class KgCoOp(CoOp):
    """Knowledge-guided Context Optimization (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided
    Context Optimization", CVPR 2023).

    Loss: cross-entropy + ``lambda_kg * (1 - mean_c cos(w_c, w_c^clip))`` where ``w_c`` is the learned text
    feature of class ``c`` and ``w_c^clip`` the frozen feature of the dataset's hand template. Defaults:
    ``lambda_kg = 8.0``, 4 context tokens from "a photo of a", SGD lr 0.002 (batch 128, 100 epochs in
    ``configs/learners/kgcoop.yaml``).

    Deliberate difference: with several templates the hand feature is their normalised ensemble (the paper
    uses one template per dataset, which is the default here too).

    Keyword arguments not named here go to :class:`CoOp`, then :class:`PromptLearner` (optimiser settings
    ``lr``, ``momentum``, ``weight_decay``, ``warmup_epochs``, ``warmup_lr``).
    """

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        lambda_kg: float = 8.0,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, **kwargs)
        self.lambda_kg = lambda_kg
        self._hand_features: Optional[torch.Tensor] = None

    def _on_classnames_changed(self) -> None:
        super()._on_classnames_changed()
        self._hand_features = None

    def training_loss(self, images, labels):
        text = self.text_features()
        logits = self.logits(self.image_features(images), text)
        if self._hand_features is None or self._hand_features.device != text.device:
            self._hand_features = self.hand_text_features()
        knowledge = 1.0 - F.cosine_similarity(text, self._hand_features, dim=-1).mean()
        return F.cross_entropy(logits, labels) + self.lambda_kg * knowledge, logits
