"""Issue 26 (reliability, round 2): silent mislabels, non-finite options, GRAM files, meta-init inputs, unlabelled
folders, empty class folders, full disks and the messages that named the wrong thing. Each test failed before its fix.
(Signals are in test_signals.py, the suite's own options in test_suite.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import vlprompt
from vlprompt.errors import ConfigError
from vlprompt.learners.hyperparameters import check_hyperparameters

from conftest import REPO
from test_reliability import last_error_line, run_main

CONFIGS = REPO / "configs"


def fit_args(learner: str, root, *extra) -> list:
    return ["fit", "--config", CONFIGS / "learners" / f"{learner}.yaml", "--config", CONFIGS / "clip" / "tiny-random.yaml",
            "--config", CONFIGS / "data" / "toy" / "ToyShapes.yaml", "--data.root", root, "--trainer.max_epochs", 1,
            *extra]


# -- 3. non-finite and out-of-range hyper-parameters are refused by name before anything is built -------------------
@pytest.mark.parametrize("learner, option, value, says", [
    ("coop", "momentum", ".nan", "nan"), ("coop", "momentum", "1.5", "[0, 1)"), ("coop", "lr", "-0.1", "above 0"),
    ("coop", "weight_decay", "-.inf", "-inf"), ("biomedcoop", "lambda_sccm", ".inf", "inf"),
    ("kapt", "head_residual", ".nan", "nan"), ("promptsrc", "gpa_std", "0", "above 0"),
    ("vmfcoop", "anchor_weight", "-1", "at least 0")])
def test_non_finite_or_out_of_range_options_are_one_line(learner, option, value, says, tmp_path, capsys):
    code, err = run_main(fit_args(learner, tmp_path / "no-data", f"--model.init_args.{option}={value}"), capsys)
    line = last_error_line(err)
    assert code == 2 and f"model.init_args.{option}" in line and says in line


def test_the_same_checks_apply_to_learners_built_from_python(tiny_clip):
    with pytest.raises(ConfigError, match="momentum is nan"):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"], momentum=math.nan)
    with pytest.raises(ConfigError, match="lambda_kg is inf"):
        vlprompt.build_learner("kgcoop", clip=tiny_clip, classnames=["a", "b"], lambda_kg=math.inf)
    check_hyperparameters({"lr": 0.1, "momentum": 0.0, "n_ctx": 4, "class_specific": True, "ctx_init": "a"})


def test_a_yaml_nan_is_refused_too(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model:\n  init_args:\n    warmup_lr: .nan\n")
    code, err = run_main([*fit_args("coop", tmp_path / "no-data"), "--config", recipe], capsys)
    assert code == 2 and "model.init_args.warmup_lr is nan" in last_error_line(err)


def test_non_finite_trainer_options_are_refused(tmp_path, capsys):
    code, err = run_main(fit_args("coop", tmp_path / "no-data", "--trainer.limit_train_batches", ".inf"), capsys)
    assert code == 2 and "trainer.limit_train_batches" in last_error_line(err)




# -- 4, 5. GRAM files: meta-learned on another CLIP, or holding NaN --------------------------------------------------
def gram_on(clip, path, ctx: torch.Tensor):
    from vlprompt.learners.gram import save_gram

    return save_gram({"ctx": ctx, "regulator": {"form": "elementwise", "shape": list(ctx.shape),
                                                "logits": torch.zeros_like(ctx)},
                      "n_ctx": ctx.shape[0], "ctx_init": None, "clusters": 3, "pairs": 9, "query_loss": [1.0],
                      "clip": clip.identity}, path)


def test_a_gram_file_of_another_clip_with_the_same_shapes_is_refused(tiny_clip, tmp_path):
    from conftest import tiny_config
    from vlprompt.errors import CheckpointMismatchError

    other = vlprompt.load_clip(tiny_config(vision_cfg={"width": 32, "head_width": 16}))  # same text width
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"])
    path = gram_on(other, tmp_path / "other.ckpt", torch.randn(tuple(learner.prompts.ctx.shape)))
    for option in ("init_from", "gradient_regulator"):
        learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"], **{option: str(path)})
        with pytest.raises(CheckpointMismatchError, match=f"{option} '.*other.ckpt' was meta-learned on another CLIP.*"
                                                          "vision_width: 32 vs 48"):
            learner.setup("fit")


def test_a_gram_file_of_the_same_architecture_from_other_weights_warns(tiny_clip, tmp_path, capsys):
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"])
    path = gram_on(tiny_clip, tmp_path / "same.ckpt", torch.randn(tuple(learner.prompts.ctx.shape)))
    content = torch.load(path, weights_only=True)
    content["vlprompt_gram"]["clip"]["source"] = {"name": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"}
    torch.save(content, path)
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"], init_from=str(path))
    learner.setup("fit")
    err = capsys.readouterr().err
    assert "vlprompt: warning: init_from" in err and "laion2b_s34b_b88k" in err
    path = gram_on(tiny_clip, tmp_path / "mine.ckpt", torch.randn(tuple(learner.prompts.ctx.shape)))
    vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"], init_from=str(path)).setup("fit")
    assert "warning" not in capsys.readouterr().err


def test_a_gram_file_holding_nan_is_named_at_load(tiny_clip, tmp_path):
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"])
    ctx = torch.randn(tuple(learner.prompts.ctx.shape))
    ctx[0, 0] = math.nan
    path = gram_on(tiny_clip, tmp_path / "nan.ckpt", ctx)
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"], gradient_regulator=str(path),
                                     init_from=str(path))
    with pytest.raises(ConfigError, match=r"'.*nan.ckpt' holds non-finite values in ctx"):
        learner.setup("fit")


# -- 6, 7, 8, 13. meta-init inputs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from vlprompt.toy.world import write_caption_corpus

    return write_caption_corpus(tmp_path_factory.mktemp("captions") / "ToyCaptions", size=40)


def meta_init(pairs, out, *extra) -> list:
    return ["meta-init", "--pairs", pairs, "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
            CONFIGS / "clip" / "toy.yaml", "--out", out, "--steps", 2, "--clusters", 6, "--ways", 3, "--shots", 2,
            "--queries", 1, "--tasks-per-step", 1, *extra]


def test_meta_init_refuses_captions_that_are_all_empty(corpus, tmp_path, capsys):
    import shutil

    blank = tmp_path / "blank"
    shutil.copytree(corpus, blank)
    for caption in blank.glob("*.txt"):
        caption.write_text("  \n")
    code, err = run_main(meta_init(blank, tmp_path / "gram.ckpt"), capsys)
    line = last_error_line(err)
    assert code == 2 and "40 of its 40 captions are empty" in line and "--ways 3" in line
    assert not (tmp_path / "gram.ckpt").exists()
    for caption in blank.glob("*.txt"):  # one caption for every image: too few distinct names for a task
        caption.write_text("a picture.")
    code, err = run_main(meta_init(blank, tmp_path / "gram.ckpt"), capsys)
    assert code == 2 and "1 distinct thing," in last_error_line(err)


def test_meta_init_warns_when_the_query_loss_does_not_move(corpus, tmp_path, capsys, monkeypatch):
    from vlprompt.learners import gram
    from vlprompt.meta_init import loss_did_not_move

    assert loss_did_not_move([math.log(10)] * 300).startswith("the query loss did not move in 300 steps")
    assert loss_did_not_move([2.30, 2.25, 2.31]) == "" and loss_did_not_move([2.3]) == ""
    # Every pseudo-class prompt the same: the loss is ln(ways) whatever the context, and no gradient reaches it.
    monkeypatch.setattr(gram, "cluster_names", lambda captions, features, labels: {
        int(c): "a shape" for c in labels.unique()})
    code, err = run_main(meta_init(corpus, tmp_path / "still.ckpt"), capsys)
    assert code == 0, err[-2000:]
    assert "vlprompt: warning: the query loss did not move in 2 steps (it stayed at 1.0986)" in err
    assert "fine-tune with" not in capsys.readouterr().out


@pytest.mark.parametrize("content, says", [(b"", "is empty"), (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a UTF-8 text"),
                                           (b"filepath,caption\n", "header but no pairs"),
                                           (b"path,text\na.png,x\n", "needs the columns filepath and caption")])
def test_meta_init_on_empty_binary_or_headless_csv_is_one_line(content, says, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(content)
    code, err = run_main(meta_init(pairs, tmp_path / "gram.ckpt"), capsys)
    line = last_error_line(err)
    assert code == 2 and str(pairs) in line and says in line


@pytest.mark.parametrize("option, value", [("--inner-lr", "nan"), ("--outer-lr", "inf"), ("--regulator-lr", "-1"),
                                           ("--cluster-sample", "3")])
def test_meta_init_refuses_bad_numbers(option, value, corpus, tmp_path, capsys):
    code, err = run_main(meta_init(corpus, tmp_path / "gram.ckpt", option, value), capsys)
    assert code == 2 and option in last_error_line(err)


def test_clustering_a_large_corpus_clusters_a_bounded_sample(monkeypatch):
    from sklearn.cluster import AgglomerativeClustering

    from vlprompt.learners import gram

    seen = []
    fit_predict = AgglomerativeClustering.fit_predict
    monkeypatch.setattr(AgglomerativeClustering, "fit_predict",
                        lambda self, x: seen.append(len(x)) or fit_predict(self, x))
    monkeypatch.setattr(gram, "ASSIGN_CHUNK", 1000)  # several chunks
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=generator) * 4
    truth = torch.arange(5000) % 5
    image = centres[truth] + 0.1 * torch.randn(5000, 16, generator=generator)
    text = centres[truth].flip(1) + 0.1 * torch.randn(5000, 16, generator=generator)
    labels = gram.cluster_pairs(image, text, 5, sample=400)
    assert seen == [400] and labels.shape == (5000,)
    # The five well-separated groups come out as five clusters, every pair with its group.
    assert all(len(labels[truth == group].unique()) == 1 for group in range(5)) and len(labels.unique()) == 5
    assert torch.equal(gram.cluster_pairs(image[:300], text[:300], 5, sample=400), gram.cluster_pairs(image[:300],
                                                                                                        text[:300], 5))


def test_unreadable_pair_images_do_not_mention_a_split_file(corpus, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    next(iter(sorted(broken.glob("*.png")))).write_bytes(b"not an image")
    code, err = run_main(meta_init(broken, tmp_path / "gram.ckpt"), capsys)
    line = last_error_line(err)
    assert code == 2 and "split file" not in line and "--pairs" in line
