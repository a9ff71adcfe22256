"""Test accuracy of a learner on a data module, through the same Lightning test loop as ``vlprompt test``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlprompt.data import ImageSplitDataModule
    from vlprompt.learners import PromptLearner


def evaluate_accuracy(learner: PromptLearner, data: ImageSplitDataModule, **trainer_kwargs) -> float:
    """Top-1 accuracy in percent on ``data``'s test split (the learner's class names must be the data's)."""
    import pytorch_lightning as pl  # here, so that reports (which use harmonic_mean) never load Lightning

    if list(learner.classnames) != list(data.classnames):
        learner.set_classnames(data.classnames)
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(**{**options, **trainer_kwargs})
    return float(trainer.test(learner, datamodule=data, verbose=False)[0]["test/acc"])


def harmonic_mean(base: float, novel: float) -> float:
    """HM of base and novel accuracy, as the base-to-novel papers report it (computed on averages)."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
