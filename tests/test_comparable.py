"""Issue 31: numbers that are not comparable with published ones say so (a split built here, shots capped by small
classes) in the run's log, its metrics.json and every report table; the CI tables never replace the std ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlprompt.commands import main
from vlprompt.data import ImageSplitDataModule
from vlprompt.data.datamodule import short_classes
from vlprompt.data.splits import Item
from vlprompt.eval.report import SHOTS_MARK, SPLIT_MARK, aggregate, paper_tables, tables

from conftest import REPO
from test_benchmarks import folders

CONFIGS = REPO / "configs"


@pytest.fixture
def dtd_tree(tmp_path) -> Path:
    """A DTD folder without CoOp's split file: two classes of 10 images and one of 4 (2 training images)."""
    root = tmp_path / "dtd"
    folders(root / "images", ["banded", "braided"], 10)
    folders(root / "images", ["bubbly"], 4)
    return root


def test_a_split_built_here_gets_its_own_name_and_is_said_and_recorded(dtd_tree, capsys):
    data = ImageSplitDataModule(dtd_tree, dataset="DTD", shots=4, num_workers=0, seed=7)
    err = capsys.readouterr().err
    assert not (dtd_tree / "split_zhou_DescribableTextures.json").exists()
    assert (dtd_tree / "split_vlprompt_built_DescribableTextures.json").is_file()
    assert "vlprompt: warning: DTD: no published split file split_zhou_DescribableTextures.json" in err
    assert "numbers are not comparable with published ones" in err
    assert data.provenance() == {"split_file": "split_vlprompt_built_DescribableTextures.json",
                                 "split_built_here": True, "shots_asked": 4, "short_classes": {"bubbly": 2}}
    assert "data.shots 4, but 1 of 3 classes have fewer training images (fewest: 2, 'bubbly')" in err
    # The sample file records what each class really trains on.
    sample = json.loads((dtd_tree / "split_fewshot" / "shot_4-seed_7.json").read_text())
    assert sample["train_images_per_class"] == {"banded": 4, "braided": 4, "bubbly": 2}
    # With the published file in place, it is read, nothing is said, nothing is marked.
    shutil.copy(dtd_tree / "split_vlprompt_built_DescribableTextures.json",
                dtd_tree / "split_zhou_DescribableTextures.json")
    data = ImageSplitDataModule(dtd_tree, dataset="DTD", shots=2, num_workers=0, seed=8)
    assert data.provenance()["split_built_here"] is False and data.split_file == "split_zhou_DescribableTextures.json"
    assert capsys.readouterr().err == ""


def test_short_classes_counts_only_those_below_the_shots():
    train = [Item(f"{i}.png", i % 2, "a_b" if i % 2 else "c") for i in range(5)]
    assert short_classes(train, 3) == {"a b": 2} and short_classes(train, -1) == {} and short_classes(train, 2) == {}


def fake_run(dataset: str, seed: int, data: dict, protocol: str = "base2novel") -> dict:
    keys = {"base_acc": 60.0 + seed, "novel_acc": 50.0, "hm": 54.5} if protocol == "base2novel" else {"acc": 70.0}
    return {"learner": "coop", "dataset": dataset, "seed": seed, "shots": 16, "protocol": protocol, **keys,
            "data": data}


def test_reports_mark_rows_built_here_or_with_capped_shots():
    built = {"split_file": "split_vlprompt_built_DescribableTextures.json", "split_built_here": True,
             "shots_asked": 16, "short_classes": {}}
    capped = {"split_file": "split_zhou_EuroSAT.json", "split_built_here": False, "shots_asked": 16,
              "short_classes": {"River": 5}}
    clean = {"split_file": "split_zhou_OxfordPets.json", "split_built_here": False, "shots_asked": 16,
             "short_classes": {}}
    runs = [fake_run("DTD", 1, built), fake_run("EuroSAT", 1, capped), fake_run("OxfordPets", 1, clean),
            fake_run("OxfordPets", 1, clean, "few-shot")]
    rows = aggregate(runs)
    long, paper = tables(rows)["md"], paper_tables(rows)["md"]
    for text in (long, paper):
        assert f"DTD {SPLIT_MARK}" in text and f"EuroSAT {SHOTS_MARK}" in text and "OxfordPets †" not in text
        assert f"{SPLIT_MARK} split built here, not comparable with published numbers" in text
        assert f"{SHOTS_MARK} some classes had fewer training images than the shots asked for" in text
    assert f"Average over 3 data sets {SPLIT_MARK}{SHOTS_MARK}" in paper
    assert "split built here" in tables(rows)["csv"]
    few_shot = paper.split("### Few-shot classification")[1]
    assert SPLIT_MARK not in few_shot and SHOTS_MARK not in few_shot
    assert long.startswith("Mean ± standard deviation over seeds")
    assert tables(aggregate(runs, ci=True), ci=True)["md"].startswith("Mean ± 95% confidence interval")


def test_report_with_ci_writes_beside_the_std_tables(tmp_path, capsys):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(fake_run("DTD", 1, {})))
    (tmp_path / "runs" / "r2").mkdir()
    (tmp_path / "runs" / "r2" / "metrics.json").write_text(json.dumps(fake_run("DTD", 2, {})))
    main(["report", str(tmp_path / "runs")])
    std = (tmp_path / "runs" / "report" / "report.md").read_text()
    main(["report", str(tmp_path / "runs"), "--layout", "long", "--ci"])
    assert "report-ci.md" in capsys.readouterr().out
    assert (tmp_path / "runs" / "report" / "report.md").read_text() == std
    assert "95% confidence interval" in (tmp_path / "runs" / "report" / "report-ci.md").read_text()


@pytest.mark.slow
def test_a_suite_on_a_built_split_with_capped_shots_records_and_marks_it(dtd_tree, tmp_path, capsys):
    data = tmp_path / "dtd.yaml"
    data.write_text(f"data:\n  dataset: DTD\n  root: {dtd_tree}\n  num_workers: 0\n  augment: false\n  batch_size: 4\n")
    main(["suite", "few-shot", "--learner", str(CONFIGS / "learners" / "coop.yaml"), "--clip",
          str(CONFIGS / "clip" / "tiny-random.yaml"), "--data", str(data), "--seeds", "1", "--shots", "4", "--runs",
          str(tmp_path / "runs"), "--", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])
    out, err = capsys.readouterr()
    assert err.count("no published split file") == 1 and err.count("have fewer training images") == 1
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert metrics["data"] == {"split_file": "split_vlprompt_built_DescribableTextures.json",
                               "split_built_here": True, "shots_asked": 4, "short_classes": {"bubbly": 2}}
    assert f"DTD {SPLIT_MARK}{SHOTS_MARK}" in out  # the suite's closing table
    main(["report", str(tmp_path / "runs")])
    assert "split built here, not comparable" in capsys.readouterr().out
