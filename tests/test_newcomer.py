"""Issue 31: what a newcomer trips over. `vlprompt test` writes beside the run it tests and says where; the output of
a fit is free of noise; a fit that is all warm-up says so; suggestions for unknown keys are real keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_reliability import last_error_line, run_main

CONFIGS = REPO / "configs"


def toy_args(shapes: Path, *extra) -> list[str]:
    return ["--config", str(CONFIGS / "learners" / "coop.yaml"), "--config", str(CONFIGS / "clip" / "tiny-random.yaml"),
            "--config", str(CONFIGS / "data" / "toy" / "ToyShapes.yaml"), "--data.root", str(shapes), "--data.shots", "2",
            "--trainer.enable_progress_bar", "false", *map(str, extra)]


#: What a fit printed before issue 31 that says nothing about the run.
NOISE = ("Tip:", "LeafSpec", "_pytree", "logging interval", "No seed found", "dirpath has changed", "anonymous")


@pytest.mark.slow
def test_test_writes_beside_the_run_names_split_and_path_and_report_reads_it(shapes, tmp_path):
    def vlprompt(*args) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "vlprompt", *map(str, args)], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        for noise in NOISE:
            assert noise not in result.stderr + result.stdout, (noise, result.stderr[-3000:])
        return result

    vlprompt("fit", *toy_args(shapes, "--trainer.max_epochs", 2, "--data.subsample", "base"))
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    checkpoint = run / "checkpoints" / "last.ckpt"
    out = vlprompt("test", *toy_args(shapes, "--data.subsample", "novel", "--ckpt_path", checkpoint)).stdout
    line = [text for text in out.splitlines() if text.startswith("vlprompt: test accuracy")]
    assert len(line) == 1 and "novel classes (12)" in line[0] and "test split (24 images)" in line[0]
    assert f"metrics in {run / 'tests' / 'version_0'}" in line[0]
    assert "test/acc" not in out  # Lightning's table, which names no split, is left out
    tests = run / "tests" / "version_0"
    metrics = json.loads((tests / "metrics.json").read_text())
    assert metrics["protocol"] == "test" and metrics["subsample"] == "novel" and 0 <= metrics["acc"] <= 100
    assert (tests / f"per_class_{shapes.name}_novel.csv").is_file()
    assert not (tmp_path / "runs" / "lightning_logs" / "version_1").exists()
    report = vlprompt("report", run).stdout
    assert f"| coop | 2 | {shapes.name} (novel) |" in report


@pytest.mark.slow
def test_a_fit_that_is_all_warm_up_says_so(shapes, tmp_path, capsys):
    code, err = run_main(["fit", *toy_args(shapes, "--trainer.max_epochs", 1, "--trainer.default_root_dir",
                                           tmp_path / "one")], capsys)
    assert code == 0 and "every epoch trains at the warm-up rate 1e-05, not lr 0.002" in err
    code, err = run_main(["fit", *toy_args(shapes, "--trainer.max_epochs", 2, "--trainer.default_root_dir",
                                           tmp_path / "two")], capsys)
    assert code == 0 and "warm-up rate" not in err


@pytest.mark.parametrize("option, suggested, not_suggested", [
    ("--model.init_args.tau", "is an option of biomedcoop, not of coop", "model.init_args.tau"),  # another's key
    ("--model.init_args.n_ctxx", "closest valid: model.init_args.n_ctx", "lambda"),
    ("--trainer.max_epoch", "closest valid: trainer.max_epochs", None)])
def test_suggestions_are_keys_of_the_configured_learner(option, suggested, not_suggested, tmp_path, capsys):
    code, err = run_main(["fit", "--config", CONFIGS / "learners" / "coop.yaml", "--config",
                          CONFIGS / "clip" / "tiny-random.yaml", option, "1"], capsys)
    line = last_error_line(err)
    assert code == 2 and option.lstrip("-") in line
    if suggested:
        assert suggested in line
    if not_suggested:
        assert not_suggested not in line.split(";", 1)[1], line


def test_a_class_path_typo_names_the_registered_learners(capsys):
    code, err = run_main(["fit", "--model.class_path", "vlprompt.learners.coop.CoOpp", "--config",
                          CONFIGS / "clip" / "tiny-random.yaml"], capsys)
    line = last_error_line(err)
    assert code == 2 and "NestedArg" not in line and "Union" not in line
    assert "CoOpp" in line and "vlprompt.learners.coop.CoOp" in line


@pytest.mark.parametrize("args, says", [
    (["fit", "--config", "/nowhere/learner.yaml"], "config file '/nowhere/learner.yaml' does not exist"),
    (["fit", "--config", str(CONFIGS / "learners" / "coop.yaml"), "--data.root", "/nowhere/data"],
     "dataset directory '/nowhere/data' does not exist"),
    (["test", "--config", str(CONFIGS / "learners" / "coop.yaml"), "--ckpt_path", "/nowhere/last.ckpt"],
     "checkpoint '/nowhere/last.ckpt' does not exist")])
def test_common_mistakes_are_refused_before_lightning_is_imported(args, says):
    script = ("import sys\nfrom vlprompt.commands import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
              "    print('EXIT', e.code, [m for m in ('torch', 'pytorch_lightning') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "EXIT 2 []", result.stderr[-2000:]
    assert says in last_error_line(result.stderr)


def test_print_config_does_not_need_the_data_set(capsys):
    code, err = run_main(["fit", "--config", CONFIGS / "learners" / "coop.yaml", "--config",
                          CONFIGS / "data" / "ImageNet.yaml", "--print_config"], capsys)
    assert code == 0, err[-2000:]
