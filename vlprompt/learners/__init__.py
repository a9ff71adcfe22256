"""Prompt learners, one module each, found through the registry (:func:`list_learners`, :func:`get_learner_class`)."""

from vlprompt.learners.base import PromptLearner
from vlprompt.learners.checkpoint import load_learner
from vlprompt.learners.registry import build_learner, get_learner_class, list_learners, register_learner

__all__ = ["PromptLearner", "build_learner", "get_learner_class", "list_learners", "register_learner", "load_learner"]
