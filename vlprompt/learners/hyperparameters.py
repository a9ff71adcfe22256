"""Checks of numeric hyper-parameters before anything is built: every float finite, the common ones in range.

A NaN momentum or an infinite loss weight would otherwise train (or diverge and blame the learning rate); the
command line checks the parsed values before the CLIP is built, and every learner checks its own again when
constructed from Python.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from vlprompt.errors import ConfigError

#: ``name: (lowest, lowest allowed, highest, highest allowed)`` for hyper-parameters whose meaning bounds them.
RANGES: dict[str, tuple[Optional[float], bool, Optional[float], bool]] = {
    "lr": (0.0, False, None, False),
    "warmup_lr": (0.0, True, None, False),
    "momentum": (0.0, True, 1.0, False),
    "weight_decay": (0.0, True, None, False),
    "adam_eps": (0.0, False, None, False),
    "temperature": (0.0, False, None, False),
    "tau": (0.0, False, None, False),
    "gpa_std": (0.0, False, None, False),
    "layernorm_lr_scale": (0.0, True, None, False),
}
#: Loss weights (``*_weight``, ``lambda_*``) may be 0 (the term is off), never negative.
WEIGHT_RANGE = (0.0, True, None, False)


#: Other learning rates (``*_lr``, meta-init's ``--inner-lr`` ...) are above 0.
LEARNING_RATE_RANGE = (0.0, False, None, False)


def range_of(name: str) -> Optional[tuple]:
    """The bounds of the option ``name`` (a hyper-parameter, or a command-line option such as ``--inner-lr``)."""
    name = name.lstrip("-").replace("-", "_")
    if name in RANGES:
        return RANGES[name]
    if name.endswith("_weight") or name.startswith("lambda_"):
        return WEIGHT_RANGE
    if name.endswith("_lr"):
        return LEARNING_RATE_RANGE
    return None


def _describe(bounds: tuple) -> str:
    low, low_in, high, high_in = bounds
    if high is None:
        return f"{'at least' if low_in else 'above'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_number(key: str, value) -> None:
    """Refuse a non-finite float, or a value outside the range its name has (:data:`RANGES`), naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    name = key.rsplit(".", 1)[-1]
    bounds = range_of(name)
    if isinstance(value, float) and not math.isfinite(value):
        wanted = f"a finite number {_describe(bounds)}" if bounds else "a finite number"
        raise ConfigError(f"{key} is {value}; it must be {wanted}")
    if bounds is None:
        return
    low, low_in, high, high_in = bounds
    too_low = low is not None and (value < low or (value == low and not low_in))
    too_high = high is not None and (value > high or (value == high and not high_in))
    if too_low or too_high:
        raise ConfigError(f"{key} is {value}; it must be {_describe(bounds)}")


def check_hyperparameters(values: Mapping, prefix: str = "") -> None:
    """:func:`check_number` for every top-level value of ``values`` (a learner's hyper-parameters, a parsed config
    section), named ``prefix + name`` as the command line spells it."""
    for name, value in values.items():
        check_number(f"{prefix}{name}", value)
