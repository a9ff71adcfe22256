"""`vlprompt suite` (resumable protocol runs) and `vlprompt report` (tables over seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlprompt.cli import main
from vlprompt.eval.report import aggregate, tables
from vlprompt.eval.suite import standard_data
from vlprompt.data.benchmarks import CROSS_DATASET_TARGETS
from vlprompt.toy import write_toy_dataset

from conftest import REPO

CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def toy_data_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_toy_dataset("ToyShapes", root / "ToyShapes", train_per_class=4, val_per_class=2, test_per_class=2)
    config = root / "ToyShapes.yaml"
    config.write_text(f"data:\n  root: {root / 'ToyShapes'}\n  split_file: split_zhou_ToyShapes.json\n"
                      "  num_workers: 0\n  batch_size: 8\n  augment: false\n")
    return config


def suite(runs: Path, data: Path, capsys, *extra) -> str:
    main(["suite", "base2novel", "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
          CONFIGS / "clip" / "tiny-random.yaml", "--data", data, "--seeds", "1", "2", "--shots", "4", "--runs", runs,
          *extra, "--", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])
    return capsys.readouterr().out


def test_base2novel_suite_then_report_then_resume(toy_data_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    out = suite(runs, toy_data_config, capsys)
    metrics_files = sorted(runs.rglob("metrics.json"))
    assert [p.parent.name for p in metrics_files] == ["shots4_seed1", "shots4_seed2"]
    metrics = json.loads(metrics_files[0].read_text())
    assert {"learner", "dataset", "seed", "shots", "protocol", "base_acc", "novel_acc", "hm"} <= set(metrics)
    assert (metrics["learner"], metrics["dataset"], metrics["protocol"]) == ("coop", "ToyShapes", "base2novel")
    assert 0 <= metrics["base_acc"] <= 100 and "running" in out

    main(["report", str(runs)])
    report = capsys.readouterr().out
    assert "| coop | 4 | ToyShapes |" in report and "±" in report
    for name in ("report.md", "report.csv", "report.tex", "hm_per_dataset.png", "base_vs_novel.png"):
        assert (runs / "report" / name).stat().st_size > 0

    # Restart: finished runs are skipped; an interrupted one (no metrics.json) is redone.
    metrics_files[1].unlink()
    (metrics_files[1].parent / "leftover.txt").write_text("partial")
    out = suite(runs, toy_data_config, capsys)
    assert out.count("done already") == 1 and out.count("running") == 1
    assert metrics_files[1].is_file() and not (metrics_files[1].parent / "leftover.txt").exists()


def test_report_means_stds_and_average_hm():
    runs = [{"protocol": "base2novel", "learner": "coop", "shots": 16, "dataset": d, "seed": s,
             "base_acc": b, "novel_acc": n, "hm": 2 * b * n / (b + n)}
            for d, s, b, n in [("A", 1, 80, 60), ("A", 2, 82, 62), ("B", 1, 70, 50), ("B", 2, 70, 52)]]
    rows = {r["dataset"]: r for r in aggregate(runs, ci=True)}
    assert rows["A"]["base_acc"]["mean"] == 81 and rows["A"]["base_acc"]["std"] == pytest.approx(2 ** 0.5)
    assert rows["A"]["base_acc"]["ci95"] > rows["A"]["base_acc"]["std"]
    average = rows["Average"]
    assert average["base_acc"]["mean"] == 75.5 and average["novel_acc"]["mean"] == 56
    assert average["hm"]["mean"] == pytest.approx(2 * 75.5 * 56 / (75.5 + 56))  # HM of the averages
    text = tables(list(rows.values()))
    assert "| coop | 16 | Average | 75.50 | 56.00 |" in text["md"] and r"$\pm$" in text["tex"]


def test_cross_dataset_average_leaves_the_source_out():
    runs = [{"protocol": "cross-dataset", "learner": "coop", "shots": 16, "source": "ImageNet", "dataset": d,
             "seed": 1, "acc": acc} for d, acc in [("ImageNet", 71.0), ("Caltech101", 93.0), ("DTD", 41.0)]]
    rows = {r["dataset"]: r for r in aggregate(runs)}
    assert rows["ImageNet"]["acc"]["mean"] == 71.0  # the source is still reported ...
    assert rows["Average"]["acc"]["mean"] == 67.0 and rows["Average"]["acc"]["n"] == 2  # ... but not averaged
    text = tables(list(rows.values()))
    assert "| coop from ImageNet | 16 | Average | 67.00 |" in text["md"]
    assert "cross-dataset,coop,ImageNet,16,Average" in text["csv"]


def test_suite_and_report_mistakes_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path)])
    assert exit_info.value.code == 2 and "no metrics.json below" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["suite", "base2novel", "--learner", str(tmp_path / "nope.yaml"), "--data", str(tmp_path / "d.yaml")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_few_shot_suite_with_a_learner_that_does_not_train(toy_data_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    main(["suite", "few-shot", "--learner", CONFIGS / "learners" / "zeroshot.yaml", "--clip",
          CONFIGS / "clip" / "tiny-random.yaml", "--data", toy_data_config, "--seeds", "1", "--shots", "1", "2",
          "--runs", runs, "--", "--trainer.enable_progress_bar", "false"])
    metrics = [json.loads(p.read_text()) for p in sorted(runs.rglob("metrics.json"))]
    assert [(m["protocol"], m["learner"], m["shots"]) for m in metrics] == [("few-shot", "zeroshot", 1),
                                                                           ("few-shot", "zeroshot", 2)]
    assert all(0 <= m["acc"] <= 100 for m in metrics)
    main(["report", str(runs)])
    assert (runs / "report" / "few_shot.png").stat().st_size > 0


def test_domain_generalization_trains_once_and_tests_every_target(toy_data_config, tmp_path, capsys):
    target_root = tmp_path / "ToyShapes-Noisy"
    write_toy_dataset("ToyShapes-Noisy", target_root, train_per_class=1, val_per_class=1, test_per_class=2)
    target = tmp_path / "noisy.yaml"
    target.write_text(f"data:\n  root: {target_root}\n  split_file: split_zhou_ToyShapes-Noisy.json\n"
                      "  num_workers: 0\n")
    runs = tmp_path / "runs"
    args = ["suite", "domain-generalization", "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
            CONFIGS / "clip" / "tiny-random.yaml", "--source", toy_data_config, "--data", target, "--seeds", "1",
            "--shots", "4", "--runs", runs, "--", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar",
            "false"]
    main(args)
    metrics = {m["dataset"]: m for m in (json.loads(p.read_text()) for p in runs.rglob("metrics.json"))}
    assert set(metrics) == {"ToyShapes", "ToyShapes-Noisy"}
    assert all(m["source"] == "ToyShapes" and m["protocol"] == "domain-generalization" for m in metrics.values())
    assert len(list(runs.rglob("last.ckpt"))) == 1  # trained once
    capsys.readouterr()
    main(args)
    assert "done already" in capsys.readouterr().out



def test_transfer_protocols_default_to_the_papers_data_sets(tmp_path, monkeypatch, capsys):
    assert standard_data("cross-dataset") == ("ImageNet", list(CROSS_DATASET_TARGETS)) and len(CROSS_DATASET_TARGETS) == 10
    assert standard_data("domain-generalization")[1] == ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
    assert len(standard_data("base2novel")[1]) == 11
    monkeypatch.chdir(tmp_path)  # no data/imagenet here
    with pytest.raises(SystemExit) as exit_info:
        main(["suite", "domain-generalization", "--learner", str(CONFIGS / "learners" / "coop.yaml")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code != 0 and "data/imagenet" in err and "\n" not in err and "Traceback" not in err
