"""Zero-shot accuracy of a toy-world CLIP on the toy data sets, and on the small check sets the tests re-measure."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

from vlprompt.clip import load_clip
from vlprompt.data import ImageSplitDataModule
from vlprompt.eval.accuracy import evaluate_accuracy
from vlprompt.learners import build_learner
from vlprompt.toy.medical import MEDICAL_DATASETS
from vlprompt.toy.world import DATASETS, ensure_toy_dataset, toy_dataset, write_toy_dataset

#: Small, fixed test sets (4 images per class) whose zero-shot accuracy is recorded with the shipped weights.
CHECK_SETS = {name: {"seed": 1234, "train_per_class": 0, "val_per_class": 0, "test_per_class": 4}
              for name in ("ToyShapes", "ToyPatterns", "ToyXray", "ToyHistology")}
#: Each toy world's downstream data sets and check sets (an architecture is measured on the world it learned).
WORLD_DATASETS = {"shapes": tuple(DATASETS), "medical": tuple(MEDICAL_DATASETS)}
WORLD_CHECK_SETS = {"shapes": ("ToyShapes", "ToyPatterns"), "medical": ("ToyXray", "ToyHistology")}
#: The CLIP config (``configs/clip/<name>.yaml``) that reads each world's data sets.
WORLD_CLIP_CONFIGS = {"shapes": "toy", "medical": "toy-bert"}


def world_of_dataset(name: str) -> str:
    return "medical" if name in MEDICAL_DATASETS else "shapes"


def toy_run_args(configs: Path, learner: str, dataset: str, data_root: Path, seed: int) -> list[str]:
    """``vlprompt`` arguments for ``learner`` (a file in ``configs/learners``) with the shipped toy CLIP of the data
    set's world (``vlprompt-tiny``, or ``vlprompt-bert-tiny`` for the medical sets) on toy data set ``dataset``,
    written under ``data_root`` if missing; ``seed`` picks the few shots and the initialisation."""
    root = ensure_toy_dataset(dataset, data_root)
    clip = WORLD_CLIP_CONFIGS[world_of_dataset(dataset)]
    return ["--config", str(configs / "learners" / f"{learner}.yaml"), "--config", str(configs / "clip" / f"{clip}.yaml"),
            "--config", str(configs / "data" / "toy" / f"{dataset}.yaml"), "--data.root", str(root),
            "--seed_everything", str(seed), "--data.seed", str(seed)]


def zero_shot_accuracy(clip, root: Path, name: str) -> float:
    """Zero-shot accuracy (percent) of ``clip`` on the test split of the toy data set at ``root``."""
    spec = toy_dataset(name)
    data = ImageSplitDataModule(root, split_file=f"split_zhou_{name}.json", shots=-1, templates=[spec.template],
                                eval_batch_size=256, num_workers=0)
    learner = build_learner("zeroshot", clip=clip, classnames=data.classnames, templates=[spec.template])
    return evaluate_accuracy(learner, data)


def check_set_accuracies(clip, names: Sequence[str] = WORLD_CHECK_SETS["shapes"]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: zero_shot_accuracy(clip, write_toy_dataset_into(Path(tmp), name), name) for name in names}


def write_toy_dataset_into(root: Path, name: str) -> Path:
    write_toy_dataset(name, root / name, **CHECK_SETS[name])
    return root / name


def zero_shot_accuracies(pretrained: str, data_root: Path, names: Optional[Sequence[str]] = None,
                         arch: str = "vlprompt-tiny") -> dict:
    """``{"datasets": {name: acc}, "check": {name: acc}}`` for ``arch`` with ``pretrained`` weights, on the data
    sets (default: all) and check sets of the world ``arch`` was pretrained on."""
    from vlprompt.toy.pretrain import ARCH_WORLDS

    world = ARCH_WORLDS.get(arch, "shapes")
    clip = load_clip(arch, pretrained=pretrained)
    datasets = {name: zero_shot_accuracy(clip, ensure_toy_dataset(name, data_root), name)
                for name in (names or WORLD_DATASETS[world])}
    return {"datasets": datasets, "check": check_set_accuracies(clip, WORLD_CHECK_SETS[world])}
