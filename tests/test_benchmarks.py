"""Every standard benchmark on a miniature fake tree in its real layout: split building, class names, templates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vlprompt.data import ImageSplitDataModule, read_split_file
from vlprompt.data.benchmarks import (BENCHMARKS, BIOMEDICAL_TARGETS, CROSS_DATASET_TARGETS,
                                      DOMAIN_GENERALIZATION_TARGETS, build_split_file)
from vlprompt.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def image(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, 80, 160)).save(path, format="PNG")  # PIL reads by content, not suffix


def lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{row}\n" for row in rows))


def folders(root: Path, names, per_class: int = 10) -> None:
    for name in names:
        for i in range(per_class):
            image(root / name / f"img_{i:03d}.jpg", i)


IMAGENET_NAMES = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
                  ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark")]


def imagenet_classnames(root: Path) -> None:
    lines(root / "classnames.txt", [f"{wnid} {name}" for wnid, name in IMAGENET_NAMES])


def fake_imagenet(root):
    imagenet_classnames(root)
    wnids = [w for w, _ in IMAGENET_NAMES[:3]]
    folders(root / "images" / "train", wnids, 6)
    folders(root / "images" / "val", wnids, 2)
    return ["tench", "goldfish", "great white shark"], {"train": 18, "val": 6, "test": 6}


def fake_caltech101(root):
    folders(root / "101_ObjectCategories", ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "airplanes", "ant"])
    return ["face", "leopard", "airplane", "ant"], {"train": 20, "val": 8, "test": 12}


def fake_oxford_pets(root):
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("great_pyrenees", 3)]
    trainval = [f"{b}_{i} {label} 1 1" for b, label in breeds for i in range(1, 11)]
    test = [f"{b}_{i} {label} 1 1" for b, label in breeds for i in range(11, 14)]
    lines(root / "annotations" / "trainval.txt", trainval)
    lines(root / "annotations" / "test.txt", test)
    for row in trainval + test:
        image(root / "images" / f"{row.split()[0]}.jpg")
    return ["abyssinian", "american bulldog", "great pyrenees"], {"train": 24, "val": 6, "test": 9}


def _mat_records(**columns):
    n = len(next(iter(columns.values())))
    records = np.empty((1, n), dtype=[(key, "O") for key in columns])
    for key, values in columns.items():
        for i, value in enumerate(values):
            records[0, i][key] = np.array([[value]]) if isinstance(value, int) else np.array([value])
    return records


def fake_stanford_cars(root):
    from scipy.io import savemat

    models = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    names = np.empty((1, len(models)), dtype=object)
    for i, model in enumerate(models):
        names[0, i] = np.array([model])
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    train = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(10)]
    test = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(4)]
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _mat_records(fname=[f for f, _ in train],
                                                                                   **{"class": [c for _, c in train]})})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _mat_records(fname=[f for f, _ in test],
                                                                                  **{"class": [c for _, c in test]})})
    for fname, _ in train:
        image(root / "cars_train" / fname)
    for fname, _ in test:
        image(root / "cars_test" / fname)
    return ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"], {"train": 8, "val": 2, "test": 4}


def fake_flowers(root):
    from scipy.io import savemat

    labels = [1 + i % 3 for i in range(30)]
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    (root / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid",
                                                       "3": "canterbury bells"}))
    for i in range(30):
        image(root / "jpg" / f"image_{i + 1:05d}.jpg", i)
    return ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"], {"train": 15, "val": 6, "test": 9}


def fake_food101(root):
    folders(root / "images", ["apple_pie", "baby_back_ribs", "waffles"])
    return ["apple pie", "baby back ribs", "waffles"], {"train": 15, "val": 6, "test": 9}


def fake_fgvc_aircraft(root):
    variants = ["707-320", "A300B4", "Cessna 172"]
    lines(root / "variants.txt", variants)
    counts = {"train": 4, "val": 2, "test": 3}
    serial = 1000000
    for part, count in counts.items():
        rows = []
        for variant in variants:
            for _ in range(count):
                serial += 1
                rows.append(f"{serial} {variant}")
                image(root / "images" / f"{serial}.jpg")
        lines(root / f"images_variant_{part}.txt", rows)
    return variants, {part: n * 3 for part, n in counts.items()}


def fake_sun397(root):
    classes = ["/a/abbey", "/b/bedroom", "/c/church/outdoor"]
    lines(root / "ClassName.txt", classes)
    train = [f"{c}/sun_{i}.jpg" for c in classes for i in range(10)]
    test = [f"{c}/sun_{i}.jpg" for c in classes for i in range(10, 13)]
    lines(root / "Training_01.txt", train)
    lines(root / "Testing_01.txt", test)
    for row in train + test:
        image(root / "SUN397" / row[1:])
    return ["abbey", "bedroom", "outdoor church"], {"train": 24, "val": 6, "test": 9}


def fake_dtd(root):
    folders(root / "images", ["banded", "braided", "bubbly"])
    return ["banded", "braided", "bubbly"], {"train": 15, "val": 6, "test": 9}


def fake_eurosat(root):
    folders(root / "2750", ["AnnualCrop", "SeaLake", "River"])
    return ["Annual Crop Land", "River", "Sea or Lake"], {"train": 15, "val": 6, "test": 9}


def fake_ucf101(root):
    actions = ["ApplyEyeMakeup", "YoYo"]
    lines(root / "ucfTrainTestlist" / "classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(actions)])
    train = [f"{a}/v_{a}_g{g:02d}_c01.avi" for a in actions for g in range(8, 18)]
    test = [f"{a}/v_{a}_g{g:02d}_c01.avi" for a in actions for g in range(1, 4)]
    lines(root / "ucfTrainTestlist" / "trainlist01.txt", [f"{row} {1 + actions.index(row.split('/')[0])}" for row in train])
    lines(root / "ucfTrainTestlist" / "testlist01.txt", test)
    spaced = {"ApplyEyeMakeup": "Apply_Eye_Makeup", "YoYo": "Yo_Yo"}
    for row in train + test:
        action, video = row.split("/")
        image(root / "UCF-101-midframes" / spaced[action] / video.replace(".avi", ".jpg"))
    return ["Apply Eye Makeup", "Yo Yo"], {"train": 16, "val": 4, "test": 6}


def fake_imagenet_v2(root):
    imagenet_classnames(root)
    for label in range(len(IMAGENET_NAMES)):
        folders(root / "imagenetv2-matched-frequency-format-val", [str(label)], 2)
    return [name for _, name in IMAGENET_NAMES], {"train": 0, "val": 0, "test": 10}


def fake_imagenet_sketch(root):
    imagenet_classnames(root)
    folders(root / "images", [w for w, _ in IMAGENET_NAMES], 2)
    return [name for _, name in IMAGENET_NAMES], {"train": 0, "val": 0, "test": 10}


def fake_subset(image_dir):
    def make(root):
        imagenet_classnames(root)  # the full list; the variant's folders pick its subset
        subset = [IMAGENET_NAMES[1], IMAGENET_NAMES[3]]
        folders(root / image_dir, [w for w, _ in subset], 3)
        (root / image_dir / "README.txt").write_text("not a class")
        return [name for _, name in subset], {"train": 0, "val": 0, "test": 6}
    return make


def fake_biomedical(image_dir: str, folders_: list[str]):
    """A biomedical benchmark without its published split file: class folders, split 50/20/30 per class."""
    def make(root):
        folders(root / image_dir, folders_)
        n = len(folders_)
        return [name.replace("_", " ") for name in folders_], {"train": 5 * n, "val": 2 * n, "test": 3 * n}
    return make


BIOMEDICAL_TREES = {
    "BTMRI": fake_biomedical("BTMRI", ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]),
    "BUSI": fake_biomedical("BUSI", ["benign_tumor", "malignant_tumor", "normal_breast"]),
    "CHMNIST": fake_biomedical("CHMNIST", ["adipose", "complex", "debris", "empty"]),
    "COVID-QU-Ex": fake_biomedical("COVID", ["covid", "lung_opacity", "normal_lungs", "viral_pneumonia"]),
    "CTKidney": fake_biomedical("CTKidney", ["cyst", "normal", "stone", "tumor"]),
    "DermaMNIST": fake_biomedical("DermaMNIST", ["actinic_keratosis", "melanoma", "nevus"]),
    "KneeXray": fake_biomedical("KneeXray", ["doubtful_arthritis", "minimal_arthritis", "no_arthritis"]),
    "Kvasir": fake_biomedical("Kvasir", ["dyed_lifted_polyps", "esophagitis", "normal_cecum", "polyps"]),
    "LC25000": fake_biomedical("LungColon", ["colon_adenocarcinoma", "colon_benign_tissue", "lung_adenocarcinoma"]),
    "OCTMNIST": fake_biomedical("OCTMNIST", ["choroidal_neovascularization", "diabetic_macular_edema", "drusen"]),
    "RETINA": fake_biomedical("RETINA", ["cataract", "diabetic_retinopathy", "glaucoma", "normal_retina"]),
}

FAKE_TREES = {
    "ImageNet": fake_imagenet, "Caltech101": fake_caltech101, "OxfordPets": fake_oxford_pets,
    "StanfordCars": fake_stanford_cars, "Flowers102": fake_flowers, "Food101": fake_food101,
    "FGVCAircraft": fake_fgvc_aircraft, "SUN397": fake_sun397, "DTD": fake_dtd, "EuroSAT": fake_eurosat,
    "UCF101": fake_ucf101, "ImageNetV2": fake_imagenet_v2, "ImageNetSketch": fake_imagenet_sketch,
    "ImageNetA": fake_subset("imagenet-a"), "ImageNetR": fake_subset("imagenet-r"), **BIOMEDICAL_TREES,
}

TEMPLATES = {  # from the CoOp papers (../shared/paper-defaults.md)
    "OxfordPets": "a photo of a {}, a type of pet.", "Flowers102": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.", "DTD": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.", "Food101": "a photo of {}, a type of food.",
    "UCF101": "a photo of a person doing {}.",
}


def test_every_benchmark_has_a_fake_tree_and_a_config():
    assert set(FAKE_TREES) == set(BENCHMARKS)
    assert (set(CROSS_DATASET_TARGETS) | set(DOMAIN_GENERALIZATION_TARGETS) | {"ImageNet"}
            | set(BIOMEDICAL_TARGETS)) == set(BENCHMARKS)
    for name, benchmark in BENCHMARKS.items():
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["data"]
        assert config["dataset"] == name and Path(config["root"]).name == benchmark.directory


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_split_is_built_once_and_read_with_the_clean_class_names(name, tmp_path):
    benchmark = BENCHMARKS[name]
    root = tmp_path / benchmark.directory
    expected_names, counts = FAKE_TREES[name](root)
    data = ImageSplitDataModule(root, dataset=name, shots=-1, num_workers=0, image_size=16, eval_batch_size=4)
    # A split built here never takes the published file's name (issue 31, point 1); without a published file it
    # is the papers' protocol (official lists) and keeps the name it has.
    split_path = root / benchmark.built_split_file
    assert not (benchmark.published_split and (root / benchmark.split_file).exists())
    assert data.split_built_here == benchmark.published_split and data.split_file == split_path.name
    split = read_split_file(split_path)
    assert {part: len(items) for part, items in split.items()} == counts
    assert data.classnames == expected_names
    assert data.templates == [TEMPLATES.get(name, "a photo of a {}.")]
    data.setup("test")
    images, labels = next(iter(data.test_dataloader()))
    assert images.shape[1:] == (3, 16, 16) and labels.min() >= 0
    # The saved file is what later runs read: the raw lists are no longer needed, and it is never rebuilt.
    before = split_path.read_bytes()
    again = ImageSplitDataModule(root, dataset=name, shots=-1, num_workers=0)
    assert again.classnames == expected_names and split_path.read_bytes() == before
    # Building again (another DDP rank doing it at the same time) keeps the file that is there.
    assert build_split_file(benchmark, root, root / benchmark.image_dir, split_path) is False
    assert split_path.read_bytes() == before


def test_class_folder_split_is_50_20_30_per_class_and_reproducible(tmp_path):
    for copy in ("a", "b"):
        folders(tmp_path / copy / "images", ["banded", "braided"], 20)
        ImageSplitDataModule(tmp_path / copy, dataset="DTD", shots=-1, num_workers=0)
    a, b = (read_split_file(tmp_path / c / "split_vlprompt_built_DescribableTextures.json") for c in "ab")
    assert a == b
    for label in (0, 1):
        assert [sum(i.label == label for i in a[part]) for part in ("train", "val", "test")] == [10, 4, 6]
    assert not set(a["train"]) & set(a["test"])


def test_test_only_sets_refuse_training_and_keep_the_200_class_subset_for_base_novel(tmp_path):
    root = tmp_path / "imagenet-adversarial"
    fake_subset("imagenet-a")(root)
    data = ImageSplitDataModule(root, dataset="ImageNetA", shots=16, num_workers=0)
    with pytest.raises(ConfigError, match="test-only"):
        data.setup("fit")
    base = ImageSplitDataModule(root, dataset="ImageNetA", subsample="base", num_workers=0)
    assert base.classnames == ["goldfish"]


def test_missing_files_name_what_is_missing_and_where_to_read(tmp_path):
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"trainval.txt.*does not exist.*datasets/README.md") as err:
        ImageSplitDataModule(tmp_path / "oxford_pets", dataset="OxfordPets")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown data set 'Pets'"):
        ImageSplitDataModule(tmp_path / "oxford_pets", dataset="Pets")
    root = tmp_path / "dtd"
    folders(root / "images", ["banded"], 2)
    with pytest.raises(ConfigError, match="a 50/20/30 split needs at least 4"):
        ImageSplitDataModule(root, dataset="DTD")
    assert not list(root.glob("split_*.json"))
