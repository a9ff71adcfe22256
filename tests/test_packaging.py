"""An installed vlprompt behaves as a checkout (issue 27): the wheel carries the recipes of configs/, and from outside
any checkout `--model coop` brings CoOp's recipe and the suite finds its default data sets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "vlprompt", "configs")


@pytest.mark.slow
def test_an_installed_wheel_finds_the_recipes_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the checkout
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("vlprompt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlprompt/configs/learners/coop.yaml" in names and "vlprompt/configs/data/ImageNet.yaml" in names
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    assert run("-c", "import vlprompt; print(vlprompt.__file__)").stdout.startswith(str(site))
    config = run("-m", "vlprompt", "fit", "--model", "coop", "--print_config").stdout
    assert "max_epochs: 200" in config and "class_path: vlprompt.learners.coop.CoOp" in config
    config = run("-m", "vlprompt", "fit", "--config", "configs/learners/kgcoop.yaml", "--print_config").stdout
    assert "max_epochs: 100" in config and "lambda_kg: 8.0" in config
    plan = run("-m", "vlprompt", "suite", "base2novel", "--learner", "configs/learners/coop.yaml", "--seeds", "1",
               "--dry-run").stdout
    assert "[suite] run 1 of 11: base2novel coop ImageNet" in plan and str(site) in plan
