"""ATPrompt's attribute-anchored text prompts as a plug-in.

``plugins: [{name: atprompt}]`` on any learner with a learned text context (coop, cocoop, kgcoop, maple, ivlp,
promptsrc, ...). Each attribute word ``w_k`` of the data set (``data.attributes``, e.g. ``[color, shape]``; the
11 data sets' YAMLs hold the ones ATPrompt released) gets ``n_att`` learned tokens ``A_k`` in front of it, and the
whole block goes between the start token and the learner's context:

``[SOT] A_1 w_1 A_2 w_2 ... A_K w_K ctx classname . [EOT]``

Reference: zhengli97/ATPrompt ``trainers/coop_atp.py`` (the prompt, ``PromptLearner.__init__``/``forward``),
``trainers/maple_atp.py`` and ``clip/model_atp.py`` (deep prompts replace the context positions only, after the
attribute block), ``trainers/cocoop_atp.py`` (the meta-net's bias goes to the context only). What the learner does
with its prompts is unchanged, so each host behaves as the reference's ``*_ATP`` trainer: deep text prompts replace
the context only (:attr:`ContextPrompts.prompt_start` moves past the block), CoCoOp's image bias reaches the context
only, MaPLe's projections see the context only.

Defaults as the reference code: ``A_k`` from N(0, 0.01); ``n_att`` the learner's context length (the released
scripts set N_ATT1-3 = NCTX); the host's context restarted from N(0, 0.02) without init words (``context_init:
random``; every ``*_ATP`` trainer disables CTX_INIT), ``context_init: learner`` keeps the learner's own start.

Deliberate differences: an attribute word of several tokens is embedded whole ("playfulness" is "play" + "fulness"
in CLIP's vocabulary; the reference slices one token per word, so on OxfordPets its prompt holds "play", an "X"
where "energy" should be and one more "X" before the class name); any number of attributes, not only 1-3.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from vlprompt.data.descriptions import check_attributes
from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.plugins import Plugin
from vlprompt.learners.registry import register_plugin

#: How the plug-in starts the host's context (``context_init``).
CONTEXT_INITS = ("random", "learner")


@register_plugin("atprompt")
class AttributePrompts(Plugin):
    """Learned attribute tokens ``A_k`` (``K x n_att x text width``, K attribute words) before the text context."""

    needs = ("text_context",)

    def __init__(self, attributes: Optional[Sequence[str]] = None, n_att: Optional[int] = None,
                 context_init: str = "random"):
        """``attributes``: the attribute words (default: the data set's, ``data.attributes``); ``n_att``: learned
        tokens per attribute (default: the learner's ``n_ctx``); ``context_init``: ``random`` (the reference's) or
        ``learner``."""
        if context_init not in CONTEXT_INITS:
            raise ConfigError(f"the atprompt plug-in's context_init must be one of {', '.join(CONTEXT_INITS)}, got "
                              f"{context_init!r}")
        if n_att is not None and (isinstance(n_att, bool) or not isinstance(n_att, int) or n_att < 1):
            raise ConfigError(f"the atprompt plug-in's n_att must be a number of tokens (1 or more), got {n_att!r}")
        attributes = check_attributes(attributes, "the atprompt plug-in's attributes")
        super().__init__(**{key: value for key, value in (("attributes", attributes), ("n_att", n_att),
                                                           ("context_init", context_init)) if value is not None})
        self.words, self.n_att, self.context_init = attributes, n_att, context_init
        self.attribute_tokens = nn.ParameterList()

    def attach(self, learner) -> None:
        if self.words is None:
            self.words = learner.attributes
        if not self.words:
            raise ConfigError("the atprompt plug-in needs attribute words: set data.attributes in the data YAML (the "
                              "11 data sets' YAMLs hold ATPrompt's released ones) or give the plug-in attributes: "
                              "[color, shape]")
        context = learner.text_context
        n_att = self.n_att or context.n_ctx
        self.n_att = n_att
        width = context.ctx.shape[-1]
        for _ in self.words:
            self.attribute_tokens.append(nn.Parameter(torch.empty(n_att, width).normal_(std=0.01)))
        if self.context_init == "random":
            context.start_random(learner.clip, learner.classnames)
        context.take_prefix(self, learner.clip, learner.classnames)

    @property
    def text_prefix(self) -> list:
        return [piece for tokens, word in zip(self.attribute_tokens, self.words) for piece in (tokens, word)]

    def record(self) -> dict:
        """The attribute words a checkpoint's tokens were learned with."""
        return {"attributes": list(self.words)}

    def check_record(self, record: dict, where: str) -> None:
        if list(record["attributes"]) != list(self.words):
            raise CheckpointMismatchError(
                f"{where} learned attribute tokens for {record['attributes']}, not {self.words}; set data.attributes "
                f"(or the plug-in's attributes) to {record['attributes']}")


__all__ = ["AttributePrompts", "CONTEXT_INITS"]
