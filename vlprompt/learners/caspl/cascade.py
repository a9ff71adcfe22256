"""CasPL's boosting prompts as a plug-in (Wu et al., "Cascade Prompt Learning for Vision-Language Model
Adaptation", ECCV 2024): the frozen prompts a ``caspl_boost`` fit learned (:mod:`vlprompt.learners.caspl.boosting`)
cascaded under a second-stage learner's own prompts.

``plugins: [{name: caspl, boost_from: RUN/checkpoints/last.ckpt}]``. The learner needs a learned text context and
the shared image path (:data:`~vlprompt.learners.plugins.CAPABILITIES`). At every layer the learner's prompt span
holds both sets: text ``[SOT, adapting, boosting, class ...]`` (``[SOT, adapting, "of a", boosting, class ...]``
when init words stay fixed after the context, as MaPLe's with ``n_ctx`` 2), vision ``[CLS, patches, boosting,
adapting]``. Each set is replaced at the input of the layers up to its depth, and the other set's tokens carry on
as the layer's output. The boosting prompts' depth (``depth``) follows CasPL's reference: under a learner whose
prompts in the image tower are learned tokens of their own (IVLP, PromptSRC: CasPL's PromptSRC stage 2) they are
replaced only within the learner's own depth in each tower (boosting depth 12 under PromptSRC's 9: layers 1-8);
under any other (CoOp, CoCoOp: no deep prompts; MaPLe: visual prompts projected from the text ones) up to the
boosting stage's depth. The boosting prompts are buffers, not parameters: they never train, and a stage-2
checkpoint records their content hash instead of holding them.
"""

from __future__ import annotations

from typing import Optional

import torch

from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.checkpoint_io import check_learned_on, content_hash, read_checkpoint
from vlprompt.learners.plugins import Plugin
from vlprompt.learners.registry import register_plugin

#: The learner whose checkpoints hold boosting prompts.
BOOSTING_LEARNER = "caspl_boost"
#: How deep the boosting prompts are replaced (the caspl plug-in's ``depth``).
DEPTH_RULES = ("auto", "learner", "boosting")


