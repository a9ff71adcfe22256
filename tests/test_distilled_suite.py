"""The suite with a learner distilled from a fitted teacher (PromptKD): the teacher stage fitted first and handed
over, transductive base-to-novel fits, and the report's "(transductive)" rows."""

from __future__ import annotations

import json
import shlex

import pytest

from vlprompt.commands import main
from vlprompt.eval.report import TRANSDUCTIVE_NOTE, aggregate, paper_tables, tables

from conftest import REPO

CONFIGS = REPO / "configs"


def dry_run(tmp_path, capsys, *extra) -> list[str]:
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "promptkd.yaml"), "--data",
          str(CONFIGS / "data" / "DTD.yaml"), "--seeds", "1", "2", "--runs", str(tmp_path), "--dry-run", *extra,
          "--", "--trainer.max_epochs", "1", "--model.init_args.temperature", "2"])
    return capsys.readouterr().out.splitlines()


def test_the_teacher_is_fitted_first_per_seed_and_handed_to_the_student(tmp_path, capsys):
    lines = dry_run(tmp_path, capsys)
    teachers = [line for line in lines if line.startswith("  Teacher (stage 1): vlprompt fit")]
    students = [line for line in lines if line.startswith("  vlprompt fit")]
    assert len(teachers) == 2 and len(students) == 2
    for seed, (teacher, student) in enumerate(zip(teachers, students), 1):
        # The default teacher: promptsrc with PromptKD's teacher recipe (ViT-L/14), 16 shots, the suite's training
        # budget but not the student's options.
        assert "promptsrc.yaml" in teacher and "recipes/promptkd/teacher.yaml" in teacher
        assert "--data.shots 16" in teacher and "--trainer.max_epochs 1" in teacher and "temperature" not in teacher
        checkpoint = tmp_path.resolve() / "teachers" / "DTD" / f"shots16_seed{seed}" / "checkpoints" / "last.ckpt"
        assert f"--model.init_args.teacher_checkpoint {shlex.quote(str(checkpoint))}" in student
        assert "--model.init_args.temperature 2" in student
    assert "base2novel promptkd DTD shots=16 seed=1" in "\n".join(lines)


def test_plugins_of_the_teacher_name_the_runs(tmp_path, capsys):
    lines = dry_run(tmp_path, capsys, "--teacher", str(CONFIGS / "learners" / "promptsrc.yaml"),
                    str(CONFIGS / "recipes" / "promptkd" / "teacher.yaml"), str(CONFIGS / "plugins" / "atprompt.yaml"))
    assert any("base2novel promptkd+atprompt DTD shots=16 seed=1" in line for line in lines)
    assert str(tmp_path / "base2novel" / "promptkd+atprompt" / "DTD") in "\n".join(lines)


