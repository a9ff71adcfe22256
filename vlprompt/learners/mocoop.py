"""MoCoOp: one learned prompt per group of hand templates, mixed per image by a router."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import FrozenCLIP
from pytorch_lightning.trainer.states import TrainerFn

from vlprompt.errors import CheckpointMismatchError, ConfigError
from vlprompt.learners.base import PromptLearner
from vlprompt.learners.losses import LossTerm, StepOutputs, cross_entropy, grouped_text_supervision, routing_loss
from vlprompt.learners.registry import register_learner
from vlprompt.learners.templates import DEFAULT_TEMPLATE_GROUPS


class TemplateExpert(nn.Module):
    """A hand template whose words before and after the class name are learned vectors, initialised from the
    words' own embeddings; the class name stays frozen words. As the reference does, every "." is taken out of the
    template first: ``"a photo of a {}."`` becomes the prompt ``a photo of a <class>`` with 4 learned words."""

    def __init__(self, clip: FrozenCLIP, template: str):
        super().__init__()
        before, after = (part.strip() for part in template.replace(".", "").split("{}"))
        self.before_ids = clip.encode_words(before) if before else []
        self.after_ids = clip.encode_words(after) if after else []
        ids = self.before_ids + self.after_ids
        if not ids:
            raise ConfigError(f"template {template!r} has no words around the class name to learn")
        with torch.no_grad():
            words = clip.embed_tokens(torch.tensor(ids, dtype=torch.long, device=clip.device))
        self.ctx = nn.Parameter(words.float().cpu())


@register_learner("mocoop")
class MoCoOp(PromptLearner):
    """Mixture of Prompt Learning (Du et al. (Du, Niu and Zhao), "Mixture of Prompt Learning for Vision Language
    Models", arXiv 2024: 2409.12011).

    One prompt expert per group of hand templates (``data.template_groups``; :data:`DEFAULT_TEMPLATE_GROUPS`, four
    groups of CLIP's ImageNet templates, when the data set names none), initialised from its group's first
    template with the words before and after the class name learned. A router ``Linear(D, E)`` on the
    normalised image feature picks the ``top_k`` (2) experts per image and mixes their normalised class features
    with a softmax over their two router logits; a shared learned ``correction`` (``1 x D``, zero at start) is
    added to every expert's text features before normalisation. Each image thus gets its own classifier.

    Loss terms (``train/<name>``; weight 0 switches one off):

    - ``ce``: cross-entropy of the per-image mixed classifier's logits;
    - ``text`` (weight 5): each expert's class features against its group's frozen prototypes (the normalised
      mean of the group's normalised template features), as one cross-entropy over all experts' classes, without
      a logit scale (:func:`~vlprompt.learners.losses.grouped_text_supervision`). As in the reference, the
      features supervised are those of the expert's prompts with a frozen "." after the class name, a second
      encoding of the experts beside the one that classifies (which has no ".");
    - ``gate`` (weight 1): the router logits against soft targets, the softmax of the image's similarity to each
      group's prototype of its true class with +10 on the top 2 (:func:`~vlprompt.learners.losses.routing_loss`).

    The reference also trains the image encoder's block LayerNorms at a tenth of the learning rate. vlprompt's
    CLIP stays frozen, so ``finetune_vision_layernorm`` (on, as the reference) gives the learner its own copies of
    those LayerNorms' weights and biases, used in place of the frozen ones through
    :func:`torch.func.functional_call` and saved in the checkpoint; ``layernorm_lr_scale`` 0.1.

    Defaults follow the reference run (``vit_b16_c4_ep50_batch32``): SGD lr 0.032, batch 32, 50 epochs, 5 warm-up
    epochs at 1e-5, gradient clipping at norm 1.0 (``configs/learners/mocoop.yaml``). Trainable parameters on
    ViT-B/16 with the default groups: 48,644 (the reference's count on the same groups; the paper states none): 18
    expert tokens x 512 (the templates' words without their "."), router 512 x 4 + 4, correction 512, LayerNorms
    36,864.

    Deliberate differences from the reference: its released configs do not run as shipped (the dataset configs'
    ``LASP_PROMPTS`` key is not the ``PROMPTS``/``GROUPS`` the code reads): vlprompt reads ``data.template_groups``;
    it adds Gaussian noise in place to a frozen buffer the loss never reads: not done; its text supervision also
    covers the novel classes' names during base training (LASP's setting): vlprompt supervises the classes it
    trains on; the gate's soft targets are constants (no gradient through them). With ``text`` at weight 0 only
    the experts some image in the batch selects are encoded (which ones is read back from the device, one
    synchronisation per step in that mode), so the others get no gradient (``may_leave_parameters_unused``: under
    DDP pass ``--trainer.strategy ddp_find_unused_parameters_true``).
    """

    paper_trainable_parameters = 48_644  # the reference code's, on ViT-B/16 with DEFAULT_TEMPLATE_GROUPS
    may_leave_parameters_unused = True

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        template_groups: Optional[Sequence[Sequence[str]]] = None,
        top_k: int = 2,
        correction: bool = True,
        text_loss_weight: float = 5.0,
        gate_loss_weight: float = 1.0,
        gate_target_boost: float = 10.0,
        finetune_vision_layernorm: bool = True,
        layernorm_lr_scale: float = 0.1,
        lr: float = 0.032,
        warmup_epochs: int = 5,
        **kwargs,
    ):
        super().__init__(clip, classnames, templates, template_groups=template_groups, lr=lr,
                         warmup_epochs=warmup_epochs, **kwargs)
        if self.template_groups is None:
            self.template_groups = [list(group) for group in DEFAULT_TEMPLATE_GROUPS]
        n_experts = len(self.template_groups)
        if not 1 <= top_k <= n_experts:
            raise ConfigError(f"top_k must be between 1 and the number of experts ({n_experts} template groups), "
                              f"got {top_k}")
        self.top_k, self.text_loss_weight, self.gate_loss_weight = top_k, text_loss_weight, gate_loss_weight
        self.gate_target_boost, self.layernorm_lr_scale = gate_target_boost, layernorm_lr_scale
        self._build_experts([group[0] for group in self.template_groups])
        self.correction = nn.Parameter(torch.zeros(1, clip.embed_dim)) if correction else None
        self._layernorm_names: list[str] = []
        self.layernorms = nn.ParameterList()
        if finetune_vision_layernorm:
            clip._require_vit("have its block LayerNorms fine-tuned (finetune_vision_layernorm: false runs on any "
                              "CLIP)")
            visual = clip.model.visual
            for name, module in visual.named_modules():
                # The blocks' LayerNorms (ln_1/ln_2, norm1/norm2): inside a numbered block, not ln_pre/ln_post.
                if isinstance(module, nn.LayerNorm) and any(part.isdigit() for part in name.split(".")):
                    for kind in ("weight", "bias"):
                        if getattr(module, kind, None) is not None:
                            self._layernorm_names.append(f"{name}.{kind}")
                            self.layernorms.append(nn.Parameter(getattr(module, kind).detach().clone()))
        self._on_classnames_changed()

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def _build_experts(self, templates: Sequence[str]) -> None:
        """One expert per template and a router over them (fresh parameters)."""
        #: The template each expert was built from: what a checkpoint's experts are (see on_load_checkpoint).
        self.expert_templates = list(templates)
        self.experts = nn.ModuleList(TemplateExpert(self.clip, template) for template in templates)
        self.router = nn.Linear(self.clip.embed_dim, len(templates), device=self.clip.device)
        if hasattr(self, "token_ids"):
            self._on_classnames_changed()

    def on_save_checkpoint(self, checkpoint) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["vlprompt"]["expert_templates"] = list(self.expert_templates)

    def on_load_checkpoint(self, checkpoint) -> None:
        """Evaluating on another data set (cross-dataset, domain generalisation) builds the learner with that data
        set's template groups; the experts are the checkpoint's, so they are rebuilt from the templates it was
        trained with before its weights load. Going on with a fit on other groups is refused."""
        super().on_load_checkpoint(checkpoint)
        trained = (checkpoint.get("vlprompt") or {}).get("expert_templates")
        if not trained or trained == self.expert_templates:
            return
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            raise CheckpointMismatchError(
                f"the checkpoint's {len(trained)} experts were built from other template groups than this data "
                f"set's {len(self.expert_templates)}; resume a fit with the data set it started on")
        if not 1 <= self.top_k <= len(trained):
            raise CheckpointMismatchError(f"top_k {self.top_k} exceeds the checkpoint's {len(trained)} experts")
        self._build_experts(trained)

    # -- prompts -------------------------------------------------------------------------------------------------
    def _on_classnames_changed(self) -> None:
        """Token ids of every expert's prompt for every class (expert-major), and the learned positions: the
        prompts that classify (``a photo of a <class>``), and those the text term supervises, which end with a
        frozen "." (``a photo of a <class>.``), as the reference builds its two sets."""
        for prefix, ending in (("", []), ("supervised_", ".")):
            rows, positions = [], []
            for expert in self.experts:
                expert_positions = []
                for name in self.classnames:
                    tokens = self.clip.prompt_tokens([expert.before_ids, name, expert.after_ids, ending])
                    rows.append(tokens)
                    expert_positions.append([*range(*tokens.spans[0]), *range(*tokens.spans[2])])
                positions.append(torch.tensor(expert_positions, dtype=torch.long))
            ids, pool_index, attention_mask = self.clip.prompt_batch(rows)
            # Token ids, embedded per step: E x C prompts (20 x 1000 on ImageNet) would hold ~0.8 GB of embeddings.
            self.register_buffer(f"{prefix}token_ids", ids, persistent=False)
            self.register_buffer(f"{prefix}pool_index", pool_index, persistent=False)
            self.register_buffer(f"{prefix}attention_mask", attention_mask, persistent=False)
            setattr(self, f"_{prefix}positions", positions)

    def text_features(self, experts: Optional[Sequence[int]] = None, supervised: bool = False) -> torch.Tensor:
        """Normalised class features ``len(experts) x C x D`` of the given experts (all by default), of the
        prompts that classify or (``supervised``) of those the text term supervises."""
        experts = range(self.n_experts) if experts is None else experts
        prefix = "supervised_" if supervised else ""
        token_ids, all_positions = getattr(self, f"{prefix}token_ids"), getattr(self, f"_{prefix}positions")
        pool_index, attention_mask = getattr(self, f"{prefix}pool_index"), getattr(self, f"{prefix}attention_mask")
        n_cls, chunks, rows = self.n_classes, [], []
        for e in experts:
            block = slice(e * n_cls, (e + 1) * n_cls)
            positions = all_positions[e].to(token_ids.device)
            class_rows = torch.arange(n_cls, device=positions.device)[:, None].expand_as(positions)
            with torch.no_grad():
                words = self.clip.embed_tokens(token_ids[block])
            chunks.append(words.index_put((class_rows, positions), self.experts[e].ctx.to(words.dtype).expand(
                n_cls, -1, -1)))
            rows.append(torch.arange(block.start, block.stop, device=positions.device))
        rows = torch.cat(rows)
        mask = attention_mask[rows] if attention_mask is not None else None
        features = self.clip.encode_text_embeddings(torch.cat(chunks), pool_index[rows], attention_mask=mask)
        features = features.view(len(experts), n_cls, -1)
        if self.correction is not None:
            features = features + self.correction.to(features.dtype)
        return F.normalize(features, dim=-1)

    def group_prototypes(self) -> torch.Tensor:
        """Frozen ``E x C x D`` prototypes: per group, the normalised mean of its templates' normalised features."""
        return torch.stack([self.hand_text_features(group) for group in self.template_groups])

    # -- image side ----------------------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        if not self._layernorm_names:
            return super().image_features(images)
        replaced = dict(zip(self._layernorm_names, self.layernorms))
        features = self.clip.compute(torch.func.functional_call, self.clip.model.visual, replaced, (images,),
                                     strict=False)
        return F.normalize(features, dim=-1)

    def route(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(router logits B x E, chosen experts B x k, their mixing weights B x k)``."""
        router_logits = self.router(image_features.to(self.router.weight.dtype))
        top_logits, chosen = router_logits.topk(self.top_k, dim=-1)
        return router_logits, chosen, top_logits.softmax(dim=-1)

    def mixed_logits(self, image_features: torch.Tensor, text: torch.Tensor, chosen: torch.Tensor,
                     weights: torch.Tensor, experts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-image classifier logits: ``scale * sum_k w_bk f_b . T[chosen_bk]``; ``text`` holds the features of
        ``experts`` (all experts when None)."""
        per_expert = self.clip.logit_scale * torch.einsum("bd,ecd->bec", image_features, text.to(image_features.dtype))
        if experts is not None:  # chosen expert ids -> their rows in text
            lookup = torch.full((self.n_experts,), -1, dtype=torch.long, device=chosen.device)
            lookup[experts] = torch.arange(len(experts), device=chosen.device)
            chosen = lookup[chosen]
        picked = per_expert.gather(1, chosen.unsqueeze(-1).expand(-1, -1, per_expert.shape[-1]))
        return (weights.unsqueeze(-1).to(picked.dtype) * picked).sum(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.image_features(images)
        _, chosen, weights = self.route(features)
        return self.mixed_logits(features, self.cached_text_features(self.text_features), chosen, weights)

    # -- training ------------------------------------------------------------------------------------------------
    def training_outputs(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutputs:
        features = self.image_features(images)
        router_logits, chosen, weights = self.route(features)
        extras = {"router_logits": router_logits}
        if self.text_loss_weight != 0:  # the text term supervises every expert: encode them all
            experts, text = None, self.text_features()
            extras["supervised_text"] = self.text_features(supervised=True)
        else:  # only what some image chose: the others stay out of the graph
            experts = torch.unique(chosen)
            text = self.text_features(experts.tolist())
        logits = self.mixed_logits(features, text, chosen, weights, experts)
        return StepOutputs(logits=logits, labels=labels, text_features=text, image_features=features, extras=extras)

    def loss_terms(self) -> list[LossTerm]:
        return [
            LossTerm("ce", 1.0, cross_entropy),
            LossTerm("text", self.text_loss_weight,
                     lambda out: grouped_text_supervision(out.extras["supervised_text"], self.group_prototypes())),
            LossTerm("gate", self.gate_loss_weight,
                     lambda out: routing_loss(out.extras["router_logits"], out.image_features.detach(),
                                              self.group_prototypes(), out.labels, self.top_k,
                                              self.gate_target_boost)),
        ]

    def parameter_groups(self) -> list[dict]:
        layernorms = set(map(id, self.layernorms))
        prompts = [p for p in self.parameters() if p.requires_grad and id(p) not in layernorms]
        groups = [{"params": prompts}]
        if len(self.layernorms):
            groups.append({"params": list(self.layernorms), "lr": self.hparams.lr * self.layernorm_lr_scale})
        return groups
