"""KgCoOp: CoOp kept close to the hand-crafted prompt's text features."""

from __future__ import annotations

from typing import Optional, Sequence


from vlprompt.clip import FrozenCLIP
from vlprompt.learners.coop import CoOp
from vlprompt.learners.losses import LossTerm, cross_entropy, feature_distance
from vlprompt.learners.registry import register_learner


@register_learner("kgcoop")
class KgCoOp(CoOp):
    """Knowledge-guided Context Optimization (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided
    Context Optimization", CVPR 2023).

    Loss terms: ``ce`` (cross-entropy) and ``kg`` = ``lambda_kg * (1 - mean_c cos(w_c, w_c^clip))``, where ``w_c``
    is the learned text feature of class ``c`` and ``w_c^clip`` the frozen feature of the dataset's hand template
    (computed once per class set with the learner's own frozen CLIP); both are logged (``train/ce``,
    ``train/kg``), and ``lambda_kg: 0`` switches the knowledge term off. Defaults:
    ``lambda_kg = 8.0``, 4 context tokens from "a photo of a", SGD lr 0.002 (batch 128, 100 epochs in
    ``configs/learners/kgcoop.yaml``).

    Deliberate difference: with several templates the hand feature is their normalised ensemble (the paper
    uses one template per dataset, which is the default here too).

    Keyword arguments not named here go to :class:`CoOp`, then :class:`PromptLearner` (optimiser settings
    ``lr``, ``momentum``, ``weight_decay``, ``warmup_epochs``, ``warmup_lr``).
    """

    paper_trainable_parameters = 2_048

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

    def loss_terms(self) -> list[LossTerm]:
        return [LossTerm("ce", 1.0, cross_entropy),
                LossTerm("kg", self.lambda_kg,
                         lambda out: feature_distance(out.text_features, self.hand_text_features(), "cosine"))]
