"""Plug-ins: methods that apply to any learner with what they need (CasPL's boosting prompts, GRAM's
initialisation and gradient regulator), handed to a learner as components.

A learner takes them as ``plugins``, a list of specs ``{"name": <plug-in>, <option>: <value>, ...}`` (in YAML
under ``model.init_args.plugins``; on the command line ``--model.init_args.plugins+='{name: caspl, boost_from:
RUN/checkpoints/last.ckpt}'``). Once the learner is built it asks whether it has every capability each plug-in
:attr:`~Plugin.needs` (capabilities are derived from the learner's components, see
:attr:`~vlprompt.learners.PromptLearner.capabilities`), refuses in one line when not, and then builds the
plug-in and calls its :meth:`~Plugin.attach`. What a plug-in may contribute, each a method with a neutral default:

- tokens in the text prompt (frozen ones after the learned context, words and learned tokens before it) and in the
  vision prompt sequence (:meth:`~Plugin.text_tokens`, :meth:`~Plugin.text_prefix`,
  :meth:`~Plugin.text_deep_prompts`, :meth:`~Plugin.vision_prompts`); a plug-in
  whose vision tokens change the image features says so (:attr:`~Plugin.changes_image_features`);
- what happens when a fit sets up (:meth:`~Plugin.on_fit_setup`: an initialisation, a gradient transform);
- named loss terms (:meth:`~Plugin.loss_terms`, logged like the learner's own);
- what a checkpoint records of it and checks when loaded (:meth:`~Plugin.record`, :meth:`~Plugin.check_record`).

Weights across epochs (Gaussian prompt aggregation) are Lightning weight averaging, a callback the learner
configures. A plug-in is one ``@register_plugin`` class in a learners module: the registry finds it as it finds
learners.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import nn

from vlprompt.errors import ConfigError
from vlprompt.learners.losses import LossTerm
from vlprompt.learners.registry import get_plugin_class, list_plugins

#: What a plug-in may need of a learner, in words (the names :attr:`PromptLearner.capabilities` derives).
CAPABILITIES = {
    "text_context": "one learned text context (ContextPrompts) with the class name at the end",
    "shared_image_path": "the shared image path (image features from PromptLearner.image_features with the "
                         "learner's visual_prompts(), not an image_features of its own)",
    "unnormalised_features": "class text features from one learned context and image features on the shared path "
                             "(both then readable before they are normalised)",
}


class Plugin(nn.Module):
    """Base class of plug-ins (see the module docstring). Subclasses take their options as keyword arguments.

    Frozen tensors a plug-in holds that must follow the learner between devices are buffers, never saved in the
    learner's checkpoint (register them with ``persistent=False``). What a plug-in learns is its parameters: they
    train with the learner's and are saved in its checkpoint under ``plugins.<index>.``.
    """

    name: ClassVar[str] = ""
    #: Capabilities (keys of :data:`CAPABILITIES`) the learner must have.
    needs: ClassVar[tuple[str, ...]] = ()
    #: Whether the plug-in's vision tokens change the image features (the feature cache then refuses the learner).
    changes_image_features: ClassVar[bool] = False
    #: Whether the plug-in reads the features before normalisation (``learner.take_raw_features()``; needs the
    #: ``unnormalised_features`` capability; the feature cache, which holds normalised ones, then refuses the learner).
    reads_unnormalised_features: ClassVar[bool] = False

    def __init__(self, **options: Any):
        super().__init__()
        #: The spec that rebuilds this plug-in (what the learner's hyper-parameters hold).
        self.spec = {"name": self.name, **options}

    # -- attaching -------------------------------------------------------------------------------------------------
    def attach(self, learner) -> None:
        """Called once, after the learner is built and its capabilities checked."""

    # -- what it may contribute ------------------------------------------------------------------------------------
    @property
    def text_tokens(self) -> Optional[torch.Tensor]:
        """``n x text width`` frozen embeddings placed right after the learned context, or None."""
        return None

    @property
    def text_prefix(self) -> Optional[list]:
        """Pieces placed between the start token and the learned context, in order: words (``str``, embedded by the
        frozen CLIP) and learned ``n x text width`` tensors; or None."""
        return None

    def text_deep_prompts(self, deep_prompts: dict, offset: int) -> dict:
        """The learner's deep text prompts with the plug-in's merged in (``{layer: tensor or [(offset, tensor),
        ...]}``, offsets counted from the first context token; the plug-in's tokens sit at ``offset``)."""
        return deep_prompts

    def vision_prompts(self, prompts: Optional[torch.Tensor], deep_prompts: dict) -> tuple[Optional[torch.Tensor], dict]:
        """The learner's visual prompts ``(input tokens, deep prompts)`` with the plug-in's merged in."""
        return prompts, deep_prompts

    def on_fit_setup(self, learner) -> None:
        """Called when a fit sets up, before Lightning restores a checkpoint it resumes from."""

    def loss_terms(self, learner) -> list[LossTerm]:
        """Named, weighted loss terms added to the learner's."""
        return []

    def scaled_terms(self, learner) -> dict[str, float]:
        """Factors on the learner's own loss terms, by name (DePT: ``{"ce": 1 - w}``)."""
        return {}

    def parameter_groups(self, learner) -> list[dict]:
        """Optimiser groups of the plug-in's own (a group may carry ``lr``); its parameters not in one train in the
        learner's groups."""
        return []

    def adjust_logits(self, learner, logits: torch.Tensor) -> torch.Tensor:
        """The learner's logits in evaluation, changed (DePT fuses its head's on the classes it was trained on)."""
        return logits

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def record(self) -> Optional[dict]:
        """What a checkpoint keeps of the plug-in (under ``vlprompt.plugins.<name>``), or None."""
        return None

    def check_record(self, record: dict, where: str) -> None:
        """Refuse a checkpoint whose record of this plug-in differs from the plug-in loaded now (or take it, where the
        record decides the plug-in's shape: DePT's head); called before the checkpoint's weights load."""

    @classmethod
    def format_2_record(cls, meta: dict) -> Optional[dict]:
        """This plug-in's record (``{"spec": ..., ...}``) in a format-2 checkpoint's ``vlprompt`` entry, which kept
        records elsewhere; None when it holds none."""
        return None


def plugin_options(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


def plugin_classes(specs: Optional[Sequence[Any]]) -> list[tuple[type, dict]]:
    """``(plug-in class, options)`` of each spec (``{"name": ..., options}``), with one-line errors for unknown names,
    unknown options and a plug-in given twice. Nothing is built yet: a learner checks each class's needs first."""
    found = []
    for spec in specs or []:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"a plug-in is given as {{name: <plug-in>, <option>: <value>}}, got {spec!r}; "
                              f"plug-ins: {', '.join(list_plugins())}")
        cls = get_plugin_class(spec["name"])
        options = {key: value for key, value in spec.items() if key != "name"}
        known = plugin_options(cls)
        for key in options:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
                raise ConfigError(f"plug-in {spec['name']!r} has no option {key!r}; "
                                  + (f"did you mean {close[0]!r}?" if close else f"its options: {', '.join(known)}"))
        found.append((cls, options))
    names = [cls.name for cls, _ in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"plug-in {twice[0]!r} is given twice; give each plug-in once")
    return found


def refuse_unless_capable(plugin: type, learner_name: str, capabilities: frozenset[str]) -> None:
    """A one-line refusal when the learner lacks a capability the plug-in (class) needs."""
    missing = [need for need in plugin.needs if need not in capabilities]
    if missing:
        raise ConfigError(f"plug-in {plugin.name!r} needs {' and '.join(CAPABILITIES[m] for m in missing)}, and "
                          f"{learner_name} has not; drop the plug-in or use a learner that has it")


__all__ = ["CAPABILITIES", "Plugin", "plugin_classes", "refuse_unless_capable"]
