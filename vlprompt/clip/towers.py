"""Text and vision towers behind small interfaces, so learned tokens, deep text prompts and visual prompts go
through the same calls on every open_clip family that can take them.

Text towers (:func:`text_tower_of`):

- :class:`OpenCLIPTextTower`: open_clip's ``TextTransformer`` with either tokenizer it ships: CLIP's BPE (start
  and end tokens, causal mask, pooled at the end token: the sequence is cut after the last end token, exactly)
  or a Hugging Face tokenizer (SigLIP/SigLIP2's SentencePiece: no causal mask, pooled at the last position of
  the sequence padded to the context length, so nothing is cut).
- :class:`HFTextTower`: open_clip's ``HFTextEncoder`` (BERT, RoBERTa, ... such as BiomedCLIP's PubMedBERT): fed
  token embeddings plus an attention mask (the model's embedding layer adds positions and token types), then
  its own pooler and projection; deep prompts replace the prompt span at the input of encoder layers.

Vision towers (:func:`vision_tower_of`): open_clip's ``VisionTransformer`` and timm ``VisionTransformer`` trunks
(open_clip's ``TimmModel``, SigLIP's included): prompt tokens appended after the patch tokens before the
pre-norm, replaced at the input of deeper blocks and dropped before pooling; timm ``Eva`` trunks (EVA-02) take
them after the class token instead, outside the rotary position embedding. Other image towers (ResNets,
ConvNeXt, ...) take none, and text towers that cannot take learned tokens (CoCa's, whose class token is
appended after the text) still encode token ids for zero-shot through open_clip's own ``encode_text``.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder, arch_dict
from open_clip.transformer import ResidualAttentionBlock, TextTransformer, VisionTransformer
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vlprompt.errors import ConfigError


@dataclass(frozen=True)
class Inserted:
    """Tokens (``n x width`` or ``N x n x width``) inserted at the prompt start at one layer's input rather than
    replacing: the sequence grows by ``n`` from that layer on (no positional embedding reaches them; a causal tower's
    mask grows with it, the pooling position moves by ``n``), and deep prompts of later layers replace them (MMRL's
    representation tokens)."""

    tokens: torch.Tensor


#: What replaces the prompt span at one layer's input: one tensor for the whole span, or ``(offset, tensor)``
#: pieces that replace parts of it and keep the rest as the layer's input (two prompt sets cascaded, each with
#: its own depth); or tokens :class:`Inserted` there.
DeepPrompt = Union[torch.Tensor, Sequence[tuple[int, torch.Tensor]], Inserted]
DeepPrompts = Mapping[int, DeepPrompt]
#: Sequences that must share a prefix before it is encoded once. On 2 CPU threads it pays from a few sequences on
#: (ViT-B/16 text step, context of 4: 0.93x the full path's time at 4 classes, 0.72x at 16, 0.50x at 1000), but a
#: step that small is launch-bound on a GPU, where the separate prefix pass adds kernels instead of saving work.
MIN_SEQUENCES_TO_SHARE = 16


class PieceTokenizer:
    """Token ids of text pieces without special tokens, and the special tokens around a whole prompt.

    Works for open_clip's BPE ``SimpleTokenizer`` and its ``HFTokenizer`` wrapper alike; pieces are encoded
    separately so callers know which positions came from which piece (both tokenizers split on white space
    first, so this equals tokenizing the joined text; a test checks it per family).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        if all(hasattr(tokenizer, a) for a in ("encode", "sot_token_id", "eot_token_id")):  # CLIP's BPE
            self.prefix, self.suffix, self.pad_id = [tokenizer.sot_token_id], [tokenizer.eot_token_id], 0
            self._encode = tokenizer.encode
            return
        inner = getattr(tokenizer, "tokenizer", None)
        if inner is None or getattr(tokenizer, "tokenizer_mode", "") == "clips":
            raise ConfigError(f"learned text prompts need a BPE or Hugging Face tokenizer; {type(tokenizer).__name__} "
                              "is not supported")
        clean = getattr(tokenizer, "clean_fn", lambda text: text)
        self._encode = lambda text: list(inner(clean(text), add_special_tokens=False)["input_ids"])
        marker = self._encode("x")
        full = list(inner(clean("x"), add_special_tokens=True)["input_ids"])
        start = next((i for i in range(len(full) - len(marker) + 1) if full[i:i + len(marker)] == marker), None)
        if start is None:
            raise ConfigError(f"cannot tell where {type(inner).__name__} puts its special tokens")
        self.prefix, self.suffix = full[:start], full[start + len(marker):]
        if getattr(tokenizer, "strip_sep_token", False):
            self.suffix = [0 if i == inner.sep_token_id else i for i in self.suffix]
        self.pad_id = inner.pad_token_id if inner.pad_token_id is not None else 0

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text)) if text else []


