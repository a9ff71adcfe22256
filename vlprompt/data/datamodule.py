"""A Lightning data module for any image folder described by a CoOp-format split file."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T

from vlprompt.data.benchmarks import build_split_file, get_benchmark, prompt_templates, split_file_path
from vlprompt.data.descriptions import check_attributes, read_descriptions
from vlprompt.data.images import IMAGE_SUFFIXES, check_images, read_rgb
from vlprompt.data.splits import (PREPARATION_NOTES, Item, cached_few_shot_split, images_per_class, prompt_classnames,
                                  prompt_name, read_split_file, subsample_classes)
from vlprompt.errors import ConfigError, warn

# open_clip's OPENAI_DATASET_MEAN/STD, used when no model tells otherwise.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageListDataset(Dataset):
    def __init__(self, image_dir: Path, items: Sequence[Item], transform, listed_in: str = "the split file"):
        self.image_dir, self.items, self.transform, self.listed_in = image_dir, list(items), transform, listed_in

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        return self.transform(read_rgb(self.image_dir / item.path, self.listed_in)), item.label


class MarkedPadding(Dataset):
    """``dataset`` extended to ``length`` by repeating its first images, each item ``(image, label, real)``
    where ``real`` is False for the repeats, so metrics can leave them out."""

    def __init__(self, dataset: Dataset, length: int):
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        size = len(self.dataset)
        image, label = self.dataset[index % size]
        return image, label, index < size


class CachedImageFeatures(Dataset):
    """``(feature, label)`` pairs from ``views x N x D`` cached features; with several views, each access picks
    one at random (the cached stand-in for a fresh augmentation)."""

    def __init__(self, views: torch.Tensor, labels: torch.Tensor):
        self.views, self.labels = views, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        view = int(torch.randint(len(self.views), ())) if len(self.views) > 1 else 0
        return self.views[view, index], int(self.labels[index])


#: More loader processes than this rarely feed one device faster (each decodes whole images) and cost memory.
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """Loader processes that fit this machine: the cores this process may use, divided among the devices
    training on this node (``LOCAL_WORLD_SIZE``, else the GPUs present), less one for the training process
    itself, between 0 and :data:`MAX_DEFAULT_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    devices = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or max(torch.cuda.device_count(), 1)
    return max(0, min(MAX_DEFAULT_WORKERS, cores // devices - 1))


def _distributed_world_size() -> int:
    available = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if available else 1


#: Dassl's random-resized-crop area range (``INPUT.RRCROP_SCALE``).
CROP_SCALE = (0.08, 1.0)


def image_transform(preprocess_cfg: dict, augment: bool = False, size: Optional[int] = None,
                    crop_scale: Sequence[float] = CROP_SCALE):
    """PIL image -> the tensor a learner takes: the Dassl/CoOp pipeline at the frozen model's input size and
    normalisation (``clip.preprocess_cfg`` or ``learner.preprocess_cfg``: ``size``, ``mean``, ``std``).

    Evaluation: bicubic resize of the short side and centre crop to ``size``. ``augment``: random-resized crop
    (``crop_scale`` of the area: 8-100%, Dassl's) and horizontal flip instead, as the papers train. ``size`` overrides
    the model's.
    """
    size = size or preprocess_cfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean, std = preprocess_cfg.get("mean", CLIP_MEAN), preprocess_cfg.get("std", CLIP_STD)
    bicubic = T.InterpolationMode.BICUBIC
    if augment:
        head = [T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=bicubic), T.RandomHorizontalFlip()]
    else:
        head = [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
    return T.Compose(head + [T.ToTensor(), T.Normalize(mean, std)])




#: Warnings already given by this process (a suite builds a data module per fit and test of every run).
_WARNED: set = set()


def _warn_once(key: tuple, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warn(message)


def short_classes(train: Sequence[Item], shots: int) -> dict[str, int]:
    """``{class name: training images}`` for the classes with fewer than ``shots`` (all when ``shots`` is -1)."""
    if shots < 1:
        return {}
    return {prompt_name(name): count for name, count in images_per_class(train).items() if count < shots}


class ImageSplitDataModule(pl.LightningDataModule):
    """Images under ``root/image_dir`` listed by a split file ``root/split_file`` (CoOp's format).

    ``dataset`` names a standard benchmark (:data:`vlprompt.data.benchmarks.BENCHMARKS`): its image folder,
    split file and hand template become the defaults. Without the published split file, one is built from the
    data set's own files and saved under a name of its own (``split_vlprompt_built_<Name>.json``); every run that
    uses it says so and records it (:meth:`provenance`). Without ``dataset`` any folder with a split file is read
    (toy data sets included). Classes with fewer training images than ``shots`` train on all they have (Dassl's
    behaviour); the run says so and records their counts.

    Few-shot sampling and the base/novel halves follow the CoOp/Dassl protocol exactly
    (:mod:`vlprompt.data.splits`); the selected shots are saved per (K, seed) under ``root/split_fewshot``.
    Class names are used as in CoOp, with underscores read as spaces. Image size, mean and std default to what
    the learner's CLIP expects.

    Args:
        root: dataset directory.
        dataset: a standard benchmark's name, or None for a folder with its own split file.
        split_file: split file, relative to ``root`` (default: the benchmark's, else ``split.json``).
        image_dir: directory the split's relative paths start from, relative to ``root`` (default: the
            benchmark's, else ``images``).
        shots: images per class for training (val gets ``min(shots, 4)``); ``-1`` uses all; 0 and other
            negative numbers are refused.
        seed: few-shot sampling seed (the run seed).
        subsample: ``all`` classes, or the ``base`` / ``novel`` half.
        templates: the dataset's hand-written prompt templates, ``{}`` is the class name (default: the
            benchmark's, else ``a photo of a {}.``).
        batch_size, eval_batch_size: data loading.
        num_workers: loader processes; ``None`` (default) fits the machine (:func:`default_num_workers`: the CPU
            cores this process may use, shared among the devices of this node, one kept for the training
            process, at most 8). Workers persist across epochs, and batches go to pinned memory when a GPU is
            present.
        augment: random resized crop (scale 0.08-1) and horizontal flip for training, as Dassl does.
        crop_scale: the random-resized crop's range of the image area kept, ``[low, high]`` (Dassl's ``RRCROP_SCALE``:
            0.08-1 by default; MMRL's recipe 0.5-1).
        image_size: override the model's input size.
        cache_image_features: encode the training images once with the learner's frozen image tower and train
            on those features (for learners whose image side is frozen: zero-shot, CoOp, KgCoOp, CoCoOp).
            Off by default. Without augmentation it is exact (up to fp32 vs mixed-precision encoding); with
            augmentation it changes the recipe: ``cached_views`` random views per image are drawn once and
            each step picks one of them, instead of a fresh crop every epoch.
        cached_views: augmented views per training image kept in the cache (needs ``augment``).
        descriptions: a JSON file ``{"class name": ["sentence", ...]}`` of per-class descriptions, relative to
            ``root`` or absolute; it must describe every class of the data set (``base``/``novel`` take their
            half). Learners that use descriptions receive them with the class names.
        template_groups: the data set's hand templates in groups (lists of templates with one ``{}``), for learners
            with one prompt per group (MoCoOp: one expert per group, initialised from its first template).
        attributes: the data set's attribute words (ATPrompt's, e.g. ``[color, shape]``), handed to the learner for
            plug-ins that place them in the prompt; the 11 data sets' YAMLs hold the ones ATPrompt released.
        unlabeled_dir: a folder of images (searched recursively) that replaces the training split, every image
            labelled -1, for learners that read no labels (CasPL's boosting stage, ``uses_labels = False``);
            class names, validation and test still come from the split file.
    """

    def __init__(
        self,
        root: str,
        dataset: Optional[str] = None,
        split_file: Optional[str] = None,
        image_dir: Optional[str] = None,
        shots: int = 16,
        seed: int = 1,
        subsample: str = "all",
        templates: Optional[Sequence[str]] = None,
        batch_size: int = 32,
        eval_batch_size: int = 100,
        num_workers: Optional[int] = None,
        augment: bool = True,
        crop_scale: Sequence[float] = CROP_SCALE,
        image_size: Optional[int] = None,
        cache_image_features: bool = False,
        cached_views: int = 1,
        descriptions: Optional[str] = None,
        template_groups: Optional[list[list[str]]] = None,
        attributes: Optional[list[str]] = None,
        unlabeled_dir: Optional[str] = None,
    ):
        super().__init__()
        if shots == 0 or shots < -1:
            raise ConfigError(f"data.shots must be a number of images per class (1 or more), or -1 for all of them; "
                              f"got {shots}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"dataset directory {str(self.root)!r} does not exist; see {PREPARATION_NOTES}")
        benchmark = get_benchmark(dataset) if dataset else None
        self.dataset_name, self.seed = dataset or self.root.name, seed
        self.test_only = bool(benchmark and benchmark.test_only)
        self.image_dir = self.root / (image_dir if image_dir is not None else benchmark.image_dir if benchmark
                                      else "images")
        split_path = self._split_path(benchmark, split_file)
        split = read_split_file(split_path)
        self.split = subsample_classes(cached_few_shot_split(split, shots, seed, split_path), subsample)
        self.classnames = prompt_classnames(self.split)
        self.shots = shots
        #: Classes that have fewer training images than ``shots`` asks for, with the number they train on.
        self.short_classes = {} if unlabeled_dir else short_classes(self.split["train"], shots)
        if self.short_classes:
            fewest = min(self.short_classes.items(), key=lambda pair: pair[1])
            _warn_once(("shots", str(split_path), shots, seed, subsample),
                       f"{self.dataset_name}: data.shots {shots}, but {len(self.short_classes)} of {len(self.classnames)} "
                       f"classes have fewer training images (fewest: {fewest[1]}, {fewest[0]!r}) and train on all they "
                       "have; the counts are recorded in the run's metrics")
        self.templates = prompt_templates(benchmark, templates)
        self.class_descriptions = read_descriptions(self.root, descriptions, self.classnames) if descriptions else None
        self.template_groups = [list(group) for group in template_groups] if template_groups else None
        self.attributes = check_attributes(attributes, "data.attributes")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers must be 0 or more (or null to fit the machine), got {num_workers}")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.augment, self.image_size, self.subsample = augment, image_size, subsample
        crop_scale = tuple(crop_scale)
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1 (the share of the image "
                              f"area a random crop keeps), got {list(crop_scale)}")
        self.crop_scale = crop_scale
        if cached_views < 1 or (cached_views > 1 and not augment):
            raise ConfigError(f"cached_views must be 1, or more with augment: true (got {cached_views} with augment "
                              f"{augment}); without augmentation every view is the same")
        self.cache_image_features, self.cached_views = cache_image_features, cached_views
        self.unlabeled_dir = Path(unlabeled_dir).expanduser() if unlabeled_dir else None
        if self.unlabeled_dir is not None:
            if not self.unlabeled_dir.is_dir():
                raise ConfigError(f"data.unlabeled_dir {str(self.unlabeled_dir)!r} is not a directory; pass a folder "
                                  "of images")
            relpaths = sorted(str(p.relative_to(self.unlabeled_dir)) for p in self.unlabeled_dir.rglob("*")
                              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not relpaths:
                raise ConfigError(f"data.unlabeled_dir {str(self.unlabeled_dir)!r} holds no images "
                                  f"({', '.join(IMAGE_SUFFIXES)})")
            # Training images without labels (-1): for learners that read none (CasPL's boosting stage).
            self.split = {**self.split, "train": [Item(path, -1, "") for path in relpaths]}
        self.datasets: dict[str, ImageListDataset] = {}
        self._checked: set[str] = set()

    def _split_path(self, benchmark, split_file: Optional[str]) -> Path:
        """The split file to read: ``split_file`` when given; for a benchmark its published file, else one built
        here under a name of its own (said at every run that uses it, recorded in :meth:`provenance`)."""
        path = split_file_path(self.root, benchmark, split_file)
        if benchmark is not None and not split_file and not path.exists():
            build_split_file(benchmark, self.root, self.image_dir, path)
        self.split_built_here = bool(benchmark and benchmark.built_here(path.name))
        if self.split_built_here:
            _warn_once(("split", str(path), self.seed),
                       f"{self.dataset_name}: no published split file {benchmark.split_file} in {str(self.root)!r}; "
                       f"using {path.name}, built here: numbers are not comparable with published ones (put the "
                       "published file there for those)")
        self.split_file = path.name
        return path

    def provenance(self) -> dict:
        """What a run's metrics record of its data: the split file, whether it was built here (not the published
        one), the shots asked for, and the classes that had fewer training images, with the number they had."""
        return {"split_file": self.split_file, "split_built_here": self.split_built_here, "shots_asked": self.shots,
                "short_classes": dict(self.short_classes)}

    def transform(self, train: bool):
        model = self.trainer.lightning_module if self.trainer is not None else None
        return image_transform(getattr(model, "preprocess_cfg", None) or {}, augment=train and self.augment,
                               size=self.image_size, crop_scale=self.crop_scale)

    def setup(self, stage: Optional[str] = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in needed.get(stage, ("train", "val", "test")):
            items = self.split[name]
            if name == "train" and self.test_only:
                raise ConfigError(f"{self.dataset_name} is a test-only data set (no train images); train on another "
                                  f"data set and test on this one")
            if not self.image_dir.is_dir():
                raise ConfigError(f"image directory {str(self.image_dir)!r} does not exist; see {PREPARATION_NOTES}")
            unlabeled = name == "train" and self.unlabeled_dir is not None
            image_dir = self.unlabeled_dir if unlabeled else self.image_dir
            listed_in = f"the data.unlabeled_dir folder {str(self.unlabeled_dir)!r}" if unlabeled else "the split file"
            if name not in self._checked:  # Lightning calls setup again for every test: check each list once
                check_images(image_dir, [item.path for item in items], name, listed_in)
                self._checked.add(name)
            self.datasets[name] = ImageListDataset(image_dir, items, self.transform(train=name == "train"), listed_in)

    def _loader(self, name: str, train: bool) -> DataLoader:
        dataset = self.datasets[name]
        batch_size = self.batch_size if train else self.eval_batch_size
        sampler = None
        world_size = _distributed_world_size()
        if not train and world_size > 1:
            # Lightning's DistributedSampler would pad with repeated images, counting them twice; pad to equal
            # shards ourselves (equal shards keep DDP's collectives in step) and mark the padding.
            dataset = MarkedPadding(dataset, math.ceil(len(dataset) / world_size) * world_size)
            sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
        # Dassl drops the last partial training batch only when there is at least one full batch.
        return DataLoader(dataset, batch_size=batch_size, shuffle=train if sampler is None else None, sampler=sampler,
                          drop_last=train and len(dataset) >= batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        if self.cache_image_features:
            return self._cached_feature_loader()
        return self._loader("train", train=True)

    def _cached_feature_loader(self) -> DataLoader:
        # Called by the fit loop after the model is on its device, so the encoding runs there.
        learner = self.trainer.lightning_module if self.trainer is not None else None
        if learner is None or not hasattr(learner, "frozen_image_features"):
            raise ConfigError("data.cache_image_features needs a prompt learner being fitted")
        # The learner's own answer, derived from what it is built of: a plug-in's vision tokens change a CoOp's.
        if not learner.image_features_are_frozen:
            raise ConfigError(f"{learner.registry_name} changes the image features (visual prompts, a plug-in's vision "
                              "tokens or an image path of its own), so they cannot be cached; set "
                              "data.cache_image_features false")
        dataset = self.datasets["train"]
        views = []
        with torch.no_grad():
            for _ in range(self.cached_views):
                # Its own generator: encoding must not draw from the global RNG that shuffles the training batches.
                loader = DataLoader(dataset, batch_size=self.eval_batch_size, num_workers=self.num_workers,
                                    generator=torch.Generator().manual_seed(len(views)))
                views.append(torch.cat([learner.frozen_image_features(images.to(learner.device)).float()
                                        for images, _ in loader]).cpu())
        labels = torch.tensor([item.label for item in dataset.items])
        cached = CachedImageFeatures(torch.stack(views), labels)
        return DataLoader(cached, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(cached) >= self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
