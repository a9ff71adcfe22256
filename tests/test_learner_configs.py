"""Every learner config in configs/learners/ names a registered learner and restates its class defaults; every
built-in learner has one, and a row in README's learner table with its paper's parameter count."""

from __future__ import annotations

import inspect
import re
from typing import Optional

import pytest
import yaml

import vlprompt
from vlprompt.learners import get_learner_class
from vlprompt.learners.registry import hyperparameter_defaults, learner_name_of

from conftest import REPO, expected_parameters

LEARNERS = vlprompt.list_learners()
CONFIGS = sorted((REPO / "configs" / "learners").glob("*.yaml"))
#: Init arguments a learner YAML may set that are not class defaults to compare (the frozen model).
NOT_DEFAULTS = {"clip", "teacher"}


@pytest.mark.parametrize("name", LEARNERS)
def test_every_learner_has_a_config(name):
    assert (REPO / "configs" / "learners" / f"{name}.yaml").is_file(), f"learner {name!r} has no config"


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_learner_config_names_the_learner_and_restates_none_of_its_defaults(path):
    """One source of truth: a learner's defaults are its class's keyword arguments; its YAML holds what the paper's
    script sets around it (the CLIP, data, trainer) and may change an option, never restate one."""
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
        assert value != default, f"{name}.yaml restates {key}={value!r}, the class default: drop it (the class holds it)"


def test_print_config_shows_the_class_defaults_the_yaml_leaves_out(capsys):
    from vlprompt.commands import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs" / "learners" / "promptsrc.yaml"), "--print_config"])
    shown = yaml.safe_load(capsys.readouterr().out)
    init = shown["model"]["init_args"]
    assert (init["n_ctx"], init["text_depth"], init["lr"], init["gpa_mean"]) == (4, 9, 0.0025, 15.0)
    assert shown["trainer"]["max_epochs"] == 20 and shown["data"]["batch_size"] == 4


def test_readme_table_has_a_row_for_every_registered_learner_and_no_other():
    readme = (REPO / "README.md").read_text()
    start = readme.index("| name | paper | trainable on ViT-B/16 | defaults |")
    rows = [line for line in readme[start:].split("\n\n", 1)[0].splitlines()[2:]]
    assert sorted(row.split("|")[1].strip().strip("`") for row in rows) == LEARNERS


@pytest.mark.parametrize("name", LEARNERS)
def test_readme_table_lists_the_learner_with_its_parameter_count(name):
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
    assert rows, f"README's learner table has no row for {name}"
    count = expected_parameters(name)  # the paper's, or for a learner of our reading a count by hand
    cells = [cell.strip() for cell in rows[0].split("|")]
    assert f"{count:,}" in cells, f"README row of {name} lacks its count {count:,}: {rows[0]}"
    # The row's paper is the one the learner's docstring cites: its authors, venue and year.
    cited = re.match(r"(?P<authors>[A-Z][\w-]+ (?:et al\.|and [A-Z][\w-]+)), (?P<venue>[A-Za-z]+ \d{4})", cells[2])
    assert cited, f"README row of {name} names no paper as 'Author et al., VENUE YEAR' (or 'A and B, ...'): {cells[2]}"
    doc = " ".join((get_learner_class(name).__doc__ or "").split())
    assert cited["authors"] in doc and cited["venue"] in doc, f"{name}'s docstring cites another paper than {cells[2]}"


MADE_UP_LEARNER = '''
"""A made-up learner for the test that a new learner is one new file (and its config)."""

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.learners.coop import CoOp
from vlprompt.learners.losses import LossTerm, StepOutputs, cross_entropy
from vlprompt.learners.registry import register_learner


@register_learner("madeup")
class ResidualCoOp(CoOp):
    """CoOp's context, a learned residual on the image features, and a named term keeping the residual small."""

    paper_trainable_parameters = 264_704  # 4 x 512 context + Linear(512, 512) on ViT-B/16

    def __init__(self, clip, classnames, templates=None, residual_weight: float = 0.1, **kwargs):
        super().__init__(clip, classnames, templates, **kwargs)
        self.residual = nn.Linear(clip.embed_dim, clip.embed_dim)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.residual_weight = residual_weight

    def image_features(self, images):
        features = super().image_features(images)
        return F.normalize(features + self.residual(features), dim=-1)

    def training_outputs(self, images, labels):
        frozen = self.frozen_image_features(images)
        image, text = F.normalize(frozen + self.residual(frozen), dim=-1), self.text_features()
        return StepOutputs(logits=self.logits(image, text), labels=labels, extras={"residual": self.residual(frozen)})

    def loss_terms(self):
        return [LossTerm("ce", 1.0, cross_entropy),
                LossTerm("residual_l2", self.residual_weight, lambda out: out.extras["residual"].pow(2).sum(-1).mean())]
'''

