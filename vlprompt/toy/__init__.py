"""The toy world: procedurally generated image-text data for CPU-only runs, tests and the tiny toy CLIP."""

from vlprompt.toy.world import DATASETS, DOMAIN_SHIFTS, Concept, ensure_toy_dataset, render, write_toy_dataset

__all__ = ["DATASETS", "DOMAIN_SHIFTS", "Concept", "ensure_toy_dataset", "render", "write_toy_dataset"]
