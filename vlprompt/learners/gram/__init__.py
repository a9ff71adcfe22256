"""GRAM as a plug-in: a meta-learned prompt initialisation and a gradient regulator for any context learner.

Meta-learning and the GRAM file: :mod:`~vlprompt.learners.gram.meta` (``vlprompt meta-init`` runs it); the plug-in
(``{name: gram, init_from: FILE, gradient_regulator: FILE}``): :mod:`~vlprompt.learners.gram.plugin`.

Li et al., "Gradient-Regulated Meta-Prompt Learning for Generalizable Vision-Language Models", ICCV 2023. No
reference code is public and only the abstract was readable, so everything below is OUR READING of it, not the
paper's method; each choice is named as such and has an option.

What the abstract gives: GRAM jointly meta-learns (a) an initialisation of the soft prompts and (b) a lightweight
gradient regulating function that maps raw fine-tuning gradients to a direction that transfers across domains,
from unlabelled image-text pairs, with meta-training tasks built by a cross-modal hierarchical clustering of
those pairs; both then plug into CoOp, CoCoOp, MaPLe and other prompt learners.

Our reading:

- What is meta-learned: the text context of :class:`~vlprompt.learners.context.ContextPrompts` (``n_ctx x text
  width``, the prompt coop, cocoop, kgcoop, maple, ivlp, promptsrc, biomedcoop and vmfcoop all start from), from
  the downstream learner's own ``n_ctx`` and ``ctx_init``. Deep and visual prompts are not (the paper's UniGRAM
  does both towers; not done here).
- Tasks (``cluster_pairs``, ``sample_task``): frozen-CLIP image and caption features, each L2-normalised, are
  concatenated and clustered by scikit-learn's agglomerative (hierarchical, Ward) clustering; each cluster is a
  pseudo-class named by the caption nearest its text centroid. A task is ``ways`` clusters with ``shots`` support
  and ``queries`` query images each.
- Regulator (:class:`GradientRegulator`): a gate on the prompt gradient, ``g -> 2 sigmoid(m) * g`` with ``m``
  learned and 0 at the start (identity): ``form="elementwise"`` (one gate per prompt entry, the default) or
  ``"token"`` (one per context token).
- Meta-training (:func:`meta_step`, first order): from the initialisation, ``inner_steps`` SGD steps on the
  support loss with regulated gradients, ``ctx <- ctx - inner_lr * R(g)`` (gradients taken at each inner point
  and treated as constants); then the query loss at the adapted context is differentiated once: its gradient
  reaches the initialisation directly (first-order MAML) and the regulator through the ``R(g)`` terms. Adam
  updates both (``outer_lr`` for the context, ``regulator_lr`` for the gate: its gradient carries a factor
  ``inner_lr`` and would barely move it at the context's rate). Image features are frozen, so they are
  computed once for the whole corpus.
- Plugging in: ``init_from: gram.ckpt`` copies the context into the learner before training, and
  ``gradient_regulator: gram.ckpt`` gates the context's gradient at every fine-tuning step (a tensor hook on that
  one parameter: nothing else, the frozen CLIP least of all, sees it). Either can be used alone (ablation).
"""

