"""A Lightning data module for any image folder described by a CoOp-format split file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from vlprompt.data.splits import (PREPARATION_NOTES, Item, classnames_of, few_shot_split, read_split_file,
                                  subsample_classes)
from vlprompt.errors import ConfigError

# open_clip's OPENAI_DATASET_MEAN/STD, used when no model tells otherwise.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageListDataset(Dataset):
    def __init__(self, image_dir: Path, items: Sequence[Item], transform):
        self.image_dir, self.items, self.transform = image_dir, list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        with Image.open(self.image_dir / item.path) as image:
            return self.transform(image.convert("RGB")), item.label


class ImageSplitDataModule(pl.LightningDataModule):
    """Images under ``root/image_dir`` listed by a split file ``root/split_file`` (CoOp's format).

    Few-shot sampling and the base/novel halves follow the CoOp/Dassl protocol exactly
    (:mod:`vlprompt.data.splits`). Image size, mean and std default to what the learner's CLIP expects.

    Args:
        root: dataset directory.
        split_file: split file, relative to ``root``.
        image_dir: directory the split's relative paths start from, relative to ``root``.
        shots: images per class for training (val gets ``min(shots, 4)``); ``-1`` uses all.
        seed: few-shot sampling seed (the run seed).
        subsample: ``all`` classes, or the ``base`` / ``novel`` half.
        templates: the dataset's hand-written prompt templates (``{}`` is the class name).
        batch_size, eval_batch_size, num_workers: data loading.
        augment: random resized crop (scale 0.08-1) and horizontal flip for training, as Dassl does.
        image_size: override the model's input size.
    """

    def __init__(
        self,
        root: str,
        split_file: str = "split.json",
        image_dir: str = "images",
        shots: int = 16,
        seed: int = 1,
        subsample: str = "all",
        templates: Sequence[str] = ("a photo of a {}.",),
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: int = 4,
        augment: bool = True,
        image_size: Optional[int] = None,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"dataset directory {str(self.root)!r} does not exist; see {PREPARATION_NOTES}")
        self.image_dir = self.root / image_dir
        split = read_split_file(self.root / split_file)
        self.split = subsample_classes(few_shot_split(split, shots, seed), subsample)
        self.classnames = classnames_of(item for items in self.split.values() for item in items)
        self.templates = list(templates)
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.augment, self.image_size = augment, image_size
        self.datasets: dict[str, ImageListDataset] = {}

    def _preprocess(self) -> tuple[int, Sequence[float], Sequence[float]]:
        model = self.trainer.lightning_module if self.trainer is not None else None
        cfg = model.clip.preprocess_cfg if model is not None and hasattr(model, "clip") else {}
        size = self.image_size or cfg.get("size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
        return size, cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD)

    def transform(self, train: bool):
        size, mean, std = self._preprocess()
        bicubic = T.InterpolationMode.BICUBIC
        if train and self.augment:
            head = [T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=bicubic), T.RandomHorizontalFlip()]
        else:
            head = [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
        return T.Compose(head + [T.ToTensor(), T.Normalize(mean, std)])

    def setup(self, stage: Optional[str] = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in needed.get(stage, ("train", "val", "test")):
            items = self.split[name]
            if not self.image_dir.is_dir():
                raise ConfigError(f"image directory {str(self.image_dir)!r} does not exist; see {PREPARATION_NOTES}")
            missing = [i.path for i in items if not (self.image_dir / i.path).is_file()]
            if missing:
                raise ConfigError(f"{len(missing)} {name} images listed in the split file are missing under "
                                  f"{str(self.image_dir)!r} (first: {missing[0]}); see {PREPARATION_NOTES}")
            self.datasets[name] = ImageListDataset(self.image_dir, items, self.transform(train=name == "train"))

    def _loader(self, name: str, train: bool) -> DataLoader:
        dataset = self.datasets[name]
        batch_size = self.batch_size if train else self.eval_batch_size
        # Dassl drops the last partial training batch only when there is at least one full batch.
        return DataLoader(dataset, batch_size=batch_size, shuffle=train,
                          drop_last=train and len(dataset) >= batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
