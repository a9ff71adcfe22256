"""The learner architecture: loss terms against their formulas, frozen models (shared, never saved, rebuilt),
frozen references computed once, class texts, Gaussian prompt aggregation, per-part rates, manual optimisation."""

from __future__ import annotations

import copy
import json
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, TensorDataset

import vlprompt
from vlprompt.callbacks import GaussianPromptAggregation
from vlprompt.clip import FrozenCLIP
from vlprompt.data import ImageSplitDataModule
from vlprompt.errors import ConfigError
from vlprompt.learners import get_learner_class
from vlprompt.learners.losses import StepOutputs, feature_distance, logit_distillation

from conftest import CLASSNAMES, REPO, tiny_config

CoOp = get_learner_class("coop")


def build(name, clip, **hparams):
    torch.manual_seed(0)
    return vlprompt.build_learner(name, clip=clip, classnames=CLASSNAMES, **hparams)


# -- loss terms against their formulas -------------------------------------------------------------------------------
A = torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]])
B = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])


def test_feature_distances_match_their_formulas():
    # cos of rows: 0.6 and 0.6 -> 1 - 0.6
    assert feature_distance(A, B, "cosine").item() == pytest.approx(0.4)
    # |A - B| summed: 0.4 + 0.8 + 0 + 0 + 0.4 + 0.8 = 2.4 over 6 elements
    assert feature_distance(A, B, "l1").item() == pytest.approx(0.4)
    # squares: 0.16 + 0.64 + 0.16 + 0.64 = 1.6 over 6
    assert feature_distance(A, B, "mse").item() == pytest.approx(1.6 / 6)
    with pytest.raises(ConfigError, match="distance must be"):
        feature_distance(A, B, "l3")


def test_logit_distillation_matches_the_references_kl():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[0.5, 2.5, 0.0], [1.0, -1.0, 2.0]])
    p = teacher.softmax(-1)
    by_hand = (p * (p.log() - student.log_softmax(-1))).sum()
    # PromptSRC: F.kl_div(log_softmax(student), log_softmax(teacher), reduction="sum", log_target=True) / numel
    reference = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), reduction="sum", log_target=True)
    assert reference.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert logit_distillation(student, teacher).item() == pytest.approx(by_hand.item() / 6, rel=1e-6)
    # CasPL: temperature T, times T^2, over the batch size
    t = 2.0
    q = (teacher / t).softmax(-1)
    tempered = (q * (q.log() - (student / t).log_softmax(-1))).sum() * t * t / 2
    assert logit_distillation(student, teacher, t, "batch").item() == pytest.approx(tempered.item(), rel=1e-6)


