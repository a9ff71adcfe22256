"""vlprompt: prompt learning for a frozen CLIP.

Public API::

    clip = vlprompt.load_clip("ViT-B-16", pretrained="openai")
    learner = vlprompt.build_learner("coop", clip=clip, classnames=["cat", "dog"], n_ctx=4)
    logits = learner(images)                 # (batch, n_classes)
    learner.set_classnames(["fox", "owl"])   # new classes, same learned prompts
    vlprompt.list_learners()
    learner = vlprompt.load_learner("run/checkpoints/last.ckpt")
"""

from vlprompt.clip import FrozenCLIP, load_clip
from vlprompt.errors import CheckpointMismatchError, ConfigError, VlpromptError
from vlprompt.learners import PromptLearner, build_learner, list_learners, load_learner, register_learner

__version__ = "0.1.0"

__all__ = [
    "FrozenCLIP", "load_clip", "PromptLearner", "build_learner", "list_learners", "load_learner",
    "register_learner", "VlpromptError", "ConfigError", "CheckpointMismatchError", "__version__",
]
