"""PromptKD: the student, its teacher's class text features and where a checkpoint keeps them, the distillation
term against its formula, refusals; and equality with its reference code (zhengli97/PromptKD@ec244f7) on shared
random ViT-B/16 (student) and ViT-L/14 (teacher) weights.

The reference numbers were printed by ``trainers/promptkd.py`` (``CustomCLIP``, ``CustomCLIP_teacher``, the loss of
``forward_backward``) with its ``clip/model.py``, run from a scratch folder outside this repository with its Dassl
imports stubbed and its ``.half()`` casts made identities (fp32), ``MODAL base2novel``, every learned tensor copied
from the vlprompt teacher (a promptsrc learner) and student below (docs/reproducing.md, "Equal to the reference
code"; the command: ``python run_ref.py``). Only the numbers are kept.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import vlprompt
import vlprompt.learners.checkpoint as checkpoint_module
from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.losses import logit_distillation

from conftest import (
    CLASSNAMES, REPO, STORED_REFERENCE_TOLERANCE, learner_arguments, save_fitted, teacher_checkpoint)

REFERENCE = {
    "parameters": 1_013_760,
    "teacher_logits": [-0.068214, -0.063448, 0.303014, -0.091368, -0.001662, 0.399014, 0.019611, 0.024151, 0.399951],
    "logits": [-0.9217955, -0.8810394, -1.0882827, -0.8316869, -0.7711229, -1.0287575, -0.8402023, -0.7871327,
               -1.0514039],
    "loss": 8.274962425231934,
    # VPT, the first deep VPT, the projector's first layer, the BatchNorm weight, the projector's last layer
    "gradient_norms": [0.8810632228851318, 0.8968123197555542, 185.5218505859375, 6.399972438812256,
                       314.50128173828125],
    "logits_after_step": [-3.3361492, -2.9696474, 3.2411921, -3.2223752, -2.923393, 3.29248, -3.1353254, -3.0113106,
                          3.256186],
}


def seeded(learner, seed: int, batchnorm: str = "") -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in learner.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02 + float(name == batchnorm))


@pytest.mark.slow
def test_promptkd_equals_the_reference_code(tmp_path, monkeypatch):
    names = ["dog", "cat", "sea turtle"]
    torch.manual_seed(0)
    student_clip = vlprompt.load_clip("ViT-B-16-quickgelu")
    torch.manual_seed(1)
    teacher_clip = vlprompt.load_clip("ViT-L-14-quickgelu")
    teacher = vlprompt.build_learner("promptsrc", clip=teacher_clip, classnames=names)
    seeded(teacher, 3)
    path = save_fitted(teacher, tmp_path / "teacher.ckpt")
    load = checkpoint_module.load_learner  # the teacher on these random weights, not on freshly drawn ones
    monkeypatch.setattr(checkpoint_module, "load_learner", lambda file, **kw: load(file, clip=teacher_clip))
    student = vlprompt.build_learner("promptkd", clip=student_clip, classnames=names, teacher_checkpoint=path)
    seeded(student, 4, batchnorm="projector.1.weight")
    assert student.num_trainable_parameters() == REFERENCE["parameters"]
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    student.eval()
    with torch.no_grad():
        text = student.text_features()
        teacher_logits = student.teacher_logits(images, text).flatten()
        logits = student(images).flatten()
    assert (teacher_logits - torch.tensor(REFERENCE["teacher_logits"])).abs().max() <= STORED_REFERENCE_TOLERANCE
    assert (logits - torch.tensor(REFERENCE["logits"])).abs().max() <= STORED_REFERENCE_TOLERANCE
    student.train()
    loss = student.training_loss(images, torch.zeros(3, dtype=torch.long)).total
    assert abs(loss.item() - REFERENCE["loss"]) <= 1e-4 * REFERENCE["loss"]
    loss.backward()
    stepped = [student.vision_prompts[0], student.vision_prompts[1], student.projector[0].weight,
               student.projector[1].weight, student.projector[3].weight]
    norms = torch.tensor([p.grad.norm().item() for p in stepped])
    assert ((norms - torch.tensor(REFERENCE["gradient_norms"])).abs() / norms).max() <= STORED_REFERENCE_TOLERANCE
    hp = student.hparams
    torch.optim.SGD(student.parameter_groups(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay).step()
    student.eval()
    with torch.no_grad():
        after = student(images).flatten()
    # Relative: the step is large (weight 1000 on a random projector: gradient norms in the hundreds), so fp32
    # summation order shows as 3e-5 on logits of about 3 (8.5e-6 of them).
    expected = torch.tensor(REFERENCE["logits_after_step"])
    assert ((after - expected).abs() / expected.abs()).max() <= STORED_REFERENCE_TOLERANCE


def build(tiny_clip, classnames=CLASSNAMES, **options):
    torch.manual_seed(0)
    arguments = {**learner_arguments("promptkd", tiny_clip, CLASSNAMES), **options}
    return vlprompt.build_learner("promptkd", clip=tiny_clip, classnames=classnames, **arguments)


def test_the_distillation_term_is_kl_times_t_squared_over_batch_times_classes():
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    for temperature in (1.0, 2.0):
        p_teacher = F.softmax(teacher / temperature, dim=-1)
        kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / temperature, dim=-1))).sum()
        expected = kl * temperature ** 2 / 20
        torch.testing.assert_close(logit_distillation(student, teacher, temperature, "numel"), expected)


def test_the_student_classifies_with_the_teachers_text_features_through_its_projector(tiny_clip, image_batch):
    learner = build(tiny_clip)
    images, _ = image_batch
    teacher = vlprompt.load_learner(learner.teacher.path, clip=tiny_clip)
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), teacher.text_features())
        learner.eval()
        features = tiny_clip.encode_image(images, **learner.visual_prompts())
        expected = tiny_clip.logit_scale * F.normalize(learner.projector(features), dim=-1) @ teacher.text_features().t()
        torch.testing.assert_close(learner(images), expected)
    # What it learns: deep visual prompts (4 tokens, depth 9) and the projector; no text encoder, no labels.
    width, dim = tiny_clip.vision_width, tiny_clip.embed_dim
    assert learner.num_trainable_parameters() == 9 * 4 * width + (dim * dim + dim) * 2 + 2 * dim
    assert not learner.uses_labels and learner.transductive


def test_the_loss_reads_no_label_and_trains_every_part(tiny_clip, image_batch):
    learner = build(tiny_clip)
    images, labels = image_batch
    learner.train()
    first = learner.training_loss(images, labels)
    second = learner.training_loss(images, torch.zeros_like(labels))
    assert list(first.terms) == ["distillation"]
    torch.testing.assert_close(first.total, second.total)
    teacher_logits = first.outputs.extras["teacher_logits"]
    torch.testing.assert_close(first.total, 1000.0 * logit_distillation(first.outputs.logits, teacher_logits))
    first.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters() if p.requires_grad)


def test_a_checkpoint_holds_the_class_text_features_and_their_origin(tiny_clip, image_batch, tmp_path):
    learner = build(tiny_clip)
    images, _ = image_batch
    learner.eval()
    with torch.no_grad():
        expected = learner(images)
    state = learner.state_dict()
    record = state["class_text._extra_state"]
    assert record["classnames"] == CLASSNAMES and record["features"].shape == (5, tiny_clip.embed_dim)
    assert record["origin"]["learner"] == "promptsrc" and record["origin"]["path"] == learner.teacher.path
    assert len(record["origin"]["sha256"]) == 64
    # Loaded without the teacher file: the student needs only what its checkpoint holds.
    path = save_fitted(learner, tmp_path / "student.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["teacher_checkpoint"] = str(tmp_path / "gone.ckpt")
    torch.save(checkpoint, path)
    loaded = vlprompt.load_learner(path, clip=tiny_clip).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected)
        loaded.set_classnames(CLASSNAMES[3:])
        torch.testing.assert_close(loaded(images), expected[:, 3:])
    loaded.set_classnames(["orange ring"])
    with pytest.raises(ConfigError, match="no teacher text features for 1 of its classes .*'orange ring'.* does not "
                                          "exist; pass --model.init_args.teacher_checkpoint"):
        loaded(images)


def test_new_classes_need_the_very_teacher_it_was_distilled_from(tiny_clip, image_batch, tmp_path):
    learner = build(tiny_clip)
    learner.text_features()
    state = learner.state_dict()
    other = vlprompt.load_learner(learner.teacher.path, clip=tiny_clip)
    with torch.no_grad():
        other.prompts.ctx.add_(1.0)
    other_path = save_fitted(other, tmp_path / "other.ckpt")
    student = build(tiny_clip, classnames=["orange ring"], teacher_checkpoint=other_path)
    student.load_state_dict(state)
    with pytest.raises(CheckpointMismatchError, match="is not the teacher this student was distilled from"):
        student(image_batch[0])


def test_deep_copies_share_the_teacher(tiny_clip):
    learner = build(tiny_clip)
    assert copy.deepcopy(learner).teacher is learner.teacher


@pytest.mark.parametrize("options, message", [
    ({"teacher_checkpoint": None}, "promptkd needs a teacher: --model.init_args.teacher_checkpoint"),
    ({"vision_depth": 0}, "vision_depth must be between 1 and"),
    ({"n_vision_ctx": 0}, "n_vision_ctx at least 1"),
])
def test_bad_promptkd_settings_are_one_line_errors(tiny_clip, options, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_clip, **options)


def test_a_teacher_must_be_a_prompt_learner_with_image_independent_text(tiny_clip, tmp_path):
    cocoop = vlprompt.build_learner("cocoop", clip=tiny_clip, classnames=CLASSNAMES)
    path = save_fitted(cocoop, tmp_path / "cocoop.ckpt")
    with pytest.raises(ConfigError, match="holds a 'cocoop' learner; a PromptKD teacher is a prompt learner"):
        build(tiny_clip, teacher_checkpoint=path)


def test_the_teacher_shares_the_students_clip_when_it_was_learned_on_it(tiny_clip):
    learner = build(tiny_clip)
    learner.text_features()
    assert learner.teacher.shares_student_clip and learner.teacher_is_student()
    assert teacher_checkpoint(tiny_clip) == learner.teacher.path


@pytest.mark.slow
def test_a_fit_without_augmentation_computes_the_teachers_image_features_once(tiny_clip, shapes, tmp_path):
    import pytorch_lightning as pl

    from vlprompt.data import ImageSplitDataModule

    data = ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", shots=1, batch_size=8,
                                num_workers=0, augment=False)
    learner = build(tiny_clip, classnames=data.classnames)
    computed = []
    original = type(learner).compute_teacher_image_features
    learner.compute_teacher_image_features = lambda images: computed.append(len(images)) or original(learner, images)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(learner, datamodule=data)
    assert sum(computed) == len(data.split["train"]) == len(learner._teacher_cache)  # once per image, two epochs
    assert learner.class_text.missing(data.classnames) == []  # every training class's text, computed at fit start


def test_the_suite_fits_promptkd_transductively_unless_the_images_come_from_a_folder(tmp_path, monkeypatch):
    from vlprompt.eval import base2novel, suite

    seen = []
    monkeypatch.setattr(base2novel, "base_to_novel", lambda args, trains, resume, transductive: seen.append(
        transductive) or {"base_acc": 50.0, "novel_acc": 50.0, "hm": 50.0, "data": {}})
    learner = REPO / "configs" / "learners" / "promptkd.yaml"
    plain = tmp_path / "plain.yaml"
    plain.write_text("data:\n  root: x\n")
    folder = tmp_path / "folder.yaml"
    folder.write_text("data:\n  root: x\n  unlabeled_dir: images\n")
    for data, overrides in ((plain, []), (folder, []), (plain, ["--data.unlabeled_dir", "images"])):
        metrics = suite.run_one("base2novel", learner, None, data, 1, 16, tmp_path / f"run{len(seen)}", overrides)
        assert metrics.get("transductive", False) is (seen[-1] is True)
    assert seen == [True, False, False]
    coop = suite.run_one("base2novel", REPO / "configs" / "learners" / "coop.yaml", None, plain, 1, 16,
                         tmp_path / "coop")
    assert seen[-1] is False and "transductive" not in coop
