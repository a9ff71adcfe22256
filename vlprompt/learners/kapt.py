"""KAPT: a discrete knowledge prompt from each class's descriptions, a learned context, and an image-side head."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.coop import CoOp
from vlprompt.learners.registry import register_learner


def knowledge_keywords(classnames: Sequence[str], descriptions: dict[str, list[str]], count: int) -> dict[str, list[str]]:
    """The ``count`` words of each class's descriptions with the highest TF-IDF weight, the classes' joined
    descriptions being the documents (so words every class shares, such as those of uninformative sentences,
    weigh little); English stop words and the class name's own words are left out; ties go alphabetically.

    Computed over the classes given: novel classes get keywords from their own descriptions, weighed against each
    other's."""
    if count <= 0:
        return {name: [] for name in classnames}
    from sklearn.feature_extraction.text import TfidfVectorizer

    documents = [" ".join(descriptions[name]) for name in classnames]
    vectorizer = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z-]+\b")
    try:
        weights = vectorizer.fit_transform(documents).toarray()
    except ValueError:  # nothing but stop words in every description
        return {name: [] for name in classnames}
    vocabulary = vectorizer.get_feature_names_out()
    keywords = {}
    for row, name in zip(weights, classnames):
        own = set(name.lower().split())
        ranked = sorted((-weight, word) for word, weight in zip(vocabulary, row) if weight > 0 and word not in own)
        keywords[name] = [word for _, word in ranked[:count]]
    return keywords


class AttentionPoolingHead(nn.Module):
    """Attention pooling over the frozen patch tokens with a learned query, added to the pooled image feature.

    ``cue = value(sum_n softmax_n(key(t_n) . q / sqrt(D)) t_n)`` over the normalised patch tokens ``t_n`` (in the
    joint embedding space); the output is ``normalize(f + alpha * normalize(cue))`` for the normalised pooled
    feature ``f``. ``key`` and ``value`` start as identities and ``alpha`` at ``residual``, so training starts
    near the frozen feature with an attention-weighted mean of the patches as the cue. Class-agnostic: it
    serves any classes.
    """

    def __init__(self, dim: int, residual: float = 0.1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        for layer in (self.key, self.value):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.alpha = nn.Parameter(torch.tensor(float(residual)))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        scores = self.key(tokens) @ self.query.to(tokens.dtype) / math.sqrt(tokens.shape[-1])
        pooled = (scores.softmax(dim=1).unsqueeze(-1) * tokens).sum(dim=1)
        cue = F.normalize(self.value(pooled), dim=-1)
        return F.normalize(features + self.alpha * cue, dim=-1)


@register_learner("kapt")
class KAPT(CoOp):
    """Knowledge-Aware Prompt Tuning (Kan et al., "Knowledge-Aware Prompt Tuning for Generalizable Vision-Language
    Models", ICCV 2023), as vlprompt reads it.

    No reference code is public and only the abstract was readable: two complementary text prompts, a discrete
    one carrying the key information extracted from each class's description and a learned continuous one for
    the overall context, and an adaptation head on the image side that aggregates salient attentive visual cues
    into task-aware features. Everything below is **our reading**, not the paper's:

    - Knowledge prompt: the ``n_keywords`` (3) words of each class's descriptions (``data.descriptions``) with the
      highest TF-IDF weight, documents being each class's joined descriptions (scikit-learn; English stop words
      and the class name's words left out; :func:`knowledge_keywords`). Words all classes share weigh little, so
      uninformative sentences are filtered. Frozen word embeddings: nothing about them is learned.
    - Where they sit: after the class name, ``[SOT] ctx_1..ctx_4 classname, kw1, kw2, kw3. [EOT]``.
    - Continuous prompt: CoOp's context, 4 tokens from "a photo of a", shared by all classes.
    - Adaptation head (``adaptation_head``): :class:`AttentionPoolingHead` over the frozen ViT's final patch tokens
      (projected into the joint space, normalised), added residually (weight ``head_residual``, learned) to the
      normalised pooled image feature.
    - Loss: cross-entropy only (the abstract names no other term); ablate the parts with ``n_keywords: 0`` and
      ``adaptation_head: false``.
    - What trains: the context and the head (527,873 parameters on ViT-B/16); CLIP stays frozen.
    - Novel classes at test time: their keywords come from their own descriptions (TF-IDF over the novel
      classes); the head is class-agnostic and serves them unchanged.
    - Recipe: SGD lr 0.002, batch 8, 10 epochs, one warm-up epoch (``configs/learners/kapt.yaml``).

    The paper reports +3.22 novel and +2.57 HM points over CoCoOp on the 11 data sets.
    """

    paper_trainable_parameters = None  # the paper states none, no code is public: tests/conftest.py counts ours
    needs_descriptions = True

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        descriptions: Optional[dict[str, list[str]]] = None,
        n_ctx: int = 4,
        ctx_init: Optional[str] = "a photo of a",
        n_keywords: int = 3,
        adaptation_head: bool = True,
        head_residual: float = 0.1,
        **kwargs,
    ):
        if n_keywords < 0:
            raise ConfigError(f"n_keywords must be 0 or more, got {n_keywords}")
        super().__init__(clip, classnames, templates, n_ctx=n_ctx, ctx_init=ctx_init, descriptions=descriptions,
                         **kwargs)
        self.n_keywords = n_keywords
        self.head = AttentionPoolingHead(clip.embed_dim, head_residual) if adaptation_head else None
        if self.head is not None:
            clip._require_vit("give the patch tokens KAPT's adaptation head reads (or adaptation_head: false)")
        self._on_classnames_changed()

    def knowledge_names(self) -> list[str]:
        """Each class name followed by its keywords: what sits after the context in its prompt."""
        keywords = knowledge_keywords(self.classnames, self.descriptions, self.n_keywords)
        return [", ".join([name, *keywords[name]]) for name in self.classnames]

    def _on_classnames_changed(self) -> None:
        if hasattr(self, "n_keywords"):  # CoOp's __init__ builds plain prompts first
            self.prompts.build(self.clip, self.knowledge_names())

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return super().image_features(images)
        with torch.no_grad():
            features, tokens = self.clip.encode_image_tokens(images, normalize=True)
        return self.head(features, tokens)
