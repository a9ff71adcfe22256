"""The ``vlprompt`` command end to end: fit then test on a tiny CLIP and a generated image folder."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import vlprompt
from vlprompt.cli import create_cli
from vlprompt.cli_errors import one_line_error
from vlprompt.commands import main

from conftest import REPO

CONFIGS = REPO / "configs"


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlprompt", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def base_args(learner: str, shapes: Path) -> list:
    return ["--config", CONFIGS / "learners" / f"{learner}.yaml", "--config", CONFIGS / "clip" / "tiny-random.yaml",
            "--config", CONFIGS / "data" / "toy" / "ToyShapes.yaml", "--data.root", shapes,
            "--data.shots", 4, "--data.batch_size", 8]


@pytest.mark.slow
def test_fit_then_test_writes_small_checkpoint_and_metrics(shapes, tmp_path):
    fit = run_cli("fit", *base_args("coop", shapes), "--model.init_args.n_ctx", 8, "--trainer.max_epochs", 2,
                  "--seed_everything", 1, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "coop: 256 trainable parameters" in fit.stdout + fit.stderr
    run_dir = tmp_path / "runs" / "lightning_logs" / "version_0"
    checkpoint_path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert set(checkpoint["state_dict"]) == {"prompts.ctx"}
    assert checkpoint["state_dict"]["prompts.ctx"].shape[0] == 8
    assert checkpoint["vlprompt"]["clip"]["arch"]["text_width"] == 32
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["init_args"]["n_ctx"] == 8 and config["trainer"]["max_epochs"] == 2
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(row.get("val/acc") for row in rows) and any(row.get("train/acc") for row in rows)

    test = run_cli("test", *base_args("coop", shapes), "--model.init_args.n_ctx", 8, "--ckpt_path",
                   checkpoint_path, cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "vlprompt: test accuracy" in test.stdout and "test split" in test.stdout
    learner = vlprompt.load_learner(checkpoint_path)
    assert torch.equal(learner.prompts.ctx, checkpoint["state_dict"]["prompts.ctx"])


    validate = run_cli("validate", *base_args("coop", shapes), "--model.init_args.n_ctx", 8, "--ckpt_path",
                       checkpoint_path, cwd=tmp_path)
    assert validate.returncode == 0 and "vlprompt: val accuracy" in validate.stdout, validate.stderr[-3000:]
    assert "val split" in validate.stdout and (run_dir / "validation" / "version_0" / "metrics.json").is_file()


def run_in_process(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def print_config(args, capsys) -> dict:
    code, out, err = run_in_process(["fit", *args, "--print_config"], capsys)
    assert code in (0, None), err
    return yaml.safe_load(out)


def test_model_name_brings_that_learners_recipe_and_is_overridden_by_everything_else(shapes, capsys):
    data = ["--config", CONFIGS / "data" / "toy" / "ToyShapes.yaml", "--data.root", shapes]
    config = print_config(["--model", "kgcoop", "--config", CONFIGS / "clip" / "tiny-random.yaml", *data], capsys)
    recipe = yaml.safe_load((CONFIGS / "learners" / "kgcoop.yaml").read_text())
    assert config["model"]["class_path"] == "vlprompt.learners.kgcoop.KgCoOp"
    assert config["model"]["init_args"]["lambda_kg"] == 8.0
    assert config["data"]["batch_size"] == recipe["data"]["batch_size"] == 128
    assert config["trainer"]["max_epochs"] == recipe["trainer"]["max_epochs"] == 100
    # The CLIP config given before --model still wins over the recipe's ViT-B/16.
    assert config["model"]["init_args"]["clip"]["init_args"]["pretrained"] is None
    config = print_config([*data, "--model", "KgCoOp", "--trainer.max_epochs", "3",
                           "--config", CONFIGS / "clip" / "tiny-random.yaml"], capsys)
    assert config["trainer"]["max_epochs"] == 3 and config["data"]["batch_size"] == 128


def test_model_name_that_contradicts_a_learner_config_is_refused(shapes, capsys):
    code, _, err = run_in_process(["fit", *base_args("coop", shapes), "--model", "kgcoop"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--model kgcoop would train kgcoop with the recipe of" in err and "kgcoop.yaml instead of both" in err
    # The learner's own YAML and its name agree: nothing to refuse.
    config = print_config([*base_args("kgcoop", shapes), "--model", "kgcoop"], capsys)
    assert config["model"]["class_path"] == "vlprompt.learners.kgcoop.KgCoOp"


def test_null_pretrained_on_the_command_line_means_random_weights(shapes, capsys):
    args = [*base_args("coop", shapes)[:2], "--config", CONFIGS / "clip" / "toy.yaml", *base_args("coop", shapes)[4:]]
    cli = create_cli([*args, "--model.init_args.clip.init_args.pretrained", "null"], run=False)
    clip = cli.model.clip
    assert clip.source["pretrained"] is None
    shipped = vlprompt.load_clip("vlprompt-tiny", pretrained="toy")
    assert not torch.equal(clip.model.logit_scale, shipped.model.logit_scale) or not torch.equal(
        clip.model.token_embedding.weight, shipped.model.token_embedding.weight)


def test_help_lists_every_command_and_a_missing_or_unknown_one_is_named(capsys):
    code, out, _ = run_in_process(["--help"], capsys)
    assert code == 0 and all(name in out for name in ("fit", "validate", "test", "predict", "export", "suite", "report", "data"))
    code, _, err = run_in_process([], capsys)
    assert code == 2 and "suite" in err and "report" in err
    code, _, err = run_in_process(["suit"], capsys)
    assert code == 2 and err.strip() == ("vlprompt: error: unknown command 'suit'; choose from fit, validate, test, "
                                         "predict, export, suite, report, meta-init, data (vlprompt --help)")


def test_help_of_protocol_commands_does_not_load_lightning():
    for command in ("--help", "suite --help", "report --help", "meta-init --help"):
        script = ("import sys\nfrom vlprompt.commands import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
                  "    pass\nheavy = [m for m in ('torch', 'pytorch_lightning', 'open_clip') if m in sys.modules]\n"
                  "print('HEAVY', heavy)")
        result = subprocess.run([sys.executable, "-c", script, *command.split()], capture_output=True, text=True,
                                timeout=60)
        assert "HEAVY []" in result.stdout, (command, result.stdout[-500:], result.stderr[-500:])


@pytest.mark.slow
def test_tools_train_is_the_same_entry_point_and_errors_have_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, REPO / "tools" / "train.py", "fit", "--data.shotz", "1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "vlprompt: error: unknown key 'data.shotz'; closest valid: data.shots, data.root, data.seed")


@pytest.mark.parametrize("extra, expected", [
    (["--model.init_args.n_ctxx", "8"], "unknown key 'model.init_args.n_ctxx'; closest valid: model.init_args.n_ctx"),
    (["--trainer.max_epochz", "3"], "unknown key 'trainer.max_epochz'; closest valid: trainer.max_epochs"),
    (["--model.init_args.n_ctx", "abc"], "bad value for 'model.init_args.n_ctx': expected int, got 'abc'"),
    (["--model", "coopp"], "unknown learner 'coopp'; did you mean coop"),
    (["--data.subsample", "half"], "subsample must be one of all, base, novel, got 'half'"),
    (["--model.init_args.clip.init_args.name", "ViT-B-166"], "unknown CLIP architecture 'ViT-B-166'"),
], ids=["unknown-learner-key", "unknown-trainer-key", "bad-value", "unknown-learner", "bad-data-value", "bad-arch"])
def test_user_mistakes_give_one_line_errors(extra, expected, shapes, capsys):
    code, _, err = run_in_process(["fit", *base_args("coop", shapes), *extra], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("vlprompt: error:")]
    assert len(errors) == 1 and expected in errors[0], err[-2000:]


def test_missing_dataset_points_to_the_preparation_notes(tmp_path, capsys):
    code, _, err = run_in_process(["fit", *base_args("coop", tmp_path / "nowhere")], capsys)
    assert code == 2 and "does not exist; see datasets/README.md" in err


def test_one_line_error_condenses_nested_messages():
    message = ('Parser key "model":\n  Does not validate\n  Errors:\n    - Problem with given class_path '
               "'vlprompt.learners.CoOp':\n        Option 'n_ctxx' is not accepted\n")
    assert one_line_error(message, ["model.init_args.n_ctx", "data.shots"]) == (
        "unknown key 'model.init_args.n_ctxx'; closest valid: model.init_args.n_ctx")


@pytest.mark.slow
def test_bf16_mixed_precision_trains_fp32_prompts_on_frozen_weights_held_in_bf16(shapes, tmp_path):
    cli = create_cli(["fit", *base_args("maple", shapes), "--trainer.precision", "bf16-mixed",
                      "--trainer.max_epochs", "1", "--trainer.logger", "false", "--checkpoint.dirpath", tmp_path,
                      "--trainer.default_root_dir", tmp_path,  # with no logger, the resolved config lands here
                      "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.state.finished and cli.trainer.precision == "bf16-mixed"
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())
    # The frozen matrix weights are held in the compute dtype (no per-step casts); norms stay fp32.
    dtypes = {name: p.dtype for name, p in cli.model.clip.model.named_parameters()}
    assert dtypes["visual.transformer.resblocks.0.mlp.c_fc.weight"] == torch.bfloat16
    assert dtypes["visual.transformer.resblocks.0.ln_1.weight"] == torch.float32


def test_a_missing_config_file_is_named_and_option_prefixes_are_not_guessed(shapes, capsys):
    code, _, err = run_in_process(["fit", "--config", "/nowhere/learner.yaml"], capsys)
    assert code == 2 and "/nowhere/learner.yaml" in err and "does not exist" in err
    code, _, err = run_in_process(["fit", *base_args("coop", shapes), "--trainer.max_epoch", "8", "--print_config"],
                                  capsys)
    assert code == 2 and "unknown key 'trainer.max_epoch'" in err and "trainer.max_epochs" in err


def test_frozen_clip_reports_eval_mode_even_inside_a_training_learner(tiny_clip):
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"]).train()
    assert learner.training and not tiny_clip.training and not tiny_clip.model.training


@pytest.mark.slow
def test_pretraining_tool_refuses_a_wrong_output_name_before_training(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "pretrain_toy_clip.py"), "--out",
                             str(tmp_path / "x.pt")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "must end in .safetensors" in result.stderr
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_default_root_dir_decides_where_a_fit_goes_and_the_fit_says_where(shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", *base_args("coop", shapes), "--trainer.max_epochs", "1", "--trainer.default_root_dir", "elsewhere",
          "--trainer.enable_progress_bar", "false"])
    run_dir = Path("elsewhere") / "lightning_logs" / "version_0"
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"vlprompt: checkpoint {run_dir / 'checkpoints' / 'last.ckpt'}, config {run_dir / 'config.yaml'}")
    assert (run_dir / "metrics.csv").is_file() and not (tmp_path / "runs").exists()


def test_testing_untrained_prompts_says_so(shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["test", *base_args("coop", shapes), "--trainer.enable_progress_bar", "false"])
    assert "vlprompt: warning: test of coop without --ckpt_path scores its untrained prompts" in capsys.readouterr().err
    main(["test", *base_args("zeroshot", shapes), "--trainer.enable_progress_bar", "false"])
    assert "warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_wandb_runs_keep_their_config_beside_their_checkpoint(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["fit", *base_args("coop", shapes), "--trainer.max_epochs", "1", "--trainer.default_root_dir", "out",
            "--trainer.logger", "WandbLogger", "--trainer.logger.init_args.project", "proj",
            "--trainer.enable_progress_bar", "false"]
    for epochs in ("1", "2"):
        result = run_cli(*args, "--trainer.max_epochs", epochs, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "anonymous setting" not in result.stderr  # Lightning's unused wandb setting is not handed on
    checkpoints = sorted((tmp_path / "out" / "proj").glob("*/checkpoints/last.ckpt"))
    assert len(checkpoints) == 2
    epochs = {yaml.safe_load((c.parent.parent / "config.yaml").read_text())["trainer"]["max_epochs"] for c in checkpoints}
    assert epochs == {1, 2} and not (tmp_path / "runs").exists() and not (tmp_path / "out" / "config.yaml").exists()


def test_plain_help_of_a_lightning_command_is_kept_and_read_back_without_lightning(tmp_path, monkeypatch, capsys):
    from vlprompt import commands, help_cache

    monkeypatch.setenv("VLPROMPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "60")  # kept texts are laid out at HELP_WIDTH whatever the terminal
    code, built, _ = run_in_process(["fit", "--help"], capsys)
    assert code == 0 and "--trainer.max_epochs" in built and "--model.help" in built
    assert help_cache.cached_help("fit") == built and help_cache.cached_help("test") is None
    assert max(map(len, built.splitlines())) > 60  # laid out at HELP_WIDTH, not at the terminal's 60 columns

    def no_lightning(args):
        raise AssertionError("the kept help text should have answered")

    monkeypatch.setattr(commands, "_lightning_main", no_lightning)
    assert run_in_process(["fit", "--help"], capsys)[:2] == (0, built)
    # Anything else on the line goes to the parser, never to the kept text.
    with pytest.raises(AssertionError, match="should have answered"):
        main(["fit", "--trainer.max_epochs", "1", "--help"])
    monkeypatch.setenv("VLPROMPT_HELP_CACHE", "0")
    with pytest.raises(AssertionError, match="should have answered"):
        main(["fit", "--help"])
    monkeypatch.delenv("VLPROMPT_HELP_CACHE")

    script = ("import sys\nfrom vlprompt.commands import main\ntry:\n    main(['fit', '--help'])\nexcept SystemExit:\n"
              "    pass\nprint('HEAVY', [m for m in ('torch', 'pytorch_lightning') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout == built + "HEAVY []\n", result.stderr[-500:]

    # A new version of a package the text shows, or an edited vlprompt source, is a new key.
    with monkeypatch.context() as patched:
        patched.setattr(help_cache, "_version", lambda name: "0.0-other")
        assert help_cache.cached_help("fit") is None
    assert help_cache.cached_help("fit") == built
    # Another environment on the machine keeps its own file instead of rewriting this one (issue 31, point 9).
    kept = help_cache._cache_file("fit")
    with monkeypatch.context() as patched:
        patched.setattr(sys, "executable", "/opt/other-venv/bin/python")
        assert help_cache._cache_file("fit") != kept and help_cache.cached_help("fit") is None
    assert help_cache.cached_help("fit") == built
    kept.write_text("{damaged")
    assert help_cache.cached_help("fit") is None
