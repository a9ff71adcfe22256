"""Learnable context vectors placed around each class name (the CoOp prompt template).

Kept apart from the learners (as OpenPrompt keeps template and model apart): CoOp, CoCoOp, KgCoOp and MaPLe
all build their text prompts with :class:`ContextPrompts` and differ only in what they do with them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from vlprompt.clip import FrozenCLIP
from vlprompt.clip.towers import run_block
from vlprompt.errors import ConfigError, warn

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class ContextPrompts(nn.Module):
    """``[SOT] ctx_1 .. ctx_n classname . [EOT]`` with learnable ``ctx`` (CoOp, Zhou et al., IJCV 2022).

    Args:
        clip: the frozen backbone (read here, not stored).
        classnames: class names in label order.
        n_ctx: number of learnable context vectors.
        ctx_init: text whose token embeddings initialise the context (``"a photo of a"``), or ``None`` for
            random N(0, 0.02) vectors. If it has more tokens than ``n_ctx``, the first ``n_ctx`` are learned and
            the rest stay as fixed words before the class name (as MaPLe does with ``n_ctx=2``); if it has
            fewer, the whole context starts random and the words are not used (a warning says so), as MaPLe's,
            IVLP's, PromptSRC's and CasPL's reference code start it. Deliberate difference: CoOp's reference
            silently ignores ``n_ctx`` when ``ctx_init`` is set; here ``n_ctx`` is what it says.
        class_token_position: ``end`` (``ctx classname.``), ``middle`` (half the context on each side) or
            ``front`` (``classname ctx.``).
        class_specific: one context per class (CoOp's CSC) instead of one shared by all classes. Such a
            context cannot move to other classes.
        class_suffix: the words after the class name (``"."``; TCP's prompts end as the data set's template does,
            e.g. ``", a type of pet."``). Settable; :meth:`build` reads it.

    Plug-ins add frozen tokens after the context and its fixed init words with :meth:`take_tokens` (CasPL's
    boosting prompts: ``[SOT] ctx boost classname.``, or with MaPLe's ``n_ctx`` 2 from "a photo of a"
    ``[SOT] ctx "of a" boost classname.``, as CasPL's reference orders them), and merge their deep tokens with the
    learner's in :meth:`encode`. They put words and learned tokens before the context with :meth:`take_prefix`
    (ATPrompt's attributes: ``[SOT] A1 "color" A2 "shape" ctx classname.``); deep prompts then still replace the
    context only (:attr:`prompt_start` moves past the prefix).
    """

    def __init__(
        self,
        clip: FrozenCLIP,
        classnames: Sequence[str],
        n_ctx: int = 4,
        ctx_init: Optional[str] = "a photo of a",
        class_token_position: str = "end",
        class_specific: bool = False,
        class_suffix: str = ".",
    ):
        super().__init__()
        #: Plug-ins whose tokens follow the context (a plain list: the learner holds them as its components).
        self._token_sources: list = []
        self._plugin_ids: list[int] = []
        #: Plug-ins whose words and learned tokens go before the context, and the token ids they take there.
        self._prefix_sources: list = []
        self._prefix_ids: list[int] = []
        self._prefix_learned: list[int] = []
        if n_ctx < 1:
            raise ConfigError(f"n_ctx must be at least 1, got {n_ctx}")
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ConfigError(f"class_token_position must be one of {', '.join(CLASS_TOKEN_POSITIONS)}, "
                              f"got {class_token_position!r}")
        self.n_ctx, self.class_token_position, self.class_specific = n_ctx, class_token_position, class_specific
        self.class_suffix = class_suffix
        #: Set by a learner whose deep prompts differ per class (TCP's class-aware tokens): no prefix is then shared.
        self.deep_prompts_per_class = False
        width = clip.text_width
        init_ids = clip.encode_words(ctx_init) if ctx_init else []
        if len(init_ids) > n_ctx and class_token_position != "end":
            raise ConfigError(f"ctx_init longer than n_ctx needs class_token_position 'end', got "
                              f"{class_token_position!r}")
        if 0 < len(init_ids) < n_ctx:
            # As the references (MaPLe, IVLP, PromptSRC, CasPL: init words only for n_ctx <= 4) start such a context.
            warn(f"ctx_init {ctx_init!r} has {len(init_ids)} tokens, fewer than n_ctx {n_ctx}: the context starts fully "
                 "random, as the reference code starts it; give n_ctx at most the init words' count to start from them")
            init_ids = []
        n_random = n_ctx if not init_ids else 0
        self._ctx_ids = clip.encode_words(" ".join(["X"] * n_random)) + init_ids[:n_ctx - n_random]
        self._fixed_ids = init_ids[n_ctx - n_random:]
        with torch.no_grad():
            words = clip.embed_tokens(torch.tensor(init_ids[:n_ctx - n_random], dtype=torch.long, device=clip.device))
        init = torch.cat([torch.empty(n_random, width).normal_(std=0.02), words.float().cpu()])
        if class_specific:
            init = init.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(init)
        self._prefix_length = clip.prompt_tokens([""]).spans[0][0]  # the tokenizer's start tokens
        self.build(clip, classnames)

    def take_tokens(self, source, clip: FrozenCLIP, classnames: Sequence[str]) -> None:
        """Place ``source.text_tokens`` (frozen ``n x width`` embeddings) after the context in every prompt, and merge
        ``source.text_deep_prompts`` into the deep prompts of :meth:`encode`."""
        if self.class_token_position != "end":
            raise ConfigError(f"plug-in tokens after the context need class_token_position 'end', got "
                              f"{self.class_token_position!r}")
        self._token_sources.append(source)
        count = sum(source.text_tokens.shape[0] for source in self._token_sources)
        self._plugin_ids = clip.encode_words(" ".join(["X"] * count))
        self.build(clip, classnames)

    def start_random(self, clip: FrozenCLIP, classnames: Sequence[str]) -> None:
        """Draw the context afresh from N(0, 0.02), without init words (how a plug-in's reference code may start its
        host's context)."""
        with torch.no_grad():
            self.ctx.normal_(std=0.02)
        self._ctx_ids, self._fixed_ids = clip.encode_words(" ".join(["X"] * self.n_ctx)), []
        self.build(clip, classnames)

    def take_prefix(self, source, clip: FrozenCLIP, classnames: Sequence[str]) -> None:
        """Place ``source.text_prefix`` (words, and learned ``n x width`` tokens filled in by :meth:`embeddings`)
        between the start token and the context in every prompt."""
        if self.class_token_position != "end":
            raise ConfigError(f"plug-in tokens before the context need class_token_position 'end', got "
                              f"{self.class_token_position!r}")
        self._prefix_sources.append(source)
        ids, learned = [], []
        for piece in (piece for owner in self._prefix_sources for piece in owner.text_prefix):
            encoded = clip.encode_words(piece) if isinstance(piece, str) else clip.encode_words(
                " ".join(["X"] * piece.shape[0]))
            if not isinstance(piece, str):
                learned += range(len(ids), len(ids) + len(encoded))
            ids += encoded
        self._prefix_ids, self._prefix_learned = ids, learned
        self.build(clip, classnames)

    @property
    def prompt_start(self) -> int:
        """Position of the first context token, the same in every prompt (only for ``end``)."""
        if self.class_token_position != "end":
            raise ConfigError("deep prompts need class_token_position 'end'")
        return self._prefix_length + len(self._prefix_ids)

    def build(self, clip: FrozenCLIP, classnames: Sequence[str]) -> None:
        """(Re)build token ids and frozen embeddings for ``classnames``; the context is untouched."""
        if self.class_specific and len(classnames) != self.ctx.shape[0]:
            raise ConfigError(f"class-specific context was learned for {self.ctx.shape[0]} classes and cannot "
                              f"serve {len(classnames)} others; use a shared context (class_specific: false)")
        rows, positions, plugin_positions = [], [], []
        for name in classnames:
            pieces, learned = self._pieces(name)
            tokens = clip.prompt_tokens(pieces)
            rows.append(tokens)
            positions.append([p for i in learned for p in range(*tokens.spans[i])])
            plugin_positions.append(list(range(*tokens.spans[3])) if self._plugin_ids else [])
        ids, pool_index, attention_mask = clip.prompt_batch(rows)
        with torch.no_grad():
            embeds = clip.embed_tokens(ids)
            if self._token_sources:  # frozen: written once into the token embeddings
                class_rows = torch.arange(len(classnames), device=embeds.device)[:, None]
                columns = torch.tensor(plugin_positions, device=embeds.device)
                tokens = torch.cat([source.text_tokens.to(embeds.device, embeds.dtype) for source in self._token_sources])
                embeds[class_rows, columns] = tokens
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_embeds", embeds, persistent=False)
        self.register_buffer("ctx_positions", torch.tensor(positions, device=clip.device), persistent=False)
        self.register_buffer("pool_index", pool_index, persistent=False)
        self.register_buffer("attention_mask", attention_mask, persistent=False)
        prefix = [self._prefix_length + i for i in self._prefix_learned]
        self.register_buffer("prefix_positions", torch.tensor(prefix, dtype=torch.long, device=clip.device),
                             persistent=False)

    def encode(self, clip: FrozenCLIP, embeddings: Optional[torch.Tensor] = None, deep_prompts=None,
               class_chunk: Optional[int] = None) -> torch.Tensor:
        """Text features (not normalised) of the class prompts: ``embeddings`` defaults to :meth:`embeddings`;
        a ``(B*C) x L x width`` batch of per-image prompts repeats the pooling positions and mask per image.

        ``class_chunk``: encode the learned prompts this many classes at a time, each chunk's activations recomputed
        in the backward pass instead of kept (exact: the frozen tower has no dropout), so activation memory stays
        that of one chunk however many classes there are. Taken when the deep prompts are shared or per class (not
        for per-image prompts or inserted tokens)."""
        for source in self._token_sources:  # plug-in tokens sit after the context and its fixed words
            deep_prompts = source.text_deep_prompts(deep_prompts, self.n_ctx + len(self._fixed_ids))
        n_cls = self.pool_index.shape[0]
        if class_chunk and embeddings is None and class_chunk < n_cls and _per_class_or_shared(deep_prompts, n_cls):
            return torch.cat([run_block(self._encode_classes, self.ctx, True, clip=clip, rows=slice(start, start + class_chunk),
                                        deep_prompts=deep_prompts) for start in range(0, n_cls, class_chunk)])
        embeddings = self.embeddings() if embeddings is None else embeddings
        repeat = embeddings.shape[0] // n_cls
        mask = self.attention_mask.repeat(repeat, 1) if self.attention_mask is not None else None
        start = self.prompt_start if deep_prompts else self._prefix_length + len(self._prefix_ids)
        # Per-image prompts (repeat > 1, image-major) share their prefix within each image's classes.
        return clip.encode_text_embeddings(embeddings, self.pool_index.repeat(repeat), deep_prompts=deep_prompts,
                                           prompt_start=start, attention_mask=mask, shared_prefix=self.shared_prefix,
                                           prefix_groups=repeat)

    def _encode_classes(self, ctx: torch.Tensor, clip: FrozenCLIP, rows: slice, deep_prompts) -> torch.Tensor:
        """Text features of the classes ``rows`` (one chunk of :meth:`encode`)."""
        if deep_prompts:
            deep_prompts = {layer: prompts[rows] if prompts.dim() == 3 else prompts
                            for layer, prompts in deep_prompts.items()}
        mask = self.attention_mask[rows] if self.attention_mask is not None else None
        start = self.prompt_start if deep_prompts else self._prefix_length + len(self._prefix_ids)
        return clip.encode_text_embeddings(self.embeddings(ctx, rows=rows), self.pool_index[rows],
                                           deep_prompts=deep_prompts, prompt_start=start, attention_mask=mask,
                                           shared_prefix=self.shared_prefix)

    @property
    def shared_prefix(self) -> int:
        """Leading positions that are the same in every class's prompt: the start tokens, plug-in words and tokens
        before the context, the shared context, plug-in tokens and fixed init words before the class name (``end``
        layout); 0 otherwise, and where deep prompts differ per class."""
        if self.class_token_position != "end" or self.class_specific or self.deep_prompts_per_class:
            return 0
        return (self._prefix_length + len(self._prefix_ids) + self.n_ctx + len(self._plugin_ids)
                + len(self._fixed_ids))

    def _pieces(self, name: str) -> tuple[list, list[int]]:
        """Prompt pieces for one class and the indices of the learned ones."""
        ctx, half, suffix = self._ctx_ids, self.n_ctx // 2, self.class_suffix
        if self.class_token_position == "end":
            return [self._prefix_ids, ctx, self._fixed_ids, self._plugin_ids, name, suffix], [1]
        if self.class_token_position == "front":
            return [name, ctx, suffix], [1]
        return [ctx[:half], name, ctx[half:], suffix], [0, 2]

    def embeddings(self, ctx: Optional[torch.Tensor] = None, rows: slice = slice(None)) -> torch.Tensor:
        """Token embeddings ``C x L x width`` with the context inserted (of the classes ``rows``: all by default).

        ``ctx`` defaults to the learned context; a ``B x n x width`` tensor gives per-image prompts
        ``B x C x L x width`` (CoCoOp).
        """
        ctx = self.ctx if ctx is None else ctx
        token_embeds = self._token_embeds(rows)
        positions = self.ctx_positions[rows]
        n_cls = token_embeds.shape[0]
        classes = torch.arange(n_cls, device=ctx.device)[:, None].expand(-1, self.n_ctx)
        if ctx.dim() == 3 and not self.class_specific:
            batch = ctx.shape[0]
            base = token_embeds.unsqueeze(0).expand(batch, -1, -1, -1)
            images = torch.arange(batch, device=ctx.device)[:, None, None].expand(-1, n_cls, self.n_ctx)
            values = ctx[:, None].expand(-1, n_cls, -1, -1).to(base.dtype)
            return base.index_put((images, classes.expand(batch, -1, -1), positions.expand(batch, -1, -1)), values)
        values = (ctx[rows] if ctx.dim() == 3 else ctx.expand(n_cls, -1, -1)).to(token_embeds.dtype)
        return token_embeds.index_put((classes, positions), values)

    def _token_embeds(self, rows: slice = slice(None)) -> torch.Tensor:
        """The frozen token embeddings (of the classes ``rows``) with the plug-ins' learned prefix tokens in place
        (the same in every class's prompt)."""
        token_embeds = self.token_embeds[rows]
        if not self._prefix_learned:
            return token_embeds
        learned = torch.cat([piece for owner in self._prefix_sources for piece in owner.text_prefix
                             if not isinstance(piece, str)]).to(token_embeds.dtype)
        n_cls = token_embeds.shape[0]
        classes = torch.arange(n_cls, device=learned.device)[:, None].expand(-1, learned.shape[0])
        return token_embeds.index_put((classes, self.prefix_positions.expand(n_cls, -1)),
                                      learned.expand(n_cls, -1, -1))


def _per_class_or_shared(deep_prompts, n_cls: int) -> bool:
    """Whether every deep prompt is one tensor shared by all classes (``n x width``) or one per class
    (``C x n x width``): what a chunk of classes can slice."""
    return all(isinstance(prompts, torch.Tensor) and (prompts.dim() == 2 or prompts.shape[0] == n_cls)
               for prompts in (deep_prompts or {}).values())