#: What the made-up learner must meet in the copied checkout: the feature cache and the plug-ins, by capability.
MADE_UP_CHECKS = '''
import sys
sys.path.insert(0, "tests")
import torch
import vlprompt
from conftest import tiny_config
from vlprompt.errors import ConfigError

clip = vlprompt.load_clip(tiny_config())
names = ["a", "b", "c"]
learner = vlprompt.build_learner("madeup", clip=clip, classnames=names)
print("capabilities", sorted(learner.capabilities), "frozen images", learner.image_features_are_frozen)
ctx = torch.randn(tuple(learner.text_context.ctx.shape))
from vlprompt.learners.gram.meta import save_gram
save_gram({"ctx": ctx, "regulator": {"form": "elementwise", "shape": list(ctx.shape), "logits": torch.zeros_like(ctx)},
           "n_ctx": 4, "ctx_init": None, "clip": clip.identity, "clusters": 3, "pairs": 9, "query_loss": [1.0]},
          "gram.ckpt")
taken = vlprompt.build_learner("madeup", clip=clip, classnames=names,
                               plugins=[{"name": "gram", "init_from": "gram.ckpt", "gradient_regulator": "gram.ckpt"}])
taken.setup("fit")
print("gram taken", torch.equal(taken.text_context.ctx.detach(), ctx))
try:
    vlprompt.build_learner("madeup", clip=clip, classnames=names, plugins=[{"name": "caspl", "boost_from": "x.ckpt"}])
except ConfigError as error:
    print("caspl:", error)
'''


def made_up_checkout(tmp_path, n_ctx_in_yaml: Optional[int] = None):
    """A copy of the package, tests and configs with one new learner file and its config; nothing else edited."""
    import shutil

    copy = tmp_path / "checkout"
    for part in ("vlprompt", "tests", "configs"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("README.md", "setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / part, copy / part)
    (copy / "vlprompt" / "learners" / "madeup.py").write_text(MADE_UP_LEARNER)
    (copy / "configs" / "learners" / "madeup.yaml").write_text(
        "model:\n  class_path: vlprompt.learners.madeup.ResidualCoOp\n"
        + (f"  init_args:\n    n_ctx: {n_ctx_in_yaml}\n" if n_ctx_in_yaml else "")
        + "data:\n  batch_size: 4\ntrainer:\n  max_epochs: 1\n")
    return copy


def run_pytest(checkout, *args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(checkout)}
    # In one process (-n 0): a handful of tests gain nothing from workers that each import torch and Lightning again.
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *args],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_new_learner_file_is_registered_contract_tested_and_config_checked(tmp_path, shapes):
    checkout = made_up_checkout(tmp_path)
    result = run_pytest(checkout, "tests/test_learners.py", "tests/test_learner_configs.py", "tests/test_vit_b16.py",
                        "tests/test_caspl.py", "-m", "slow or not slow", "-k", "madeup and not readme", "-rA")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = [line for line in result.stdout.splitlines() if line.startswith("PASSED") and "madeup" in line]
    for test in ("test_builds_and_forward_shape", "test_one_step_lowers_loss_and_only_prompts_get_gradients",
                 "test_training_keeps_clip_bit_identical_and_checkpoint_round_trips",
                 "test_the_feature_cache_is_refused_in_one_line_or_exact",
                 "test_learner_config_names_the_learner_and_restates_none_of_its_defaults",
                 "test_parameter_count_is_the_papers", "test_forward_runs_on_vit_b16",
                 "test_second_stage_cascades_frozen_boosting_prompts"):
        assert any(test in line for line in passed), f"{test} did not run on the made-up learner"
    # Its own image path: the cache refuses it (the contract test above) and so does CasPL's plug-in, which needs
    # the shared one; GRAM's needs a text context only, and takes it.
    import subprocess
    import sys

    checks = subprocess.run([sys.executable, "-c", MADE_UP_CHECKS], cwd=checkout, capture_output=True, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(checkout)}, timeout=300)
    assert checks.returncode == 0, checks.stderr[-3000:]
    assert "capabilities ['text_context'] frozen images False" in checks.stdout
    assert "gram taken True" in checks.stdout
    assert "caspl: plug-in 'caspl' needs the shared image path" in checks.stdout
    # Its named loss term reaches the logs of a short fit (3 steps, fewer than Lightning's default logging interval).
    fit = subprocess.run([sys.executable, "-m", "vlprompt", "fit", "--config", "configs/learners/madeup.yaml",
                          "--config", "configs/clip/toy.yaml", "--config", "configs/data/toy/ToyShapes.yaml",
                          "--data.root", str(shapes), "--data.shots", "2", "--data.batch_size", "4",
                          "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                          "--trainer.default_root_dir", str(tmp_path / "fit")],
                         cwd=checkout, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(checkout)})
    assert fit.returncode == 0, fit.stderr[-3000:]
    logged = (next((tmp_path / "fit").rglob("metrics.csv"))).read_text().splitlines()
    assert "train/residual_l2" in logged[0].split(",")
    assert sum(1 for line in logged[1:] if line.split(",")[logged[0].split(",").index("train/residual_l2")]) >= 3

    wrong = made_up_checkout(tmp_path / "wrong", n_ctx_in_yaml=4)  # a config that restates the class's default
    result = run_pytest(wrong, "tests/test_learner_configs.py", "-k", "madeup and restates")
    assert result.returncode == 1 and "restates n_ctx=4, the class default" in result.stdout