def test_promptsrc_loss_is_its_four_weighted_terms(tiny_clip, image_batch):
    images, labels = image_batch
    learner = build("promptsrc", tiny_clip).train()
    loss = learner.training_loss(images, labels)
    out = loss.outputs
    expected = {
        "ce": F.cross_entropy(out.logits, labels),
        "text_l1": 25 * (out.text_features - out.extras["frozen_text"]).abs().mean(),
        "image_l1": 10 * (out.image_features - out.extras["frozen_image"]).abs().mean(),
        "logits_kl": F.kl_div(out.logits.log_softmax(-1), out.extras["frozen_logits"].log_softmax(-1),
                              reduction="sum", log_target=True) / out.logits.numel(),
    }
    assert set(loss.terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(loss.terms[name], value, atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(loss.total, sum(expected.values()), atol=1e-5, rtol=1e-5)
    # The frozen references are the frozen model's: image features without prompts, the un-normalised ensemble.
    torch.testing.assert_close(out.extras["frozen_image"], tiny_clip.encode_image(images, normalize=True))
    templates = learner.ensemble_templates
    raw = torch.stack([tiny_clip.encode_text(tiny_clip.tokenize([t.format(c) for t in templates])).mean(0)
                       for c in CLASSNAMES])
    torch.testing.assert_close(out.extras["frozen_text"], F.normalize(raw, dim=-1), atol=1e-5, rtol=1e-5)
    # A weight of 0 switches its term off.
    assert "text_l1" not in build("promptsrc", tiny_clip, text_loss_weight=0).training_loss(images, labels).terms


def test_kgcoop_knowledge_term_is_logged_and_can_be_switched_off(tiny_clip, image_batch, tmp_path):
    images, labels = image_batch
    learner = build("kgcoop", tiny_clip)
    trainer = brief_fit(learner, images, labels, tmp_path)
    assert {"train/ce", "train/kg", "train/loss"} <= set(trainer.logged_metrics)
    assert set(build("kgcoop", tiny_clip, lambda_kg=0).training_loss(images, labels).terms) == {"ce"}


# -- IVLP ------------------------------------------------------------------------------------------------------------
def test_ivlp_without_deep_or_visual_prompts_is_coop(tiny_clip, image_batch):
    images, _ = image_batch
    ivlp = build("ivlp", tiny_clip, text_depth=1, vision_depth=0).eval()
    coop = build("coop", tiny_clip).eval()
    torch.testing.assert_close(ivlp.prompts.ctx, coop.prompts.ctx)
    with torch.no_grad():
        torch.testing.assert_close(ivlp(images), coop(images), atol=1e-6, rtol=0)
    assert ivlp.num_trainable_parameters() == coop.num_trainable_parameters()


# -- frozen models ------------------------------------------------------------------------------------------------------
class Distilled(CoOp):
    """A made-up learner with a second frozen model, as CasPL's teacher."""

    registry_name = "coop"  # saved as a CoOp checkpoint would be; the test loads it back by class

    def __init__(self, clip: FrozenCLIP, classnames, teacher: FrozenCLIP, templates=None, **kwargs):
        super().__init__(clip, classnames, templates, **kwargs)
        self.teacher = teacher


def test_frozen_models_are_shared_by_deepcopy_and_never_saved(tiny_clip, image_batch, tmp_path):
    teacher = vlprompt.load_clip(tiny_config(text_cfg={"width": 64, "heads": 4}))
    learner = Distilled(clip=tiny_clip, classnames=CLASSNAMES, teacher=teacher)
    assert "teacher" not in learner.hparams and "clip" not in learner.hparams
    assert list(learner.frozen_models) == ["clip", "teacher"]
    twin = copy.deepcopy(learner)
    assert twin.clip is tiny_clip and twin.teacher is teacher
    assert twin.prompts.ctx is not learner.prompts.ctx
    averaged = AveragedModel(learner)
    assert averaged.module.clip is tiny_clip
    images, labels = image_batch
    trainer = brief_fit(learner, images, labels, tmp_path)
    trainer.save_checkpoint(tmp_path / "distilled.ckpt")
    checkpoint = torch.load(tmp_path / "distilled.ckpt", weights_only=True)  # no pickled model inside
    assert set(checkpoint["vlprompt"]["frozen"]) == {"clip", "teacher"}
    assert checkpoint["vlprompt"]["frozen"]["teacher"]["arch"]["text_width"] == 64
    assert set(checkpoint["state_dict"]) == {"prompts.ctx"}


def test_load_learner_rebuilds_every_frozen_model(tiny_clip, image_batch, tmp_path):
    learner = build("promptsrc", tiny_clip)
    images, labels = image_batch
    trainer = brief_fit(learner, images, labels, tmp_path)
    trainer.save_checkpoint(tmp_path / "promptsrc.ckpt")
    rebuilt = vlprompt.load_learner(tmp_path / "promptsrc.ckpt")
    assert rebuilt.clip is not tiny_clip and rebuilt.clip.identity["arch"] == tiny_clip.identity["arch"]
    reused = vlprompt.load_learner(tmp_path / "promptsrc.ckpt", clip=tiny_clip)
    learner.eval(), reused.eval()
    with torch.no_grad():
        torch.testing.assert_close(reused(images), learner(images))


def test_the_data_module_asks_the_learner_for_its_input_transform(tiny_clip):
    learner = build("coop", tiny_clip)
    assert learner.preprocess_cfg == tiny_clip.preprocess_cfg


# -- frozen references -------------------------------------------------------------------------------------------------
def test_frozen_text_references_are_computed_once_per_class_set(tiny_clip, image_batch, monkeypatch):
    images, labels = image_batch
    learner = build("kgcoop", tiny_clip)
    calls = []
    original = tiny_clip.encode_text
    monkeypatch.setattr(tiny_clip, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    for _ in range(3):
        learner.training_loss(images, labels).total.backward()
    assert len(calls) == 1
    learner.set_classnames(["a", "b"])
    learner.training_loss(images, torch.zeros_like(labels))
    assert len(calls) == 2


def test_frozen_logits_of_a_teacher(tiny_clip, image_batch):
    images, _ = image_batch
    teacher = vlprompt.load_clip(tiny_config(text_cfg={"width": 64, "heads": 4}))
    learner = build("coop", tiny_clip)
    logits = learner.references.logits(teacher, images, CLASSNAMES, ["a photo of a {}."],
                                       logit_scale=tiny_clip.logit_scale)
    text = F.normalize(teacher.encode_text(teacher.tokenize([f"a photo of a {c}." for c in CLASSNAMES]),
                                           normalize=True), dim=-1)
    expected = tiny_clip.logit_scale * teacher.encode_image(images, normalize=True) @ text.t()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


# -- class texts --------------------------------------------------------------------------------------------------------
def test_descriptions_come_with_the_classes_and_switch_with_them(shapes, tmp_path, tiny_clip):
    split = json.loads((shapes / "split_zhou_ToyShapes.json").read_text())
    names = sorted({entry[2] for entry in split["train"]})
    descriptions = {name: [f"a {name}.", f"something {name}-like."] for name in names}
    (tmp_path / "descriptions.json").write_text(json.dumps(descriptions))
    base = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", subsample="base",
                                descriptions=str(tmp_path / "descriptions.json"))
    novel = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", subsample="novel",
                                 descriptions=str(tmp_path / "descriptions.json"))
    assert list(base.class_descriptions) == base.classnames and list(novel.class_descriptions) == novel.classnames
    learner = vlprompt.build_learner("coop", clip=tiny_clip, classnames=base.classnames,
                                     descriptions=base.class_descriptions)
    assert learner.description_features().shape == (len(base.classnames), tiny_clip.embed_dim)
    learner.set_classnames(novel.classnames, novel.templates, novel.class_descriptions)
    assert learner.descriptions == novel.class_descriptions
    assert learner.description_features().shape[0] == len(novel.classnames)

    del descriptions[names[0]], descriptions[names[3]]
    (tmp_path / "partial.json").write_text(json.dumps(descriptions))
    with pytest.raises(ConfigError, match=f"lacks 2 of the {len(names)} classes: '{names[0]}', '{names[3]}'"):
        ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", descriptions="partial.json"
                             if (shapes / "partial.json").exists() else str(tmp_path / "partial.json"))
    with pytest.raises(ConfigError, match="does not exist"):
        ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", descriptions="nowhere.json")


