"""Rebuilding a learner from a checkpoint, without executing pickled code."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.base import PromptLearner, check_checkpoint_matches, non_finite_tensors
from vlprompt.learners.registry import get_learner_class, hyperparameter_names


def read_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict:
    """A vlprompt checkpoint as a dict, or a one-line :class:`ConfigError` / :class:`CheckpointMismatchError`
    saying why not: missing, empty, truncated or not a checkpoint, not written by vlprompt, or holding
    non-finite values (a diverged fit). Uses ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist; pass the last.ckpt a fit wrote "
                          "(<run directory>/checkpoints/last.ckpt)")
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} is not a file; pass the path of a .ckpt file")
    if path.stat().st_size == 0:
        raise ConfigError(f"checkpoint {str(path)!r} is empty (an interrupted save?); fit again or pass another file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, EOF: one answer for all
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read: it is truncated, damaged or not a PyTorch "
                          f"checkpoint ({reason}); fit again or pass another file") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("vlprompt"), dict):
        raise CheckpointMismatchError(f"{str(path)!r} was not written by a vlprompt learner (no 'vlprompt' entry); "
                                      "pass a checkpoint from `vlprompt fit`")
    bad = non_finite_tensors((checkpoint.get("state_dict") or {}).items())
    if bad:
        raise CheckpointMismatchError(f"checkpoint {str(path)!r} holds non-finite values in {', '.join(bad)} (training "
                                      "diverged); fit again with a lower learning rate")
    return checkpoint


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
    learner = cls(classnames=meta["classnames"], **frozen, **hparams)
    check_checkpoint_matches(checkpoint, learner)
    learner.load_state_dict(checkpoint["state_dict"])
    return learner.to(map_location)
