"""What learners compare against, computed with the frozen weights once per class set and device.

Hand-template ensembles, per-class description ensembles, frozen image features and frozen (teacher) logits
all come from the frozen models the learner already holds: there is no second copy of CLIP in memory (the
reference repos of KgCoOp, PromptSRC and BiomedCoOp each keep one). Text references are cached until the class
set changes or the model moves to another device; image references are per batch and never cached.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError


class FrozenReferences:
    """A cache of frozen text features, keyed by model, class names, texts and device."""

    def __init__(self):
        self._cache: dict[tuple, torch.Tensor] = {}

    def clear(self) -> None:
        self._cache.clear()

    def _cached(self, key: tuple, compute) -> torch.Tensor:
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = compute()
        return self._cache[key]

    def template_ensemble(self, clip: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str],
                          normalize_each: bool = True) -> torch.Tensor:
        """``C x D`` normalised text features of every class, ensembled over ``templates``.

        ``normalize_each``: the mean of per-template normalised features, renormalised (CLIP's prompt
        ensembling); otherwise the mean of the raw features, normalised (PromptSRC's reference).
        """
        key = ("templates", id(clip), tuple(classnames), tuple(templates), normalize_each, str(clip.device))
        return self._cached(key, lambda: _ensemble(clip, [[t.format(name) for t in templates] for name in classnames],
                                                   normalize_each))

    def description_ensemble(self, clip: FrozenCLIP, classnames: Sequence[str],
                             descriptions: Mapping[str, Sequence[str]], normalize_each: bool = True) -> torch.Tensor:
        """``C x D`` normalised text features of each class's descriptions, ensembled per class (every class has
        some: the learner checks its descriptions when it is given them)."""
        texts = [list(descriptions[name]) for name in classnames]
        key = ("descriptions", id(clip), tuple(classnames), tuple(map(tuple, texts)), normalize_each, str(clip.device))
        return self._cached(key, lambda: _ensemble(clip, texts, normalize_each))

    def description_bank(self, clip: FrozenCLIP, classnames: Sequence[str],
                         descriptions: Mapping[str, Sequence[str]]) -> torch.Tensor:
        """``C x N x D`` normalised text features of every description of every class (each class has ``N``)."""
        texts = [list(descriptions[name]) for name in classnames]
        if len({len(t) for t in texts}) != 1:
            raise ConfigError("a description bank needs the same number of descriptions for every class")
        key = ("description bank", id(clip), tuple(classnames), tuple(map(tuple, texts)), str(clip.device))
        return self._cached(key, lambda: encode_texts(clip, [t for ts in texts for t in ts]).view(
            len(texts), len(texts[0]), -1))

    @staticmethod
    @torch.no_grad()
    def image_features(clip: FrozenCLIP, images: torch.Tensor) -> torch.Tensor:
        """Normalised frozen image features of a batch (``B x D`` input is taken as such features already)."""
        return images if images.ndim == 2 else clip.encode_image(images, normalize=True)

    def logits(self, clip: FrozenCLIP, images: torch.Tensor, classnames: Sequence[str], templates: Sequence[str],
               normalize_each: bool = True, logit_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A frozen model's zero-shot logits of a batch (a teacher's, or the student's own frozen ones):
        ``logit_scale`` (the model's own by default; CasPL uses the student's) times the cosine similarity of
        its image features and its template-ensemble class features."""
        scale = clip.logit_scale if logit_scale is None else logit_scale
        text = self.template_ensemble(clip, classnames, templates, normalize_each)
        return scale * self.image_features(clip, images) @ text.t()


#: Texts encoded per forward pass when building references.
TEXT_BATCH = 1024


def encode_texts(clip: FrozenCLIP, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
    """Frozen text features of ``texts``, encoded in batches of :data:`TEXT_BATCH`."""
    return torch.cat([clip.encode_text(clip.tokenize(texts[i:i + TEXT_BATCH]), normalize=normalize)
                      for i in range(0, len(texts), TEXT_BATCH)])


def _ensemble(clip: FrozenCLIP, texts_per_class: Sequence[Sequence[str]], normalize_each: bool) -> torch.Tensor:
    encoded = encode_texts(clip, [text for texts in texts_per_class for text in texts], normalize_each)
    per_class = encoded.split([len(texts) for texts in texts_per_class])
    return F.normalize(torch.stack([features.mean(dim=0) for features in per_class]), dim=-1)
