"""The standard benchmarks of the CoOp protocol: where their files live, how classes are named, their templates.

Each benchmark is data (:class:`Benchmark`): the folder CoOp's ``DATASETS.md`` gives it, the image folder the
split file's relative paths start from, the split file, the hand template, and how to build the split file
from the data set's own files when it is absent. Built split files are written once and then read like any
other, so a run never depends on how they were made.

Where CoOp (or BiomedCoOp) publishes a split file (``split_zhou_<Name>.json``), use it: it fixes the
train/val/test images and so makes numbers comparable with published tables. Without it a split is built here,
following the reference recipe (50/20/30 per class from class folders; 80/20 train/val from an official train
list), but drawn with ``random.Random(SPLIT_SEED)`` over sorted file listings instead of the global RNG over
``os.listdir`` order: reproducible on every file system, yet not the very split that was published. Such a split
is written under its own name (``split_vlprompt_built_<Name>.json``, never the published one's), every run that
uses it says so, and its metrics and reports are marked. Data sets whose papers publish no split file (ImageNet,
FGVC-Aircraft, the ImageNet variants) are read from their official lists into ``split_vlprompt_<Name>.json``,
which is the papers' protocol itself.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from vlprompt.data.splits import PREPARATION_NOTES, Item, group_by_label, write_split_file
from vlprompt.errors import ConfigError

SPLIT_SEED = 1
#: The template of a data set without one of its own.
PLAIN_TEMPLATE = "a photo of a {}."
Split = dict  # {"train" | "val" | "test": list[Item]}


@dataclass(frozen=True)
class Benchmark:
    """How one standard data set is laid out and read.

    ``build(dataset_dir, image_dir)`` makes the split from the data set's own files when the split file is
    absent; ``test_only`` sets (ImageNet variants) have an empty train and val list.
    """

    name: str
    directory: str
    image_dir: str
    split_file: str
    template: str
    build: Callable[[Path, Path], Split] = field(repr=False)
    test_only: bool = False
    #: Whether its paper evaluates it base-to-novel (BUSI, with 3 classes, is few-shot only in BiomedCoOp).
    base_to_novel: bool = True

    @property
    def published_split(self) -> bool:
        """Whether ``split_file`` is a file a paper publishes (a split built here would differ from it)."""
        return not self.split_file.startswith("split_vlprompt_")

    @property
    def built_split_file(self) -> str:
        """Where a split built here goes: the published file's name when none is published, else a name of its own
        (``split_vlprompt_built_<Name>.json``), so that it is never taken for the published one."""
        if not self.published_split:
            return self.split_file
        return "split_vlprompt_built_" + self.split_file.removeprefix("split_").removeprefix("zhou_")

    def built_here(self, split_name: str) -> bool:
        """Whether the split file called ``split_name`` is one built here in place of the published one."""
        return self.published_split and split_name == self.built_split_file


# -- reading the data sets' own files --------------------------------------------------------------------------
def _listdir(path: Path) -> list[str]:
    """Visible entries of ``path``, sorted (the reference keeps ``os.listdir`` order, which varies)."""
    if not path.is_dir():
        raise ConfigError(f"directory {str(path)!r} does not exist; see {PREPARATION_NOTES}")
    return sorted(entry.name for entry in path.iterdir() if not entry.name.startswith("."))


def _subfolders(path: Path, ignored: Sequence[str] = ()) -> list[str]:
    """Sorted visible sub-directories of ``path`` (class folders), except ``ignored``."""
    return [name for name in _listdir(path) if name not in ignored and (path / name).is_dir()]


def _raw_file(path: Path) -> Path:
    """``path``, one of the data set's own files that a missing split file is built from."""
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist and no split file was found; see {PREPARATION_NOTES}")
    return path


def _lines(path: Path) -> list[str]:
    text = _raw_file(path).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _loadmat(path: Path):
    from scipy.io import loadmat  # only needed to build StanfordCars' and Flowers102's split files

    return loadmat(str(_raw_file(path)))


def _split_per_class(groups: Mapping[int, Sequence[Item]], rng: random.Random, p_train=0.5, p_val=0.2) -> Split:
    """Dassl's ``read_and_split_data``: shuffle each class, then 50% train, 20% val, the rest test."""
    split: Split = {"train": [], "val": [], "test": []}
    for items in groups.values():
        items = list(items)
        rng.shuffle(items)
        n_train, n_val = round(len(items) * p_train), round(len(items) * p_val)
        if min(n_train, n_val, len(items) - n_train - n_val) <= 0:
            raise ConfigError(f"class {items[0].classname!r} has only {len(items)} images; a 50/20/30 split needs "
                              f"at least 4 per class")
        split["train"] += items[:n_train]
        split["val"] += items[n_train:n_train + n_val]
        split["test"] += items[n_train + n_val:]
    return split


