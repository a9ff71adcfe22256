"""IVLP: independent deep prompts in the text and the vision tower, with no coupling between them."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.registry import register_learner


def _random_prompts(count: int, n_tokens: int, width: int) -> nn.ParameterList:
    return nn.ParameterList(nn.Parameter(torch.empty(n_tokens, width).normal_(std=0.02)) for _ in range(count))


@register_learner("ivlp")
class IVLP(PromptLearner):
    """Independent Vision-Language Prompting, the baseline of PromptSRC (Khattak et al., "Self-regulating
    Prompts: Foundational Model Adaptation without Forgetting", ICCV 2023) and MaPLe (CVPR 2023).

    Text: ``n_ctx`` context tokens before the class name (initialised from ``ctx_init``), and for each layer
    ``1 .. text_depth-1`` fresh learned tokens that replace them at that layer's input. Vision: ``n_vision_ctx``
    tokens appended after the patch tokens before ``ln_pre``, replaced at the input of layers
    ``1 .. vision_depth-1`` by their own learned tokens and dropped before pooling. Deep and visual prompts start
    as N(0, 0.02). Defaults follow PromptSRC's base-to-novel recipe: 4 + 4 tokens, depth 9 and 9, "a photo of a",
    SGD lr 0.0025 (batch 4, 20 epochs in ``configs/learners/ivlp.yaml``): 46,080 parameters on ViT-B/16.

    ``text_depth: 1, vision_depth: 0`` leaves only the input context: exactly CoOp. Deliberate differences:
    autocast instead of a half-precision CLIP; widths and depths are read from the model.

    Other keyword arguments are :class:`PromptLearner`'s optimiser settings.
    """

    paper_trainable_parameters = 46_080

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        n_ctx: int = 4,
        ctx_init: Optional[str] = "a photo of a",
        text_depth: int = 9,
        n_vision_ctx: int = 4,
        vision_depth: int = 9,
        lr: float = 0.0025,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, lr=lr, **kwargs)
        if vision_depth > 0:
            clip._require_vit("take IVLP's visual prompts (or set vision_depth 0)")
            if not vision_depth <= clip.vision_layers or n_vision_ctx < 1:
                raise ConfigError(f"vision_depth must be between 0 and {clip.vision_layers} and n_vision_ctx at least "
                                  f"1, got {vision_depth} and {n_vision_ctx}")
        elif vision_depth < 0:
            raise ConfigError(f"vision_depth must be 0 (no visual prompts) or more, got {vision_depth}")
        if not 1 <= text_depth <= clip.text_layers:
            raise ConfigError(f"text_depth must be between 1 and {clip.text_layers} (the text tower's layers), "
                              f"got {text_depth}")
        self.prompts = ContextPrompts(clip, self.classnames, n_ctx, ctx_init)
        self.deep_text_prompts = _random_prompts(text_depth - 1, n_ctx, clip.text_width)
        self.vision_prompts = _random_prompts(vision_depth, n_vision_ctx, clip.vision_width) if vision_depth else None

    def _on_classnames_changed(self) -> None:
        self.prompts.build(self.clip, self.classnames)

    def text_features(self) -> torch.Tensor:
        """Normalised class text features with the deep text prompts (``C x D``)."""
        deep = {layer + 1: prompt for layer, prompt in enumerate(self.deep_text_prompts)}
        features = self.prompts.encode(self.clip, deep_prompts=deep)
        return self.normalized_text(features)

    def visual_prompts(self) -> dict:
        """The learned vision tokens: layer 0's are appended to the patch tokens, the others replace them."""
        if self.vision_prompts is None:
            return {}
        deep = {layer: prompt for layer, prompt in enumerate(self.vision_prompts) if layer > 0}
        return {"prompts": self.vision_prompts[0], "deep_prompts": deep}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(images), self.cached_text_features(self.text_features))
