"""CasPL's first stage: boosting prompts distilled, without labels, from a larger frozen teacher CLIP."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.distillation import CachesTeacherImages
from vlprompt.learners.ivlp import IVLP
from vlprompt.learners.losses import LossTerm, StepOutputs, logit_distillation
from vlprompt.learners.registry import register_learner


@register_learner("caspl_boost")
class CasPLBoost(CachesTeacherImages, IVLP):
    """Boosting prompts of Cascade Prompt Learning (Wu et al., "Cascade Prompt Learning for Vision-Language Model
    Adaptation", ECCV 2024), stage 1.

    A student CLIP with IVLP deep prompts in both towers (defaults: 8 text + 8 vision tokens in every layer of
    both towers, the paper's depth 12 on ViT-B/16; random N(0, 0.02) init) learns to match a frozen larger
    ``teacher`` CLIP (the paper's: ViT-L/14) on unlabelled images: ``KL(softmax(z_T / T) || softmax(z_S / T)) *
    T^2 / batch`` with temperature ``T`` (1). The teacher's text features come from the data set's first hand
    template; its logits use the student's logit scale. No label is read: the paper trains on every training
    image of the data set with all of its class names, base and novel (its setting, which sees the novel
    classes' images and names). SGD lr 0.0025, batch 4, 20 epochs (``configs/learners/caspl_boost.yaml``):
    122,880 parameters on ViT-B/16. Stage 2 is any learner that takes the ``caspl`` plug-in
    (:mod:`vlprompt.learners.caspl.cascade`) with ``boost_from`` this fit's ``last.ckpt``.

    Deliberate differences from the reference: the teacher's image features are computed once per training
    image and reused when augmentation is off (exactly what the reference recomputes every step; keyed by the
    image's bytes); the teacher reads images at its own size and normalisation (converted from the student's
    input tensor when they differ); autocast instead of fp16 weights. With the cache on, every training image's
    teacher features are computed before the first step and the teacher then leaves the GPU
    (``offload_teacher``), so stage 1 holds only the student on the device. ``distillation_weight`` 0 switches the
    only loss term off (nothing then trains; kept for uniform ablation switches).
    """

    paper_trainable_parameters = 122_880
    uses_labels = False

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        teacher: Optional[FrozenCLIP] = None,
        n_ctx: int = 8,
        ctx_init: Optional[str] = None,
        text_depth: Optional[int] = None,
        n_vision_ctx: int = 8,
        vision_depth: Optional[int] = None,
        temperature: float = 1.0,
        distillation_weight: float = 1.0,
        cache_teacher: bool = True,
        offload_teacher: bool = True,
        lr: float = 0.0025,
        **kwargs,
    ):
        if not isinstance(teacher, FrozenCLIP):
            raise ConfigError("caspl_boost needs a teacher CLIP: model.init_args.teacher (a vlprompt.clip.FrozenCLIP, "
                              "e.g. {name: ViT-L-14, pretrained: openai})")
        if not temperature > 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        # The paper's depth 12 is every layer of ViT-B/16: None means every layer of the student.
        text_depth = clip.text_layers if text_depth is None else text_depth
        vision_depth = clip._require_vit("take boosting prompts").layers if vision_depth is None else vision_depth
        super().__init__(clip, classnames, templates, n_ctx=n_ctx, ctx_init=ctx_init, text_depth=text_depth,
                         n_vision_ctx=n_vision_ctx, vision_depth=vision_depth, lr=lr, **kwargs)
        self.teacher = teacher
        self.temperature, self.distillation_weight, self.cache_teacher = temperature, distillation_weight, cache_teacher
        self.offload_teacher = offload_teacher
        self._init_teacher_cache()
        #: The teacher's class text features, kept on the student's device while the teacher is offloaded.
        self._teacher_text: Optional[torch.Tensor] = None

    # -- the teacher ---------------------------------------------------------------------------------------------
    def teacher_text_features(self) -> torch.Tensor:
        """Frozen ``C x D`` teacher text features of the data set's first hand template."""
        if self._teacher_text is not None:
            return self._teacher_text
        return self.references.template_ensemble(self.teacher, self.classnames, self.templates[:1])

    def _on_classnames_changed(self) -> None:
        super()._on_classnames_changed()
        self._teacher_text = None

    def compute_teacher_image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.references.image_features(self.teacher, self.teacher_inputs(images))

    def teacher_device(self) -> torch.device:
        return self.teacher.device

    def teacher_preprocess_cfg(self) -> dict:
        return self.teacher.preprocess_cfg

    def move_teacher(self, device) -> None:
        self.teacher.to(device)

    def teacher_is_student(self) -> bool:
        return self.teacher is self.clip

    def on_teacher_offloaded(self) -> None:
        self._teacher_text = self.teacher_text_features()

    def on_teacher_back(self) -> None:
        self._teacher_text = None

    # -- the loss ------------------------------------------------------------------------------------------------
    def training_outputs(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        """Student and teacher logits; ``labels`` are passed through for logging only (never read by the loss)."""
        with torch.no_grad():
            teacher = self.clip.logit_scale * self.teacher_image_features(images) @ self.teacher_text_features().t()
        return StepOutputs(logits=self(images), labels=labels, extras={"teacher_logits": teacher})

    def loss_terms(self) -> list[LossTerm]:
        return [LossTerm("distillation", self.distillation_weight,
                         lambda out: logit_distillation(out.logits, out.extras["teacher_logits"], self.temperature,
                                                        normalize_by="batch"))]

