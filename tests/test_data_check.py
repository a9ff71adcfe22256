"""`vlprompt data check` (issue 30): a data set's folder, split file and every listed image checked before training,
with what is wrong and how to fix it; `--build-split` builds a missing split as the protocol does; the suite runs the
check before its first run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlprompt.commands import main
from vlprompt.data.check import check_dataset
from vlprompt.data.splits import read_split_file

from conftest import REPO

CONFIGS = REPO / "configs"


def run(args, capsys) -> tuple[int, str, str]:
    try:
        main(["data", "check", *map(str, args), "--no-progress"])
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def toy_config(tmp_path: Path, root: Path) -> Path:
    config = tmp_path / "toy.yaml"
    config.write_text(f"data:\n  root: {root}\n  split_file: split_zhou_ToyShapes.json\n")
    return config


def class_folder_set(root: Path, classes=("banded", "bubbly", "cracked"), per_class: int = 6,
                     image: Path = None) -> Path:
    """A DTD-like layout: ``images/<class>/*.png``, copied from one toy image."""
    for name in classes:
        (root / "images" / name).mkdir(parents=True)
        for index in range(per_class):
            shutil.copy(image, root / "images" / name / f"{index}.png")
    return root


def test_a_good_data_set_shows_its_counts_and_exits_0(shapes, tmp_path, capsys):
    code, out, _ = run(["--config", toy_config(tmp_path, shapes)], capsys)
    assert code == 0, out
    assert "split file split_zhou_ToyShapes.json" in out
    assert "train: 100 images, 25 classes, 4 to 4 per class" in out and "test: 50 images, 25 classes" in out
    assert "base-to-novel: 13 base and 12 novel classes" in out
    assert "images: 200 of 200 listed are present and readable" in out and out.rstrip().endswith("ok")


def test_a_missing_folder_names_the_layout_and_the_option(tmp_path, capsys):
    code, out, _ = run(["--config", CONFIGS / "data" / "DTD.yaml", "--data.root", tmp_path / "nowhere"], capsys)
    assert code == 1
    assert "PROBLEM: data set folder" in out and "DTD lives in a folder named dtd/ holding images/ and " \
        "split_zhou_DescribableTextures.json" in out and "point data.root at it" in out


def test_a_missing_image_folder_and_a_missing_split_say_how_to_fix_them(shapes, tmp_path, capsys):
    code, out, _ = run(["--config", CONFIGS / "data" / "DTD.yaml", "--data.root", tmp_path], capsys)
    assert code == 1
    assert "image folder" in out and "is missing" in out and "set data.image_dir" in out
    assert "split file split_zhou_DescribableTextures.json is missing" in out and "--build-split" in out


def test_another_data_sets_split_file_is_named_as_such(shapes, tmp_path, capsys):
    root = class_folder_set(tmp_path / "dtd", image=next(shapes.rglob("*.png")))
    code, out, _ = run(["--config", CONFIGS / "data" / "DTD.yaml", "--data.root", root, "--data.split_file",
                        "split_zhou_OxfordPets.json"], capsys)
    assert code == 1 and "split_zhou_OxfordPets.json is OxfordPets's split file, not DTD's; use " \
        "split_zhou_DescribableTextures.json" in out
    # Under the right name, but listing another data set's folders: found by what it lists.
    shutil.copy(shapes / "split_zhou_ToyShapes.json", root / "split_zhou_DescribableTextures.json")
    code, out, _ = run(["--config", CONFIGS / "data" / "DTD.yaml", "--data.root", root], capsys)
    assert code == 1 and "the split file is probably another data set's" in out


def test_missing_and_unreadable_images_are_counted_and_named(shapes, tmp_path, capsys):
    root = tmp_path / "shapes"
    shutil.copytree(shapes, root)
    listed = read_split_file(root / "split_zhou_ToyShapes.json")
    (root / "images" / listed["train"][0].path).unlink()
    (root / "images" / listed["test"][1].path).write_bytes(b"not an image")
    code, out, _ = run(["--config", toy_config(tmp_path, root)], capsys)
    assert code == 1
    assert "1 of 200 images listed in split_zhou_ToyShapes.json are missing" in out and listed["train"][0].path in out
    assert "1 listed images cannot be read" in out and listed["test"][1].path in out
    assert "images: 198 of 200 listed are present and readable" in out


def test_build_split_builds_the_protocols_split_under_its_own_name_and_never_replaces_one(shapes, tmp_path, capsys):
    root = class_folder_set(tmp_path / "dtd", per_class=10, image=next(shapes.rglob("*.png")))
    args = ["--config", CONFIGS / "data" / "DTD.yaml", "--data.root", root, "--build-split"]
    code, out, _ = run(args, capsys)
    assert code == 0, out
    built = root / "split_vlprompt_built_DescribableTextures.json"
    assert "built split_vlprompt_built_DescribableTextures.json (train 15, val 6, test 9 images)" in out
    assert "not split_zhou_DescribableTextures.json, the published one" in out
    split = read_split_file(built)
    assert {item.classname for item in split["train"]} == {"banded", "bubbly", "cracked"}
    assert [len([i for i in split["train"] if i.label == label]) for label in range(3)] == [5, 5, 5]  # 50/20/30
    before = built.read_bytes()
    code, out, _ = run(args, capsys)
    assert code == 0 and "exists and is kept (never replaced)" in out and built.read_bytes() == before


def test_build_split_for_a_folder_of_ones_own(shapes, tmp_path, capsys):
    root = class_folder_set(tmp_path / "mine", classes=("cats", "dogs"), per_class=5, image=next(shapes.rglob("*.png")))
    config = tmp_path / "mine.yaml"
    config.write_text(f"data:\n  root: {root}\n")
    code, out, _ = run(["--config", config], capsys)
    assert code == 1 and "split file" in out and "--build-split to build a 50/20/30 split" in out
    code, out, _ = run(["--config", config, "--build-split"], capsys)
    assert code == 0 and (root / "split.json").is_file()
    assert json.loads((root / "split.json").read_text())["train"][0][2] == "cats"


def test_check_dataset_without_opening_images_is_the_layout_only(shapes):
    report = check_dataset({"root": str(shapes), "split_file": "split_zhou_ToyShapes.json"}, images=False)
    assert report.ok and not any(line.startswith("images:") for line in report.lines)
    assert report.counts["train"]["red circle"] == 4


def test_a_missing_config_file_is_a_usage_error(capsys):
    code, _, err = run(["--config", "nope.yaml"], capsys)
    assert code == 2 and "config file 'nope.yaml' does not exist" in err


def test_suite_checks_every_data_set_before_its_first_run(shapes, tmp_path, capsys):
    good = toy_config(tmp_path, shapes)
    broken = tmp_path / "broken.yaml"
    broken.write_text(f"data:\n  root: {tmp_path / 'missing'}\n")
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as stopped:
        main(["suite", "base2novel", "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
              CONFIGS / "clip" / "tiny-random.yaml", "--data", good, broken, "--seeds", "1", "--runs", runs])
    captured = capsys.readouterr()
    assert stopped.value.code == 2
    assert f"[suite] data set {shapes.name}: ok" in captured.out
    assert "data set missing" in captured.err and "vlprompt data check --config" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not list(runs.rglob("*.json"))  # nothing ran
