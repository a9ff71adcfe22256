"""Reading vlprompt checkpoint files safely (``torch.load(weights_only=True)``), with one-line errors; below the
learners, so that every learner module (and the cascade's boosting prompts) can read one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

import torch

from vlprompt.errors import CheckpointMismatchError, ConfigError, warn


def non_finite_tensors(named_tensors) -> list[str]:
    """Names of the tensors holding NaN or infinity."""
    return [name for name, tensor in named_tensors
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


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


def describe_clip(identity: dict) -> str:
    """A CLIP's recorded identity in words: its name and where its weights came from."""
    source = identity.get("source") or {}
    name = source.get("name")
    name = repr(name) if isinstance(name, str) else "built from a config dict"
    pretrained = source.get("pretrained")
    return f"{name} (pretrained {pretrained!r})" if pretrained else f"{name} (random weights)"


def architecture_difference(saved: dict, current: dict) -> str:
    """``"key: saved vs current, ..."`` for the recorded architecture facts that differ; keys absent on one side
    (checkpoints older than a recorded fact) are not compared."""
    return ", ".join(f"{k}: {saved[k]} vs {current[k]}" for k in sorted(set(saved) & set(current))
                     if saved[k] != current[k])


def check_learned_on(saved: dict, clip, what: str, fix: str) -> None:
    """Refuse ``what`` (a file named by its role and path) learned on another CLIP architecture than ``clip``, saying
    how to ``fix`` it; warn when only the weights' source differs (the same weights may come from another place,
    but other weights make what was learned a poor fit)."""
    saved = saved or {}
    current = clip.identity
    diff = architecture_difference(saved.get("arch") or {}, current["arch"])
    if diff:
        raise CheckpointMismatchError(f"{what} was learned on the CLIP {describe_clip(saved)}, and this learner's is "
                                      f"{describe_clip(current)} ({diff}); {fix}")
    if saved.get("source") and saved["source"] != current["source"]:
        warn(f"{what} was learned on {describe_clip(saved)} and this learner's CLIP is {describe_clip(current)}: same "
             "architecture, maybe other weights; what it holds suits the weights it was learned on")


def content_hash(tensors: list[torch.Tensor]) -> str:
    """sha256 of the tensors' values (float32, in order): the same prompts give the same hash whatever file holds
    them."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
