"""The CoOp/Dassl data protocol: split files, few-shot sampling and base/novel halves."""

from __future__ import annotations

import hashlib
from collections import Counter
import json
import math
import posixpath
import random
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from vlprompt.errors import ConfigError
from vlprompt.files import write_json_atomically

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
    split, names = {}, {}
    for name in SPLITS:
        items = []
        for entry in raw[name]:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and isinstance(entry[2], str)):
                raise ConfigError(f"split file {str(path)!r}: {name} entry {entry!r} is not [relpath, label, classname]")
            item = Item(*entry)
            _check_entry(path, name, item, names)
            items.append(item)
        split[name] = items
    return split


def _check_entry(path: Path, split: str, item: Item, names: dict[int, str]) -> None:
    """Refuse what would silently give wrong prompts or read files outside the data set."""
    where = f"split file {str(path)!r}: {split} entry {list(item)!r}"
    relpath = posixpath.normpath(item.path.replace("\\", "/"))
    if not item.path or posixpath.isabs(relpath) or relpath == ".." or relpath.startswith("../"):
        raise ConfigError(f"{where} points outside the image folder; relpaths must stay inside data.image_dir")
    if not item.classname.strip():
        raise ConfigError(f"{where} has an empty class name; write each class's name as the prompt should read it")
    known = names.setdefault(item.label, item.classname)
    if known != item.classname:
        raise ConfigError(f"{where} names label {item.label} {item.classname!r}, but another entry names it "
                          f"{known!r}; give each label one class name")


def _split_json(split: dict[str, Sequence[Item]]) -> dict:
    return {name: [list(item) for item in split[name]] for name in SPLITS if name in split}


def write_split_file(path: Path, split: dict[str, Sequence[Item]]) -> bool:
    """Write a split file in CoOp's format unless one exists (never replaced); True if this call wrote it.

    Several processes (DDP ranks) may build the same split at once; the first one to finish writes it.
    """
    return write_json_atomically(Path(path), _split_json(split), replace=False)


def classnames_of(items: Iterable[Item]) -> list[str]:
    """Class names in label order (labels must be 0..n-1)."""
    names: dict[int, str] = {}
    for item in items:
        names.setdefault(item.label, item.classname)
    if sorted(names) != list(range(len(names))):
        raise ConfigError(f"labels must be 0..n-1 without gaps, got {sorted(names)[:10]}...")
    return [names[label] for label in range(len(names))]


def prompt_name(classname: str) -> str:
    """A class's name as its prompts write it: folder names' underscores become spaces (as in Dassl's readers)."""
    return classname.replace("_", " ")


def prompt_classnames(split: dict[str, list[Item]]) -> list[str]:
    """The class names of a split (all its lists), in label order, as prompts write them."""
    return [prompt_name(name) for name in classnames_of(item for items in split.values() for item in items)]


def group_by_label(items: Iterable[Item]) -> dict[int, list[Item]]:
    """Items per label, labels in order of first appearance (Dassl's ``split_dataset_by_label`` order)."""
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return groups


def images_per_class(items: Iterable[Item]) -> dict[str, int]:
    """``{class name: number of items}``, classes in order of first appearance."""
    return dict(Counter(item.classname for item in items))


def sample_few_shot(items: Sequence[Item], shots: int, rng: random.Random) -> list[Item]:
    """Dassl's ``generate_fewshot_dataset``: per label, in order of first appearance, ``rng.sample(items, K)``.

    Labels with fewer than ``shots`` images keep all of them (Dassl's ``repeat=False``).
    """
    selected = []
    for group in group_by_label(items).values():
        selected.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return selected


def few_shot_split(split: dict[str, list[Item]], shots: int, seed: int) -> dict[str, list[Item]]:
    """Train with ``shots`` per class and val with ``min(shots, 4)``, from one RNG seeded with ``seed``.

    ``shots == -1`` keeps everything; 0 and other negative numbers are refused. The RNG is a
    ``random.Random(seed)``, which draws the same numbers as
    the reference's ``random.seed(seed)`` followed by module-level ``random.sample``.
    """
    if shots == -1:
        return dict(split)
    if shots < 1:
        raise ConfigError(f"shots must be 1 or more images per class, or -1 for all of them; got {shots}")
    rng = random.Random(seed)
    train = sample_few_shot(split["train"], shots, rng)
    val = sample_few_shot(split["val"], min(shots, 4), rng)
    return {"train": train, "val": val, "test": split["test"]}


FEW_SHOT_DIR = "split_fewshot"


def cached_few_shot_split(split: dict[str, list[Item]], shots: int, seed: int, split_path: Path) -> dict[str, list[Item]]:
    """:func:`few_shot_split`, saved as ``split_fewshot/shot_<K>-seed_<seed>.json`` beside the split file.

    As CoOp's ``split_fewshot/*.pkl``, the file records which images a (K, seed) run trained on; it is JSON in
    the split file's format (no pickle) and remembers the split file's sha256, so an edited split file makes
    it stale and it is drawn again. A directory that cannot be written only skips the cache.
    """
    if shots < 1:
        return few_shot_split(split, shots, seed)
    split_path = Path(split_path)
    cache = split_path.parent / FEW_SHOT_DIR / f"shot_{shots}-seed_{seed}.json"
    source = hashlib.sha256(split_path.read_bytes()).hexdigest()
    try:
        cached = json.loads(cache.read_text()) if cache.is_file() else None
    except (OSError, json.JSONDecodeError):
        cached = None
    if cached and cached.get("split_sha256") == source:
        return {"train": [Item(*e) for e in cached["train"]], "val": [Item(*e) for e in cached["val"]],
                "test": split["test"]}
    selected = few_shot_split(split, shots, seed)
    try:
        # The images each class really trains on: fewer than ``shots`` where a class has fewer (kept whole).
        write_json_atomically(cache, {"split_sha256": source, "shots": shots,
                                      "train_images_per_class": images_per_class(selected["train"]),
                                      **_split_json({k: selected[k] for k in ("train", "val")})})
    except OSError:
        pass  # a read-only data set still trains; the selection is the same without the file
    return selected


def subsample_classes(split: dict[str, list[Item]], subsample: str) -> dict[str, list[Item]]:
    """Keep the base (first ``ceil(n/2)`` sorted labels) or novel (the rest) classes, relabelled from 0."""
    if subsample not in SUBSAMPLES:
        raise ConfigError(f"subsample must be one of {', '.join(SUBSAMPLES)}, got {subsample!r}")
    if subsample == "all":
        return dict(split)
    # Labels come from the train list, as in Dassl; test-only sets (ImageNet variants) have only a test list.
    labels = sorted({item.label for item in split["train"] or split["test"]})
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(selected)}
    return {name: [Item(i.path, relabel[i.label], i.classname) for i in items if i.label in relabel]
            for name, items in split.items()}
