"""GRAM's meta-learning (our reading, see :mod:`vlprompt.learners.gram`): tasks from clustered image-caption pairs,
the gradient regulator, the first-order meta-step, and the GRAM file ``vlprompt meta-init`` writes."""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprompt.clip import FrozenCLIP
from vlprompt.errors import ConfigError
from vlprompt.learners.checkpoint_io import non_finite_tensors
from vlprompt.learners.context import ContextPrompts
from vlprompt.learners.references import encode_texts
from vlprompt.meta_config import REGULATOR_FORMS, MetaConfig

#: Marks a GRAM checkpoint (and its format's version).
GRAM_KEY, GRAM_VERSION = "vlprompt_gram", 1


class GradientRegulator(nn.Module):
    """Our reading of GRAM's gradient regulating function: a learned gate, ``R(g) = 2 sigmoid(m) * g``.

    ``m`` has the prompt's shape (``form="elementwise"``) or one entry per context token (``"token"``); it starts at
    0, where ``R`` is the identity, and the gate stays in (0, 2): it can damp or amplify a direction, never flip it.
    """

    def __init__(self, shape: Sequence[int], form: str = "elementwise"):
        super().__init__()
        if form not in REGULATOR_FORMS:
            raise ConfigError(f"regulator form {form!r} is not one of {', '.join(REGULATOR_FORMS)}")
        self.form, self.shape = form, tuple(shape)
        self.logits = nn.Parameter(torch.zeros(self.shape if form == "elementwise" else (self.shape[0], 1)))

    def gate(self) -> torch.Tensor:
        return 2 * torch.sigmoid(self.logits)

    def forward(self, gradient: torch.Tensor) -> torch.Tensor:
        if tuple(gradient.shape) != self.shape:
            raise ConfigError(f"the GRAM regulator was meta-learned for prompts of shape {list(self.shape)}; this "
                              f"learner's context has shape {list(gradient.shape)} (match n_ctx and the CLIP)")
        return self.gate().to(gradient.device, gradient.dtype) * gradient


def task_loss(prompts: ContextPrompts, clip: FrozenCLIP, ctx: torch.Tensor, image_features: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of frozen image features against the task's class prompts built from context ``ctx``."""
    text = F.normalize(prompts.encode(clip, prompts.embeddings(ctx)), dim=-1)
    return F.cross_entropy(clip.logit_scale * image_features @ text.t(), labels)


def meta_step(ctx: torch.Tensor, regulator: GradientRegulator, support_loss, query_loss, inner_steps: int,
              inner_lr: float) -> torch.Tensor:
    """One first-order meta-learning step on one task; returns the query loss, whose ``backward()`` fills
    ``ctx.grad`` (the first-order MAML gradient) and the regulator's gradient.

    ``support_loss(ctx)`` and ``query_loss(ctx)`` map a context to a scalar loss. The inner loop takes
    ``inner_steps`` steps ``ctx_{i+1} = ctx_i - inner_lr * R(g_i)`` with ``g_i`` the support gradient at ``ctx_i``,
    detached (first order); ``R`` stays in the graph, so the query loss at the last point differentiates into it.
    """
    adapted, update = ctx, torch.zeros_like(ctx)
    for _ in range(inner_steps):
        point = adapted.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(support_loss(point), point)
        update = update + regulator(gradient.detach())
        adapted = ctx - inner_lr * update
    return query_loss(adapted)


#: Pairs assigned to their nearest cluster centre at a time, beyond the clustered sample.
ASSIGN_CHUNK = 65_536


def cluster_pairs(image_features: torch.Tensor, text_features: torch.Tensor, n_clusters: int,
                  sample: Optional[int] = None, seed: int = 0) -> torch.Tensor:
    """Cluster labels of the pairs from their concatenated, L2-normalised image and text features (scikit-learn's
    agglomerative clustering, Ward linkage).

    Ward's memory grows with the square of the pairs clustered (a 40,000-pair corpus needs 6 GiB), so beyond
    ``sample`` pairs it clusters a random ``sample`` of them (``seed``) and every other pair joins the cluster whose
    centre is nearest: Ward merges to keep clusters' squared distances to their centres small, so that is the
    cluster it would favour. Memory then grows linearly with the corpus (our reading's choice)."""
    from sklearn.cluster import AgglomerativeClustering

    def joint(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(image_features[rows], dim=-1), F.normalize(text_features[rows], dim=-1)], dim=-1)

    count = len(image_features)
    chosen = torch.arange(count)
    if sample is not None and count > sample:
        chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:sample].sort().values
    features = joint(chosen)
    n_clusters = min(n_clusters, len(features))
    sampled_labels = torch.as_tensor(
        AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(features.numpy()))
    if len(chosen) == count:
        return sampled_labels
    centres = torch.stack([features[sampled_labels == c].mean(0) for c in range(n_clusters)])
    labels = torch.empty(count, dtype=sampled_labels.dtype)
    for start in range(0, count, ASSIGN_CHUNK):  # chunks: never a corpus-sized distance matrix
        rows = torch.arange(start, min(start + ASSIGN_CHUNK, count))
        labels[rows] = torch.cdist(joint(rows), centres).argmin(dim=1).to(labels.dtype)
    labels[chosen] = sampled_labels  # the clustered pairs keep Ward's own labels
    return labels