@dataclass
class TextTuning:
    """Thresholds of a text tower's fast paths, tuned by measurement (``tools/bench.py``). Each tower holds its own
    (``FrozenCLIP.text_tuning``), so a measurement passes other values to the CLIP it measures."""

    #: Sequences that must share a prefix before it is encoded once (see :data:`MIN_SEQUENCES_TO_SHARE`).
    min_sequences_to_share: int = MIN_SEQUENCES_TO_SHARE
    #: Sequences up to this long attend with the memory-efficient kernel on a GPU (see :func:`attention_for`).
    short_sequence: int = 32


class TextTower:
    """What prompt learners need from a text encoder. ``encode`` takes token embeddings (some learned)."""

    #: Whether a prompt span may be cut after its last real token (causal mask, or padding masked out).
    cut_after_last_token: bool = True

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._pieces: Optional[PieceTokenizer] = None
        self.tuning = TextTuning()

    @property
    def pieces(self) -> PieceTokenizer:
        """Built on first use, so a tokenizer learned prompts cannot use still serves zero-shot."""
        if self._pieces is None:
            self._pieces = PieceTokenizer(self.tokenizer)
        return self._pieces

    width: int
    layers: int
    context_length: int
    vocab_size: int

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attention_mask(self, ids: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def encode(self, embeds: torch.Tensor, pool_index: torch.Tensor, attention_mask: Optional[torch.Tensor],
               deep_prompts: DeepPrompts, prompt_start: int, shared_prefix: int = 0,
               prefix_groups: int = 1) -> torch.Tensor:
        """Pooled, projected features of ``embeds``. ``shared_prefix``: the caller's promise that the first that
        many positions hold the same embeddings in every sequence of each of ``prefix_groups`` equal, consecutive
        groups of sequences (a context shared by all classes; per image for per-image contexts); a causal tower
        then encodes them once per group (see :meth:`OpenCLIPTextTower.encode`), others ignore it."""
        raise NotImplementedError


class OpenCLIPTextTower(TextTower):
    """open_clip's ``TextTransformer``, wherever the model keeps it (``CLIP`` or ``CustomTextCLIP.text``).

    Everything is read from the owning module on access, so buffers replaced by ``.to(device)`` are never stale.
    """

    def __init__(self, owner: nn.Module, pool_type: str, eos_id: Optional[int], tokenizer):
        super().__init__(tokenizer)
        self.owner, self.pool_type, self.eos_id = owner, pool_type, eos_id
        if not self.owner.transformer.batch_first:
            raise ConfigError("this open_clip text transformer is sequence-first; vlprompt needs open_clip>=3")
        if pool_type not in ("argmax", "eos", "last", "first"):
            raise ConfigError(f"text pool type {pool_type!r} has no pooled feature; prompt learners need one")
        # Without a causal mask every position sees every other, padding included: nothing may be cut.
        self.cut_after_last_token = self.owner.attn_mask is not None
        # A shared prefix is encoded once only through blocks whose computation is known to be open_clip's
        # standard pre-norm self-attention block (a test checks the result against the full path).
        self.shares_prefix = self.cut_after_last_token and all(
            type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            and type(block.attn) is nn.MultiheadAttention and block.attn.in_proj_weight is not None
            and block.attn.bias_k is None and not block.attn.add_zero_attn for block in self.owner.transformer.resblocks)

    width = property(lambda self: self.owner.token_embedding.embedding_dim)
    layers = property(lambda self: len(self.owner.transformer.resblocks))
    context_length = property(lambda self: self.owner.context_length)
    vocab_size = property(lambda self: self.owner.token_embedding.num_embeddings)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.owner.token_embedding(ids)

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full(ids.shape[:1], ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        return torch.zeros(ids.shape[:1], dtype=torch.long, device=ids.device)

    def encode(self, embeds, pool_index, attention_mask, deep_prompts, prompt_start, shared_prefix=0, prefix_groups=1):
        owner = self.owner
        # With a causal mask nothing after the last pooling position reaches a pooled feature, so callers cut the
        # sequences there (prompt_batch when prompts are built, FrozenCLIP.encode_text for token ids): the length
        # is known from the shape, without reading the pooling positions back from the device.
        length = embeds.shape[1]
        mask = owner.attn_mask[:length, :length] if owner.attn_mask is not None else None
        x = embeds + owner.positional_embedding[:length].to(embeds.dtype)
        blocks = owner.transformer.resblocks
        deep_prompts = check_deep_prompts(deep_prompts, len(blocks))
        with attention_for(x.device.type, length, self.tuning.short_sequence):
            if self._can_share(x, deep_prompts, prompt_start, shared_prefix, prefix_groups):
                x, pool_index = self._encode_with_shared_prefix(x, mask, deep_prompts, prompt_start, shared_prefix,
                                                                prefix_groups, pool_index)
            else:
                for layer, block in enumerate(blocks):
                    if isinstance(deep_prompts.get(layer), Inserted):
                        x, pool_index, mask = self._insert(x, prompt_start, deep_prompts[layer].tokens, pool_index,
                                                           mask)
                    elif layer in deep_prompts:
                        x = replace_span(x, prompt_start, deep_prompts[layer])
                    x = block(x, attn_mask=mask)
        x = owner.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), pool_index]
        proj = owner.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    @staticmethod
    def _insert(x: torch.Tensor, start: int, tokens: torch.Tensor, pool_index: torch.Tensor,
                mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``x`` with ``tokens`` inserted at ``start``, the pooling positions moved past them and the causal mask
        grown to the new length (every position sees the ones before it, the inserted tokens included)."""
        x = insert_span(x, start, tokens)
        if mask is not None:
            length = x.shape[1]
            mask = torch.full((length, length), float("-inf"), dtype=mask.dtype, device=mask.device).triu_(1)
        return x, pool_index + tokens.shape[-2], mask

    def _can_share(self, x: torch.Tensor, deep_prompts: DeepPrompts, prompt_start: int, shared_prefix: int,
                   groups: int) -> bool:
        """Whether the prefix path applies: a causal standard tower, a prefix of 2 or more positions that leaves
        a suffix, groups of at least ``tuning.min_sequences_to_share`` sequences, and deep prompts that are the same
        for every sequence and lie in the prefix."""
        if not (self.shares_prefix and 2 <= shared_prefix < x.shape[1] and groups >= 1
                and x.shape[0] % groups == 0 and x.shape[0] // groups >= max(self.tuning.min_sequences_to_share, 2)):
            return False
        for prompts in deep_prompts.values():
            if isinstance(prompts, Inserted):
                return False
            pieces = [(0, prompts)] if isinstance(prompts, torch.Tensor) else prompts
            if any(piece.dim() != 2 or prompt_start + offset + piece.shape[0] > shared_prefix
                   for offset, piece in pieces):
                return False
        return True

    def _encode_with_shared_prefix(self, x, mask, deep_prompts, prompt_start, shared_prefix, groups, pool_index):
        """The blocks run once per group on the shared prefix and per sequence on the rest only. Under the causal
        mask the prefix's hidden states never depend on what follows, so they are the same in every sequence of
        a group; each suffix position attends to its group's prefix keys and values, projected once per group,
        and to the suffix's own, exactly as in the full sequence. Returns the suffix's final states and the pooling
        positions within it (the caller's pooling positions lie after the prefix)."""
        per_group = x.shape[0] // groups
        prefix, suffix = x[::per_group, :shared_prefix], x[:, shared_prefix:]
        prefix_mask, suffix_mask = mask[:shared_prefix, :shared_prefix], mask[shared_prefix:]

        def for_each_sequence(states: torch.Tensor) -> torch.Tensor:  # groups x ... -> (groups * per_group) x ...
            return states.unsqueeze(1).expand(-1, per_group, *states.shape[1:]).flatten(0, 1)
        for layer, block in enumerate(self.owner.transformer.resblocks):
            if layer in deep_prompts:
                prefix = replace_span(prefix, prompt_start, deep_prompts[layer])
            # open_clip's ResidualAttentionBlock.forward, the attention written out so that the suffix takes the
            # prefix's keys and values as they are instead of projecting them again for every sequence.
            query, key, value = _heads(block.attn, block.ln_1(prefix))
            suffix_query, suffix_key, suffix_value = _heads(block.attn, block.ln_1(suffix))
            attended = [F.scaled_dot_product_attention(query, key, value, attn_mask=prefix_mask),
                        F.scaled_dot_product_attention(
                            suffix_query, torch.cat([for_each_sequence(key), suffix_key], dim=2),
                            torch.cat([for_each_sequence(value), suffix_value], dim=2), attn_mask=suffix_mask)]
            prefix, suffix = (
                states + block.ls_1(block.attn.out_proj(heads.transpose(1, 2).flatten(2)))
                for states, heads in zip((prefix, suffix), attended))
            prefix, suffix = (states + block.ls_2(block.mlp(block.ln_2(states))) for states in (prefix, suffix))
        return suffix, pool_index - shared_prefix


def attention_for(device_type: str, length: int, short_sequence: int):
    """A context choosing the attention kernels for sequences of ``length`` on ``device_type``: on a GPU, prompts up
    to ``short_sequence`` long leave cuDNN out, so torch takes the memory-efficient kernel (flash takes no mask, and
    the text towers pass their causal mask): the same attention, computed in other tiles. Otherwise torch's own
    choice. Why (``TextTuning.short_sequence``, 32): torch's first choice on a GPU (torch 2.11, H100), cuDNN's flash
    kernel, works in tiles far longer than a prompt: forward and backward of 1000 x 8 heads x 13 positions under a
    causal mask (bf16) take 1.28 ms with it and 0.46 ms with the memory-efficient kernel (at 77 positions cuDNN is
    the faster, 1.50 ms against 1.74). CoOp's compiled step at 1000 classes: 19.2 -> 13.8 ms."""
    if device_type != "cuda" or length > short_sequence:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


def _heads(attention: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of ``x`` (batch x length x width) as ``nn.MultiheadAttention`` projects them, each
    batch x heads x length x head width."""
    projected = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
    return tuple(part.unflatten(-1, (attention.num_heads, -1)).transpose(1, 2) for part in projected.chunk(3, dim=-1))


class HFTextTower(TextTower):
    """open_clip's ``HFTextEncoder``: a Hugging Face encoder fed token embeddings and an attention mask."""

    def __init__(self, encoder: HFTextEncoder, tokenizer):
        super().__init__(tokenizer)
        self.encoder = encoder
        names = arch_dict.get(encoder.config.model_type, {}).get("config_names", {})
        self._layer_attr = names.get("layer_attr", "layer")

    width = property(lambda self: self.encoder.transformer.get_input_embeddings().embedding_dim)
    layers = property(lambda self: len(self._layers()))
    vocab_size = property(lambda self: self.encoder.transformer.get_input_embeddings().num_embeddings)

    @property
    def context_length(self) -> int:
        """The tokenizer's context length (the config's ``context_length``), within the model's positions."""
        return min(getattr(self.tokenizer, "context_length", None) or self.encoder.context_length,
                   self.encoder.context_length)

    def _layers(self) -> nn.ModuleList:
        body = self.encoder.transformer
        body = getattr(body, "encoder", body)
        for name in (self._layer_attr, "layer", "layers", "block"):
            if isinstance(getattr(body, name, None), nn.ModuleList):
                return getattr(body, name)
        raise ConfigError(f"cannot find the layers of {type(body).__name__} for deep text prompts")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.transformer.get_input_embeddings()(ids)

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        # The tower's own pooler decides (first token, mean over the mask, ...); kept for a uniform interface.
        return torch.zeros(ids.shape[:1], dtype=torch.long, device=ids.device)

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids != self.encoder.config.pad_token_id).long()

    def encode(self, embeds, pool_index, attention_mask, deep_prompts, prompt_start, shared_prefix=0, prefix_groups=1):
        if attention_mask is None:
            raise ValueError("a Hugging Face text tower needs the attention mask of the prompts")
        layers = self._layers()
        deep_prompts = check_deep_prompts(deep_prompts, len(layers))
        if any(isinstance(prompts, Inserted) for prompts in deep_prompts.values()):
            raise ConfigError("tokens inserted into a Hugging Face text tower are not supported (its attention mask and "
                              "pooler are the model's own); use an open_clip text tower")
        handles = []
        for layer, prompts in deep_prompts.items():
            def replace(module, args, kwargs, prompts=prompts):
                if args:
                    return (replace_span(args[0], prompt_start, prompts), *args[1:]), kwargs
                kwargs["hidden_states"] = replace_span(kwargs["hidden_states"], prompt_start, prompts)
                return args, kwargs
            handles.append(layers[layer].register_forward_pre_hook(replace, with_kwargs=True))
        try:
            out = self.encoder.transformer(inputs_embeds=embeds, attention_mask=attention_mask)
        finally:
            for handle in handles:
                handle.remove()
        return self.encoder.proj(self.encoder.pooler(out, attention_mask))


def text_tower_of(model: nn.Module, tokenizer) -> Optional[TextTower]:
    """The tower learned tokens can enter, or None (then only token ids are encoded, by open_clip itself)."""
    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder):
        return HFTextTower(text, tokenizer)
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None:  # CoCa: a class token appended after the text is what is pooled
            return None
        return OpenCLIPTextTower(text, text.pool_type, text.eos_id, tokenizer)
    if hasattr(model, "token_embedding") and hasattr(model, "text_pool_type"):  # open_clip.CLIP
        return OpenCLIPTextTower(model, model.text_pool_type, getattr(model, "text_eos_id", None), tokenizer)
    return None


class VisionTower:
    """A ViT whose token sequence can take learned prompt tokens."""

    width: int
    layers: int

    def encode(self, images: torch.Tensor, prompts: torch.Tensor, deep_prompts: DeepPrompts,
               checkpoint: bool = False) -> torch.Tensor:
        """Image features with prompt tokens; ``checkpoint`` recomputes each block's activations in the backward
        pass instead of keeping them."""
        raise NotImplementedError

    def encode_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image features and the final patch tokens (``B x N x D``), both through the tower's own
        projection: the tokens live in the joint embedding space."""
        raise NotImplementedError

    def encode_inserting(self, images: torch.Tensor, deep_prompts: DeepPrompts,
                         checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features with tokens :class:`Inserted` after the class token at a block's input (and replaced at
        later ones, ``deep_prompts``), and those tokens' final states after the tower's last norm (``B x n x
        width``, not projected); the features pool the image's own tokens only."""
        raise ConfigError(f"{type(self).__name__} cannot take inserted tokens; use an open_clip ViT")


class OpenCLIPViT(VisionTower):
    def __init__(self, visual: VisionTransformer):
        self.visual = visual

    width = property(lambda self: self.visual.transformer.width)
    layers = property(lambda self: len(self.visual.transformer.resblocks))

    def encode(self, images, prompts, deep_prompts, checkpoint=False):
        visual = self.visual
        batch = images.shape[0]
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        n_prompts = prompts.shape[-2]
        x = torch.cat([x, expand_batch(prompts, batch).to(x.dtype)], dim=1)
        x = visual.ln_pre(x)
        deep_prompts = check_deep_prompts(deep_prompts, len(visual.transformer.resblocks))
        for layer, block in enumerate(visual.transformer.resblocks):
            if layer in deep_prompts:
                x = replace_span(x, x.shape[1] - n_prompts, deep_prompts[layer])
            x = run_block(block, x, checkpoint)
        # Prompt tokens are dropped before pooling so average pooling sees only the image's own tokens.
        pooled, _ = visual._pool(x[:, :-n_prompts])
        return pooled @ visual.proj if visual.proj is not None else pooled

    def encode_inserting(self, images, deep_prompts, checkpoint=False):
        visual = self.visual
        if visual.attn_pool is not None:
            raise ConfigError("this image tower pools with attention (CoCa); tokens inserted into it are not supported; "
                              "use a CLIP ViT")
        deep_prompts = check_deep_prompts(deep_prompts, len(visual.transformer.resblocks))
        x, n_tokens = visual._embeds(images), 0
        for layer, block in enumerate(visual.transformer.resblocks):
            prompts = deep_prompts.get(layer)
            if isinstance(prompts, Inserted):
                x, n_tokens = insert_span(x, 1, prompts.tokens), prompts.tokens.shape[-2]
            elif prompts is not None:
                if not n_tokens:
                    raise ConfigError("deep prompts that replace inserted tokens need them inserted at an earlier block")
                x = replace_span(x, 1, prompts)
            x = run_block(block, x, checkpoint)
        if not n_tokens:
            raise ConfigError("encode_inserting needs tokens Inserted at one block")
        inserted = visual.ln_post(x[:, 1:1 + n_tokens])
        pooled, _ = visual._pool(torch.cat([x[:, :1], x[:, 1 + n_tokens:]], dim=1))
        return (pooled @ visual.proj if visual.proj is not None else pooled), inserted

    def encode_with_tokens(self, images):
        visual = self.visual
        if visual.attn_pool is not None:
            raise ConfigError("this image tower pools with attention (CoCa): its output tokens are the pooler's "
                              "queries, not patch tokens in the joint space; use a CLIP ViT")
        pooled, tokens = visual._pool(visual.transformer(visual._embeds(images)))
        if visual.proj is not None:
            pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
        return pooled, tokens


class TimmViT(VisionTower):
    """A timm ``VisionTransformer`` trunk inside open_clip's ``TimmModel`` (its pooling and projection head)."""

    def __init__(self, visual: nn.Module):
        self.visual, self.trunk = visual, visual.trunk

    width = property(lambda self: self.trunk.embed_dim)
    layers = property(lambda self: len(self.trunk.blocks))

    def encode(self, images, prompts, deep_prompts, checkpoint=False):
        trunk = self.trunk
        x = trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(images)))
        n_prompts = prompts.shape[-2]
        x = trunk.norm_pre(torch.cat([x, expand_batch(prompts, x.shape[0]).to(x.dtype)], dim=1))
        deep_prompts = check_deep_prompts(deep_prompts, len(trunk.blocks))
        for layer, block in enumerate(trunk.blocks):
            if layer in deep_prompts:
                x = replace_span(x, x.shape[1] - n_prompts, deep_prompts[layer])
            x = run_block(block, x, checkpoint)
        x = trunk.norm(x[:, :-n_prompts])
        return self.visual.head(trunk.forward_head(x))

    def encode_with_tokens(self, images):
        trunk = self.trunk
        x = trunk.forward_features(images)
        # The tokens take the pooled feature's path after pooling: the trunk's own norm and head (EVA-02's
        # projection is the trunk's head), then open_clip's.
        tokens = x[:, trunk.num_prefix_tokens:]
        tokens = trunk.head(getattr(trunk, "fc_norm", nn.Identity())(tokens))
        return self.visual.head(trunk.forward_head(x)), self.visual.head(tokens)


