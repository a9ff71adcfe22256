"""Rebuilding a learner from a checkpoint, without executing pickled code."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from vlprompt.clip import FrozenCLIP
from vlprompt.learners.base import PromptLearner, check_checkpoint_matches, check_plugin_records, plugin_records
from vlprompt.learners.checkpoint_io import read_checkpoint
from vlprompt.learners.registry import get_learner_class, hyperparameter_names



def load_learner(path: Union[str, Path], clip: Optional[FrozenCLIP] = None,
                 map_location: Union[str, torch.device] = "cpu", **frozen: FrozenCLIP) -> PromptLearner:
    """Rebuild the learner saved in a checkpoint (``vlprompt fit`` writes them).

    The checkpoint holds the learner name, its hyper-parameters, the class names, the identity of every frozen
    model and the learned tensors. Each frozen model is rebuilt from its recorded source (architecture and
    pretrained weights) unless it is passed: ``clip=`` (and, for learners with more, by name: ``teacher=``) to
    reuse an already loaded one. Loading uses ``torch.load(weights_only=True)``.
    """
    checkpoint = read_checkpoint(path, map_location)
    meta = checkpoint["vlprompt"]
    cls = get_learner_class(meta["learner"])
    if clip is not None:
        frozen["clip"] = clip
    for name, identity in (meta.get("frozen") or {"clip": meta["clip"]}).items():
        if name not in frozen:
            frozen[name] = FrozenCLIP(**identity["source"])
    accepted = set(hyperparameter_names(cls)) - {"classnames"} - set(frozen)
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k in accepted}
    if "plugins" not in hparams and meta.get("format", 1) < 3:  # format 2 kept plug-ins out of the hyper-parameters
        hparams["plugins"] = [record["spec"] for record in plugin_records(meta).values()]
    learner = cls(classnames=meta["classnames"], **frozen, **hparams)
    check_checkpoint_matches(checkpoint, learner)
    check_plugin_records(checkpoint, learner, str(path))
    learner.load_state_dict(checkpoint["state_dict"])
    return learner.to(map_location)
