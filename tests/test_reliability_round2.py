"""Issue 26 (reliability, round 2): silent mislabels, non-finite options, GRAM files, meta-init inputs, unlabelled
folders, empty class folders, full disks and the messages that named the wrong thing. Each test failed before its fix.
(Signals are in test_signals.py, the suite's own options in test_suite.py.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import vlprompt
from vlprompt.errors import ConfigError
from vlprompt.learners.hyperparameters import check_hyperparameters

from conftest import REPO
from test_reliability import _namespace_mount_works, last_error_line, run_main

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
def test_non_finite_or_out_of_range_options_are_one_line(learner, option, value, says, shapes, capsys):
    code, err = run_main(fit_args(learner, shapes, f"--model.init_args.{option}={value}"), capsys)
    line = last_error_line(err)
    assert code == 2 and f"model.init_args.{option}" in line and says in line


def test_the_same_checks_apply_to_learners_built_from_python(tiny_clip):
    with pytest.raises(ConfigError, match="momentum is nan"):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"], momentum=math.nan)
    with pytest.raises(ConfigError, match="lambda_kg is inf"):
        vlprompt.build_learner("kgcoop", clip=tiny_clip, classnames=["a", "b"], lambda_kg=math.inf)
    check_hyperparameters({"lr": 0.1, "momentum": 0.0, "n_ctx": 4, "class_specific": True, "ctx_init": "a"})


def test_a_yaml_nan_is_refused_too(shapes, tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model:\n  init_args:\n    warmup_lr: .nan\n")
    code, err = run_main([*fit_args("coop", shapes), "--config", recipe], capsys)
    assert code == 2 and "model.init_args.warmup_lr is nan" in last_error_line(err)


def test_non_finite_trainer_options_are_refused(shapes, capsys):
    code, err = run_main(fit_args("coop", shapes, "--trainer.limit_train_batches", ".inf"), capsys)
    assert code == 2 and "trainer.limit_train_batches" in last_error_line(err)




# -- 4, 5. GRAM files: meta-learned on another CLIP, or holding NaN --------------------------------------------------
def gram_on(clip, path, ctx: torch.Tensor):
    from vlprompt.learners.gram.meta import save_gram

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
        with pytest.raises(CheckpointMismatchError, match=f"{option} '.*other.ckpt' was learned on the CLIP .*"
                                                          "vision_width: 32 vs 48.*run `vlprompt meta-init`"):
            vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"],
                                   plugins=[{"name": "gram", option: str(path)}])


def test_a_gram_file_of_the_same_architecture_from_other_weights_warns(tiny_clip, tmp_path, capsys):
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"])
    path = gram_on(tiny_clip, tmp_path / "same.ckpt", torch.randn(tuple(learner.prompts.ctx.shape)))
    content = torch.load(path, weights_only=True)
    content["vlprompt_gram"]["clip"]["source"] = {"name": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"}
    torch.save(content, path)
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"],
                                     plugins=[{"name": "gram", "init_from": str(path)}])
    err = capsys.readouterr().err
    assert "vlprompt: warning: init_from" in err and "laion2b_s34b_b88k" in err
    path = gram_on(tiny_clip, tmp_path / "mine.ckpt", torch.randn(tuple(learner.prompts.ctx.shape)))
    vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"],
                           plugins=[{"name": "gram", "init_from": str(path)}]).setup("fit")
    assert "warning" not in capsys.readouterr().err


def test_a_gram_file_holding_nan_is_named_at_load(tiny_clip, tmp_path):
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"])
    ctx = torch.randn(tuple(learner.prompts.ctx.shape))
    ctx[0, 0] = math.nan
    path = gram_on(tiny_clip, tmp_path / "nan.ckpt", ctx)
    with pytest.raises(ConfigError, match=r"'.*nan.ckpt' holds non-finite values in ctx"):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=["a", "b"],
                               plugins=[{"name": "gram", "gradient_regulator": str(path), "init_from": str(path)}])


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
    from vlprompt.learners.gram import meta as gram
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

    from vlprompt.learners.gram import meta as gram

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


# -- 9. an unlabelled folder under a learner that reads labels ---------------------------------------------------------
def test_unlabeled_dir_with_a_learner_that_trains_on_labels_is_refused_at_start(shapes, tmp_path, capsys):
    code, err = run_main([*fit_args("coop", shapes, "--data.unlabeled_dir", shapes / "images",
                                    "--trainer.default_root_dir", tmp_path / "runs", "--data.num_workers", 0)], capsys)
    line = last_error_line(err)
    assert code == 2 and "coop trains on labels" in line and "caspl_boost" in line and "drop data.unlabeled_dir" in line
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


# -- 10. a biomedical data set with an empty class folder and no split file ------------------------------------------
def test_empty_class_folder_without_a_split_file_is_named(tmp_path):
    from PIL import Image

    from vlprompt.data import ImageSplitDataModule

    for name, count in (("glioma_tumor", 6), ("meningioma_tumor", 0), ("no_tumor", 6)):
        folder = tmp_path / "BTMRI" / name
        folder.mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8)).save(folder / f"{index}.png")
    with pytest.raises(ConfigError, match=r"class folder '.*meningioma_tumor' is empty.*put that class's images"):
        ImageSplitDataModule(str(tmp_path), dataset="BTMRI")
    assert not list(tmp_path.glob("split_*.json"))


# -- 11. the disk fills while a checkpoint is written -------------------------------------------------------------------
FILL_DISK = '''
import pytorch_lightning as pl


class FillDiskAfterFirstEpoch(pl.Callback):
    """Fills the run's disk at the end of the second epoch, before that epoch's checkpoints are written."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            try:
                with open(trainer.default_root_dir + "/filler", "wb", buffering=0) as stream:
                    while True:
                        stream.write(b"x" * 1024)
            except OSError:  # full
                pass
