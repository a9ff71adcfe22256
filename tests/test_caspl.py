"""CasPL: the label-free boosting stage (its loss against the formula, no labels read, the teacher cache) and the
cascade of frozen boosting prompts under a second-stage learner (layout, frozen, recorded by content hash)."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import vlprompt
from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.distillation import image_keys
from vlprompt.learners.caspl.cascade import BoostingPrompts, content_hash
from vlprompt.learners.losses import logit_distillation

from conftest import CLASSNAMES, learner_arguments, tiny_config

#: The learners the paper cascades its boosting prompts under: each must take the plug-in.
PAPERS_SECOND_STAGE = {"coop", "kgcoop", "cocoop", "maple", "ivlp", "promptsrc"}
# Every registered learner; CoOp (text only) and MaPLe (coupled deep prompts in both towers) in the fast subset.
EVERY_LEARNER = [name if name in ("coop", "maple") else pytest.param(name, marks=pytest.mark.slow)
                 for name in vlprompt.list_learners()]


def caspl(path) -> list[dict]:
    return [{"name": "caspl", "boost_from": str(path)}]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(1)
    return vlprompt.load_clip(tiny_config(embed_dim=32, text_cfg={"width": 48, "heads": 3}))


def boost_learner(clip, teacher, **hparams):
    torch.manual_seed(0)
    return vlprompt.build_learner("caspl_boost", clip=clip, teacher=teacher, classnames=CLASSNAMES, **hparams)


def fit(learner, images, labels, root, epochs=1) -> str:
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[checkpoint])
    trainer.fit(learner, DataLoader(TensorDataset(images, labels), batch_size=3))
    return str(root / "last.ckpt")


@pytest.fixture(scope="module")
def stage_one(tiny_clip, teacher, image_batch, tmp_path_factory) -> str:
    """The last.ckpt of a short boosting fit on images whose labels are all -1 (never read)."""
    images, _ = image_batch
    unlabelled = torch.full((images.shape[0],), -1)
    return fit(boost_learner(tiny_clip, teacher, lr=0.05, warmup_epochs=0), images, unlabelled,
               tmp_path_factory.mktemp("boost"), epochs=2)


def test_distillation_is_kl_times_t_squared_over_the_batch():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    t = 2.0
    p = F.softmax(teacher / t, dim=-1)
    expected = (p * (p.log() - F.log_softmax(student / t, dim=-1))).sum() * t ** 2 / 2
    assert logit_distillation(student, teacher, t, normalize_by="batch") == pytest.approx(float(expected), rel=1e-6)


def test_boosting_loss_is_distillation_to_the_teacher_with_the_students_logit_scale(tiny_clip, teacher, image_batch):
    learner = boost_learner(tiny_clip, teacher, temperature=2.0)
    images, _ = image_batch
    loss = learner.training_loss(images, torch.full((6,), -1))
    teacher_text = F.normalize(teacher.encode_text(teacher.tokenize([f"a photo of a {c}." for c in CLASSNAMES])), dim=-1)
    teacher_logits = tiny_clip.logit_scale * teacher.encode_image(images, normalize=True) @ teacher_text.t()
    expected = logit_distillation(learner(images), teacher_logits, 2.0, normalize_by="batch")
    assert set(loss.terms) == {"distillation"}
    torch.testing.assert_close(loss.total, expected, rtol=1e-5, atol=1e-6)


def test_boosting_parameters_are_the_papers_shape(tiny_clip, teacher):
    learner = boost_learner(tiny_clip, teacher)
    widths = tiny_clip.text_layers * 8 * tiny_clip.text_width + tiny_clip.vision_layers * 8 * tiny_clip.vision_width
    assert learner.num_trainable_parameters() == widths  # 12 x 8 x 512 + 12 x 8 x 768 = 122,880 on ViT-B/16
    with pytest.raises(ConfigError, match="needs a teacher CLIP"):
        vlprompt.build_learner("caspl_boost", clip=tiny_clip, classnames=CLASSNAMES)


def test_teacher_image_features_are_computed_once_per_image_without_augmentation(tiny_clip, teacher, image_batch,
                                                                                monkeypatch):
    learner = boost_learner(tiny_clip, teacher)
    images, _ = image_batch
    calls = []
    original = teacher.encode_image
    monkeypatch.setattr(teacher, "encode_image", lambda x, **kw: calls.append(x.shape[0]) or original(x, **kw))
    learner._batch_keys = image_keys(images)
    first = learner.teacher_image_features(images)
    again = learner.teacher_image_features(images)
    learner._batch_keys = None
    fresh = learner.teacher_image_features(images)
    assert calls == [6, 6]  # cached once, then recomputed only without keys
    assert torch.equal(first, again) and torch.equal(first, fresh)


def test_the_teacher_cache_is_filled_before_training_without_touching_the_random_state(tiny_clip, teacher,
                                                                                      image_batch):
    images, _ = image_batch
    learner = boost_learner(tiny_clip, teacher)
    loader = DataLoader(TensorDataset(images, torch.full((6,), -1)), batch_size=4, shuffle=True)
    state = torch.get_rng_state()
    learner.fill_teacher_cache(loader)
    assert torch.equal(torch.get_rng_state(), state)  # training then draws the batches it would have drawn
    assert len(learner._teacher_cache) == 6
    learner._batch_keys = image_keys(images)
    torch.testing.assert_close(learner.teacher_image_features(images),
                               teacher.encode_image(learner.teacher_inputs(images), normalize=True))
    assert not learner.teacher_offloaded  # the teacher leaves only a GPU (tools/bench.py --caspl-memory measures it)


@pytest.mark.parametrize("name", EVERY_LEARNER)
def test_second_stage_cascades_frozen_boosting_prompts(name, tiny_clip, stage_one, image_batch, tmp_path):
    """Every learner with the capabilities CasPL's plug-in needs takes it (the paper's six among them); every other
    is refused in one line naming what it lacks."""
    images, labels = image_batch
    arguments = learner_arguments(name, tiny_clip, CLASSNAMES)
    torch.manual_seed(0)
    plain = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, **arguments)
    capable = {"text_context", "shared_image_path"} <= plain.capabilities and name != "caspl_boost"
    assert capable or name not in PAPERS_SECOND_STAGE
    torch.manual_seed(0)
    if not capable:
        with pytest.raises(ConfigError, match="plug-in 'caspl' needs|caspl_boost learns boosting prompts"):
            vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=caspl(stage_one), **arguments)
        return
    learner = vlprompt.build_learner(name, clip=tiny_clip, classnames=CLASSNAMES, plugins=caspl(stage_one),
                                     **arguments)
    (boost,) = learner.plugins
    saved = torch.load(stage_one, weights_only=True)["state_dict"]
    assert torch.equal(boost.text[0], saved["prompts.ctx"]) and torch.equal(boost.vision[0], saved["vision_prompts.0"])
    # Only the learner's own prompts train; the boosting ones are buffers outside the state dict.
    assert learner.num_trainable_parameters() == plain.num_trainable_parameters()
    assert not any(key.startswith("boost") for key in learner.state_dict())
    # Text layout [SOT, adapting, (fixed init words,) boosting, class ...]: the boosting input tokens follow the
    # context and the words that stay fixed after it (MaPLe's "of a").
    context = learner.text_context
    n_ctx, n_boost = context.n_ctx, boost.text_tokens.shape[0]
    start = context._prefix_length + n_ctx + len(context._fixed_ids)
    torch.testing.assert_close(context.token_embeds[:, start:start + n_boost],
                               boost.text[0].expand(len(CLASSNAMES), -1, -1))
    with torch.no_grad():
        assert not torch.allclose(learner.eval()(images), plain.eval()(images))
    before = [tensor.clone() for tensor in boost.text + boost.vision]
    root = tmp_path / "stage2"
    path = fit(learner.train(), images, labels, root)
    assert all(torch.equal(a, b) for a, b in zip(before, boost.text + boost.vision))
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["vlprompt"]["plugins"]["caspl"]["sha256"] == content_hash(before)
    reloaded = vlprompt.load_learner(path, clip=tiny_clip)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(images), learner.eval()(images))


def test_second_stage_checkpoint_refuses_other_boosting_prompts(tiny_clip, teacher, stage_one, image_batch, tmp_path):
    images, labels = image_batch
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=caspl(stage_one))
    path = fit(learner, images, labels, tmp_path / "stage2")
    other = fit(boost_learner(tiny_clip, teacher, lr=0.5, warmup_epochs=0), images, labels, tmp_path / "other")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["plugins"] = caspl(other)
    torch.save(checkpoint, tmp_path / "pointed-elsewhere.ckpt")
    with pytest.raises(CheckpointMismatchError, match="holds other boosting prompts"):
        vlprompt.load_learner(tmp_path / "pointed-elsewhere.ckpt", clip=tiny_clip)
    assert BoostingPrompts(other).sha256 != BoostingPrompts(stage_one).sha256
    checkpoint["hyper_parameters"]["plugins"] = None  # trained with the plug-in, loaded without it
    torch.save(checkpoint, tmp_path / "without.ckpt")
    with pytest.raises(CheckpointMismatchError, match="was trained with the 'caspl' plug-in; pass it: "
                                                      "--model.init_args.plugins"):
        vlprompt.load_learner(tmp_path / "without.ckpt", clip=tiny_clip)


def test_a_format_2_checkpoint_with_boosting_prompts_loads_with_them(tiny_clip, stage_one, image_batch, tmp_path):
    """Checkpoints written before plug-ins named boost_from as a hyper-parameter and recorded it under 'boost'."""
    images, labels = image_batch
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=caspl(stage_one))
    checkpoint = torch.load(fit(learner, images, labels, tmp_path / "stage2"), weights_only=True)
    record = checkpoint["vlprompt"].pop("plugins")["caspl"]
    checkpoint["vlprompt"].update(format=2, boost={"path": stage_one, "sha256": record["sha256"]})
    checkpoint["hyper_parameters"].pop("plugins")
    checkpoint["hyper_parameters"]["boost_from"] = stage_one
    torch.save(checkpoint, tmp_path / "format2.ckpt")
    reloaded = vlprompt.load_learner(tmp_path / "format2.ckpt", clip=tiny_clip)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(images), learner.eval()(images))


def test_the_caspl_plugin_is_refused_where_it_cannot_apply(tiny_clip, teacher, stage_one, tmp_path):
    with pytest.raises(ConfigError, match="caspl_boost learns boosting prompts and takes none"):
        boost_learner(tiny_clip, teacher, plugins=caspl(stage_one))
    with pytest.raises(ConfigError, match="plug-in 'caspl' needs one learned text context"):
        vlprompt.build_learner("zeroshot", clip=tiny_clip, classnames=CLASSNAMES, plugins=caspl(stage_one))
    with pytest.raises(ConfigError, match="plug-in 'caspl' has no option 'boost'; did you mean 'boost_from'"):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES,
                               plugins=[{"name": "caspl", "boost": stage_one}])
    with pytest.raises(ConfigError, match="unknown plug-in 'casp'; did you mean caspl"):
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=[{"name": "casp"}])
    with pytest.raises(ConfigError, match="holds a 'coop' learner"):
        coop = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES)
        path = fit(coop, torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]), tmp_path / "coop")
        vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=caspl(path))
    other = vlprompt.load_clip(tiny_config(text_cfg={"width": 48, "heads": 3}))
    # The message tells the file's student from this learner's CLIP (issue 26, point 12).
    with pytest.raises(CheckpointMismatchError, match=r"learned on the CLIP built from a config dict \(random "
                                                      r"weights\), and this learner's is .*text_width: 32 vs 48.*"
                                                      "fit the boosting stage"):
        vlprompt.build_learner("coop", clip=other, classnames=CLASSNAMES, plugins=caspl(stage_one))


@pytest.mark.slow
def test_boosting_stage_trains_on_a_folder_of_unlabelled_images(shapes, tmp_path, capsys):
    """`data.unlabeled_dir` replaces the training split with label-free images; the boosting stage trains on them
    through the command line and logs no training accuracy (there are no labels to score)."""
    import shutil

    from vlprompt.commands import main

    from conftest import REPO

    folder = tmp_path / "unlabelled" / "nested"
    folder.mkdir(parents=True)
    for path in sorted((shapes / "images").rglob("*.png"))[:6]:
        shutil.copy(path, folder / f"{path.parent.name}-{path.name}")
    clip = REPO / "configs" / "clip" / "tiny-random.yaml"
    main(["fit", "--config", str(REPO / "configs" / "learners" / "caspl_boost.yaml"), "--config", str(clip),
          "--config", str(REPO / "configs" / "data" / "toy" / "ToyShapes.yaml"), "--data.root", str(shapes),
          "--data.unlabeled_dir", str(tmp_path / "unlabelled"), "--model.init_args.teacher.init_args.name",
          "ViT-B-32", "--model.init_args.teacher.init_args.pretrained", "null", "--trainer.max_epochs", "1",
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
          "--trainer.log_every_n_steps", "1"])
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = (run / "metrics.csv").read_text()
    assert "train/loss" in metrics and "train/acc" not in metrics
    capsys.readouterr()


@pytest.mark.slow
def test_suite_runs_the_boosting_stage_once_per_data_set_and_seed(shapes, tmp_path, capsys):
    from vlprompt.commands import main

    from conftest import REPO

    configs = REPO / "configs"
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n  num_workers: 0\n"
                    "  augment: false\n")
    short = tmp_path / "short-boost.yaml"  # a tiny random teacher, for the test
    teacher = tiny_config(text_cfg={"width": 48, "heads": 3})
    short.write_text(yaml.safe_dump({"model": {"init_args": {"teacher": {
        "class_path": "vlprompt.clip.FrozenCLIP", "init_args": {"name": teacher, "pretrained": None}}}},
        "trainer": {"enable_progress_bar": False}}))
    runs = tmp_path / "runs"

    def suite(learner: str, epochs: str = "1") -> str:
        main(["suite", "base2novel", "--learner", str(configs / "learners" / f"{learner}.yaml"), "--clip",
              str(configs / "clip" / "tiny-random.yaml"), "--data", str(data), "--seeds", "1", "2", "--shots", "2",
              "--runs", str(runs), "--boost", str(configs / "learners" / "caspl_boost.yaml"), str(short), "--",
              "--trainer.max_epochs", epochs, "--trainer.enable_progress_bar", "false", "--model.init_args.n_ctx", "2"])
        return capsys.readouterr().out

    out = suite("coop")
    assert out.count("boosting prompts (CasPL stage 1)") == 2  # one per seed
    out = suite("maple")  # a second learner reuses them
    assert "boosting prompts (CasPL stage 1)" not in out
    metrics = sorted(runs.rglob("metrics.json"))
    assert {p.parts[-4] for p in metrics} == {"coop+caspl", "maple+caspl"}
    records = sorted(runs.glob("caspl_boost/*/seed*/boost.json"))
    assert len(records) == 2
    # --trainer.* after -- reaches stage 1 (caspl_boost.yaml says 20 epochs); --model.* is the learner's only.
    for record in records:
        assert json.loads(record.read_text())["overrides"] == ["--trainer.max_epochs", "1",
                                                              "--trainer.enable_progress_bar", "false"]
        stage_one = yaml.safe_load(next(record.parent.rglob("config.yaml")).read_text())
        assert stage_one["trainer"]["max_epochs"] == 1 and stage_one["model"]["init_args"]["n_ctx"] == 8
    # Another suite asking for those prompts under other stage-1 overrides is refused, naming the folder.
    with pytest.raises(SystemExit) as stopped:
        suite("kgcoop", epochs="2")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "was fitted with the overrides" in err and str(records[0].parent) in err


def test_a_learner_with_boosting_prompts_refuses_the_feature_cache_in_one_line(tiny_clip, stage_one, shapes):
    """Boosting prompts change a CoOp's image features: the cache asks the learner, not its class (issue 27's crash:
    a raw conv2d error when the cached features reached the image tower)."""
    import types

    from vlprompt.data import ImageSplitDataModule

    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=CLASSNAMES, plugins=caspl(stage_one))
    data = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", shots=2, num_workers=0,
                                cache_image_features=True)
    data.trainer = types.SimpleNamespace(lightning_module=learner)
    data.setup("fit")
    with pytest.raises(ConfigError, match="coop changes the image features .* set data.cache_image_features false"):
        data.train_dataloader()
