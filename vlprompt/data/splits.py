"""The CoOp/Dassl data protocol: split files, few-shot sampling and base/novel halves."""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from vlprompt.errors import ConfigError

SPLITS = ("train", "val", "test")
SUBSAMPLES = ("all", "base", "novel")
PREPARATION_NOTES = "datasets/README.md"


class Item(NamedTuple):
    """One image: path relative to the image directory, integer label, class name."""

    path: str
    label: int
    classname: str


def read_split_file(path: Path) -> dict[str, list[Item]]:
    """Read a ``split_zhou_<Name>.json`` file: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"split file {str(path)!r} does not exist; see {PREPARATION_NOTES}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"split file {str(path)!r} is not valid JSON ({err}); see {PREPARATION_NOTES}") from None
    missing = [s for s in SPLITS if s not in raw] if isinstance(raw, dict) else list(SPLITS)
    if missing:
        raise ConfigError(f"split file {str(path)!r} lacks {missing}; it needs train, val and test lists")
    split = {}
    for name in SPLITS:
        items = []
        for entry in raw[name]:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and isinstance(entry[2], str)):
                raise ConfigError(f"split file {str(path)!r}: {name} entry {entry!r} is not [relpath, label, classname]")
            items.append(Item(*entry))
        split[name] = items
    return split


def classnames_of(items: Iterable[Item]) -> list[str]:
    """Class names in label order (labels must be 0..n-1)."""
    names: dict[int, str] = {}
    for item in items:
        names.setdefault(item.label, item.classname)
    if sorted(names) != list(range(len(names))):
        raise ConfigError(f"labels must be 0..n-1 without gaps, got {sorted(names)[:10]}...")
    return [names[label] for label in range(len(names))]


def sample_few_shot(items: Sequence[Item], shots: int, rng: random.Random) -> list[Item]:
    """Dassl's ``generate_fewshot_dataset``: per label, in order of first appearance, ``rng.sample(items, K)``.

    Labels with fewer than ``shots`` images keep all of them (Dassl's ``repeat=False``).
    """
    by_label: "OrderedDict[int, list[Item]]" = OrderedDict()
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    selected = []
    for group in by_label.values():
        selected.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return selected


def few_shot_split(split: dict[str, list[Item]], shots: int, seed: int) -> dict[str, list[Item]]:
    """Train with ``shots`` per class and val with ``min(shots, 4)``, from one RNG seeded with ``seed``.

    ``shots <= 0`` keeps everything. The RNG is a ``random.Random(seed)``, which draws the same numbers as
    the reference's ``random.seed(seed)`` followed by module-level ``random.sample``.
    """
    if shots <= 0:
        return dict(split)
    rng = random.Random(seed)
    train = sample_few_shot(split["train"], shots, rng)
    val = sample_few_shot(split["val"], min(shots, 4), rng)
    return {"train": train, "val": val, "test": split["test"]}


def subsample_classes(split: dict[str, list[Item]], subsample: str) -> dict[str, list[Item]]:
    """Keep the base (first ``ceil(n/2)`` sorted labels) or novel (the rest) classes, relabelled from 0."""
    if subsample not in SUBSAMPLES:
        raise ConfigError(f"subsample must be one of {', '.join(SUBSAMPLES)}, got {subsample!r}")
    if subsample == "all":
        return dict(split)
    labels = sorted({item.label for item in split["train"]})
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(selected)}
    return {name: [Item(i.path, relabel[i.label], i.classname) for i in items if i.label in relabel]
            for name, items in split.items()}
