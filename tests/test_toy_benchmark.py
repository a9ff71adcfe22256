"""tools/toy_benchmark.py's bookkeeping: rows rebuilt from a runs directory, merged results, table order."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("toy_benchmark", REPO / "tools" / "toy_benchmark.py")
toy_benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(toy_benchmark)


def write_run(directory, name, accuracies):
    for version, accuracy in enumerate(accuracies):
        folder = directory / name / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}")
        (folder / "metrics.csv").write_text(f"epoch,step,test/acc\n0,0,{accuracy}\n")


def test_rows_are_rebuilt_from_a_runs_directory(tmp_path):
    write_run(tmp_path, "ToyShapes-zeroshot", [50.0, 40.0])
    write_run(tmp_path, "ToyShapes-coop-seed1", [None, 60.0, 50.0])
    write_run(tmp_path, "ToyShapes-coop-seed2", [None, 70.0, 30.0])
    write_run(tmp_path, "ToyShapes-Noisy-coop+caspl-seed1", [None, 80.0, 20.0])
    write_run(tmp_path, "ToyShapes-caspl_boost-seed1", [None])  # a boosting stage: no row
    rows = toy_benchmark.rows_from_runs(tmp_path)
    assert rows["ToyShapes"]["zeroshot"]["base_acc"] == [50.0] and rows["ToyShapes"]["zeroshot"]["novel_acc"] == [40.0]
    coop = rows["ToyShapes"]["coop"]
    assert coop["seeds"] == [1, 2] and coop["base_acc"] == [60.0, 70.0] and coop["novel_acc"] == [50.0, 30.0]
    assert coop["hm"][0] == pytest.approx(2 * 60 * 50 / 110) and coop["epochs"] == 25
    assert rows["ToyShapes-Noisy"]["coop+caspl"]["base_acc"] == [80.0]
    assert set(rows) == {"ToyShapes", "ToyShapes-Noisy"}


def test_rows_of_each_data_set_are_ordered_with_their_cascades(tmp_path):
    rows = {"zeroshot": {}, "promptsrc": {}, "coop+caspl": {}, "coop": {}, toy_benchmark.STAGE1_ROW: {}}
    assert toy_benchmark.learners(rows) == ["coop", "coop+caspl", "promptsrc"]


def test_a_file_that_is_not_a_results_file_is_refused(tmp_path):
    path = tmp_path / "toy-world.json"
    path.write_text(json.dumps({"something": 1}))
    with pytest.raises(SystemExit, match="not a results file"):
        toy_benchmark.load_rows(path, fresh=False)
    assert toy_benchmark.load_rows(path, fresh=True) == {}
    assert toy_benchmark.load_rows(tmp_path / "absent.json", fresh=False) == {}


def test_boosting_prompts_of_an_earlier_run_are_found_per_data_set(tmp_path):
    for name in ("ToyShapes-caspl_boost-seed1", "ToyShapes-Noisy-caspl_boost-seed1", "ToyPalette-caspl_boost-seed2"):
        (tmp_path / name / "version_0" / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "ToyScenes-caspl_boost-seed1" / "version_0").mkdir(parents=True)  # interrupted: no checkpoint
    found = toy_benchmark.fitted_boosting(tmp_path)
    assert set(found) == {"ToyShapes", "ToyShapes-Noisy"}  # only the boosting seed's, only finished fits
    assert found["ToyShapes"] == (str(tmp_path / "ToyShapes-caspl_boost-seed1" / "version_0" / "checkpoints"
                                      / "last.ckpt"), 0.0)
    with pytest.raises(SystemExit, match="holds no"):
        toy_benchmark.fitted_boosting(tmp_path / "ToyScenes-caspl_boost-seed1")
    with pytest.raises(SystemExit, match="not a directory"):
        toy_benchmark.fitted_boosting(tmp_path / "absent")
