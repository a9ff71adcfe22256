"""CoOp: a learned context replaces the hand-written words of the prompt."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.losses import StepOutputs
from vlprompt.learners.registry import register_learner


@register_learner("coop")
class CoOp(PromptLearner):
    """Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

    ``n_ctx`` context vectors, shared by all classes (or one set per class with ``class_specific``), are
    learned in front of (or around) the class name; text features come from the frozen text encoder.

    Defaults follow the paper's ViT-B/16 16-shot recipe: 4 context tokens initialised from "a photo of a",
    SGD lr 0.002, cosine schedule with one warm-up epoch at 1e-5 (batch 32 and 200 epochs are data/trainer
    settings, see ``configs/learners/coop.yaml``).

    ``class_chunk_size``: encode the class prompts this many classes at a time, each chunk's text-encoder
    activations recomputed in the backward pass (exact), so training memory stays flat as the label space grows
    (21,000 classes, ImageNet-21k's size, on one GPU; ``tools/bench.py --label-space``); null (default) encodes all
    classes at once, fastest while they fit.

    Deliberate differences: mixed precision comes from autocast (``--trainer.precision bf16-mixed``) rather
    than casting CLIP's weights to fp16; sequences are cut after the last EOT token (exact under the causal
    mask).

    Other keyword arguments are :class:`PromptLearner`'s optimiser settings (``momentum``, ``weight_decay``,
    ``warmup_epochs``, ``warmup_lr``, ``lr``).
    """

    paper_trainable_parameters = 2_048

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        n_ctx: int = 4,
        ctx_init: Optional[str] = "a photo of a",
        class_token_position: str = "end",
        class_specific: bool = False,
        class_chunk_size: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, **kwargs)
        if class_chunk_size is not None and (isinstance(class_chunk_size, bool) or not isinstance(class_chunk_size, int)
                                             or class_chunk_size < 1):
            raise ConfigError(f"class_chunk_size must be a positive number of classes or null (all at once), got "
                              f"{class_chunk_size!r}")
        self.class_chunk_size = class_chunk_size
        self.prompts = ContextPrompts(clip, self.classnames, n_ctx, ctx_init, class_token_position, class_specific)

    def _on_classnames_changed(self) -> None:
        self.prompts.build(self.clip, self.classnames)

    def text_features(self) -> torch.Tensor:
        """Normalised class text features from the learned context (``C x D``)."""
        features = self.prompts.encode(self.clip, class_chunk=self.class_chunk_size)
        return self.normalized_text(features)

    def fixed_text_features(self) -> torch.Tensor:
        return self.cached_text_features(self.text_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.image_features(images), self.fixed_text_features())

    def training_outputs(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        """Logits, and the class text and image features they came from (the terms of CoOp's descendants read
        them)."""
        text, image = self.text_features(), self.image_features(images)
        return StepOutputs(logits=self.logits(image, text), labels=labels, text_features=text, image_features=image)