@register_plugin("caspl")
class BoostingPrompts(Plugin):
    """Frozen boosting prompts read from a stage-1 checkpoint (``boost_from``): ``text[l]`` and ``vision[l]`` are the
    tokens that enter layer ``l`` of each tower (layer 0: the input)."""

    needs = ("text_context", "shared_image_path")
    changes_image_features = True

    def __init__(self, boost_from: str, depth: str = "auto"):
        """``depth``: ``auto`` (the reference's rule above), ``learner`` (within the learner's own prompt depth in
        each tower) or ``boosting`` (the boosting stage's whole depth)."""
        if depth not in DEPTH_RULES:
            raise ConfigError(f"the caspl plug-in's depth must be one of {', '.join(DEPTH_RULES)}, got {depth!r}")
        super().__init__(boost_from=str(boost_from), depth=depth)
        self.depth = depth
        #: Whether the boosting prompts stop at the learner's own depth (decided when attached, for ``auto``).
        self.within_learner_depth = depth == "learner"
        checkpoint = read_checkpoint(boost_from)
        meta = checkpoint["vlprompt"]
        if meta["learner"] != BOOSTING_LEARNER:
            raise ConfigError(f"boost_from {str(boost_from)!r} holds a {meta['learner']!r} learner; pass the last.ckpt "
                              f"of a {BOOSTING_LEARNER} fit (configs/learners/caspl_boost.yaml)")
        self.student = meta["clip"]
        state = checkpoint["state_dict"]
        text = [state["prompts.ctx"]] + _numbered(state, "deep_text_prompts")
        vision = _numbered(state, "vision_prompts")
        for name, tensors in (("text", text), ("vision", vision)):
            for layer, tensor in enumerate(tensors):
                self.register_buffer(f"{name}_{layer}", tensor.float().clone(), persistent=False)
        self.text_depth, self.vision_depth = len(text), len(vision)
        self.path = str(boost_from)
        self.sha256 = content_hash(text + vision)

    def attach(self, learner) -> None:
        if learner.registry_name == BOOSTING_LEARNER:
            raise ConfigError(f"{BOOSTING_LEARNER} learns boosting prompts and takes none; the caspl plug-in goes on "
                              "the second-stage learner")
        check_learned_on(self.student, learner.clip, f"boost_from {self.path!r}",
                         f"fit the boosting stage ({BOOSTING_LEARNER}) on this learner's CLIP and pass its last.ckpt")
        if self.depth == "auto":
            visual = learner.visual_prompts()
            tokens = [visual.get("prompts"), *(visual.get("deep_prompts") or {}).values()]
            self.within_learner_depth = bool(visual) and all(isinstance(t, torch.nn.Parameter) for t in tokens)
        learner.text_context.take_tokens(self, learner.clip, learner.classnames)

    @property
    def text_tokens(self) -> torch.Tensor:
        return self.text_0

    @property
    def text(self) -> list[torch.Tensor]:
        return [getattr(self, f"text_{layer}") for layer in range(self.text_depth)]

    @property
    def vision(self) -> list[torch.Tensor]:
        return [getattr(self, f"vision_{layer}") for layer in range(self.vision_depth)]

    @property
    def vision_tokens(self) -> int:
        return self.vision_0.shape[0] if self.vision_depth else 0

    def _depth(self, own: int, learners: int) -> int:
        """Layers (input included) whose boosting tokens are replaced: ``own`` (the boosting stage's), or within the
        learner's (``learners``, its input included) when the rule says so."""
        return min(own, learners) if self.within_learner_depth else own

    def text_deep_prompts(self, deep_prompts: Optional[dict], offset: int) -> dict:
        """The learner's deep text prompts (replacing its context tokens) with the boosting ones at ``offset`` after
        the first context token, each up to its depth."""
        deep_prompts = deep_prompts or {}
        depth = self._depth(self.text_depth, max(deep_prompts, default=0) + 1)
        merged = {}
        for layer in range(1, max(depth, max(deep_prompts, default=0) + 1)):
            pieces = [(0, deep_prompts[layer])] if layer in deep_prompts else []
            if layer < depth:
                pieces.append((offset, getattr(self, f"text_{layer}")))
            if pieces:
                merged[layer] = pieces
        return merged

    def vision_prompts(self, prompts: Optional[torch.Tensor],
                       deep_prompts: Optional[dict]) -> tuple[torch.Tensor, dict]:
        """``(input prompts, deep prompts)`` for the image tower: boosting tokens first, the learner's after them."""
        if not self.vision_depth:
            return prompts, deep_prompts or {}
        boost = self.vision_0
        merged_input = boost if prompts is None else torch.cat([expand_like(boost, prompts), prompts], dim=-2)
        deep_prompts = deep_prompts or {}
        depth = self._depth(self.vision_depth, max(deep_prompts, default=0) + 1)
        merged = {}
        for layer in range(1, max(depth, max(deep_prompts, default=0) + 1)):
            pieces = [(0, getattr(self, f"vision_{layer}"))] if layer < depth else []
            if layer in deep_prompts:
                pieces.append((self.vision_tokens, deep_prompts[layer]))
            if pieces:
                merged[layer] = pieces
        return merged_input, merged

    def record(self) -> dict:
        """What a stage-2 checkpoint keeps of them: their content hash (the spec says where they came from)."""
        return {"sha256": self.sha256}

    @classmethod
    def format_2_record(cls, meta: dict) -> Optional[dict]:
        boost = meta.get("boost")  # format 2 named the boosting prompts apart
        return {"spec": {"name": cls.name, "boost_from": boost["path"]}, "sha256": boost["sha256"]} if boost else None

    def check_record(self, record: dict, where: str) -> None:
        if self.sha256 != record["sha256"]:
            raise CheckpointMismatchError(
                f"boost_from {self.path!r} holds other boosting prompts (sha256 {self.sha256[:12]}) than {where} was "
                f"trained with ({record['spec']['boost_from']!r}, sha256 {record['sha256'][:12]}); pass that file")


def expand_like(boost: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    return boost.expand(prompts.shape[0], -1, -1) if prompts.dim() == 3 else boost


def _numbered(state: dict, prefix: str) -> list[torch.Tensor]:
    found = {int(key.rsplit(".", 1)[1]): value for key, value in state.items() if key.startswith(prefix + ".")}
    return [found[i] for i in range(len(found))]


__all__ = ["BoostingPrompts", "content_hash", "BOOSTING_LEARNER"]