def cluster_names(captions: Sequence[str], text_features: torch.Tensor, labels: torch.Tensor) -> dict[int, str]:
    """Each cluster's name: the caption nearest the mean of its members' text features (without a final period)."""
    names = {}
    for cluster in labels.unique().tolist():
        members = (labels == cluster).nonzero().flatten()
        centre = F.normalize(text_features[members].mean(0), dim=-1)
        nearest = members[(text_features[members] @ centre).argmax()]
        names[cluster] = captions[int(nearest)].rstrip(".").strip()
    return names


def cluster_members(labels: torch.Tensor) -> dict[int, list[int]]:
    """The pair indices of each cluster (found once; every task draws from them)."""
    return {c: (labels == c).nonzero().flatten().tolist() for c in labels.unique().tolist()}


def sample_task(members: dict[int, list[int]], config: MetaConfig, rng: random.Random) -> Optional[tuple]:
    """``(clusters, support indices, support labels, query indices, query labels)`` of one task drawn from the
    clusters' ``members`` (:func:`cluster_members`), or None when fewer than ``ways`` clusters have ``shots +
    queries`` members."""
    needed = config.shots + config.queries
    eligible = sorted(c for c, m in members.items() if len(m) >= needed)
    if len(eligible) < config.ways:
        return None
    clusters = rng.sample(eligible, config.ways)
    support, query, support_labels, query_labels = [], [], [], []
    for way, cluster in enumerate(clusters):
        chosen = rng.sample(members[cluster], needed)
        support += chosen[:config.shots]
        query += chosen[config.shots:]
        support_labels += [way] * config.shots
        query_labels += [way] * config.queries
    return clusters, torch.tensor(support), torch.tensor(support_labels), torch.tensor(query), torch.tensor(query_labels)


