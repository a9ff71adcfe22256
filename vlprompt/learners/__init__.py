"""Prompt learners, one module each, found through the registry."""

from vlprompt.learners.base import PromptLearner
from vlprompt.learners.checkpoint import load_learner
from vlprompt.learners.cocoop import CoCoOp
from vlprompt.learners.coop import CoOp
from vlprompt.learners.kgcoop import KgCoOp
from vlprompt.learners.maple import MaPLe
from vlprompt.learners.registry import build_learner, get_learner_class, list_learners, register_learner
from vlprompt.learners.zeroshot import ZeroShotCLIP

__all__ = [
    "PromptLearner", "ZeroShotCLIP", "CoOp", "CoCoOp", "KgCoOp", "MaPLe",
    "build_learner", "get_learner_class", "list_learners", "register_learner", "load_learner",
]
