"""Prompt learners and plug-ins, one module (or folder) each, found through the registry (:func:`list_learners`,
:func:`get_learner_class`, :func:`list_plugins`)."""

from vlprompt.learners.base import PromptLearner
from vlprompt.learners.checkpoint import load_learner
from vlprompt.learners.plugins import Plugin
from vlprompt.learners.registry import (build_learner, get_learner_class, list_learners, list_plugins, register_learner,
                                        register_plugin)

__all__ = ["PromptLearner", "Plugin", "build_learner", "get_learner_class", "list_learners", "list_plugins",
           "register_learner", "register_plugin", "load_learner"]
