"""GRAM's plug-in (our reading, see :mod:`vlprompt.learners.gram`): ``{name: gram, init_from: FILE,
gradient_regulator: FILE}`` on any learner with a learned text context."""

from __future__ import annotations

from typing import Optional

import torch

from vlprompt.clip.frozen import none_if_null
from vlprompt.errors import ConfigError
from vlprompt.learners.checkpoint_io import check_learned_on
from vlprompt.learners.gram.meta import read_gram
from vlprompt.learners.plugins import Plugin
from vlprompt.learners.registry import register_plugin

#: What to do about a GRAM file learned on another CLIP.
REFIT = "run `vlprompt meta-init` with this learner's CLIP"


@register_plugin("gram")
class GRAM(Plugin):
    """GRAM's meta-learned context and gradient regulator (``vlprompt meta-init`` writes the file).

    Args:
        init_from: a GRAM file whose context replaces the learner's initial context when a fit sets up.
        gradient_regulator: a GRAM file whose regulator gates the context's gradient at every training step (a
            tensor hook on that one parameter: nothing else, the frozen CLIP least of all, sees it). Usually the
            same file; either alone is an ablation.
    """

    needs = ("text_context",)

    def __init__(self, init_from: Optional[str] = None, gradient_regulator: Optional[str] = None):
        init_from, gradient_regulator = none_if_null(init_from), none_if_null(gradient_regulator)
        super().__init__(init_from=init_from, gradient_regulator=gradient_regulator)
        if init_from is None and gradient_regulator is None:
            raise ConfigError("the gram plug-in needs init_from, gradient_regulator or both (GRAM files from "
                              "`vlprompt meta-init`)")
        self.init = read_gram(init_from) if init_from else None
        # Usually the same file: read once.
        same = gradient_regulator == init_from and self.init is not None
        self.regulation = self.init if same else read_gram(gradient_regulator) if gradient_regulator else None
        if self.regulation is not None:
            regulator = self.regulation["regulator"]
            # The meta-learned gate, frozen: R(g) = 2 sigmoid(m) * g (a buffer: it follows the learner's device).
            self.register_buffer("gate", 2 * torch.sigmoid(regulator["logits"].float()), persistent=False)
            self.regulator_shape = tuple(regulator["shape"])
        self._hook = None

    def attach(self, learner) -> None:
        """Check the files against the learner's CLIP and context now, not when its fit starts."""
        ctx = learner.text_context.ctx
        for role, content in (("init_from", self.init), ("gradient_regulator", self.regulation)):
            if content is None or (role == "gradient_regulator" and content is self.init):
                continue
            check_learned_on(content.get("clip"), learner.clip, f"{role} {content['path']!r}", REFIT)
        if self.init is not None and tuple(self.init["ctx"].shape) != tuple(ctx.shape):
            raise ConfigError(f"the GRAM context has shape {list(self.init['ctx'].shape)} and "
                              f"{learner.registry_name}'s has {list(ctx.shape)}; meta-train with this learner's n_ctx "
                              "and CLIP (vlprompt meta-init --learner its YAML)")
        if self.regulation is not None and self.regulator_shape != tuple(ctx.shape):
            raise ConfigError(f"the GRAM regulator was meta-learned for a context of shape {list(self.regulator_shape)}"
                              f" and {learner.registry_name}'s has {list(ctx.shape)}; meta-train with this learner's "
                              "n_ctx and CLIP")

    def on_fit_setup(self, learner) -> None:
        ctx = learner.text_context.ctx
        if self.init is not None:  # bitwise, in the context's dtype
            with torch.no_grad():
                ctx.copy_(self.init["ctx"].to(ctx.dtype))
        if self.regulation is not None and self._hook is None:
            # Set up before Lightning moves the learner: the gate follows the gradient's device.
            self._hook = ctx.register_hook(lambda gradient: self.gate.to(gradient.device, gradient.dtype) * gradient)
