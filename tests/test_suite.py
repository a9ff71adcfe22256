"""`vlprompt suite` (resumable protocol runs) and `vlprompt report` (tables over seeds)."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vlprompt.commands import main
from vlprompt.eval.report import aggregate, paper_tables, tables, write_report
from vlprompt.eval.suite import standard_data
from vlprompt.data.benchmarks import CROSS_DATASET_TARGETS
from vlprompt.toy import write_toy_dataset

from conftest import REPO

CONFIGS = REPO / "configs"


def suite(runs: Path, data: Path, capsys, *extra) -> str:
    main(["suite", "base2novel", "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
          CONFIGS / "clip" / "tiny-random.yaml", "--data", data, "--seeds", "1", "2", "--shots", "4", "--runs", runs,
          *extra, "--", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"])
    return capsys.readouterr().out


@pytest.mark.slow
def test_base2novel_suite_then_report_then_resume(toy_data_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    out = suite(runs, toy_data_config, capsys)
    metrics_files = sorted(runs.rglob("metrics.json"))
    assert [p.parent.name for p in metrics_files] == ["shots4_seed1", "shots4_seed2"]
    metrics = json.loads(metrics_files[0].read_text())
    assert {"learner", "dataset", "seed", "shots", "protocol", "base_acc", "novel_acc", "hm"} <= set(metrics)
    assert (metrics["learner"], metrics["dataset"], metrics["protocol"]) == ("coop", "ToyShapes", "base2novel")
    assert 0 <= metrics["base_acc"] <= 100
    assert "[suite] run 1 of 2: base2novel coop ToyShapes shots=4 seed=1 (starting)" in out
    assert "[suite] run 2 of 2:" in out and "left for 1 more" in out
    # It ends with the table over seeds and where the full report comes from.
    assert "| coop | 4 | ToyShapes |" in out and f"vlprompt report {runs}" in out.splitlines()[-1]

    main(["report", str(runs)])
    report = capsys.readouterr().out
    assert "#### ToyShapes" in report and "Each cell is the mean over 2 seeds (1, 2)" in report
    main(["report", str(runs), "--layout", "long"])
    report = capsys.readouterr().out
    assert "| coop | 4 | ToyShapes |" in report and "±" in report
    for name in ("report.md", "report.csv", "report.tex", "paper.md", "paper.tex", "hm_per_dataset.png",
                 "base_vs_novel.png"):
        assert (runs / "report" / name).stat().st_size > 0

    # Restart: finished runs are skipped; an interrupted one (no metrics.json) resumes from its last.ckpt, and one
    # interrupted before its first checkpoint starts over.
    metrics_files[1].unlink()
    out = suite(runs, toy_data_config, capsys)
    checkpoint = metrics_files[1].parent / "checkpoints" / "last.ckpt"
    assert out.count("done already") == 1 and f"(resuming from {checkpoint})" in out and metrics_files[1].is_file()
    metrics_files[1].unlink()
    shutil.rmtree(checkpoint.parent)
    (metrics_files[1].parent / "leftover.txt").write_text("partial")
    out = suite(runs, toy_data_config, capsys)
    assert out.count("done already") == 1 and out.count("(starting)") == 1
    assert metrics_files[1].is_file() and not (metrics_files[1].parent / "leftover.txt").exists()


KILLER = textwrap.dedent("""
    import os, signal, sys
    import pytorch_lightning as pl
    from vlprompt.commands import main

    class KillAtEpoch(pl.Callback):
        # Dies like a preempted job: SIGKILL at the start of an epoch, after the previous one's last.ckpt was saved.
        def __init__(self, epoch: int):
            self.epoch = epoch

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == self.epoch:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.modules["killer"] = sys.modules[__name__]
    main(sys.argv[1:])
