"""A frozen open_clip model with the injection points prompt learners need.

The wrapper composes open_clip's own sub-modules (token embedding, residual blocks, ``ln_pre``/``ln_final``,
pooling, projections); it never copies or forks open_clip code. open_clip 3.x transformers are batch-first,
so no sequence-first permutes appear here.

The CLIP weights are deliberately *not* registered as a sub-module: they never appear in ``parameters()``,
``state_dict()`` or an optimizer, so a learner's checkpoint holds only what it learned and DDP never puts
frozen weights in its gradient buckets. ``_apply`` forwards device and dtype moves so ``.to(device)`` on the
learner still moves the backbone.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, TextTransformer, VisionTransformer
from torch import nn

from vlprompt.errors import ConfigError

#: Architectures shipped with vlprompt, as open_clip model-config JSON files.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
#: Weights shipped with vlprompt: ``(architecture, pretrained shortcut) -> file`` in :data:`SHIPPED_WEIGHTS_DIR`.
SHIPPED_WEIGHTS_DIR = Path(__file__).parent / "pretrained"
SHIPPED_WEIGHTS = {("vlprompt-tiny", "toy"): "vlprompt-tiny-toy.safetensors"}

DeepPrompts = Mapping[int, torch.Tensor]

#: Entries OpenAI's CLIP checkpoints hold besides the weights; they mark a file as OpenAI's format.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")

_registered_config_paths: set[str] = set()
_config_tmpdir: Optional[str] = None


def _register_config_path(path: Path) -> None:
    key = str(path.resolve())
    if key not in _registered_config_paths:
        open_clip.add_model_config(path)
        _registered_config_paths.add(key)


def register_model_configs() -> None:
    """Make vlprompt's own architectures (:data:`MODEL_CONFIG_DIR`) known to open_clip."""
    _register_config_path(MODEL_CONFIG_DIR)


def _register_config_dict(config: Mapping[str, Any]) -> str:
    """Register an architecture given as a dict and return the name open_clip knows it by."""
    global _config_tmpdir
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ConfigError(f"CLIP config dict lacks {missing}; an open_clip model config has embed_dim, vision_cfg and text_cfg")
    text = json.dumps(config, sort_keys=True)
    name = "vlprompt-cfg-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    if _config_tmpdir is None:
        _config_tmpdir = tempfile.mkdtemp(prefix="vlprompt-model-configs-")
    path = Path(_config_tmpdir) / f"{name}.json"
    path.write_text(text)
    _register_config_path(path)
    return name


@dataclass(frozen=True)
class PromptTokens:
    """Token ids for one prompt assembled from text pieces.

    ``spans[i]`` is the ``[start, end)`` token range of piece ``i``; ``eot`` is the pooling position.
    """

    ids: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    eot: int


