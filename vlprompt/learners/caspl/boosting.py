"""CasPL's first stage: boosting prompts distilled, without labels, from a larger frozen teacher CLIP."""

from __future__ import annotations

import hashlib
import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.ivlp import IVLP
from vlprompt.learners.losses import LossTerm, StepOutputs, logit_distillation
from vlprompt.learners.registry import register_learner


# Lightning notes that a learner's on_before_batch_transfer wins over a data module's; that is the intent here.
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule`")


@register_learner("caspl_boost")
class CasPLBoost(IVLP):
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
        #: Teacher image features by image content (bytes hash), filled as training images are first seen.
        self._teacher_cache: dict[str, torch.Tensor] = {}
        self._batch_keys: Optional[list[str]] = None
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

    @property
    def teacher_offloaded(self) -> bool:
        return self.teacher.device != self.clip.device

    def _teacher_back(self) -> None:
        """The teacher on the student's device again (an image the cache has not seen needs it)."""
        if self.teacher_offloaded:
            self.teacher.to(self.clip.device)
            self._teacher_text = None

    def on_train_start(self) -> None:
        # Every training image's teacher features, once, before the first step; then, off a GPU, the teacher's
        # weights leave the device (they are the larger CLIP), so the steps hold the student and its activations
        # only.
        if not self._caching():
            return
        self.fill_teacher_cache(self.trainer.datamodule.train_dataloader())
        if self.offload_teacher and self.teacher is not self.clip and self.clip.device.type != "cpu":
            self._teacher_text = self.teacher_text_features()
            self.teacher.to("cpu")
            if self.clip.device.type == "cuda":
                torch.cuda.empty_cache()

    @torch.no_grad()
    def fill_teacher_cache(self, loader) -> None:
        """Teacher image features of every image ``loader`` yields (as ``(images, ...)`` batches), keyed as training
        batches are. The global random state is left as it was, so training draws the same batches."""
        with torch.random.fork_rng(devices=[]):
            for batch in loader:
                images = batch[0]
                self._batch_keys = image_keys(images)
                try:
                    self.teacher_image_features(images.to(self.clip.device))
                finally:
                    self._batch_keys = None

    def teacher_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The student's input batch at the teacher's image size and normalisation (itself when they agree)."""
        student, teacher = self.clip.preprocess_cfg, self.teacher.preprocess_cfg
        same = all(student.get(key) == teacher.get(key) for key in ("size", "mean", "std"))
        if same:
            return images
        mean_s, std_s = (torch.tensor(student[k], device=images.device).view(1, -1, 1, 1) for k in ("mean", "std"))
        mean_t, std_t = (torch.tensor(teacher[k], device=images.device).view(1, -1, 1, 1) for k in ("mean", "std"))
        size = teacher["size"]
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        pixels = images * std_s + mean_s
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False)
        return (pixels - mean_t) / std_t

    def teacher_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised teacher image features; from the cache for images seen before (augmentation off)."""
        keys = self._batch_keys
        if keys is None:
            return self.references.image_features(self.teacher, self.teacher_inputs(images))
        missing = [i for i, key in enumerate(keys) if key not in self._teacher_cache]
        if missing:
            self._teacher_back()
            index = torch.tensor(missing, device=images.device)
            computed = self.references.image_features(self.teacher, self.teacher_inputs(images[index]))
            for i, feature in zip(missing, computed):
                self._teacher_cache[keys[i]] = feature
        return torch.stack([self._teacher_cache[key] for key in keys])

    def _caching(self) -> bool:
        # Exact only when a training image is the same tensor every epoch, i.e. without random augmentation.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return self.cache_teacher and datamodule is not None and not getattr(datamodule, "augment", True)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self._trainer is not None and self.trainer.training and self._caching():
            images, labels = batch[0], batch[1]
            return images, labels, image_keys(images)
        return batch

    def training_step(self, batch, batch_idx):
        images, labels = batch[0], batch[1]
        self._batch_keys = batch[2] if len(batch) > 2 else None
        try:
            return super().training_step((images, labels), batch_idx)
        finally:
            self._batch_keys = None

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


def image_keys(images: torch.Tensor) -> list[str]:
    """Cache keys of a batch of images: the hash of each image's bytes, on the host (before the copy to the
    device: no synchronisation, and exact)."""
    return [hashlib.sha1(image.contiguous().cpu().numpy().tobytes()).hexdigest() for image in images]