def meta_train(clip: FrozenCLIP, image_features: torch.Tensor, captions: Sequence[str], n_ctx: int,
               ctx_init: Optional[str], config: MetaConfig = MetaConfig(), report=None, inform=None) -> dict:
    """Meta-learn a context and a regulator on image-caption pairs (``image_features``: frozen, normalised, one row
    per caption); returns the GRAM checkpoint's content (see :func:`save_gram`). ``report(step, loss)`` hears of
    the progress, ``inform(line)`` of what was decided on the way (a clustered sample)."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    with torch.no_grad():
        text_features = encode_texts(clip, list(captions))
    if inform and len(captions) > config.cluster_sample:
        inform(f"clustering a random sample of {config.cluster_sample:,} of the {len(captions):,} pairs (Ward's memory "
               f"grows with the square of the count; --cluster-sample); the other {len(captions) - config.cluster_sample:,}"
               " join their nearest cluster centre")
    labels = cluster_pairs(image_features, text_features, config.clusters, config.cluster_sample, config.seed)
    names, members = cluster_names(captions, text_features, labels), cluster_members(labels)
    placeholder = [names[c] for c in sorted(names)[:config.ways]]
    prompts = ContextPrompts(clip, placeholder, n_ctx, ctx_init)
    if sample_task(members, config, rng) is None:
        raise ConfigError(f"no {config.ways} clusters have {config.shots + config.queries} pairs each; give more pairs, "
                          "fewer --clusters, or smaller --ways/--shots/--queries")
    regulator = GradientRegulator(tuple(prompts.ctx.shape), config.regulator)
    optimizer = torch.optim.Adam([{"params": [prompts.ctx], "lr": config.outer_lr},
                                  {"params": list(regulator.parameters()), "lr": config.regulator_lr}])
    losses = []
    for step in range(config.steps):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.tasks_per_step):
            clusters, support, support_labels, query, query_labels = sample_task(members, config, rng)
            prompts.build(clip, [names[c] for c in clusters])
            loss = meta_step(prompts.ctx, regulator,
                             lambda ctx: task_loss(prompts, clip, ctx, image_features[support], support_labels),
                             lambda ctx: task_loss(prompts, clip, ctx, image_features[query], query_labels),
                             config.inner_steps, config.inner_lr)
            (loss / config.tasks_per_step).backward()
            total += loss.item() / config.tasks_per_step
        if not math.isfinite(total):
            raise ConfigError(f"meta-training diverged at step {step} (query loss {total}); lower --inner-lr or "
                              "--outer-lr")
        optimizer.step()
        losses.append(total)
        if report and (step % 25 == 0 or step == config.steps - 1):
            report(step, total)
    return {"ctx": prompts.ctx.detach().clone(), "regulator": {"form": regulator.form, "shape": list(regulator.shape),
                                                              "logits": regulator.logits.detach().clone()},
            "n_ctx": n_ctx, "ctx_init": ctx_init, "clip": clip.identity, "config": asdict(config),
            "clusters": len(names), "pairs": len(captions), "query_loss": losses}


def save_gram(content: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({GRAM_KEY: {"version": GRAM_VERSION, **content}}, path)
    return path


def read_gram(path) -> dict:
    """The content of a GRAM checkpoint written by ``vlprompt meta-init``; one-line errors otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"GRAM checkpoint {str(path)!r} does not exist; write one with `vlprompt meta-init`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user mistake
        raise ConfigError(f"{str(path)!r} is not a readable checkpoint ({type(err).__name__}); give the file "
                          "`vlprompt meta-init` wrote") from None
    if not isinstance(checkpoint, dict) or GRAM_KEY not in checkpoint:
        raise ConfigError(f"{str(path)!r} is not a GRAM checkpoint (no {GRAM_KEY!r} entry); `vlprompt meta-init` "
                          "writes them")
    content = checkpoint[GRAM_KEY]
    tensors = {"ctx": content.get("ctx"), "regulator.logits": (content.get("regulator") or {}).get("logits")}
    bad = non_finite_tensors(tensors.items())
    if bad:
        raise ConfigError(f"GRAM checkpoint {str(path)!r} holds non-finite values in {', '.join(bad)} (its "
                          "meta-training diverged); run `vlprompt meta-init` again with a lower --inner-lr/--outer-lr")
    content["path"] = str(path)
    return content


def describe_gram(content: dict) -> str:
    """One line on what a GRAM checkpoint holds."""
    gate = 2 * torch.sigmoid(content["regulator"]["logits"])
    text = (f"GRAM: context {list(content['ctx'].shape)} meta-learned on {content['pairs']} pairs in "
            f"{content['clusters']} clusters; regulator ({content['regulator']['form']}) gate "
            f"{float(gate.min()):.2f}-{float(gate.max()):.2f}, mean {float(gate.mean()):.2f}")
    return text + (f"; last query loss {content['query_loss'][-1]:.3f}" if content.get("query_loss") else "")
