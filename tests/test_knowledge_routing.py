"""KAPT and MoCoOp end to end on the toy world: `vlprompt fit` and `vlprompt suite base2novel`, with the toy data
set's own descriptions and template groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlprompt.commands import main
from vlprompt.toy import write_toy_dataset

from conftest import REPO

CONFIGS = REPO / "configs"
TOY_GROUPS = [["a photo of a {}.", "a photo of the {}."], ["a sketch of a {}.", "a sketch of the {}."],
              ["a noisy photo of a {}.", "a blurry photo of a {}."]]


@pytest.fixture(scope="module")
def toy_data_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_toy_dataset("ToyShapes", root / "ToyShapes", train_per_class=2, val_per_class=1, test_per_class=2)
    config = root / "ToyShapes.yaml"
    config.write_text(f"data:\n  root: {root / 'ToyShapes'}\n  split_file: split_zhou_ToyShapes.json\n"
                      "  descriptions: descriptions.json\n  num_workers: 0\n  batch_size: 8\n  augment: false\n"
                      f"  template_groups: {json.dumps(TOY_GROUPS)}\n")
    return config


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["kapt", "mocoop"])
def test_fit_and_base_to_novel_suite_on_the_toy_world(learner, toy_data_config, tmp_path, capsys, caplog):
    quick = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    main(["fit", "--config", str(CONFIGS / "learners" / f"{learner}.yaml"), "--config", str(CONFIGS / "clip" / "toy.yaml"),
          "--config", str(toy_data_config), "--data.shots", "2", "--data.subsample", "base",
          "--trainer.default_root_dir", str(tmp_path / "fit"), *quick])
    assert "vlprompt: checkpoint" in capsys.readouterr().out and list((tmp_path / "fit").rglob("last.ckpt"))
    if learner == "mocoop":  # evaluated on a data set with other template groups: the checkpoint's experts serve
        other = tmp_path / "other.yaml"
        other.write_text(toy_data_config.read_text().split("  template_groups:")[0]
                         + '  template_groups: [["a photo of a {}."], ["a sketch of a {}."]]\n')
        main(["test", "--config", str(CONFIGS / "learners" / "mocoop.yaml"), "--config", str(CONFIGS / "clip" / "toy.yaml"),
              "--config", str(other), "--data.subsample", "novel", "--trainer.default_root_dir", str(tmp_path / "test"),
              "--ckpt_path", str(next((tmp_path / "fit").rglob("last.ckpt"))), *quick[2:]])
        assert "vlprompt: test accuracy" in capsys.readouterr().out
    assert any(f"{learner}: " in r.message and "trainable parameters" in r.message for r in caplog.records)
    runs = tmp_path / "runs"
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / f"{learner}.yaml"), "--clip",
          str(CONFIGS / "clip" / "toy.yaml"), "--data", str(toy_data_config), "--seeds", "1", "--shots", "2",
          "--runs", str(runs), "--", *quick])
    metrics = json.loads(next(runs.rglob("metrics.json")).read_text())
    assert metrics["learner"] == learner and 0 <= metrics["novel_acc"] <= 100 and 0 <= metrics["base_acc"] <= 100