# -- training-loop variants ---------------------------------------------------------------------------------------------
def brief_fit(learner, images, labels, root, epochs=1, callbacks=(), **trainer_options) -> pl.Trainer:
    loader = DataLoader(TensorDataset(images, labels), batch_size=3, shuffle=False)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=list(callbacks), **trainer_options)
    trainer.fit(learner, loader, **({"ckpt_path": trainer_options.pop("ckpt_path")} if "ckpt_path" in
                                    trainer_options else {}))
    return trainer


class Interrupt(Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epochs:
            trainer.should_stop = True


class RecordEpochs(Callback):
    def __init__(self):
        self.states = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_gaussian_prompt_aggregation_is_the_weighted_sum_of_epochs(tiny_clip, image_batch, tmp_path):
    images, labels = image_batch
    gpa, record = GaussianPromptAggregation(mean=2.0, std=1.0), RecordEpochs()
    learner = build("coop", tiny_clip, lr=0.5, warmup_epochs=0)
    brief_fit(learner, images, labels, tmp_path, epochs=4, callbacks=[record, gpa])
    weights = gpa.weights(4)
    assert math.isclose(sum(weights), 1.0) and weights[1] == max(weights)
    expected = sum(w * state["prompts.ctx"] for w, state in zip(weights, record.states))
    torch.testing.assert_close(learner.prompts.ctx.detach(), expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(record.states[-1]["prompts.ctx"], expected)  # the aggregate is not the last epoch


def test_aggregate_is_what_last_ckpt_holds_and_resuming_keeps_it(tiny_clip, image_batch, tmp_path):
    images, labels = image_batch

    def fit(root, resume=None, interrupt_after=None):
        learner = build("coop", tiny_clip, lr=0.5, warmup_epochs=0)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_on_train_epoch_end=True)
        loader = DataLoader(TensorDataset(images, labels), batch_size=3, shuffle=False)
        callbacks = [GaussianPromptAggregation(2.0, 1.0), checkpoint]
        if interrupt_after is not None:
            callbacks.append(Interrupt(interrupt_after))
        trainer = pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=root, limit_val_batches=0, callbacks=callbacks)
        trainer.fit(learner, loader, ckpt_path=resume)
        return learner

    whole = fit(tmp_path / "whole")
    saved = torch.load(tmp_path / "whole" / "last.ckpt", weights_only=True)["state_dict"]["prompts.ctx"]
    torch.testing.assert_close(saved, whole.prompts.ctx.detach())
    fit(tmp_path / "half", interrupt_after=2)  # a 4-epoch fit stopped after its second epoch
    resumed = fit(tmp_path / "half", resume=tmp_path / "half" / "last.ckpt")
    torch.testing.assert_close(resumed.prompts.ctx.detach(), whole.prompts.ctx.detach(), atol=1e-6, rtol=1e-6)