""")


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["coop", "promptsrc"])
def test_killed_suite_run_resumes_from_last_ckpt_with_bit_identical_results(learner, toy_data_config, tmp_path):
    """A run killed mid-fit and resumed ends exactly as an uninterrupted one: metrics and learned tensors (PromptSRC:
    with its Gaussian aggregation over epochs)."""
    def suite_process(runs: Path, *extra: str) -> subprocess.CompletedProcess:
        args = ["suite", "base2novel", "--learner", str(CONFIGS / "learners" / f"{learner}.yaml"), "--clip",
                str(CONFIGS / "clip" / "tiny-random.yaml"), "--data", str(toy_data_config), "--seeds", "1",
                "--shots", "4", "--runs", str(runs), "--", "--trainer.max_epochs", "4", "--data.batch_size", "4",
                "--trainer.enable_progress_bar", "false", *extra]
        return subprocess.run([sys.executable, "-c", KILLER, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)

    whole = suite_process(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = suite_process(tmp_path / "killed", "--trainer.callbacks+=killer.KillAtEpoch",
                           "--trainer.callbacks.epoch", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = Path("base2novel") / learner / "ToyShapes" / "shots4_seed1"
    assert not (tmp_path / "killed" / run / "metrics.json").exists()
    assert torch.load(tmp_path / "killed" / run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    resumed = suite_process(tmp_path / "killed")
    assert resumed.returncode == 0 and "(resuming from" in resumed.stdout, resumed.stderr[-3000:]

    def result(runs: Path) -> tuple[dict, dict]:
        metrics = json.loads((runs / run / "metrics.json").read_text())
        state = torch.load(runs / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        return {key: metrics[key] for key in ("base_acc", "novel_acc", "hm")}, state

    (whole_metrics, whole_state), (resumed_metrics, resumed_state) = result(tmp_path / "whole"), result(tmp_path / "killed")
    assert resumed_metrics == whole_metrics
    assert whole_state.keys() == resumed_state.keys()
    assert all(torch.equal(whole_state[key], resumed_state[key]) for key in whole_state)


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


def fake_runs() -> list[dict]:
    """Zero-shot CLIP (one seed, no shots) and CoOp (seeds 1-3) in all three protocols, with known accuracies."""
    runs = []
    for learner, shots, seeds in (("zeroshot", 0, [1]), ("coop", 16, [1, 2, 3])):
        for d, base, novel in (("ImageNet", 70, 60), ("DTD", 50, 40)):
            runs += [{"protocol": "base2novel", "learner": learner, "shots": shots, "dataset": d, "seed": s,
                      "base_acc": base + s + (10 if shots else 0), "novel_acc": novel - s,
                      "hm": 0.0} for s in seeds]
        runs += [{"protocol": "cross-dataset", "learner": learner, "shots": shots, "source": "ImageNet", "dataset": d,
                  "seed": s, "acc": acc + s} for d, acc in (("ImageNet", 70), ("Caltech101", 90), ("DTD", 40))
                 for s in seeds]
        runs += [{"protocol": "few-shot", "learner": learner, "shots": k, "dataset": "DTD", "seed": s, "acc": 40 + k + s}
                 for k in ([0] if learner == "zeroshot" else [1, 2, 4]) for s in seeds]
    for run in runs:
        if run["protocol"] == "base2novel":
            run["hm"] = 2 * run["base_acc"] * run["novel_acc"] / (run["base_acc"] + run["novel_acc"])
    return runs


def test_paper_layouts_blocks_per_dataset_columns_per_target_and_seed_counts():
    text = paper_tables(aggregate(fake_runs()))["md"]
    # Base-to-novel: the average block first, then one block per data set in the papers' order.
    assert text.index("#### Average over 2 data sets") < text.index("#### ImageNet") < text.index("#### DTD")
    assert "| coop | 82.00 | 58.00 | 67.93 |" in text  # ImageNet: base 70+2+10, novel 60-2 (means over seeds 1-3)
    assert "| zeroshot | 71.00 (n=1) | 59.00 (n=1) |" in text
    assert "Each cell is the mean over 3 seeds (1, 2, 3); cells marked (n=k) average k seeds" in text
    # Cross-dataset: one row per learner, the source first, then the targets and their average (source left out).
    assert "|  | ImageNet (source) | Caltech101 | DTD | Average (targets) |" in text
    assert "| coop | 72.00 | 92.00 | 42.00 | 67.00 |" in text
    # Few-shot: one column per shot count, zero-shot CLIP in the 0 column.
    assert "|  | 0 (zero-shot) | 1 shot | 2 shots | 4 shots |" in text
    assert "| zeroshot | 41.00 (n=1) | - | - | - |" in text and "| coop | - | 43.00 | 44.00 | 46.00 |" in text


def test_report_plots_only_what_each_protocol_has(tmp_path):
    runs = [r for r in fake_runs() if r["protocol"] == "cross-dataset"]
    _, images = write_report(aggregate(runs), tmp_path / "transfer")
    assert images == []  # transfer results are tables, never points on the few-shot curves
    _, images = write_report(aggregate(fake_runs()), tmp_path / "all")
    assert sorted(p.name for p in images) == ["base_vs_novel.png", "few_shot.png", "hm_per_dataset.png"]
    assert (tmp_path / "all" / "paper.md").read_text().startswith("### Base-to-novel generalisation")
    assert r"\toprule" in (tmp_path / "all" / "paper.tex").read_text()


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
    # Zero-shot accuracy does not depend on the shots: one run, recorded as 0 shots (the curves' zero-shot line).
    assert [(m["protocol"], m["learner"], m["shots"]) for m in metrics] == [("few-shot", "zeroshot", 0)]
    assert all(0 <= m["acc"] <= 100 for m in metrics)
    main(["report", str(runs)])
    assert (runs / "report" / "few_shot.png").stat().st_size > 0


@pytest.mark.slow
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


def wandb_records(path: Path, timeout: float = 60.0) -> dict:
    """What an offline wandb run recorded: its run settings, config, history keys and final summary.

    Offline runs keep everything in ``run-<id>.wandb``, a LevelDB-style log of protobuf records (32 KiB
    blocks; each chunk has a 7-byte header: checksum, little-endian length, type 1 full / 2 first / 3 middle /
    4 last), after a 7-byte file header starting ``:W&B``. wandb's writer is another process that may still be
    flushing when ``wandb.finish()`` returns, so the file is read again until it holds the run record and the
    exit record that ends every finished run (the test used to read it too early now and then).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = _parse_wandb_log(path.read_bytes())
        if found["run"] is not None and found["exit"]:
            return found
        if time.monotonic() > deadline:
            present = sorted(key for key, value in found.items() if value)
            raise AssertionError(f"{path} holds no complete run after {timeout:.0f} s (present: {present})")
        time.sleep(0.2)


