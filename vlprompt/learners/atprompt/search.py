"""ATPrompt's attribute search: which combination of candidate attribute words to anchor the prompts on.

Reference: zhengli97/ATPrompt ``trainers/attributecompute.py`` and ``scripts/attribute_compute/main.sh``. Every
combination of the candidates gets a prompt of its own (its own context, N(0, 0.02), and its own attribute tokens,
N(0, 0.01), as :class:`~vlprompt.learners.atprompt.plugin.AttributePrompts` builds them on CoOp), and the logits are
their mixture ``sum_k softmax(alpha)_k exp(ls) v t_k^T``, with ``alpha`` drawn from U(0, 1). Each training step
alternates, as the reference does: one SGD step on every prompt with a training batch (cross-entropy; CoOp's recipe:
lr 0.002, momentum 0.9, weight decay 5e-4, one warm-up epoch at 1e-5, then cosine), then one Adam step on ``alpha``
(lr 0.02, betas 0.5 and 0.999, no weight decay) with a validation batch. After the last epoch the combination with
the largest weight is the choice. Defaults: 4 context and 4 attribute tokens, 40 epochs (16 shots of the base
classes, batch 32: ``tools/search_attributes.py``).

Deliberate differences: the combinations are those of ``sizes`` attributes, by default 1, 2 and 3 (the released
attributes have 1 to 3 words and ATPrompt's training takes at most 3; the reference's search enumerates only
combinations of 3 or more, ``r > 2``, which cannot give its released choices; ``sizes: [3, 4, 5]`` is the
reference's), in a fixed order (the reference shuffles them); the validation batches cycle through the validation
split (the reference takes the first batch of a fresh loader at every step: always the same images); ``alpha`` is a
parameter of its own optimiser (the reference's is a plain tensor, the same in effect).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.data.descriptions import check_attributes
from vlprompt.errors import ConfigError
from vlprompt.learners.base import dassl_schedule
from vlprompt.learners.coop import CoOp


def combinations(candidates: Sequence[str], sizes: Sequence[int]) -> list[tuple[str, ...]]:
    """Every combination of ``sizes`` candidates, in the candidates' order."""
    bad = [size for size in sizes if not 1 <= size <= len(candidates)]
    if bad:
        raise ConfigError(f"combination sizes must be between 1 and the {len(candidates)} candidates, got {bad}")
    return [combo for size in sorted(set(sizes)) for combo in itertools.combinations(candidates, size)]


class AttributeSearch(pl.LightningModule):
    """One prompt per attribute combination (a CoOp with the atprompt plug-in each), mixed by ``softmax(alpha)``."""

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], candidates: Sequence[str],
                 sizes: Sequence[int] = (1, 2, 3), n_ctx: int = 4, n_att: int = 4, lr: float = 0.002,
                 momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1, warmup_lr: float = 1e-5,
                 alpha_lr: float = 0.02):
        super().__init__()
        self.automatic_optimization = False
        candidates = check_attributes(candidates, "the candidate attributes")
        if len(set(candidates)) != len(candidates):
            raise ConfigError(f"the candidate attributes repeat a word: {candidates}")
        self.save_hyperparameters(ignore=["clip"])
        self.clip = clip
        self.combinations = combinations(candidates, sizes)
        self.prompts = nn.ModuleList(
            CoOp(clip, classnames, n_ctx=n_ctx, ctx_init=None,
                 plugins=[{"name": "atprompt", "attributes": list(combo), "n_att": n_att}])
            for combo in self.combinations)
        self.alpha = nn.Parameter(torch.rand(len(self.combinations)))
        self._validation_batches = None

    @property
    def preprocess_cfg(self) -> dict:
        """The CLIP's image size, mean and std (the data module asks its model)."""
        return self.clip.preprocess_cfg

    def weights(self) -> torch.Tensor:
        return F.softmax(self.alpha.float(), dim=0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = self.clip.encode_image(images, normalize=True)
        text = torch.stack([prompt.text_features() for prompt in self.prompts])  # K x C x D
        logits = self.clip.logit_scale * torch.einsum("bd,kcd->kbc", image, text)
        return torch.einsum("k,kbc->bc", self.weights(), logits)

    def configure_optimizers(self):
        hp = self.hparams
        prompts = torch.optim.SGD(self.prompts.parameters(), lr=hp.lr, momentum=hp.momentum,
                                  weight_decay=hp.weight_decay)
        alpha = torch.optim.Adam([self.alpha], lr=hp.alpha_lr, betas=(0.5, 0.999), weight_decay=0)
        return [prompts, alpha], [dassl_schedule(prompts, hp.warmup_epochs, hp.warmup_lr,
                                                 self.trainer.max_epochs)]

    def _validation_batch(self):
        # Cycles through the validation split (the reference re-reads its first batch at every step).
        for _ in range(2):
            if self._validation_batches is None:
                self._validation_batches = iter(self.trainer.datamodule.val_dataloader())
            try:
                return next(self._validation_batches)
            except StopIteration:
                self._validation_batches = None
        raise ConfigError("the attribute search needs a validation split with images; this data set's is empty")

    def training_step(self, batch, batch_idx):
        prompts, alpha = self.optimizers()
        images, labels = batch[0], batch[1]
        loss = F.cross_entropy(self(images), labels)
        prompts.zero_grad()
        self.manual_backward(loss)
        prompts.step()
        val_images, val_labels = (part.to(self.device) for part in self._validation_batch()[:2])
        val_loss = F.cross_entropy(self(val_images), val_labels)
        alpha.zero_grad()
        self.manual_backward(val_loss)
        alpha.step()
        self.log_dict({"search/train_loss": loss, "search/val_loss": val_loss}, prog_bar=True,
                      batch_size=labels.shape[0])

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()

    def ranking(self) -> list[tuple[tuple[str, ...], float]]:
        """Every combination with its weight, the largest first."""
        weights = self.weights().tolist()
        return sorted(zip(self.combinations, weights), key=lambda pair: -pair[1])


def search_attributes(clip: FrozenCLIP, datamodule, candidates: Sequence[str], epochs: int = 40,
                      sizes: Sequence[int] = (1, 2, 3), n_ctx: int = 4, n_att: int = 4, seed: int = 1,
                      accelerator: str = "auto", root_dir: Optional[str] = None) -> list[tuple[tuple[str, ...], float]]:
    """Run the search on ``datamodule`` (its training and validation splits) and return the ranking."""
    # The validation split feeds the weight steps, not a validation loop (Lightning would say it skips one).
    warnings.filterwarnings("ignore", message="You passed in a `val_dataloader` but have no `validation_step`")
    pl.seed_everything(seed, verbose=False)
    datamodule.setup("fit")
    search = AttributeSearch(clip, datamodule.classnames, candidates, sizes, n_ctx, n_att)
    trainer = pl.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=root_dir)
    trainer.fit(search, datamodule=datamodule)
    return search.ranking()


__all__ = ["AttributeSearch", "combinations", "search_attributes"]
