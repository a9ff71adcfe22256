"""Procedurally generated image datasets for CPU-only runs and tests."""

from vlprompt.toy.shapes import COLOURS, SHAPES, write_shapes_dataset

__all__ = ["COLOURS", "SHAPES", "write_shapes_dataset"]