def _split_train_val(trainval: Sequence[Item], rng: random.Random, p_val=0.2) -> tuple[list[Item], list[Item]]:
    """Dassl's ``split_trainval``: per label in order of first appearance, a shuffled 20% goes to val."""
    train, val = [], []
    for items in group_by_label(trainval).values():
        n_val = round(len(items) * p_val)
        if n_val <= 0:
            raise ConfigError(f"class {items[0].classname!r} has only {len(items)} training images; an 80/20 "
                              f"train/val split needs at least 3")
        order = list(range(len(items)))
        rng.shuffle(order)
        for rank, index in enumerate(order):
            (val if rank < n_val else train).append(items[index])
    return train, val


def class_folders(ignored: Sequence[str] = (), renames: Mapping[str, str] = {}) -> Callable[[Path, Path], Split]:
    """One folder per class under the image directory, split 50/20/30 per class; folder names become class
    names (``renames`` first), labels follow the sorted folder names."""

    def build(dataset_dir: Path, image_dir: Path) -> Split:
        rng = random.Random(SPLIT_SEED)
        folders = _subfolders(image_dir, ignored)
        if not folders:
            raise ConfigError(f"{str(image_dir)!r} holds no class folders and no split file was found; see "
                              f"{PREPARATION_NOTES}")
        groups = {label: [Item(f"{c}/{f}", label, renames.get(c, c)) for f in _listdir(image_dir / c)]
                  for label, c in enumerate(folders)}
        empty = [folders[label] for label, items in groups.items() if not items]
        if empty:
            raise ConfigError(f"class folder {str(image_dir / empty[0])!r} is empty"
                              f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}, and no split file was "
                              "found to build from; put that class's images in it, or remove the folder")
        return _split_per_class(groups, rng)

    return build


def _oxford_pets(dataset_dir: Path, image_dir: Path) -> Split:
    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / "annotations" / name):
            image, label = line.split()[:2]
            breed = "_".join(image.split("_")[:-1]).lower()  # "Bengal_12" -> "bengal"
            items.append(Item(f"{image}.jpg", int(label) - 1, breed))
        return items

    rng = random.Random(SPLIT_SEED)
    train, val = _split_train_val(read("trainval.txt"), rng)
    return {"train": train, "val": val, "test": read("test.txt")}


def _stanford_cars(dataset_dir: Path, image_dir: Path) -> Split:
    names = [str(entry[0]) for entry in _loadmat(dataset_dir / "devkit" / "cars_meta.mat")["class_names"][0]]

    def read(folder: str, annotations: Path) -> list[Item]:
        items = []
        for entry in _loadmat(annotations)["annotations"][0]:
            label = int(entry["class"][0, 0]) - 1
            *model, year = names[label].split(" ")
            items.append(Item(f"{folder}/{entry['fname'][0]}", label, " ".join([year, *model])))  # year first
        return items

    rng = random.Random(SPLIT_SEED)
    train, val = _split_train_val(read("cars_train", dataset_dir / "devkit" / "cars_train_annos.mat"), rng)
    return {"train": train, "val": val, "test": read("cars_test", dataset_dir / "cars_test_annos_withlabels.mat")}


def _oxford_flowers(dataset_dir: Path, image_dir: Path) -> Split:
    labels = _loadmat(dataset_dir / "imagelabels.mat")["labels"][0]
    names = json.loads(_raw_file(dataset_dir / "cat_to_name.json").read_text())
    items = [Item(f"image_{index + 1:05d}.jpg", int(label) - 1, names[str(int(label))])
             for index, label in enumerate(labels)]
    return _split_per_class(group_by_label(items), random.Random(SPLIT_SEED))


def _sun397(dataset_dir: Path, image_dir: Path) -> Split:
    folders = [line[1:] for line in _lines(dataset_dir / "ClassName.txt")]  # "/a/abbey" -> "a/abbey"
    label_of = {folder: label for label, folder in enumerate(folders)}

    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / name):
            path = line[1:]
            folder = path.rsplit("/", 1)[0]
            words = folder.split("/")[1:][::-1]  # drop the letter; "indoor"/"outdoor" first
            items.append(Item(path, label_of[folder], " ".join(words)))
        return items

    rng = random.Random(SPLIT_SEED)
    train, val = _split_train_val(read("Training_01.txt"), rng)
    return {"train": train, "val": val, "test": read("Testing_01.txt")}