def _parse_wandb_log(data: bytes) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    assert data[:4] == b":W&B"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer or zero padding
            position += left
            continue
        if position + 7 + length > len(data):  # a chunk still being written
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""

    def name(item) -> str:
        return item.key or "/".join(item.nested_key)

    found = {"summary": {}, "config": set(), "history": set(), "run": None, "exit": False}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            found["summary"].update({name(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "config":
            found["config"] |= {name(item) for item in record.config.update}
        elif kind == "history":
            found["history"] |= {name(item) for item in record.history.item}
        elif kind == "run":
            found["run"] = record.run
            found["config"] |= {name(item) for item in record.run.config.update}
        elif kind == "exit":
            found["exit"] = True
    return found


@pytest.mark.slow
def test_wandb_offline_suite_groups_runs_and_records_summary_tables_and_a_summary_run(toy_data_config, tmp_path,
                                                                                       capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = tmp_path / "runs"
    main(["suite", "base2novel", "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
          CONFIGS / "clip" / "tiny-random.yaml", "--data", toy_data_config, "--seeds", "1", "--shots", "4",
          "--runs", runs, "--wandb", "--wandb-project", "vlprompt-test", "--",
          "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"])
    run_dir = runs / "base2novel" / "coop" / "ToyShapes" / "shots4_seed1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (offline_run,) = run_dir.glob("wandb/offline-run-*")  # fit, base test and novel test share one run
    (log,) = offline_run.glob("run-*.wandb")
    found = wandb_records(log)
    assert found["run"].run_group == "base2novel/coop/ToyShapes" and found["run"].job_type == "base2novel"
    assert {"config", "lr", "n_ctx"} <= found["config"]  # the resolved CLI config, and the learner's hparams
    assert {"train/loss", "train/acc", "epoch"} <= found["history"]
    for key in ("base_acc", "novel_acc", "hm"):
        assert found["summary"][key] == pytest.approx(metrics[key])
    tables = sorted(p.name for p in offline_run.glob("files/media/table/per_class/*.table.json"))
    assert [name.rsplit("_", 2)[0] for name in tables] == ["ToyShapes_base", "ToyShapes_novel"]  # key_step_hash
    table = json.loads(next(offline_run.glob("files/media/table/per_class/ToyShapes_base*.table.json")).read_text())
    assert table["columns"] == ["class", "accuracy"] and len(table["data"]) == 13  # ceil(25 / 2) base classes
    (summary_run,) = (runs / "base2novel" / "coop" / "report").glob("wandb/offline-run-*")
    (summary_log,) = summary_run.glob("run-*.wandb")
    summary = wandb_records(summary_log)
    assert summary["run"].job_type == "suite-summary"
    assert summary["summary"]["ToyShapes/shots4/hm"] == pytest.approx(metrics["hm"])
    assert list(summary_run.glob("files/media/table/suite/table_*.table.json"))
    assert list(summary_run.glob("files/media/images/suite/*.png"))


def test_base2novel_says_busi_has_no_such_setting_and_skips_it(capsys):
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"), "--data",
          str(CONFIGS / "data" / "BUSI.yaml"), str(CONFIGS / "data" / "BTMRI.yaml"), "--seeds", "1", "--dry-run"])
    out = capsys.readouterr().out
    assert "[suite] BUSI has no base-to-novel setting in its paper" in out
    assert "run 1 of 1: base2novel coop BTMRI shots=16 seed=1" in out and "coop BUSI" not in out


@pytest.mark.parametrize("override, names", [
    (["--data.shots", "2"], "--shots"), (["--data.shots=2"], "--shots"), (["--seed_everything", "3"], "--seeds"),
    (["--data.seed", "3"], "--seeds"), (["--data.subsample", "all"], "protocol"), (["--data.root", "x"], "--data"),
    (["--trainer.default_root_dir", "x"], "--runs"), (["--checkpoint.dirpath", "x"], "--runs"),
    (["--trainer.logger.init_args.save_dir", "x"], "--runs"), (["--ckpt_path", "x.ckpt"], "resumes"),
    (["--model.init_args.plugins", "[{name: caspl, boost_from: x.ckpt}]"], "--boost"),
    (["--model.init_args.plugins+={name: caspl, boost_from: x.ckpt}"], "--boost")])
def test_options_the_suite_sets_itself_are_refused_after_the_separator(override, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"), "--data",
              str(CONFIGS / "data" / "DTD.yaml"), "--dry-run", "--", "--trainer.max_epochs", "2", *override])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert (override[0].split("=")[0] in err or "caspl plug-in" in err) and names in err


def test_other_plugins_after_the_separator_reach_the_runs(capsys):
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"), "--data",
          str(CONFIGS / "data" / "DTD.yaml"), "--seeds", "1", "--dry-run", "--",
          "--model.init_args.plugins+={name: gram, init_from: g.ckpt}"])
    assert "--model.init_args.plugins+={name: gram, init_from: g.ckpt}" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--config", "-c", "--config="])