class TimmEva(TimmViT):
    """A timm ``Eva`` trunk (EVA-02) inside open_clip's ``TimmModel``.

    EVA-02 rotates the queries and keys of the patch tokens (RoPE) after its prefix (class) tokens, so the prompt
    tokens go right after the prefix tokens rather than at the end, and each block counts them as prefix tokens
    while the prompts are in: the rotary embedding then meets exactly the patch grid it was made for.
    """

    def encode(self, images, prompts, deep_prompts, checkpoint=False):
        trunk = self.trunk
        if getattr(trunk, "rope_mixed", False):
            raise ConfigError("visual prompts on a timm Eva with depth-dependent (mixed) rotary embeddings are not "
                              "supported; use an EVA-02 or a plain ViT")
        prefix, n_prompts = trunk.num_prefix_tokens, prompts.shape[-2]
        x, rope = trunk._pos_embed(trunk.patch_embed(images))
        prompts = expand_batch(prompts, x.shape[0]).to(x.dtype)
        x = trunk.norm_pre(torch.cat([x[:, :prefix], prompts, x[:, prefix:]], dim=1))
        deep_prompts = check_deep_prompts(deep_prompts, len(trunk.blocks))

        def with_prompts_as_prefix(block, x):
            # Counted as prefix tokens for this call only, so a checkpointed block recomputes the same way.
            block.attn.num_prefix_tokens += n_prompts
            try:
                return block(x, rope=rope)
            finally:
                block.attn.num_prefix_tokens -= n_prompts
        for layer, block in enumerate(trunk.blocks):
            if layer in deep_prompts:
                x = replace_span(x, prefix, deep_prompts[layer])
            x = run_block(functools.partial(with_prompts_as_prefix, block), x, checkpoint)
        x = trunk.norm(torch.cat([x[:, :prefix], x[:, prefix + n_prompts:]], dim=1))
        return self.visual.head(trunk.forward_head(x))