def _ucf101(dataset_dir: Path, image_dir: Path) -> Split:
    lists = dataset_dir / "ucfTrainTestlist"
    label_of = {}
    for line in _lines(lists / "classInd.txt"):
        label, action = line.split()
        label_of[action] = int(label) - 1

    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(lists / name):
            action, video = line.split()[0].split("/")
            words = "_".join(re.findall("[A-Z][^A-Z]*", action))  # ApplyEyeMakeup -> Apply_Eye_Makeup
            items.append(Item(f"{words}/{video.replace('.avi', '.jpg')}", label_of[action], words))
        return items

    rng = random.Random(SPLIT_SEED)
    train, val = _split_train_val(read("trainlist01.txt"), rng)
    return {"train": train, "val": val, "test": read("testlist01.txt")}


def _fgvc_aircraft(dataset_dir: Path, image_dir: Path) -> Split:
    """The official variant lists (no randomness: CoOp ships no split file for it either)."""
    label_of = {name: label for label, name in enumerate(_lines(dataset_dir / "variants.txt"))}

    def read(part: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / f"images_variant_{part}.txt"):
            image, variant = line.split(" ", 1)
            items.append(Item(f"{image}.jpg", label_of[variant], variant))
        return items

    return {part: read(part) for part in ("train", "val", "test")}


def read_imagenet_classnames(path: Path) -> dict[str, str]:
    """``classnames.txt``: ``<wnid> <class name>`` per line, in label order."""
    names = {}
    for line in _lines(path):
        wnid, _, name = line.partition(" ")
        names[wnid] = name
    return names


def _image_folders(root: Path, folders: Sequence[str], names: Mapping[str, str], prefix: str = "") -> list[Item]:
    missing = [f for f in folders if f not in names]
    if missing:
        raise ConfigError(f"folder {missing[0]!r} under {str(root)!r} is not in classnames.txt; see {PREPARATION_NOTES}")
    return [Item(f"{prefix}{folder}/{image}", label, names[folder])
            for label, folder in enumerate(folders) for image in _listdir(root / folder)]


def _imagenet(dataset_dir: Path, image_dir: Path) -> Split:
    """Train from ``images/train``, test from ``images/val`` (the standard practice); val is the test set."""
    names = read_imagenet_classnames(dataset_dir / "classnames.txt")
    parts = {}
    for part in ("train", "val"):
        parts[part] = _image_folders(image_dir / part, _subfolders(image_dir / part), names, prefix=f"{part}/")
    return {"train": parts["train"], "val": parts["val"], "test": parts["val"]}


def imagenet_variant(numbered_folders: bool = False, ignored: Sequence[str] = ()) -> Callable[[Path, Path], Split]:
    """A test-only ImageNet variant: class folders named by wnid (sorted; A and R have 200 of them, so their
    labels cover that subset) or by label number (ImageNet-V2)."""

    def build(dataset_dir: Path, image_dir: Path) -> Split:
        names = read_imagenet_classnames(dataset_dir / "classnames.txt")
        if numbered_folders:
            wnids = list(names)
            items = [Item(f"{label}/{image}", label, names[wnids[label]])
                     for label in range(len(wnids)) for image in _listdir(image_dir / str(label))]
        else:
            items = _image_folders(image_dir, _subfolders(image_dir, ignored), names)
        return {"train": [], "val": [], "test": items}

    return build


CALTECH101_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH101_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}

