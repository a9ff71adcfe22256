"""PromptKD: a student image encoder with visual prompts, distilled without labels from a prompt-tuned larger teacher
whose class text features it then classifies against."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.base import MIXED_PRECISION_DTYPES, PromptLearner
from vlprompt.learners.checkpoint_io import content_hash, describe_clip, read_checkpoint
from vlprompt.learners.distillation import CachesTeacherImages
from vlprompt.learners.ivlp import _random_prompts
from vlprompt.learners.losses import LossTerm, StepOutputs, logit_distillation
from vlprompt.learners.registry import get_learner_class, register_learner


@register_learner("promptkd")
class PromptKD(CachesTeacherImages, PromptLearner):
    """Prompt distillation (Li et al., "PromptKD: Unsupervised Prompt Distillation for Vision-Language Models", CVPR
    2024). Reference: zhengli97/PromptKD ``trainers/promptkd.py``, ``clip/model.py``,
    ``configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml``, ``scripts/promptkd/base2new_train.sh``.

    Two stages. The teacher (``teacher_checkpoint``: the ``last.ckpt`` of a fit, in the paper PromptSRC on ViT-L/14 trained on
    the base classes with labels, ``configs/learners/promptkd-teacher.yaml``) is frozen. The student is the image
    tower of this learner's CLIP (ViT-B/16 in the paper) with IVLP's visual prompts (``n_vision_ctx`` 4 tokens after
    the patch tokens, replaced at the input of layers ``1 .. vision_depth-1``, depth 9, N(0, 0.02)) and a projector
    ``Linear(D_S, D_T) -> BatchNorm -> ReLU -> Linear(D_T, D_T)`` into the teacher's embedding space: ``h =
    normalize(P(f_S(x)))``. It classifies against the teacher's class text features ``t`` (``C x D_T``): ``z_S =
    exp(ls_S) h t^T``; it has no text encoder of its own. Training reads no label: the only loss term,
    ``distillation`` (``distillation_weight`` 1000), is ``KL(softmax(z_T / T) || softmax(z_S / T)) * T^2 / (B * C)``
    with ``z_T = exp(ls_T) v_T t^T`` the teacher's logits and ``T`` = ``temperature`` (1), as the reference's
    ``kl_div(..., reduction='sum') * T^2 / numel``. SGD lr 0.005, batch 8, 20 epochs, one warm-up epoch at 1e-5
    (``configs/learners/promptkd.yaml``): 1,013,760 parameters on ViT-B/16 with a ViT-L/14 teacher.

    Transductive (:attr:`transductive`): in base-to-novel the reference trains the student on every training image of
    every class, novel included (without labels), with all class names; the suite does so and marks such rows. With
    ``data.unlabeled_dir`` the student reads that folder instead and learns on the base classes' names only (the
    inductive variant).

    The class text features are the teacher's, computed once per class (the teacher is frozen: the reference
    recomputes the same values every step) and saved with the student (:class:`ClassTextFeatures`, with the teacher
    file's name, content hash, learner and CLIP). Evaluating classes the checkpoint holds needs no teacher; for others
    the teacher file is read again and must hold what the student was distilled from.

    Deliberate differences: the projector is two ``nn.Linear`` and a ``BatchNorm1d`` (the reference's 1x1
    convolutions on a ``B x D x 1 x 1`` view and ``BatchNorm2d`` compute the same); the teacher's image features are
    computed once per training image when augmentation is off (``cache_teacher``), and the teacher then leaves the
    GPU (``offload_teacher``), as CasPL's boosting stage does; the teacher reads images at its own size and
    normalisation; autocast instead of fp16 weights; the checkpoint of the last epoch is evaluated (the reference
    selects the epoch with the best base-class *test* accuracy, ``TEST.FINAL_MODEL best_val``); any teacher
    embedding width (the reference hard-codes 512 -> 768).
    """

    paper_trainable_parameters = 1_013_760
    uses_labels = False
    transductive = True
    teacher_recipe = ("learners/promptsrc.yaml", "recipes/promptkd/teacher.yaml")

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        teacher_checkpoint: Optional[str] = None,
        teacher_dim: Optional[int] = None,
        n_vision_ctx: int = 4,
        vision_depth: int = 9,
        temperature: float = 1.0,
        distillation_weight: float = 1000.0,
        cache_teacher: bool = True,
        offload_teacher: bool = True,
        lr: float = 0.005,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, lr=lr, **kwargs)
        clip._require_vit("take PromptKD's visual prompts")
        if not 1 <= vision_depth <= clip.vision_layers or n_vision_ctx < 1:
            raise ConfigError(f"vision_depth must be between 1 and {clip.vision_layers} and n_vision_ctx at least 1, "
                              f"got {vision_depth} and {n_vision_ctx}")
        self.teacher = Teacher(teacher_checkpoint, clip)
        if teacher_dim is not None and teacher_checkpoint is not None and Path(teacher_checkpoint).is_file() \
                and teacher_dim != self.teacher.embed_dim():
            raise ConfigError(f"teacher_dim {teacher_dim} differs from the embedding width {self.teacher.embed_dim()} of "
                              f"teacher {teacher_checkpoint!r}; leave teacher_dim unset (it is read from the teacher)")
        if teacher_dim is None:
            if teacher_checkpoint is None:
                raise ConfigError("promptkd needs a teacher: --model.init_args.teacher_checkpoint RUN/checkpoints/"
                                  "last.ckpt (a fit of configs/learners/promptsrc.yaml with configs/recipes/promptkd/"
                                  "teacher.yaml; `vlprompt suite base2novel --learner configs/learners/promptkd.yaml` "
                                  "fits it first)")
            teacher_dim = self.teacher.embed_dim()
        # Recorded, so that the student loads (vlprompt.load_learner) without reading the teacher file.
        self.hparams["teacher_dim"] = teacher_dim
        self.temperature, self.distillation_weight = temperature, distillation_weight
        self.cache_teacher, self.offload_teacher = cache_teacher, offload_teacher
        self.vision_prompts = _random_prompts(vision_depth, n_vision_ctx, clip.vision_width)
        self.projector = nn.Sequential(nn.Linear(clip.embed_dim, teacher_dim), nn.BatchNorm1d(teacher_dim),
                                       nn.ReLU(), nn.Linear(teacher_dim, teacher_dim))
        self.class_text = ClassTextFeatures()
        self._init_teacher_cache()
        #: The teacher's logit scale, kept on the student's device while the teacher is offloaded.
        self._teacher_scale: Optional[torch.Tensor] = None

    # -- the student ---------------------------------------------------------------------------------------------
    def visual_prompts(self) -> dict:
        deep = {layer: prompt for layer, prompt in enumerate(self.vision_prompts) if layer > 0}
        return {"prompts": self.vision_prompts[0], "deep_prompts": deep}

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``normalize(P(f_S(x)))``: the prompted student feature, projected into the teacher's space."""
        features = self.clip.encode_image(images, **self.visual_prompts(),
                                          checkpoint=self.activation_checkpointing and self.training)
        return F.normalize(self.projector(features.float()), dim=-1)

    def ensure_text_features(self) -> None:
        """Have the teacher compute the text features of the current classes the student does not hold yet (outside
        the compiled paths: it may read the teacher file)."""
        missing = self.class_text.missing(self.classnames)
        if missing:
            self._add_teacher_text(missing)

    def text_features(self) -> torch.Tensor:
        """The teacher's ``C x D_T`` class text features of the current classes (computed once per class)."""
        self.ensure_text_features()
        return self.class_text.lookup(self.classnames, self.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.ensure_text_features()
        return self.logits(self.image_features(images), self.cached_text_features(self.text_features))

    # -- the teacher ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _add_teacher_text(self, classnames: list[str]) -> None:
        learner = self.teacher.learner(self.clip.device, self.class_text.origin,
                                       f"promptkd has no teacher text features for {len(classnames)} of its classes "
                                       f"({', '.join(map(repr, classnames[:3]))}{' ...' if len(classnames) > 3 else ''})")
        learner.set_classnames(classnames, self.templates)
        self.class_text.add(classnames, learner.text_features().float(), self.teacher.origin())

    def teacher_logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``z_T = exp(ls_T) v_T t^T`` for the student's input batch (no gradient)."""
        with torch.no_grad():
            features = self.teacher_image_features(images).float()
            scale = self._teacher_scale if self._teacher_scale is not None else self.teacher.logit_scale()
            return scale.to(text.device) * features @ text.t()

    def compute_teacher_image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.learner(self.clip.device).image_features(self.teacher_inputs(images))

    def teacher_device(self) -> torch.device:
        return self.teacher.device

    def teacher_preprocess_cfg(self) -> dict:
        return self.teacher.learner(self.clip.device).clip.preprocess_cfg

    def move_teacher(self, device) -> None:
        self.teacher.learner(device)

    def teacher_is_student(self) -> bool:
        return self.teacher.shares_student_clip

    def on_teacher_offloaded(self) -> None:
        self._teacher_scale = self.teacher.logit_scale().detach().clone()  # what the steps still read of it

    def on_teacher_back(self) -> None:
        self._teacher_scale = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dtype = MIXED_PRECISION_DTYPES.get(str(self.trainer.precision)) if self._trainer is not None else None
        if stage == "fit" and dtype is not None:
            for model in self.teacher.learner("cpu").frozen_models.values():
                model.hold_in(dtype)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.teacher.learner(self.clip.device)
        self.ensure_text_features()  # every training class's, once, before the teacher may leave the device

    # -- the loss ------------------------------------------------------------------------------------------------
    def training_outputs(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        """Student and teacher logits over every training class; ``labels`` pass through unread."""
        text = self.text_features()
        return StepOutputs(logits=self.logits(self.image_features(images), text), labels=labels,
                           extras={"teacher_logits": self.teacher_logits(images, text)})

    def loss_terms(self) -> list[LossTerm]:
        return [LossTerm("distillation", self.distillation_weight,
                         lambda out: logit_distillation(out.logits, out.extras["teacher_logits"], self.temperature,
                                                        normalize_by="numel"))]


class Teacher:
    """The frozen teacher learner of a ``teacher_checkpoint`` file, read when first needed and kept out of the
    student's modules (never trained, never saved, shared by deep copies)."""

    def __init__(self, path: Optional[str], student: FrozenCLIP):
        self.path = str(path) if path is not None else None
        #: The student's CLIP, shared with the teacher when the teacher was learned on the same one.
        self._student = student
        self._learner: Optional[PromptLearner] = None
        self._meta: Optional[dict] = None

    def __deepcopy__(self, memo) -> "Teacher":
        return self

    def meta(self) -> dict:
        """The teacher checkpoint's ``vlprompt`` record (read once, without building anything)."""
        if self._meta is None:
            if self.path is None:
                raise ConfigError("promptkd has no teacher file: pass --model.init_args.teacher_checkpoint RUN/"
                                  "checkpoints/last.ckpt (the fit it was distilled from)")
            meta = read_checkpoint(self.path)["vlprompt"]
            cls = get_learner_class(meta["learner"])
            if not cls.image_independent_text or not cls.needs_training or meta["learner"] == "promptkd":
                raise ConfigError(f"teacher {self.path!r} holds a {meta['learner']!r} learner; a PromptKD teacher is a "
                                  "prompt learner whose class text features do not depend on the image (the paper's: "
                                  "promptsrc with configs/recipes/promptkd/teacher.yaml)")
            self._meta = meta
        return self._meta

    def embed_dim(self) -> int:
        return int(self.meta()["clip"]["arch"]["embed_dim"])

    def learner(self, device, origin: Optional[dict] = None, why: str = "") -> PromptLearner:
        """The teacher, in eval mode on ``device``; ``origin`` (what a student recorded of its teacher) must match."""
        if self._learner is None:
            if self.path is None or not Path(self.path).is_file():
                where = f"{self.path!r} does not exist" if self.path else "none was given"
                raise ConfigError(f"{why or 'promptkd needs its teacher'}, and its teacher file {where}; pass "
                                  "--model.init_args.teacher_checkpoint with the teacher's last.ckpt")
            from vlprompt.learners.checkpoint import load_learner

            same = self.meta()["clip"] == self._student.identity
            learner = load_learner(self.path, clip=self._student) if same else load_learner(self.path)
            learner.requires_grad_(False)
            self._learner = learner.eval()
            state = learner.state_dict()
            self._sha256 = content_hash([state[key] for key in sorted(state) if torch.is_tensor(state[key])])
        if origin is not None and origin.get("sha256") != self._sha256:
            raise CheckpointMismatchError(
                f"teacher {self.path!r} is not the teacher this student was distilled from ({origin.get('path')!r}, "
                f"sha256 {str(origin.get('sha256'))[:12]}); pass that file as --model.init_args.teacher_checkpoint")
        if self._learner.clip.device != torch.device(device):
            self._learner.to(device)
        return self._learner

    @property
    def shares_student_clip(self) -> bool:
        return self._learner is not None and self._learner.clip is self._student

    @property
    def device(self) -> torch.device:
        return self._learner.clip.device if self._learner is not None else torch.device("cpu")

    def logit_scale(self) -> torch.Tensor:
        return self._learner.clip.logit_scale

    def origin(self) -> dict[str, Any]:
        """What a student records of where its class text features came from."""
        meta = self.meta()
        plugins = sorted((meta.get("plugins") or {}).keys())
        return {"path": self.path, "sha256": self._sha256, "learner": meta["learner"],
                "clip": describe_clip(meta["clip"]), "plugins": plugins}


class ClassTextFeatures(nn.Module):
    """Class text features by class name and where they came from (``origin``), saved with the learner as the
    module's extra state (``class_text._extra_state`` in the checkpoint: ``classnames``, a ``C x D`` ``features``
    tensor and ``origin``)."""

    def __init__(self):
        super().__init__()
        self.features: dict[str, torch.Tensor] = {}
        self.origin: Optional[dict] = None
        #: The last lookup on its device (a training step asks for the same classes every time).
        self._stacked: Optional[tuple[tuple[str, ...], torch.Tensor]] = None

    def missing(self, classnames: Sequence[str]) -> list[str]:
        return [name for name in classnames if name not in self.features]

    def lookup(self, classnames: Sequence[str], device) -> torch.Tensor:
        names = tuple(classnames)
        if self._stacked is None or self._stacked[0] != names or self._stacked[1].device != torch.device(device):
            self._stacked = (names, torch.stack([self.features[name] for name in names]).to(device))
        return self._stacked[1]

    def add(self, classnames: Sequence[str], features: torch.Tensor, origin: dict) -> None:
        if self.origin is not None and self.origin.get("sha256") != origin.get("sha256"):
            raise CheckpointMismatchError(f"class text features from teacher {origin.get('path')!r} cannot join those "
                                          f"of teacher {self.origin.get('path')!r}")
        self.origin, self._stacked = origin, None
        for name, feature in zip(classnames, features.detach().cpu()):
            self.features[name] = feature

    def get_extra_state(self) -> dict:
        names = list(self.features)
        return {"classnames": names, "origin": self.origin,
                "features": torch.stack([self.features[n] for n in names]) if names else torch.empty(0)}

    def set_extra_state(self, state: dict) -> None:
        self.features = dict(zip(state["classnames"], state["features"].float().cpu()))
        self.origin, self._stacked = state["origin"], None


__all__ = ["PromptKD", "ClassTextFeatures"]