@pytest.mark.parametrize("extra, message", [
    (["--learner", str(CONFIGS / "learners" / "coop.yaml"), "--teacher", str(CONFIGS / "learners" / "promptsrc.yaml")],
     "--teacher is for learners distilled from a fitted teacher (promptkd); coop has none"),
    (["--learner", str(CONFIGS / "learners" / "promptkd.yaml"), "--boost", str(CONFIGS / "learners" / "caspl_boost.yaml")],
     "cannot take boosting prompts"),
])
def test_teacher_and_boost_mistakes_are_one_line_errors(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        main(["suite", "base2novel", *extra, "--data", str(CONFIGS / "data" / "DTD.yaml"), "--runs", str(tmp_path),
              "--dry-run"])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def runs(learner: str, transductive: bool, base: float) -> list[dict]:
    return [{"learner": learner, "dataset": dataset, "seed": seed, "shots": 16, "protocol": "base2novel",
             "base_acc": base + seed, "novel_acc": base - seed, "hm": base, "data": {},
             **({"transductive": True} if transductive else {})}
            for dataset in ("DTD", "EuroSAT") for seed in (1, 2)]


def test_transductive_rows_are_a_learner_of_their_own_and_explained():
    rows = aggregate(runs("promptkd", True, 80.0) + runs("promptkd", False, 60.0) + runs("coop", False, 70.0))
    averages = {r["learner"]: r for r in rows if r["dataset"] == "Average"}
    assert set(averages) == {"promptkd (transductive)", "promptkd", "coop"}
    assert averages["promptkd (transductive)"]["base_acc"]["mean"] == pytest.approx(81.5)
    assert averages["promptkd"]["base_acc"]["mean"] == pytest.approx(61.5)  # never pooled with the transductive runs
    rendered = tables(rows)
    assert "| promptkd (transductive) | 16 | Average |" in rendered["md"] and TRANSDUCTIVE_NOTE in rendered["md"]
    notes = [line for line in rendered["csv"].splitlines() if line.startswith("base2novel,promptkd (transductive)")]
    assert notes and all(TRANSDUCTIVE_NOTE in line for line in notes)
    assert not any(TRANSDUCTIVE_NOTE in line for line in rendered["csv"].splitlines()
                   if line.startswith("base2novel,coop,"))
    paper = paper_tables(rows)["md"]
    assert "| promptkd (transductive) |" in paper and TRANSDUCTIVE_NOTE in paper


@pytest.mark.slow
def test_a_promptkd_suite_fits_its_teacher_then_a_transductive_student(tmp_path, capsys):
    from vlprompt.toy import write_toy_dataset

    root = tmp_path / "ToyShapes"
    write_toy_dataset("ToyShapes", root, train_per_class=4, val_per_class=2, test_per_class=2)
    data = tmp_path / "ToyShapes.yaml"
    data.write_text(f"data:\n  root: {root}\n  split_file: split_zhou_ToyShapes.json\n  num_workers: 0\n"
                    "  batch_size: 8\n  augment: false\n")
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "promptkd.yaml"), "--clip",
          str(CONFIGS / "clip" / "toy.yaml"), "--teacher", str(CONFIGS / "learners" / "promptsrc.yaml"),
          str(CONFIGS / "recipes" / "promptkd" / "teacher.yaml"), str(CONFIGS / "clip" / "toy-small.yaml"),
          "--data", str(data), "--seeds", "1", "--runs", str(tmp_path / "runs"), "--", "--trainer.max_epochs", "1"])
    out = capsys.readouterr().out
    assert "[suite] teacher (stage 1) for ToyShapes seed=1 shots=16 (starting)" in out
    metrics = json.loads((tmp_path / "runs" / "base2novel" / "promptkd" / "ToyShapes" / "shots16_seed1"
                          / "metrics.json").read_text())
    assert metrics["transductive"] is True and metrics["data"]["shots_asked"] == -1
    assert "promptkd (transductive)" in out
    # The student fitted on all 25 classes: its checkpoint holds the teacher's features of every one.
    import torch

    checkpoint = torch.load(tmp_path / "runs" / "base2novel" / "promptkd" / "ToyShapes" / "shots16_seed1"
                            / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(checkpoint["state_dict"]["class_text._extra_state"]["classnames"]) == 25


@pytest.mark.parametrize("extra", [
    ["--", "--config", str(CONFIGS / "plugins" / "atprompt.yaml")],
    ["--", "--model.init_args.plugins+={name: atprompt}"],
    ["--", "--model.init_args.plugins", "[{name: atprompt}]"],
])
def test_plugins_name_the_runs_so_they_never_share_the_learners_folder(tmp_path, capsys, extra):
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"), "--data",
          str(CONFIGS / "data" / "DTD.yaml"), "--seeds", "1", "--runs", str(tmp_path), "--dry-run", *extra])
    out = capsys.readouterr().out
    assert "base2novel coop+atprompt DTD shots=16 seed=1" in out
    assert str(tmp_path / "base2novel" / "coop+atprompt" / "DTD" / "shots16_seed1") in out


def test_a_plugins_list_after_the_separator_replaces_the_recipes(tmp_path, capsys):
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"),
          str(CONFIGS / "recipes" / "atprompt" / "coop.yaml"), "--data", str(CONFIGS / "data" / "DTD.yaml"), "--seeds",
          "1", "--runs", str(tmp_path), "--dry-run", "--", "--model.init_args.plugins", "[]"])
    out = capsys.readouterr().out
    assert "base2novel coop DTD shots=16 seed=1" in out and "coop+atprompt" not in out