def vision_tower_of(model: nn.Module) -> Optional[VisionTower]:
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        return OpenCLIPViT(visual)
    trunk = getattr(visual, "trunk", None)
    kind = type(trunk).__name__
    if kind == "VisionTransformer" and hasattr(trunk, "_pos_embed"):
        return TimmViT(visual)
    if kind == "Eva" and all(hasattr(block.attn, "num_prefix_tokens") for block in trunk.blocks):
        return TimmEva(visual)
    return None


def check_deep_prompts(deep_prompts: Optional[DeepPrompts], n_layers: int) -> DeepPrompts:
    if not deep_prompts:
        return {}
    bad = [layer for layer in deep_prompts if not 1 <= layer < n_layers]
    if bad:
        raise ConfigError(f"deep prompts for layers {bad} are out of range 1..{n_layers - 1} "
                          "(layer 0 prompts are the input prompts)")
    return deep_prompts


def run_block(block, x: torch.Tensor, checkpoint: bool, **kwargs) -> torch.Tensor:
    """``block(x, **kwargs)``; with ``checkpoint`` (and gradients on), its activations are recomputed in the
    backward pass instead of kept (the frozen towers run in eval mode: no dropout, so the recomputation is exact)."""
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **kwargs)
    return block(x, **kwargs)


def expand_batch(prompts: torch.Tensor, batch: int) -> torch.Tensor:
    return prompts.expand(batch, -1, -1) if prompts.dim() == 2 else prompts


def insert_span(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """``x`` with ``tokens`` (``n x width`` or per sequence) inserted at position ``start``, differentiably."""
    return torch.cat([x[:, :start], expand_batch(tokens, x.shape[0]).to(x.dtype), x[:, start:]], dim=1)


def replace_span(x: torch.Tensor, start: int, prompts: DeepPrompt) -> torch.Tensor:
    """``x`` with positions ``start .. start+n`` replaced by ``prompts`` (or each ``(offset, piece)`` at
    ``start + offset``), differentiably (no in-place write)."""
    pieces = [(0, prompts)] if isinstance(prompts, torch.Tensor) else sorted(prompts, key=lambda piece: piece[0])
    parts, position = [], 0
    for offset, piece in pieces:
        piece = expand_batch(piece, x.shape[0]).to(x.dtype)
        begin = start + offset
        if begin < position:
            raise ConfigError(f"deep prompt pieces overlap at offset {offset}")
        parts += [x[:, position:begin], piece]
        position = begin + piece.shape[1]
    parts.append(x[:, position:])
    return torch.cat(parts, dim=1)

