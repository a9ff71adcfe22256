"""`vlprompt predict` and `vlprompt export` (issue 30): learned prompts classify a user's images; the learned
classifier goes to plain open_clip as one safetensors file whose predictions equal vlprompt's."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import vlprompt
from vlprompt.commands import main
from vlprompt.data.datamodule import ImageSplitDataModule, image_transform
from vlprompt.data.images import read_rgb
from vlprompt.inference import read_classes

from conftest import REPO, fill_learned, save_fitted, tiny_config

CLASSES = ["red circle", "blue square", "green triangle", "yellow cross"]
#: The image the README's open_clip snippet classifies (a toy image its earlier blocks wrote).
README_IMAGE = '"data/toy/ToyShapes/images/red_circle/test_000.png"'


@pytest.fixture(scope="module")
def toy_clip():
    return vlprompt.load_clip("vlprompt-tiny", pretrained="toy")


def fitted(name: str, clip, path: Path, **options) -> Path:
    torch.manual_seed(0)
    learner = vlprompt.build_learner(name, clip, CLASSES, **options)
    fill_learned(learner)
    return Path(save_fitted(learner, path))


@pytest.fixture(scope="module")
def coop_checkpoint(toy_clip, tmp_path_factory) -> Path:
    return fitted("coop", toy_clip, tmp_path_factory.mktemp("coop") / "last.ckpt")


@pytest.fixture(scope="module")
def images(shapes, tmp_path_factory) -> Path:
    """Six toy images in a folder tree, and one file that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    for index, path in enumerate(sorted(shapes.rglob("*.png"))[:6]):
        target = folder / ("nested" if index % 2 else "") / f"{index}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def run(args, capsys) -> tuple[int, str, str]:
    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as stopped:
        code = stopped.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_predict_writes_top_k_and_probabilities_and_lists_unreadable_images(coop_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    code, printed, err = run(["predict", "--ckpt_path", coop_checkpoint, "--images", images, "--out", out,
                              "--top-k", "3", "--num-workers", "0"], capsys)
    assert code == 0, err
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3", "error"]
    assert len(rows) == 7 and "6 of 7 images classified into 4 classes" in printed
    broken = [row for row in rows if row["path"].endswith("broken.png")]
    assert broken[0]["error"] and not broken[0]["class_1"] and "1 images could not be read" in printed
    # The probabilities are the learner's own softmax over its logits.
    learner = vlprompt.load_learner(coop_checkpoint).eval()
    transform = image_transform(learner.preprocess_cfg, augment=False)
    for row in rows:
        if row["error"]:
            continue
        with torch.no_grad():
            probabilities = learner(transform(read_rgb(row["path"]))[None]).softmax(-1)[0]
        top = probabilities.topk(3)
        assert [row[f"class_{k}"] for k in (1, 2, 3)] == [CLASSES[i] for i in top.indices.tolist()]
        assert [float(row[f"prob_{k}"]) for k in (1, 2, 3)] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_predict_reads_a_csv_of_paths_and_other_classes(coop_checkpoint, images, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "\n".join(str(p.relative_to(images)) for p in sorted(images.rglob("*.png"))[:3]))
    shutil.copytree(images, tmp_path / "copied")
    listing = (tmp_path / "copied" / "list.csv")
    listing.write_text("path\n" + "\n".join(str(p.relative_to(images)) for p in sorted(images.rglob("*.png"))[:3]))
    classes = tmp_path / "classes.txt"
    classes.write_text("purple star\norange heart\n")
    out = tmp_path / "p.csv"
    code, printed, err = run(["predict", "--ckpt_path", coop_checkpoint, "--images", listing, "--classes", classes,
                              "--out", out, "--num-workers", "0"], capsys)
    assert code == 0, err
    rows = read_rows(out)
    assert len(rows) == 3 and {row["class_1"] for row in rows} <= {"purple star", "orange heart"}
    assert "class_3" not in rows[0]  # top-k is at most the class count


def test_predict_takes_a_data_configs_classes(coop_checkpoint, images, shapes, tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n")
    out = tmp_path / "p.csv"
    code, printed, err = run(["predict", "--ckpt_path", coop_checkpoint, "--images", images, "--classes", config,
                              "--out", out, "--num-workers", "0"], capsys)
    assert code == 0, err
    assert "into 25 classes" in printed


def test_a_data_configs_classes_are_the_data_modules(shapes, tmp_path):
    """A data config's classes and templates are those a run on it sees: its ``subsample`` half, named as prompts
    name them, and its own templates."""
    config = tmp_path / "novel.yaml"
    config.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n  subsample: novel\n"
                      "  templates: ['a drawing of a {}.']\n")
    names, templates = read_classes(config)
    data = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", subsample="novel",
                                templates=["a drawing of a {}."])
    assert (names, templates) == (data.classnames, data.templates) == (names, ["a drawing of a {}."])
    assert len(names) == 12 and all("_" not in name for name in names)


