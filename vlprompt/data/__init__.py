"""Datasets and the CoOp/Dassl data protocol.

The names are imported on first use (PEP 562): the split-file and benchmark modules need neither torch nor
Lightning, so reports and the suite's argument checks can use them without loading the data module.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageSplitDataModule": "vlprompt.data.datamodule", "image_transform": "vlprompt.data.datamodule",
    "Item": "vlprompt.data.splits", "classnames_of": "vlprompt.data.splits", "few_shot_split": "vlprompt.data.splits",
    "read_split_file": "vlprompt.data.splits", "subsample_classes": "vlprompt.data.splits",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vlprompt.data' has no attribute {name!r}")
