"""Rebuilding a learner from a checkpoint, without executing pickled code."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.base import PromptLearner, check_checkpoint_matches
from vlprompt.learners.registry import get_learner_class, hyperparameter_names


def load_learner(path: Union[str, Path], clip: Optional[FrozenCLIP] = None,
                 map_location: Union[str, torch.device] = "cpu") -> PromptLearner:
    """Rebuild the learner saved in a checkpoint (``vlprompt fit`` writes them).

    The checkpoint holds the learner name, its hyper-parameters, the class names, the CLIP identity and the
    learned tensors. ``clip`` defaults to rebuilding the CLIP it names (its architecture and pretrained
    source); pass one to reuse an already loaded backbone. Loading uses ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    meta = checkpoint.get("vlprompt")
    if meta is None:
        raise CheckpointMismatchError(f"{path} was not written by a vlprompt learner (no 'vlprompt' entry)")
    cls = get_learner_class(meta["learner"])
    if clip is None:
        clip = FrozenCLIP(**meta["clip"]["source"])
    accepted = set(hyperparameter_names(cls)) - {"clip", "classnames"}
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k in accepted}
    learner = cls(clip=clip, classnames=meta["classnames"], **hparams)
    check_checkpoint_matches(checkpoint, learner)
    learner.load_state_dict(checkpoint["state_dict"])
    return learner.to(map_location)
