"""TCP: class-aware text tokens, made from each class's frozen text feature, replace the context in deep text layers."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
from open_clip.transformer import QuickGELU
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.kgcoop import KgCoOp
from vlprompt.learners.registry import register_learner


@register_learner("tcp")
class TCP(KgCoOp):
    """Textual-based Class-aware Prompt tuning (Yao et al., "TCP: Textual-based Class-aware Prompt tuning for Visual-
    Language Model", CVPR 2024; reference code htyao89/Textual-based_Class-aware_prompt_tuning, ``trainers/tcp.py``).

    CoOp's prompt ``[SOT] ctx classname <suffix>`` with ``n_ctx`` 4 context vectors drawn from N(0, 0.02), and a
    textual knowledge embedding (``tke``: ``Linear(D, D/4)``, QuickGELU, ``Linear(D/4, n_ctx x text width)``) that
    maps each class's frozen hand-template feature ``t0_c`` (normalised) to ``n_ctx`` class-aware tokens. At the
    input of text block ``tke_layer`` these tokens replace the context positions of class ``c``'s prompt (the
    reference's weight 1.0: a full replacement). Novel classes get their tokens from their own frozen features,
    which is how TCP generalises.

    Loss terms, both logged: ``ce`` and ``kg`` = ``lambda_kg * (1 - mean_c cos(t_c, t0_c))`` (KgCoOp's term, with
    the reference's weight 8.0; ``lambda_kg: 0`` switches it off). Trainable: the context and ``tke`` (331,904
    parameters on ViT-B/16). Defaults follow the reference's base-to-novel recipe (``vit_b16_ep100_ctxv1.yaml``,
    ``base2new_train.sh``): Adam lr 0.002 with eps 1e-3 (the reference's patch of Dassl), weight decay 5e-4, one
    warm-up epoch at 1e-5 then cosine; batch 32, 50 epochs (``configs/learners/tcp.yaml``).

    Deliberate differences:

    - ``tke_layer`` defaults to the reference's block 8 of 12 (the 9th), scaled to the text tower's depth (8 on any
      12-layer tower); widths are read from the model (the reference hard-codes 512 and four tokens).
    - ``class_suffix`` (the words after the class name) defaults to what the data set's first template has after
      ``{}``, e.g. ``", a type of pet."``. That is the reference's learned template on nine of the 11 data sets; on
      StanfordCars the reference ends ``", a type of car"`` and on UCF101 it keeps ``"person doing"`` before the
      class name (give ``class_suffix`` to match the first).
    - ``t0`` comes from the data set's hand templates (``data.templates``) through the learner's own frozen CLIP;
      the reference loads a second CLIP in fp16 and uses its own templates, which differ from CoOp's on
      FGVCAircraft ("a photo of an aircraft {}."), DescribableTextures and Food101 ("a photo of a {}, a type of
      ...").
    - The knowledge embedding is held in fp32 and mixed precision comes from autocast; the reference halves it
      (its CoCoOp precision key) and casts CLIP's weights to fp16.
    """

    paper_trainable_parameters = 331_904

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        n_ctx: int = 4,
        ctx_init: Optional[str] = None,
        lambda_kg: float = 8.0,
        tke_layer: Optional[int] = None,
        tke_reduction: int = 4,
        class_suffix: Optional[str] = None,
        optimizer: str = "adam",
        lr: float = 0.002,
        adam_eps: float = 1e-3,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, lambda_kg=lambda_kg, n_ctx=n_ctx, ctx_init=ctx_init,
                         optimizer=optimizer, lr=lr, adam_eps=adam_eps, **kwargs)
        layers = clip.text_layers
        if layers < 2:
            raise ConfigError(f"TCP replaces the context at a deeper text block, and this CLIP's text tower has "
                              f"{layers} block; use a CLIP with at least 2")
        self.tke_layer = min(max(round(8 * layers / 12), 1), layers - 1) if tke_layer is None else tke_layer
        if not 1 <= self.tke_layer < layers:
            raise ConfigError(f"tke_layer must be between 1 and {layers - 1} (this CLIP's text blocks after the "
                              f"first), got {tke_layer}")
        if tke_reduction < 1 or clip.embed_dim // tke_reduction < 1:
            raise ConfigError(f"tke_reduction must be between 1 and {clip.embed_dim} (the feature width), got "
                              f"{tke_reduction}")
        self.class_suffix = class_suffix
        if self.prompts.class_token_position != "end":
            raise ConfigError("TCP's class-aware tokens replace a context before the class name; use "
                              "class_token_position 'end'")
        self.prompts.deep_prompts_per_class = True
        hidden = clip.embed_dim // tke_reduction
        self.tke = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(clip.embed_dim, hidden)), ("gelu", QuickGELU()),
            ("linear2", nn.Linear(hidden, n_ctx * clip.text_width))]))
        self._on_classnames_changed()

    def _on_classnames_changed(self) -> None:
        self.prompts.class_suffix = self._suffix()
        super()._on_classnames_changed()

    def _suffix(self) -> str:
        if self.class_suffix is not None:
            return self.class_suffix
        return self.templates[0].split("{}", 1)[1].strip() or "."

    def class_tokens(self) -> torch.Tensor:
        """``C x n_ctx x text width`` class-aware tokens from the classes' frozen text features."""
        prior = self.hand_text_features()
        return self.tke(prior.to(self.tke[0].weight.dtype)).unflatten(-1, (self.prompts.n_ctx, -1))

    def text_features(self) -> torch.Tensor:
        features = self.prompts.encode(self.clip, deep_prompts={self.tke_layer: self.class_tokens()},
                                       class_chunk=self.class_chunk_size)
        return self.normalized_text(features)