class FrozenCLIP(nn.Module):
    """A frozen CLIP backbone from open_clip, with prompt-injection entry points.

    Args:
        name: an open_clip architecture name (``"ViT-B-16"``), an ``hf-hub:`` or ``local-dir:`` reference, a
            vlprompt architecture (``configs`` in :data:`MODEL_CONFIG_DIR`), or a model-config dict
            (``embed_dim``, ``vision_cfg``, ``text_cfg``) for custom or tiny test models.
        pretrained: an open_clip pretrained tag (downloaded, needs network) or a local checkpoint path. ``None``
            gives random weights. Ignored by open_clip for ``hf-hub:``/``local-dir:`` names.
        cache_dir: where open_clip caches downloads.
    """

    def __init__(
        self,
        name: Union[str, dict],
        pretrained: Optional[str] = None,
        cache_dir: Optional[str] = None,
    ):
        super().__init__()
        register_model_configs()
        self.source = {"name": name, "pretrained": pretrained}
        model_name = _register_config_dict(name) if isinstance(name, Mapping) else name
        model = _create_model(model_name, pretrained, cache_dir)
        model.requires_grad_(False)
        # eval for good: not being a registered sub-module, the backbone never sees the learner's .train() calls.
        model.eval()
        # Stored outside nn.Module's registries on purpose, see the module docstring.
        object.__setattr__(self, "_model", model)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self._text = _TextTower.of(model)
        self._visual_is_vit = isinstance(model.visual, VisionTransformer)

    # -- nn.Module plumbing ---------------------------------------------------------------------------------
    def __deepcopy__(self, memo) -> "FrozenCLIP":
        # Frozen weights are shared, never copied: weight averaging and meta-learning deep-copy whole learners.
        return self

    def _apply(self, fn, recurse=True):
        self._model._apply(fn)
        return super()._apply(fn, recurse)

    @property
    def model(self) -> nn.Module:
        """The underlying open_clip model (frozen)."""
        return self._model

    # -- facts about the architecture ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._model.logit_scale.device

    @property
    def embed_dim(self) -> int:
        return self._model.visual.output_dim

    @property
    def text_width(self) -> int:
        return self._require_text().token_embedding.embedding_dim

    @property
    def text_layers(self) -> int:
        return len(self._require_text().transformer.resblocks)

    @property
    def context_length(self) -> int:
        return self._require_text().context_length

    @property
    def supports_visual_prompts(self) -> bool:
        return self._visual_is_vit

    @property
    def vision_width(self) -> int:
        return self._require_vit("report its width").transformer.width

    @property
    def vision_layers(self) -> int:
        return len(self._require_vit("report its depth").transformer.resblocks)

    @property
    def preprocess_cfg(self) -> dict:
        """Image size, mean, std and interpolation the pretrained weights expect."""
        return dict(open_clip.get_model_preprocess_cfg(self._model))

    @property
    def uses_quick_gelu(self) -> bool:
        """Whether the transformer blocks use QuickGELU (OpenAI's activation) rather than GELU."""
        return any(isinstance(module, QuickGELU) for module in self._model.modules())

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._model.logit_scale.exp()

    @property
    def identity(self) -> dict:
        """What checkpoints record to rebuild this backbone and to refuse a different one."""
        arch = {
            "embed_dim": self.embed_dim,
            "visual": type(self._model.visual).__name__,
            "image_size": list(open_clip.get_model_preprocess_cfg(self._model).get("size", ()) or ()),
            "quick_gelu": self.uses_quick_gelu,
        }
        if self._text is not None:
            arch.update(text_width=self.text_width, text_layers=self.text_layers, context_length=self.context_length,
                        vocab_size=self._text.token_embedding.num_embeddings)
        if self._visual_is_vit:
            arch.update(vision_width=self.vision_width, vision_layers=self.vision_layers)
        return {"source": dict(self.source), "arch": arch}

    def _require_text(self) -> "_TextTower":
        if self._text is None:
            raise ConfigError(
                f"the text tower of this CLIP ({type(self._model).__name__}) is not an open_clip TextTransformer; "
                "prompt learners need an open_clip text tower")
        return self._text

    def _require_vit(self, purpose: str) -> VisionTransformer:
        if not self._visual_is_vit:
            raise ConfigError(
                f"visual prompts need a ViT image tower, but this CLIP's is {type(self._model.visual).__name__} and "
                f"cannot {purpose}; use a text-only learner (coop, cocoop, kgcoop, zeroshot) or a ViT backbone")
        return self._model.visual

    # -- text side -----------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings of ``ids`` (no positional embedding)."""
        return self._require_text().token_embedding(ids)

    def prompt_tokens(self, pieces: Sequence[Union[str, Sequence[int]]]) -> PromptTokens:
        """Token ids of ``[SOT] piece_0 piece_1 ... [EOT]`` and where each piece landed.

        A piece is text or already-encoded BPE ids. Text pieces are encoded separately; CLIP's BPE never merges
        across white space, so the result equals tokenizing the joined text while telling the caller which
        positions came from which piece (for example the context words a learner replaces with vectors).
        """
        self._require_text()
        tok = self.tokenizer
        if not all(hasattr(tok, a) for a in ("encode", "sot_token_id", "eot_token_id")):
            raise ConfigError(f"learned text prompts need open_clip's BPE tokenizer; {type(tok).__name__} is not supported")
        ids, spans = [tok.sot_token_id], []
        for piece in pieces:
            encoded = (tok.encode(piece) if piece else []) if isinstance(piece, str) else list(piece)
            spans.append((len(ids), len(ids) + len(encoded)))
            ids.extend(encoded)
        ids.append(tok.eot_token_id)
        if len(ids) > self.context_length:
            text = " ".join(p if isinstance(p, str) else "<ids>" for p in pieces)
            raise ConfigError(
                f"prompt {text!r} is {len(ids)} tokens, longer than the context length {self.context_length}; "
                "use fewer context tokens or a shorter class name")
        padded = torch.zeros(self.context_length, dtype=torch.long)
        padded[: len(ids)] = torch.tensor(ids)
        return PromptTokens(ids=padded, spans=tuple(spans), eot=len(ids) - 1)

    def encode_words(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        return list(self.tokenizer.encode(text))

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Position whose final hidden state becomes the text feature, per sequence."""
        tower = self._require_text()
        if tower.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if tower.pool_type == "eos":
            return (ids == tower.eos_id).int().argmax(dim=-1)
        if tower.pool_type == "last":
            return torch.full(ids.shape[:1], ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        if tower.pool_type == "first":
            return torch.zeros(ids.shape[:1], dtype=torch.long, device=ids.device)
        raise ConfigError(f"text pool type {tower.pool_type!r} has no pooled feature; prompt learners need one")

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features of token ids, through the same path as learned prompts."""
        features = self.encode_text_embeddings(self.embed_tokens(ids), self.pool_index(ids))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text_embeddings(
        self,
        embeds: torch.Tensor,
        pool_index: torch.Tensor,
        deep_prompts: Optional[DeepPrompts] = None,
        prompt_start: int = 1,
    ) -> torch.Tensor:
        """Text features of token embeddings (``N x L x width``), some of which may be learned.

        Args:
            embeds: token embeddings without positional embedding.
            pool_index: pooling position per sequence (the EOT token), as from :meth:`pool_index`.
            deep_prompts: ``{layer: prompts}`` with ``layer >= 1``; before that layer the ``n`` positions
                starting at ``prompt_start`` are replaced by ``prompts`` (``n x width`` or ``N x n x width``).
            prompt_start: first position of the replaced span (1 = right after SOT).

        With a causal mask nothing after the last pooling position can influence the pooled features, so the
        sequence is cut there: exact, and much cheaper than the full context.
        """
        tower = self._require_text()
        if tower.attn_mask is not None:
            length = int(pool_index.max()) + 1
            mask = tower.attn_mask[:length, :length]
        else:
            length, mask = embeds.shape[1], None
        x = embeds[:, :length] + tower.positional_embedding[:length]
        deep_prompts = _check_deep_prompts(deep_prompts, len(tower.transformer.resblocks))
        for layer, block in enumerate(tower.transformer.resblocks):
            if layer in deep_prompts:
                x = _replace_span(x, prompt_start, deep_prompts[layer])
            x = block(x, attn_mask=mask)
        x = tower.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), pool_index]
        return tower.project(pooled)

    # -- image side ----------------------------------------------------------------------------------------------
    def encode_image(
        self,
        images: torch.Tensor,
        prompts: Optional[torch.Tensor] = None,
        deep_prompts: Optional[DeepPrompts] = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Image features, optionally with learned visual tokens.

        Args:
            prompts: ``n x width`` or ``B x n x width`` tokens appended after the patch tokens, before ``ln_pre``.
            deep_prompts: ``{layer: prompts}`` with ``layer >= 1``; before that layer the appended tokens are
                replaced (``n x width`` or ``B x n x width``).
        """
        if prompts is None:
            if deep_prompts:
                raise ConfigError("visual deep prompts need input visual prompts to replace")
            features = self._model.encode_image(images)
        else:
            features = self._encode_image_with_prompts(images, prompts, deep_prompts)
        return F.normalize(features, dim=-1) if normalize else features

    def _encode_image_with_prompts(self, images, prompts, deep_prompts):
        visual = self._require_vit("take visual prompts")
        batch = images.shape[0]
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        n_prompts = prompts.shape[-2]
        x = torch.cat([x, _expand_batch(prompts, batch).to(x.dtype)], dim=1)
        x = visual.ln_pre(x)
        deep_prompts = _check_deep_prompts(deep_prompts, len(visual.transformer.resblocks))
        for layer, block in enumerate(visual.transformer.resblocks):
            if layer in deep_prompts:
                x = _replace_span(x, x.shape[1] - n_prompts, deep_prompts[layer])
            x = block(x)
        # Prompt tokens are dropped before pooling so average pooling sees only the image's own tokens.
        pooled, _ = visual._pool(x[:, :-n_prompts])
        return pooled @ visual.proj if visual.proj is not None else pooled


class _TextTower:
    """The open_clip text-tower pieces, wherever the model keeps them (CLIP vs CustomTextCLIP).

    Everything is read from the owning module on access, so buffers replaced by ``.to(device)`` are never stale.
    """

    def __init__(self, owner: nn.Module, pool_type: str, eos_id: Optional[int]):
        self.owner, self.pool_type, self.eos_id = owner, pool_type, eos_id

    @classmethod
    def of(cls, model: nn.Module) -> Optional["_TextTower"]:
        if isinstance(model, open_clip.CLIP):
            tower = cls(model, model.text_pool_type, getattr(model, "text_eos_id", None))
        elif isinstance(getattr(model, "text", None), TextTransformer) and model.text.cls_emb is None:
            # (an appended CoCa class token would move pooling away from EOT, so such towers are left out)
            tower = cls(model.text, model.text.pool_type, model.text.eos_id)
        else:
            return None
        if not tower.transformer.batch_first:
            raise ConfigError("this open_clip text transformer is sequence-first; vlprompt needs open_clip>=3 (batch-first)")
        return tower

    token_embedding = property(lambda self: self.owner.token_embedding)
    positional_embedding = property(lambda self: self.owner.positional_embedding)
    transformer = property(lambda self: self.owner.transformer)
    ln_final = property(lambda self: self.owner.ln_final)
    attn_mask = property(lambda self: self.owner.attn_mask)
    context_length = property(lambda self: self.owner.context_length)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.owner.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj


def shipped_weights_path(model_name: str, tag: str, must_exist: bool = True) -> Path:
    """The file behind a shipped ``pretrained`` shortcut such as ``load_clip("vlprompt-tiny", pretrained="toy")``."""
    path = SHIPPED_WEIGHTS_DIR / SHIPPED_WEIGHTS[(model_name, tag)]
    if must_exist and not path.is_file():
        raise ConfigError(f"the shipped weights {path} are missing; reinstall vlprompt or recreate them with "
                          "tools/pretrain_toy_clip.py")
    return path


def _create_model(model_name: str, pretrained: Optional[str], cache_dir: Optional[str]) -> nn.Module:
    """The open_clip model with the activation its weights were trained with, whatever name the user gave.

    OpenAI's weights were trained with QuickGELU, but open_clip's plain names (``ViT-B-16``) build GELU models;
    features then differ silently. The activation is taken from the pretrained tag's record (``quick_gelu``), or,
    for a local file in OpenAI's format (their TorchScript archive, or a state dict holding OpenAI's metadata
    entries), set to QuickGELU. ``local-dir:``/``hf-hub:`` configs and config dicts say it themselves.
    """
    if (model_name, pretrained) in SHIPPED_WEIGHTS:
        pretrained = str(shipped_weights_path(model_name, pretrained))
    schema = model_name.split(":", 1)[0] if ":" in model_name else None
    clean_name = model_name.replace("/", "-")
    if schema is None and clean_name not in open_clip.list_models():
        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else "; see open_clip.list_models()"
        raise ConfigError(f"unknown CLIP architecture {model_name!r}{hint}")
    quick_gelu, openai_state = False, None
    if pretrained and schema is None:
        tag_cfg = open_clip.get_pretrained_cfg(clean_name, pretrained)
        if tag_cfg:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        elif os.path.isfile(pretrained):
            openai_state = openai_state_dict(pretrained)
            quick_gelu = openai_state is not None
        else:
            tags = open_clip.list_pretrained_tags_by_model(clean_name)
            looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
            if looks_like_path:
                raise ConfigError(f"pretrained checkpoint {pretrained!r} does not exist; pass an existing file path")
            raise ConfigError(f"{pretrained!r} is not a pretrained tag of {model_name} nor a file; "
                              f"tags: {', '.join(tags) or 'none'}")
    # open_clip's own QuickGELU switch; without it a quick_gelu tag only earns a UserWarning.
    options = {"force_quick_gelu": True} if quick_gelu else {}
    try:
        if openai_state is None:
            model = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir, **options)
        else:  # loaded below; open_clip's "initialized randomly" warning would be wrong
            with _without_log_records("No pretrained weights loaded"):
                model = open_clip.create_model(model_name, cache_dir=cache_dir, **options)
    except RuntimeError as err:
        if "download" in str(err).lower():
            raise ConfigError(
                f"could not download weights {pretrained!r} for {model_name} (offline?); "
                "pass a local checkpoint file as pretrained") from err
        raise
    if openai_state is not None:
        try:
            model.load_state_dict(openai_state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise ConfigError(f"the OpenAI weights in {pretrained!r} do not fit architecture {model_name!r} ({first}); "
                              "name the architecture they were trained as") from None
    return model


@contextlib.contextmanager
def _without_log_records(text: str):
    """Drop root-logger records containing ``text`` while the block runs."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return text not in record.getMessage()

    drop, root = Drop(), logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def openai_state_dict(path: Union[str, Path]) -> Optional[dict[str, torch.Tensor]]:
    """The weights of an OpenAI-format CLIP checkpoint, without OpenAI's metadata entries; None for other files.

    OpenAI ships TorchScript archives (loaded with ``torch.jit.load``, as open_clip does for them; only the
    tensors are read); a state dict saved from one keeps the entries :data:`OPENAI_METADATA_KEYS`. Other state
    dicts carry no record of their activation: for OpenAI weights saved that way, name the ``-quickgelu``
    architecture.
    """
    path = str(path)
    if path.endswith((".safetensors", ".npz", ".npy")):
        return None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_torchscript = any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
        if is_torchscript:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format OpenAI ships
                warnings.simplefilter("ignore", FutureWarning)
                state = dict(torch.jit.load(path, map_location="cpu").state_dict())
            if not all(key in state for key in OPENAI_METADATA_KEYS):
                raise ConfigError(f"{path!r} is a TorchScript archive but not an OpenAI CLIP checkpoint; pass a state "
                                  "dict or OpenAI's original file")
            return {k: v for k, v in state.items() if k not in OPENAI_METADATA_KEYS}
    try:  # mmap: only the keys are read here; open_clip reads the tensors of a non-OpenAI file itself
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ConfigError(f"pretrained checkpoint {path!r} cannot be read ({type(err).__name__}); pass a PyTorch "
                          "state dict, a .safetensors file or OpenAI's original file") from None
    if isinstance(state, dict) and all(key in state for key in OPENAI_METADATA_KEYS):
        return {k: v for k, v in state.items() if k not in OPENAI_METADATA_KEYS}
    return None