#: Every standard benchmark by name. ``directory`` is the folder under your data root (CoOp's DATASETS.md).
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("ImageNet", "imagenet", "images", "split_vlprompt_ImageNet.json", "a photo of a {}.", _imagenet),
    Benchmark("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}.",
              class_folders(CALTECH101_IGNORED, CALTECH101_RENAMES)),
    Benchmark("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
              "a photo of a {}, a type of pet.", _oxford_pets),
    Benchmark("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}.", _stanford_cars),
    Benchmark("Flowers102", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
              "a photo of a {}, a type of flower.", _oxford_flowers),
    Benchmark("Food101", "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food.",
              class_folders()),
    Benchmark("FGVCAircraft", "fgvc_aircraft", "images", "split_vlprompt_FGVCAircraft.json",
              "a photo of a {}, a type of aircraft.", _fgvc_aircraft),
    Benchmark("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}.", _sun397),
    Benchmark("DTD", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture.", class_folders()),
    Benchmark("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}.",
              class_folders(renames=EUROSAT_NAMES)),
    Benchmark("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}.",
              _ucf101),
    Benchmark("ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "split_vlprompt_ImageNetV2.json",
              "a photo of a {}.", imagenet_variant(numbered_folders=True), test_only=True),
    Benchmark("ImageNetSketch", "imagenet-sketch", "images", "split_vlprompt_ImageNetSketch.json", "a photo of a {}.",
              imagenet_variant(), test_only=True),
    Benchmark("ImageNetA", "imagenet-adversarial", "imagenet-a", "split_vlprompt_ImageNetA.json", "a photo of a {}.",
              imagenet_variant(ignored=("README.txt",)), test_only=True),
    Benchmark("ImageNetR", "imagenet-rendition", "imagenet-r", "split_vlprompt_ImageNetR.json", "a photo of a {}.",
              imagenet_variant(ignored=("README.txt",)), test_only=True),
)}
#: The eleven biomedical benchmarks of BiomedCoOp (Koleilat et al., CVPR 2025), laid out as its DATASETS.md: a
#: folder per data set holding an image folder of the same name (one sub-folder per class) and
#: ``split_<folder>.json`` (BiomedCoOp publishes these split files; without one, a 50/20/30 split per class is
#: built from the class folders, reproducible but not the published one). Modality in the comment.
BIOMEDICAL = (
    Benchmark("BTMRI", "BTMRI", "BTMRI", "split_BTMRI.json", "a photo of a {}.", class_folders()),  # brain MRI
    Benchmark("BUSI", "BUSI", "BUSI", "split_BUSI.json", "a photo of a {}.", class_folders(),  # breast ultrasound
              base_to_novel=False),
    Benchmark("CHMNIST", "CHMNIST", "CHMNIST", "split_CHMNIST.json", "a photo of a {}.", class_folders()),  # histology
    Benchmark("COVID-QU-Ex", "COVID", "COVID", "split_COVID.json", "a photo of a {}.", class_folders()),  # chest X-ray
    Benchmark("CTKidney", "CTKidney", "CTKidney", "split_CTKidney.json", "a photo of a {}.", class_folders()),  # CT
    Benchmark("DermaMNIST", "DermaMNIST", "DermaMNIST", "split_DermaMNIST.json", "a photo of a {}.",
              class_folders()),  # dermatoscopy
    Benchmark("KneeXray", "KneeXray", "KneeXray", "split_KneeXray.json", "a photo of a {}.", class_folders()),  # X-ray
    Benchmark("Kvasir", "Kvasir", "Kvasir", "split_Kvasir.json", "a photo of a {}.", class_folders()),  # endoscopy
    Benchmark("LC25000", "LungColon", "LungColon", "split_LungColon.json", "a photo of a {}.",
              class_folders()),  # lung and colon histopathology
    Benchmark("OCTMNIST", "OCTMNIST", "OCTMNIST", "split_OCTMNIST.json", "a photo of a {}.", class_folders()),  # OCT
    Benchmark("RETINA", "RETINA", "RETINA", "split_RETINA.json", "a photo of a {}.", class_folders()),  # fundus
)
BENCHMARKS.update({b.name: b for b in BIOMEDICAL})
BIOMEDICAL_TARGETS = tuple(b.name for b in BIOMEDICAL)

#: The ten targets of the cross-data-set protocol and the four of domain generalisation (source: ImageNet).
CROSS_DATASET_TARGETS = ("Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft",
                         "SUN397", "DTD", "EuroSAT", "UCF101")
DOMAIN_GENERALIZATION_TARGETS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown data set {name!r}; choose from {', '.join(BENCHMARKS)}, or leave data.dataset "
                          f"unset to read any folder with its own split file")
    return BENCHMARKS[name]


def prompt_templates(benchmark: Optional[Benchmark], templates: Optional[Sequence[str]] = None) -> list[str]:
    """The hand templates a data set's class prompts use: ``templates`` when given, else the benchmark's own,
    else CLIP's plain ``a photo of a {}.``"""
    return list(templates or ([benchmark.template] if benchmark else [PLAIN_TEMPLATE]))


def split_file_path(root: Path, benchmark: Optional[Benchmark], split_file: Optional[str]) -> Path:
    """The split file a data set is read from: ``split_file`` when given (``split.json`` for a folder of one's own);
    for a benchmark its published file when it is there, else the one built here under a name of its own."""
    if split_file or benchmark is None:
        return root / (split_file or "split.json")
    published = root / benchmark.split_file
    return published if published.exists() else root / benchmark.built_split_file


def build_split_file(benchmark: Benchmark, dataset_dir: Path, image_dir: Path, path: Path) -> bool:
    """Build ``benchmark``'s split from its own files and write it to ``path``; an existing file is kept (another
    rank may have built it first: the build is deterministic). True if this call wrote it."""
    return write_split_file(path, benchmark.build(dataset_dir, image_dir))
