"""What learners distilled from a frozen teacher on unlabelled images share (CasPL's boosting stage, PromptKD): the
teacher's image features computed once per training image and reused, and the teacher off the device once they are.

Exact only when a training image is the same tensor every epoch, i.e. without random augmentation: with
augmentation on (or ``cache_teacher: false``) the teacher runs on every batch, as the references run it.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

# Lightning notes that a learner's on_before_batch_transfer wins over a data module's; that is the intent here.
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule`")


class CachesTeacherImages:
    """Mixin for a :class:`~vlprompt.learners.PromptLearner` with a frozen teacher.

    The learner provides :meth:`compute_teacher_image_features` (normalised, for the student's input batch; its
    :meth:`teacher_inputs` converts the batch), :meth:`teacher_device`, :meth:`teacher_preprocess_cfg` and
    :meth:`move_teacher`, sets ``cache_teacher`` and ``offload_teacher``, and reads the
    teacher's image features through :meth:`teacher_image_features`. With the cache on, every training image's
    features are computed before the first step (:meth:`fill_teacher_cache`, keyed by the image's bytes), and off a
    CPU the teacher then leaves the device (:meth:`on_teacher_offloaded` keeps what else the steps need of it).
    """

    cache_teacher: bool = True
    offload_teacher: bool = True

    def _init_teacher_cache(self) -> None:
        #: Teacher image features by image content (bytes hash), filled as training images are first seen.
        self._teacher_cache: dict[str, torch.Tensor] = {}
        self._batch_keys: Optional[list[str]] = None

    # -- what the learner provides -------------------------------------------------------------------------------
    def compute_teacher_image_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def teacher_device(self) -> torch.device:
        raise NotImplementedError

    def teacher_preprocess_cfg(self) -> dict:
        """The teacher's image size, mean and std."""
        raise NotImplementedError

    def move_teacher(self, device) -> None:
        raise NotImplementedError

    def teacher_is_student(self) -> bool:
        """Whether the teacher is the student's own frozen model (nothing to offload)."""
        return False

    def on_teacher_offloaded(self) -> None:
        """Keep on the device what the steps still need of the teacher, before it leaves."""

    def on_teacher_back(self) -> None:
        """The teacher is on the student's device again."""

    # -- the cache -----------------------------------------------------------------------------------------------
    @property
    def teacher_offloaded(self) -> bool:
        return self.teacher_device() != self.clip.device

    def _teacher_back(self) -> None:
        """The teacher on the student's device again (an image the cache has not seen needs it)."""
        if self.teacher_offloaded:
            self.move_teacher(self.clip.device)
            self.on_teacher_back()

    def on_train_start(self) -> None:
        # Every training image's teacher features, once, before the first step; then, off a CPU, the teacher's
        # weights leave the device (they are the larger CLIP), so the steps hold the student and its activations only.
        if not self._caching():
            return
        self.fill_teacher_cache(self.trainer.datamodule.train_dataloader())
        if self.offload_teacher and not self.teacher_is_student() and self.clip.device.type != "cpu":
            self.on_teacher_offloaded()
            self.move_teacher("cpu")
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
        student, teacher_cfg = self.clip.preprocess_cfg, self.teacher_preprocess_cfg()
        if all(student.get(key) == teacher_cfg.get(key) for key in ("size", "mean", "std")):
            return images
        mean_s, std_s = (torch.tensor(student[k], device=images.device).view(1, -1, 1, 1) for k in ("mean", "std"))
        mean_t, std_t = (torch.tensor(teacher_cfg[k], device=images.device).view(1, -1, 1, 1) for k in ("mean", "std"))
        size = teacher_cfg["size"]
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        pixels = images * std_s + mean_s
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False)
        return (pixels - mean_t) / std_t

    @torch.no_grad()
    def teacher_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised teacher image features; from the cache for images seen before (augmentation off)."""
        keys = self._batch_keys
        if keys is None:
            self._teacher_back()
            return self.compute_teacher_image_features(images)
        missing = [i for i, key in enumerate(keys) if key not in self._teacher_cache]
        if missing:
            self._teacher_back()
            index = torch.tensor(missing, device=images.device)
            for i, feature in zip(missing, self.compute_teacher_image_features(images[index])):
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


def image_keys(images: torch.Tensor) -> list[str]:
    """Cache keys of a batch of images: the hash of each image's bytes, on the host (before the copy to the
    device: no synchronisation, and exact)."""
    return [hashlib.sha1(image.contiguous().cpu().numpy().tobytes()).hexdigest() for image in images]


__all__ = ["CachesTeacherImages", "image_keys"]