def test_a_config_file_after_the_separator_may_not_set_them_either(option, tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("data:\n  shots: 2\n")
    given = [f"{option}{config}"] if option.endswith("=") else [option, str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"), "--data",
              str(CONFIGS / "data" / "DTD.yaml"), "--dry-run", "--", *given])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "data.shots" in err and str(config) in err


def test_dry_run_of_a_caspl_suite_prints_stage_one_and_boost_from(tmp_path, capsys):
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "promptsrc.yaml"), "--boost",
          str(CONFIGS / "learners" / "caspl_boost.yaml"), "--data", str(CONFIGS / "data" / "DTD.yaml"), "--seeds", "1",
          "2", "--runs", str(tmp_path), "--dry-run", "--", "--trainer.max_epochs", "1", "--model.init_args.n_ctx", "2"])
    lines = capsys.readouterr().out.splitlines()
    stage_one = [line for line in lines if line.startswith("  CasPL stage 1: vlprompt fit")]
    stage_two = [line for line in lines if line.startswith("  vlprompt fit")]
    assert len(stage_one) == 2 and len(stage_two) == 2  # one boosting run per seed
    for seed, (first, second) in enumerate(zip(stage_one, stage_two), 1):
        assert "caspl_boost.yaml" in first and "--trainer.max_epochs 1" in first and "n_ctx" not in first
        boost = tmp_path.resolve() / "caspl_boost" / "DTD" / f"seed{seed}" / "checkpoints" / "last.ckpt"
        plugin = "--model.init_args.plugins+=" + json.dumps({"name": "caspl", "boost_from": str(boost)})
        assert shlex.quote(plugin) in second and "--model.init_args.n_ctx 2" in second
