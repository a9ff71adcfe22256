"""GRAM's meta-training options (:mod:`vlprompt.learners.gram`), apart so that ``vlprompt meta-init --help`` lists
them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

#: Forms of the gradient regulator (our reading): one gate per prompt entry, or one per context token.
REGULATOR_FORMS = ("elementwise", "token")


@dataclass
class MetaConfig:
    """Meta-training options (our reading; defaults chosen on the toy world to finish within minutes on 2 cores)."""

    steps: int = 300          # outer updates
    tasks_per_step: int = 4   # tasks whose query gradients are averaged per outer update
    ways: int = 10            # pseudo-classes per task
    shots: int = 4            # support images per pseudo-class
    queries: int = 4          # query images per pseudo-class
    inner_steps: int = 5
    inner_lr: float = 0.1     # plain SGD on the context
    outer_lr: float = 1e-3    # Adam, prompt initialisation
    regulator_lr: float = 0.05  # Adam, regulator (its gradient passes through inner_lr, so it is small)
    clusters: int = 64
    cluster_sample: int = 5000  # pairs clustered by Ward (memory grows with its square); the rest join the nearest
    regulator: str = "elementwise"
    seed: int = 0


#: What each option does, for ``vlprompt meta-init --help``.
OPTION_HELP = {
    "steps": "outer (meta) updates",
    "tasks_per_step": "tasks whose query losses are averaged in one outer update",
    "ways": "pseudo-classes (caption clusters) per task",
    "shots": "support pairs per pseudo-class (the inner loop trains on them)",
    "queries": "query pairs per pseudo-class (the outer update is their loss after the inner loop)",
    "inner_steps": "SGD steps of the inner loop, each with the regulated gradient",
    "inner_lr": "learning rate of the inner loop (plain SGD on the context)",
    "outer_lr": "Adam's learning rate for the context initialisation",
    "regulator_lr": "Adam's learning rate for the regulator's gate logits",
    "clusters": "clusters of the cross-modal hierarchical clustering (pseudo-classes to draw tasks from)",
    "cluster_sample": "pairs the hierarchical clustering runs on (its memory grows with the square of this number: "
                      "about 100 MB at 5,000); in a larger corpus the other pairs join their nearest cluster centre",
    "regulator": "gate per prompt entry (elementwise) or per context token (token)",
    "seed": "seed of task sampling and initialisation",
}
