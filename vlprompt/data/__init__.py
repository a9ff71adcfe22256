"""Datasets and the CoOp/Dassl data protocol."""

from vlprompt.data.datamodule import ImageSplitDataModule
from vlprompt.data.splits import Item, classnames_of, few_shot_split, read_split_file, subsample_classes

__all__ = ["ImageSplitDataModule", "Item", "read_split_file", "few_shot_split", "subsample_classes", "classnames_of"]