@pytest.mark.parametrize("args, message", [
    (["--images", "nowhere"], "--images 'nowhere' does not exist"),
    (["--classes", "nowhere.txt"], "--classes 'nowhere.txt' does not exist"),
    (["--top-k", "0"], "--top-k must be 1 or more"),
])
def test_predict_mistakes_are_one_line_errors(coop_checkpoint, images, tmp_path, capsys, args, message):
    given = args if "--images" in args else ["--images", images, *args]
    code, _, err = run(["predict", "--ckpt_path", coop_checkpoint, "--out", tmp_path / "p.csv", *given], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_predict_never_replaces_an_existing_file(coop_checkpoint, images, tmp_path, capsys):
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    code, _, err = run(["predict", "--ckpt_path", coop_checkpoint, "--images", images, "--out", out], capsys)
    assert code == 2 and "exists and is kept" in err and out.read_text() == "mine\n"


def readme_snippet() -> str:
    """The README's plain open_clip example (the block after the `vlprompt export` one)."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Using learned prompts")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    return block.group(1)


def test_export_gives_plain_open_clip_the_same_predictions_as_vlprompt(coop_checkpoint, images, tmp_path, capsys,
                                                                       monkeypatch):
    exported = tmp_path / "classifier.safetensors"
    code, printed, err = run(["export", "--ckpt_path", coop_checkpoint, "--out", exported], capsys)
    assert code == 0, err
    out = tmp_path / "p.csv"
    assert run(["predict", "--ckpt_path", coop_checkpoint, "--images", images, "--out", out, "--top-k", "4",
                "--num-workers", "0"], capsys)[0] == 0
    expected = {Path(row["path"]).name: {row[f"class_{k}"]: float(row[f"prob_{k}"]) for k in range(1, 5)}
                for row in read_rows(out) if not row["error"]}
    # The README's snippet, as written, with only the file and image names set: open_clip, safetensors and torch.
    monkeypatch.chdir(tmp_path)
    for name, probabilities in expected.items():
        path = next(images.rglob(name))
        namespace = {}
        code = readme_snippet().replace('"classifier.safetensors"', repr(str(exported))).replace(
            README_IMAGE, repr(str(path)))
        exec(compile(code, "README snippet", "exec"), namespace)  # noqa: S102 - the README's own code
        got = dict(zip(namespace["classnames"], namespace["probabilities"][0].tolist()))
        assert got == pytest.approx(probabilities, abs=1e-5), name
    assert "vlprompt" not in readme_snippet().replace("vlprompt export", "")  # plain open_clip, no vlprompt import


def test_zero_shot_exports_its_hand_prompts(toy_clip, tmp_path, capsys):
    checkpoint = fitted("zeroshot", toy_clip, tmp_path / "zs.ckpt")
    code, printed, err = run(["export", "--ckpt_path", checkpoint, "--out", tmp_path / "zs.safetensors"], capsys)
    assert code == 0, err and "zeroshot classifier over 4 classes" in printed
    from safetensors import safe_open

    with safe_open(str(tmp_path / "zs.safetensors"), "pt") as stream:
        features, meta = stream.get_tensor("class_features"), stream.metadata()
    learner = vlprompt.load_learner(checkpoint)
    assert torch.allclose(features, learner.hand_text_features(), atol=1e-6)
    assert json.loads(meta["clip"])["model"] == "vlprompt-tiny" and meta["format"] == "vlprompt-classifier/1"


@pytest.mark.parametrize("name", ["maple", "cocoop"])
def test_learners_whose_scores_depend_on_the_image_are_refused_in_one_line(toy_clip, tmp_path, capsys, name):
    checkpoint = fitted(name, toy_clip, tmp_path / "l.ckpt")
    code, _, err = run(["export", "--ckpt_path", checkpoint, "--out", tmp_path / "x.safetensors"], capsys)
    assert code == 2 and f"{name} cannot be exported as a fixed classifier" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.safetensors").exists()


def test_a_plugin_that_changes_the_logits_is_refused(toy_clip, tmp_path, capsys):
    checkpoint = fitted("coop", toy_clip, tmp_path / "l.ckpt", plugins=[{"name": "dept"}])
    code, _, err = run(["export", "--ckpt_path", checkpoint, "--out", tmp_path / "x.safetensors"], capsys)
    assert code == 2 and "cannot be exported as a fixed classifier" in err


def test_random_weights_cannot_be_rebuilt_by_open_clip(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = fitted("coop", vlprompt.load_clip(tiny_config()), tmp_path / "l.ckpt")
    code, _, err = run(["export", "--ckpt_path", checkpoint, "--out", tmp_path / "x.safetensors"], capsys)
    assert code == 2 and "random weights" in err


#: The learners whose scores are a fixed classifier on CLIP's image features with their default options.
EXPORTABLE = {"zeroshot", "coop", "kgcoop", "tcp", "biomedcoop", "vmfcoop"}


@pytest.mark.parametrize("name", vlprompt.list_learners())
def test_every_learner_exports_its_classifier_exactly_or_is_refused(toy_clip, name):
    """Over every registered learner: the exported classifier gives the learner's own logits on new images, or the
    learner is refused in one line."""
    from conftest import learner_arguments

    from vlprompt.errors import ConfigError
    from vlprompt.inference import exported_classifier
    from vlprompt.learners import get_learner_class

    torch.manual_seed(0)
    learner = get_learner_class(name)(clip=toy_clip, classnames=CLASSES, **learner_arguments(name, toy_clip, CLASSES))
    fill_learned(learner)
    learner.eval()
    if name not in EXPORTABLE:
        with pytest.raises(ConfigError, match=f"{name} cannot be exported as a fixed classifier"):
            exported_classifier(learner)
        return
    features, scale = exported_classifier(learner)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = learner(images)
        image_features = torch.nn.functional.normalize(toy_clip.encode_image(images), dim=-1)
    assert torch.allclose(scale * image_features @ features.t(), expected, atol=1e-4)
