"""Zero-shot CLIP: classify by similarity to hand-written prompts; nothing is learned."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from vlprompt.clip import FrozenCLIP
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.registry import register_learner


@register_learner("zeroshot")
class ZeroShotCLIP(PromptLearner):
    """Zero-shot CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision", ICML 2021).

    Class text features are the normalised features of ``templates`` filled with each class name; with
    several templates they are ensembled as the mean of normalised features, renormalised (the paper's
    prompt ensembling). The default templates are the dataset's hand template (CoOp's per-dataset templates,
    supplied by the data module).
    """

    needs_training = False
    paper_trainable_parameters = 0

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], templates: Optional[Sequence[str]] = None,
                 descriptions: Optional[dict[str, list[str]]] = None,
                 template_groups: Optional[Sequence[Sequence[str]]] = None, attributes: Optional[Sequence[str]] = None,
                 plugins: Optional[list[dict[str, Any]]] = None):
        super().__init__(clip, classnames, templates, descriptions, template_groups, attributes, plugins=plugins)

    def fixed_text_features(self) -> torch.Tensor:
        return self.cached_text_features(self.hand_text_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(images), self.fixed_text_features())
