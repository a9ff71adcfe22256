"""MMRL: a shared space of representation tokens, projected into the upper blocks of both towers."""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.clip.towers import Inserted, OpenCLIPTextTower, OpenCLIPViT
from vlprompt.errors import ConfigError
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.losses import LossTerm, StepOutputs, cross_entropy, feature_distance
from vlprompt.learners.registry import register_learner


@register_learner("mmrl")
class MMRL(PromptLearner):
    """Multi-Modal Representation Learning (Guo and Gu, "MMRL: Multi-Modal Representation Learning for Vision-Language
    Models", CVPR 2025; reference code yunncheng/MMRL, ``trainers/mmrl.py`` and ``clip/model_mmrl.py``).

    ``n_rep_tokens`` representation tokens ``R`` (``n x rep_dim``, N(0, 0.02)) live in a space shared by both towers.
    For each block of ``rep_layers`` (1-based, the reference's 6..12 on a 12-block tower) a ``Linear(rep_dim, vision
    width)`` and a ``Linear(rep_dim, text width)`` map ``R`` into that tower: at the first such block the tokens are
    inserted after the class token (image) and the start token (text), growing the sequences by ``n`` (the text's
    causal mask grows with them, its end token moves by ``n``), and later blocks replace them. The text prompts are the
    data set's hand template (no learned context). The image feature is the class token's, as CLIP's; a second one,
    ``r = mean(ln_post(rep tokens)) @ proj_rep`` (``proj_rep`` a new ``width x D`` matrix, ``width^-0.5 * N(0, 1)``),
    is read from the representation tokens.

    Logits ``s * cos(v, t)`` and ``s * cos(r, t)``. Loss terms, each logged and switchable by its weight:

    - ``ce`` (``alpha`` 0.7) and ``ce_rep`` (``1 - alpha``): cross-entropy of each;
    - ``image_reg`` and ``text_reg`` (both ``reg_weight``): ``1 - mean cos`` of the image features to the frozen
      tower's, and of the class text features to the frozen hand-template ones.

    Evaluation is decoupled as the reference's: on the classes the learner was built with (the base classes; all of
    them in few-shot and on the cross-dataset source) the logits are ``alpha * cos(v, t) + (1 - alpha) * cos(r, t)``
    (scaled), on any other class set ``cos(v, t)`` alone (the text still passes through the representation tokens).
    Trainable: ``R``, the projections and ``proj_rep``: 4,992,256 parameters on ViT-B/16 (18,762,496 at ``rep_dim``
    2048, the reference's EuroSAT). Defaults follow the base-to-novel recipe (``configs/trainers/MMRL/vit_b16.yaml``):
    AdamW lr 1e-3, weight decay 5e-4, one warm-up epoch at 1e-5 then cosine; batch 4, 10 epochs; ``reg_weight`` is per
    data set in the reference (``trainers/config.py``): ``configs/recipes/mmrl/base2novel/``.

    Deliberate differences:

    - the logit scale is the CLIP's own (``exp(logit_scale)``: 100 for OpenAI's weights); the reference hard-codes 100;
    - the frozen features come from the learner's own frozen CLIP (the reference loads a second one);
    - evaluation fuses on any class set equal to (or within) the classes the learner was built with; the reference
      decides by the task and data set name, so ImageNet-V2 and -Sketch, which have ImageNet's classes, are fused here
      and not there;
    - ``rep_layers`` default to the reference's 6..12 scaled to the tower's depth (the second half of the shallower
      tower's blocks and one before it); widths are read from the model;
    - text and image features are computed again after every optimiser step (the reference caches them once in
      evaluation and never refreshes them, which goes stale when validating during a fit);
    - mixed precision comes from autocast, as the reference's ``amp``.
    """

    paper_trainable_parameters = 4_992_256

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        n_rep_tokens: int = 5,
        rep_dim: int = 512,
        rep_layers: Optional[Sequence[int]] = None,
        alpha: float = 0.7,
        reg_weight: float = 1.0,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, optimizer=optimizer, lr=lr, **kwargs)
        if not isinstance(clip._require_vit("take MMRL's representation tokens"), OpenCLIPViT):
            raise ConfigError("MMRL inserts its tokens after the class token of an open_clip ViT; this CLIP's image "
                              "tower is another kind; use an OpenAI-style CLIP ViT")
        if not isinstance(clip._require_text(), OpenCLIPTextTower):
            raise ConfigError("MMRL inserts its tokens into an open_clip text transformer; this CLIP's text tower (a "
                              "Hugging Face model) cannot take them; use an OpenAI-style CLIP")
        depth = min(clip.text_layers, clip.vision_layers)
        if rep_layers is None:
            rep_layers = list(range(depth // 2, depth + 1))
        rep_layers = [int(layer) for layer in rep_layers]
        if not rep_layers or rep_layers != sorted(set(rep_layers)) or not 2 <= rep_layers[0] <= rep_layers[-1] <= depth:
            raise ConfigError(f"rep_layers must be increasing block numbers between 2 and {depth} (1-based: the first "
                              f"takes the inserted tokens), got {rep_layers}")
        if n_rep_tokens < 1 or rep_dim < 1:
            raise ConfigError(f"n_rep_tokens and rep_dim must be at least 1, got {n_rep_tokens} and {rep_dim}")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1] (the class-token branch's share), got {alpha}")
        self.rep_layers, self.alpha, self.reg_weight = rep_layers, float(alpha), float(reg_weight)
        self.rep_tokens = nn.Parameter(torch.empty(n_rep_tokens, rep_dim).normal_(std=0.02))
        # One initialisation cloned per block, as the reference's _get_clones.
        self.to_vision = nn.ModuleList(_clones(nn.Linear(rep_dim, clip.vision_width), len(rep_layers)))
        self.to_text = nn.ModuleList(_clones(nn.Linear(rep_dim, clip.text_width), len(rep_layers)))
        width = clip.vision_width
        self.proj_rep = nn.Parameter(width ** -0.5 * torch.randn(width, clip.embed_dim))
        #: The classes the learner was built with: evaluation fuses both branches on them.
        self.fit_classes = list(self.classnames)
        self._on_classnames_changed()

    def _on_classnames_changed(self) -> None:
        """The hand template's prompts of the classes (the data set's first template, as the reference's)."""
        template = self.templates[0]
        ids, pool_index, _ = self.clip.prompt_batch([self.clip.prompt_tokens([template.format(name)])
                                                     for name in self.classnames])
        with torch.no_grad():
            self.register_buffer("token_embeds", self.clip.embed_tokens(ids), persistent=False)
        self.register_buffer("pool_index", pool_index, persistent=False)

    def _deep(self, projections: nn.ModuleList) -> dict:
        """``{0-based block: Inserted(tokens) or tokens}`` of one tower."""
        blocks = [layer - 1 for layer in self.rep_layers]
        tokens = [project(self.rep_tokens) for project in projections]
        return {block: Inserted(tokens[0]) if i == 0 else tokens[i] for i, block in enumerate(blocks)}

    def text_features(self) -> torch.Tensor:
        """Normalised class text features of the hand template through the representation tokens (``C x D``)."""
        features = self.clip.encode_text_embeddings(self.token_embeds, self.pool_index,
                                                    deep_prompts=self._deep(self.to_text), prompt_start=1)
        return F.normalize(features, dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised class-token image features (``B x D``)."""
        return self.image_features_both(images)[0]

    def image_features_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised class-token and representation-token image features (each ``B x D``)."""
        features, tokens = self.clip.encode_image_inserting(images, self._deep(self.to_vision),
                                                            checkpoint=self.activation_checkpointing and self.training)
        rep = tokens.mean(dim=1) @ self.proj_rep.to(tokens.dtype)
        return F.normalize(features, dim=-1), F.normalize(rep, dim=-1)

    def get_extra_state(self) -> dict:
        """The classes the learner was built with: a checkpoint keeps them, so a test on other classes knows them."""
        return {"fit_classes": list(self.fit_classes)}

    def set_extra_state(self, state: dict) -> None:
        self.fit_classes = list(state["fit_classes"])

    @property
    def fuses(self) -> bool:
        """Whether evaluation fuses both branches: on the classes the learner was built with, or some of them."""
        known = set(self.fit_classes)
        return all(name in known for name in self.classnames)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text = self.cached_text_features(self.text_features)
        image, rep = self.image_features_both(images)
        logits = self.logits(image, text)
        if self.training or not self.fuses:
            return logits
        return self.alpha * logits + (1 - self.alpha) * self.logits(rep, text)

    def training_outputs(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        text = self.text_features()
        image, rep = self.image_features_both(images)
        return StepOutputs(logits=self.logits(image, text), labels=labels, text_features=text, image_features=image,
                           extras={"logits_rep": self.logits(rep, text),
                                   "frozen_image": self.frozen_image_features(images)})

    def loss_terms(self) -> list[LossTerm]:
        return [
            LossTerm("ce", self.alpha, cross_entropy),
            LossTerm("ce_rep", 1 - self.alpha, lambda out: F.cross_entropy(out.extras["logits_rep"], out.labels)),
            LossTerm("image_reg", self.reg_weight,
                     lambda out: feature_distance(out.image_features, out.extras["frozen_image"], "cosine")),
            LossTerm("text_reg", self.reg_weight,
                     lambda out: feature_distance(out.text_features, self.hand_text_features(self.templates[:1]),
                                                  "cosine")),
        ]


def _clones(module: nn.Module, count: int) -> list[nn.Module]:
    return [copy.deepcopy(module) for _ in range(count)]
