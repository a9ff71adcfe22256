"""vlprompt: prompt learning for a frozen CLIP.

Public API::

    clip = vlprompt.load_clip("vlprompt-tiny", pretrained="toy")   # or ("ViT-B-16", pretrained="openai")
    learner = vlprompt.build_learner("coop", clip=clip, classnames=["cat", "dog"], n_ctx=4)
    logits = learner(images)                 # (batch, n_classes)
    learner.set_classnames(["fox", "owl"])   # new classes, same learned prompts
    vlprompt.list_learners()
    learner = vlprompt.load_learner("run/checkpoints/last.ckpt")

The names are imported on first use (PEP 562), so the command-line tools' help does not wait for torch,
Lightning and open_clip.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "FrozenCLIP": "vlprompt.clip", "load_clip": "vlprompt.clip",
    "PromptLearner": "vlprompt.learners", "build_learner": "vlprompt.learners", "list_learners": "vlprompt.learners",
    "load_learner": "vlprompt.learners", "register_learner": "vlprompt.learners",
    "VlpromptError": "vlprompt.errors", "ConfigError": "vlprompt.errors", "CheckpointMismatchError": "vlprompt.errors",
}

__all__ = [*_EXPORTS, "__version__"]


#: Subpackages reachable as attributes after ``import vlprompt`` (``vlprompt.clip.FrozenCLIP``).
_SUBMODULES = ("callbacks", "clip", "commands", "data", "errors", "eval", "files", "learners", "toy")


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"vlprompt.{name}")
    raise AttributeError(f"module 'vlprompt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
