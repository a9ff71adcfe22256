"""Every learner config in configs/learners/ names a registered learner and restates its class defaults; every
built-in learner has one, and a row in README's learner table with its paper's parameter count."""

from __future__ import annotations

import inspect
import re

import pytest
import yaml

import vlprompt
from vlprompt.learners import get_learner_class
from vlprompt.learners.registry import hyperparameter_defaults, learner_name_of

from conftest import REPO

LEARNERS = vlprompt.list_learners()
CONFIGS = sorted((REPO / "configs" / "learners").glob("*.yaml"))
#: Init arguments a learner YAML may set that are not class defaults to compare (the frozen model).
NOT_DEFAULTS = {"clip", "teacher"}


@pytest.mark.parametrize("name", LEARNERS)
def test_every_learner_has_a_config(name):
    assert (REPO / "configs" / "learners" / f"{name}.yaml").is_file(), f"learner {name!r} has no config"


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_learner_config_names_the_learner_and_agrees_with_its_defaults(path):
    name = path.stem
    model = yaml.safe_load(path.read_text())["model"]
    assert learner_name_of(model["class_path"]) == name, f"{name}.yaml names {model['class_path']}"
    defaults = hyperparameter_defaults(get_learner_class(name))
    for key, value in (model.get("init_args") or {}).items():
        if key in NOT_DEFAULTS:
            continue
        assert key in defaults, f"{name}.yaml sets {key!r}, which {name} does not accept"
        default = defaults[key]
        assert default is not inspect.Parameter.empty, f"{name}.yaml sets required argument {key!r}"
        assert value == default, f"{name}.yaml says {key}={value!r} but the class default is {default!r}"


@pytest.mark.parametrize("name", LEARNERS)
def test_readme_table_lists_the_learner_with_its_parameter_count(name):
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"README's learner table has no row for {name}"
    count = get_learner_class(name).paper_trainable_parameters
    cells = [cell.strip() for cell in rows[0].split("|")]
    assert f"{count:,}" in cells, f"README row of {name} lacks its count {count:,}: {rows[0]}"
    assert re.search(r"\d{4}", rows[0]), "the row names the paper and its year"


MADE_UP_LEARNER = '''
"""A made-up learner for the test that a new learner is one new file (and its config)."""

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.learners.base import PromptLearner
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.registry import register_learner


@register_learner("madeup")
class MadeUp(PromptLearner):
    """CoOp's context and a learned logit-scale offset."""

    paper_trainable_parameters = 2_049

    def __init__(self, clip, classnames, templates=None, n_ctx: int = 4, **kwargs):
        super().__init__(clip, classnames, templates, **kwargs)
        self.prompts = ContextPrompts(clip, self.classnames, n_ctx, "a photo of a")
        self.scale_offset = nn.Parameter(torch.zeros(1))

    def _on_classnames_changed(self):
        self.prompts.build(self.clip, self.classnames)

    def text_features(self):
        features = self.clip.encode_text_embeddings(self.prompts.embeddings(), self.prompts.pool_index)
        return F.normalize(features, dim=-1)

    def forward(self, images):
        text = self.cached_text_features(self.text_features)
        return self.logits(self.image_features(images), text) * self.scale_offset.exp()
'''


def made_up_checkout(tmp_path, n_ctx_in_yaml: int):
    """A copy of the package, tests and configs with one new learner file and its config; nothing else edited."""
    import shutil

    copy = tmp_path / "checkout"
    for part in ("vlprompt", "tests", "configs"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("README.md", "setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / part, copy / part)
    (copy / "vlprompt" / "learners" / "madeup.py").write_text(MADE_UP_LEARNER)
    (copy / "configs" / "learners" / "madeup.yaml").write_text(
        f"model:\n  class_path: vlprompt.learners.madeup.MadeUp\n  init_args:\n    n_ctx: {n_ctx_in_yaml}\n")
    return copy


def run_pytest(checkout, *args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(checkout)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_new_learner_file_is_registered_contract_tested_and_config_checked(tmp_path):
    checkout = made_up_checkout(tmp_path, n_ctx_in_yaml=4)
    result = run_pytest(checkout, "tests/test_learners.py", "tests/test_learner_configs.py", "tests/test_vit_b16.py",
                        "-k", "madeup and not readme", "-rA")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = [line for line in result.stdout.splitlines() if line.startswith("PASSED") and "madeup" in line]
    for test in ("test_builds_and_forward_shape", "test_one_step_lowers_loss_and_only_prompts_get_gradients",
                 "test_training_keeps_clip_bit_identical_and_checkpoint_round_trips",
                 "test_learner_config_names_the_learner_and_agrees_with_its_defaults",
                 "test_parameter_count_is_the_papers_and_forward_runs"):
        assert any(test in line for line in passed), f"{test} did not run on the made-up learner"

    wrong = made_up_checkout(tmp_path / "wrong", n_ctx_in_yaml=8)  # a config that disagrees with the class
    result = run_pytest(wrong, "tests/test_learner_configs.py", "-k", "madeup and agrees")
    assert result.returncode == 1 and "n_ctx=8" in result.stdout