'''


@pytest.mark.slow
@pytest.mark.skipif(not _namespace_mount_works(), reason="needs unshare and mount in a user namespace")
def test_a_disk_that_fills_during_a_checkpoint_names_it_and_leaves_no_empty_file(shapes, tmp_path):
    (tmp_path / "filler_callback.py").write_text(FILL_DISK)
    out = tmp_path / "out"
    out.mkdir()
    command = " ".join(map(str, [sys.executable, "-m", "vlprompt", *fit_args("coop", shapes), "--data.shots", 2,
                                 "--data.num_workers", 0, "--trainer.max_epochs", 3, "--trainer.default_root_dir", out,
                                 "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                                 "--checkpoint.dirpath", out / "checkpoints",
                                 "--trainer.callbacks+=filler_callback.FillDiskAfterFirstEpoch"]))
    result = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=512k tmpfs {out} && {command}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    line = last_error_line(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "checkpoint" in line and str(out / "checkpoints") in line and "No space left" in line, line
    # The mount is gone with the namespace: what the run saw is checked inside it instead.
    listing = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=512k tmpfs {out} && {command}"
                              f" >/dev/null 2>&1; ls -la {out}/checkpoints"], capture_output=True, text=True,
                             timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    files = [row.split() for row in listing.stdout.splitlines() if row.endswith(".ckpt")]
    assert files and all(int(row[4]) > 0 for row in files), listing.stdout
    assert not [row for row in listing.stdout.splitlines() if ".tmp-" in row], listing.stdout


# -- 12, 13. messages that named the wrong thing ----------------------------------------------------------------------
def test_clip_descriptions_name_the_model_and_its_weights():
    from vlprompt.learners.checkpoint_io import describe_clip

    assert describe_clip({"source": {"name": "ViT-B-16", "pretrained": "openai"}}) == "'ViT-B-16' (pretrained 'openai')"
    assert describe_clip({"source": {"name": {"embed_dim": 8}, "pretrained": None}}) == \
        "built from a config dict (random weights)"


def test_vmfcoop_names_the_classes_with_too_few_descriptions(tiny_clip):
    descriptions = {"red circle": ["A red circle.", "Round and red."], "green square": ["A green square."]}
    learner = vlprompt.build_learner("vmfcoop", clip=tiny_clip, classnames=list(descriptions),
                                     descriptions=descriptions)
    with pytest.raises(ConfigError, match=r"at least 2 descriptions of each; 'green square' has fewer"):
        learner.anchors()


def test_unlabelled_images_that_cannot_be_read_name_the_folder_not_a_split_file(shapes, tmp_path):
    from vlprompt.data import ImageSplitDataModule

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    module = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", shots=2,
                                  unlabeled_dir=str(folder), num_workers=0)
    with pytest.raises(ConfigError, match="data.unlabeled_dir folder") as refused:
        module.setup("fit")
    assert "split file" not in str(refused.value)