def test_gaussian_weights_far_from_the_mean_do_not_underflow():
    gpa = GaussianPromptAggregation(mean=300.0, std=0.5)
    assert gpa.fraction(1) == 1.0 and gpa.fraction(2) == pytest.approx(1.0)
    assert sum(gpa.weights(20)) == pytest.approx(1.0)


class TwoRates(CoOp):
    """A made-up learner training part of its prompts ten times faster."""

    def parameter_groups(self):
        return [{"params": [self.prompts.ctx], "lr": self.hparams.lr * 10}]


def test_parameter_groups_give_parts_their_own_learning_rate(tiny_clip, image_batch, tmp_path):
    learner = TwoRates(clip=tiny_clip, classnames=CLASSNAMES, lr=0.01, warmup_epochs=0)
    trainer = brief_fit(learner, *image_batch, tmp_path)
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.1)


class FirstOrderMeta(CoOp):
    """A made-up learner with Lightning's manual optimisation: an inner step on one half of the batch, the outer
    update from the other half (first order), as meta-learning learners need."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        images, labels = batch
        optimizer = self.optimizers()
        inner = copy.deepcopy(self)  # frozen CLIP shared, prompts copied
        support = inner.training_loss(images[::2], labels[::2]).total
        (grad,) = torch.autograd.grad(support, [inner.prompts.ctx])
        with torch.no_grad():
            inner.prompts.ctx -= 0.1 * grad
        query = inner.training_loss(images[1::2], labels[1::2])
        (outer,) = torch.autograd.grad(query.total, [inner.prompts.ctx])
        optimizer.zero_grad()
        self.prompts.ctx.grad = outer
        optimizer.step()
        self.log_loss(query)


def test_manual_optimisation_is_available_to_learners(tiny_clip, image_batch, tmp_path):
    learner = FirstOrderMeta(clip=tiny_clip, classnames=CLASSNAMES, warmup_epochs=0)
    before = learner.prompts.ctx.detach().clone()
    trainer = brief_fit(learner, *image_batch, tmp_path)
    assert not torch.equal(learner.prompts.ctx.detach(), before) and "train/loss" in trainer.logged_metrics
    assert all(isinstance(o, StepOutputs) for o in [learner.training_loss(*image_batch).outputs])


# -- end to end on the toy world ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ivlp", "promptsrc"])
def test_new_learners_fit_and_run_the_base_to_novel_suite(name, shapes, tmp_path, capsys):
    from vlprompt.commands import main

    configs = [str(REPO / "configs" / "learners" / f"{name}.yaml"), str(REPO / "configs" / "clip" / "toy.yaml")]
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n  num_workers: 0\n"
                    "  batch_size: 8\n  shots: 4\n")
    small = ["--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", "--model.init_args.gpa_mean", "2"]
    small = small if name == "promptsrc" else small[:4]
    main(["fit", "--config", configs[0], "--config", configs[1], "--config", str(data), "--data.subsample", "base",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "fit"), *small])
    last = next((tmp_path / "fit").rglob("last.ckpt"))
    learner = vlprompt.load_learner(last)
    assert learner.registry_name == name and learner.num_trainable_parameters() > 0
    main(["suite", "base2novel", "--learner", configs[0], "--clip", configs[1], "--data", str(data), "--seeds", "1",
          "--shots", "4", "--runs", str(tmp_path / "suite"), "--", *small])
    metrics = json.loads(next((tmp_path / "suite").rglob("metrics.json")).read_text())
    assert metrics["learner"] == name and 0 < metrics["hm"] <= 100
    capsys.readouterr()
