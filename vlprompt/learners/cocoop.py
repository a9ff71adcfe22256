"""CoCoOp: the learned context is shifted per image by a small meta-network."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Optional, Sequence, Union

import torch
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.clip.towers import run_block
from vlprompt.errors import ConfigError
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.registry import register_learner

#: Bytes that one prompt position keeps per text layer and width unit while a chunk is recomputed in backward:
#: ViT-B/16's text tower keeps 8.0 fp32 values per position, layer and width unit on a CPU (tools/bench.py's
#: LiveTensorBytes; bf16 keeps 9.2 values of 2 bytes), so 8 x 4 bytes bounds both precisions.
RECOMPUTE_BYTES_PER_UNIT = 32
#: The same without gradients, where only the layer being computed holds memory: 9.6 fp32 values per position
#: and width unit (bf16: 12.6 values of 2 bytes), so 12 x 4 bytes for the whole tower.
NO_GRAD_BYTES_PER_UNIT = 48
#: Share of the device's free memory one recomputed chunk may take: the rest is for the image tower, the
#: gradients and the allocator's slack.
AUTO_CHUNK_MEMORY_SHARE = 0.5


def auto_chunk_size(batch: int, bytes_per_image: int, free_bytes: int) -> int:
    """Images per text chunk: as many as one recomputed chunk fits in ``AUTO_CHUNK_MEMORY_SHARE`` of
    ``free_bytes``, at least one and at most the batch."""
    return max(1, min(batch, int(AUTO_CHUNK_MEMORY_SHARE * free_bytes) // max(bytes_per_image, 1)))


@register_learner("cocoop")
class CoCoOp(PromptLearner):
    """Conditional Context Optimization (Zhou et al., "Conditional Prompt Learning for Vision-Language
    Models", CVPR 2022).

    A meta-network ``Linear(d, d/16) - ReLU - Linear(d/16, width)`` maps the normalised image feature to a
    bias added to every context token, so each image gets its own prompts for all classes. Defaults: 4
    context tokens from "a photo of a", SGD lr 0.002, 10 epochs (``configs/learners/cocoop.yaml``).

    Deliberate differences: the reference loops over images one by one and is used at batch size 1; here all
    images of a batch are encoded together, ``text_chunk_size`` images at a time, and with
    ``activation_checkpointing`` each chunk's text-encoder activations are recomputed in the backward pass
    instead of kept (exact; about one more text forward per step), so batch 32 trains where keeping every
    image's class prompts would not fit. Then only one chunk's activations exist at a time, so the chunk bounds
    the memory, as it does without gradients (evaluation): ``text_chunk_size: auto`` (the default) takes, on a
    GPU, as many images as one chunk fits in half of the device's free memory, decided once per batch size,
    class count and mode; a small fixed chunk makes a step launch-bound. Training without recomputation, and
    off a GPU, ``auto`` encodes the whole batch at once: every chunk's activations would be kept until backward
    anyway. ``d`` is the image feature width and ``width`` the text width, both read from the model.

    Other keyword arguments are :class:`PromptLearner`'s optimiser settings (``momentum``, ``weight_decay``,
    ``warmup_epochs``, ``warmup_lr``, ``lr``).
    """

    image_independent_text = False
    paper_trainable_parameters = 35_360

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        n_ctx: int = 4,
        ctx_init: Optional[str] = "a photo of a",
        text_chunk_size: Union[int, Literal["auto"], None] = "auto",
        activation_checkpointing: bool = False,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, activation_checkpointing=activation_checkpointing, **kwargs)
        if not (text_chunk_size is None or text_chunk_size == "auto"
                or (isinstance(text_chunk_size, int) and not isinstance(text_chunk_size, bool) and text_chunk_size >= 1)):
            raise ConfigError(f"text_chunk_size must be a positive number of images, auto (from the free GPU memory) "
                              f"or null (the whole batch), got {text_chunk_size!r}")
        self.text_chunk_size = text_chunk_size
        #: Chunks chosen by ``auto``, per (batch size, class count, gradients on): fixed once, so compiled shapes
        #: stay static.
        self._auto_chunks: dict[tuple[int, int, bool], int] = {}
        self.prompts = ContextPrompts(clip, self.classnames, n_ctx, ctx_init)
        image_dim, hidden = clip.embed_dim, max(clip.embed_dim // 16, 1)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(image_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, clip.text_width)),
        ]))

    def _on_classnames_changed(self) -> None:
        self.prompts.build(self.clip, self.classnames)
        self._auto_chunks.clear()  # other prompts, other lengths

    def text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised per-image class text features, ``B x C x D``."""
        ctx = self.prompts.ctx + self.meta_net(image_features).unsqueeze(1)
        chunk = self.text_chunk_size_for(ctx.shape[0], ctx.device)
        n_cls = self.n_classes
        features = []
        for part in ctx.split(chunk):
            encoded = run_block(self._encode_chunk, part, self.activation_checkpointing)
            features.append(encoded.view(part.shape[0], n_cls, -1))
        return self.normalized_text(torch.cat(features))

    def text_chunk_size_for(self, batch: int, device: torch.device) -> int:
        """Images per text-encoder chunk for a batch of ``batch`` images on ``device``."""
        if self.text_chunk_size != "auto":
            return self.text_chunk_size or batch
        gradients = torch.is_grad_enabled()
        if device.type != "cuda" or (gradients and not self.activation_checkpointing):
            return batch
        key = (batch, self.n_classes, gradients)
        if key not in self._auto_chunks:
            free, _ = torch.cuda.mem_get_info(device)
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # the allocator's own
            self._auto_chunks[key] = auto_chunk_size(batch, self.chunk_bytes_per_image(gradients), free)
        return self._auto_chunks[key]

    def chunk_bytes_per_image(self, gradients: bool) -> int:
        """Upper estimate of what one image's class prompts hold at once: recomputed in backward (all layers'
        activations) or encoded without gradients (one layer's)."""
        positions = self.n_classes * self.prompts.token_embeds.shape[1] * self.clip.text_width
        if gradients:
            return positions * self.clip.text_layers * RECOMPUTE_BYTES_PER_UNIT
        return positions * NO_GRAD_BYTES_PER_UNIT

    def on_train_batch_start(self, batch, batch_idx):
        # Decided here, outside any compiled code, rather than on the first call of text_features.
        super().on_train_batch_start(batch, batch_idx)
        images = batch[0]
        self.text_chunk_size_for(images.shape[0], images.device)

    def _encode_chunk(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.prompts.encode(self.clip, self.prompts.embeddings(ctx).flatten(0, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_features = self.image_features(images)
        return self.logits(image_features, self.text_features(image_features))
