"""MaPLe: coupled deep prompts in both towers, the visual ones projected from the text ones."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.registry import register_learner


@register_learner("maple")
class MaPLe(PromptLearner):
    """Multi-modal Prompt Learning (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023).

    Layer 0: ``n_ctx`` learned text context tokens, and as many visual tokens obtained by one
    ``Linear(text width -> vision width)``. Layers ``1 .. prompt_depth-1``: fresh learned text prompts replace
    the context tokens, and each layer's own ``Linear(text width -> vision width)`` maps them to the visual
    prompts that replace the appended visual tokens. Defaults: ``n_ctx=2``, ``prompt_depth=9``, initialised from
    "a photo of a" of which the first two tokens are learned, SGD lr 0.0035 (batch 4, 5 epochs in
    ``configs/learners/maple.yaml``). About 3.55 M parameters on ViT-B/16.

    Deliberate differences: the deep projections are initialised independently (the reference deep-copies
    one freshly initialised layer); widths and depths are read from the model, so any ViT works.

    Other keyword arguments are :class:`PromptLearner`'s optimiser settings (``momentum``, ``weight_decay``,
    ``warmup_epochs``, ``warmup_lr``).
    """

    paper_trainable_parameters = 3_555_072

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        n_ctx: int = 2,
        ctx_init: Optional[str] = "a photo of a",
        prompt_depth: int = 9,
        lr: float = 0.0035,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, lr=lr, **kwargs)
        clip._require_vit("take MaPLe's visual prompts")
        max_depth = min(clip.text_layers, clip.vision_layers)
        if not 1 <= prompt_depth <= max_depth:
            raise ConfigError(f"prompt_depth must be between 1 and {max_depth} (the shallower tower's layer count) "
                              f"for this CLIP, got {prompt_depth}")
        self.prompts = ContextPrompts(clip, self.classnames, n_ctx, ctx_init)
        text_width, vision_width = clip.text_width, clip.vision_width
        self.proj = nn.Linear(text_width, vision_width)
        self.deep_text_prompts = nn.ParameterList(
            nn.Parameter(torch.empty(n_ctx, text_width).normal_(std=0.02)) for _ in range(prompt_depth - 1))
        self.deep_projections = nn.ModuleList(nn.Linear(text_width, vision_width) for _ in range(prompt_depth - 1))

    def _on_classnames_changed(self) -> None:
        self.prompts.build(self.clip, self.classnames)

    def _deep_text(self) -> dict[int, torch.Tensor]:
        return {layer + 1: prompt for layer, prompt in enumerate(self.deep_text_prompts)}

    def text_features(self) -> torch.Tensor:
        features = self.prompts.encode(self.clip, deep_prompts=self._deep_text())
        return self.normalized_text(features)

    def visual_prompts(self) -> dict:
        """Vision tokens projected from the text prompts of each layer (coupled prompts)."""
        deep = {layer + 1: project(prompt) for layer, (project, prompt)
                in enumerate(zip(self.deep_projections, self.deep_text_prompts))}
        return {"prompts": self.proj(self.prompts.ctx), "deep_prompts": deep}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(images), self.cached_text_features(self.text_features))