def _check_deep_prompts(deep_prompts: Optional[DeepPrompts], n_layers: int) -> DeepPrompts:
    if not deep_prompts:
        return {}
    bad = [layer for layer in deep_prompts if not 1 <= layer < n_layers]
    if bad:
        raise ConfigError(f"deep prompts for layers {bad} are out of range 1..{n_layers - 1} "
                          "(layer 0 prompts are the input prompts)")
    return deep_prompts


def _expand_batch(prompts: torch.Tensor, batch: int) -> torch.Tensor:
    return prompts.expand(batch, -1, -1) if prompts.dim() == 2 else prompts


def _replace_span(x: torch.Tensor, start: int, prompts: torch.Tensor) -> torch.Tensor:
    """``x`` with positions ``start .. start+n`` replaced by ``prompts``, differentiably (no in-place write)."""
    prompts = _expand_batch(prompts, x.shape[0]).to(x.dtype)
    end = start + prompts.shape[1]
    return torch.cat([x[:, :start], prompts, x[:, end:]], dim=1)


def load_clip(name: Union[str, dict], pretrained: Optional[str] = None, **kwargs) -> FrozenCLIP:
    """Load a frozen CLIP; see :class:`FrozenCLIP` for the arguments."""
    return FrozenCLIP(name, pretrained=pretrained, **kwargs)
