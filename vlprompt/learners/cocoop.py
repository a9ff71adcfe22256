"""CoCoOp: the learned context is shifted per image by a small meta-network."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.registry import register_learner


@register_learner("cocoop")
class CoCoOp(PromptLearner):
    """Conditional Context Optimization (Zhou et al., "Conditional Prompt Learning for Vision-Language
    Models", CVPR 2022).

    A meta-network ``Linear(d, d/16) - ReLU - Linear(d/16, width)`` maps the normalised image feature to a
    bias added to every context token, so each image gets its own prompts for all classes. Defaults: 4
    context tokens from "a photo of a", SGD lr 0.002, 10 epochs (``configs/learners/cocoop.yaml``).

    Deliberate differences: the reference loops over images one by one and is used at batch size 1; here all
    images of a batch are encoded together, ``text_chunk_size`` images at a time to bound memory, and with
    ``activation_checkpointing`` each chunk's text-encoder activations are recomputed in the backward pass
    instead of kept (exact; about one more text forward per step), so batch 32 trains where keeping every
    image's class prompts would not fit. ``d`` is the image feature width and ``width`` the text width, both
    read from the model.

    Other keyword arguments are :class:`PromptLearner`'s optimiser settings (``momentum``, ``weight_decay``,
    ``warmup_epochs``, ``warmup_lr``, ``lr``).
    """

    image_independent_text = False
    paper_trainable_parameters = 35_360
    supports_boosting = True

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        n_ctx: int = 4,
        ctx_init: Optional[str] = "a photo of a",
        text_chunk_size: Optional[int] = None,
        activation_checkpointing: bool = False,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, activation_checkpointing=activation_checkpointing, **kwargs)
        if text_chunk_size is not None and text_chunk_size < 1:
            raise ConfigError(f"text_chunk_size must be a positive number of images or null, got {text_chunk_size}")
        self.text_chunk_size = text_chunk_size
        self.prompts = ContextPrompts(clip, self.classnames, n_ctx, ctx_init, boost=self.boost)
        image_dim, hidden = clip.embed_dim, max(clip.embed_dim // 16, 1)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(image_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, clip.text_width)),
        ]))

    def _on_classnames_changed(self) -> None:
        self.prompts.build(self.clip, self.classnames)

    def text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised per-image class text features, ``B x C x D``."""
        ctx = self.prompts.ctx + self.meta_net(image_features).unsqueeze(1)
        chunk = self.text_chunk_size or ctx.shape[0]
        n_cls = self.n_classes
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        features = []
        for part in ctx.split(chunk):
            if recompute:
                encoded = checkpoint(self._encode_chunk, part, use_reentrant=False)
            else:
                encoded = self._encode_chunk(part)
            features.append(encoded.view(part.shape[0], n_cls, -1))
        return F.normalize(torch.cat(features), dim=-1)

    def _encode_chunk(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.prompts.encode(self.clip, self.prompts.embeddings(ctx).flatten(0, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_features = self.image_features(images)
        return self.logits(image_features, self.text_features(image_features))
