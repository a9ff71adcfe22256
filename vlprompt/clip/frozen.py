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
import socket
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.errors import ConfigError

if TYPE_CHECKING:
    from vlprompt.clip.towers import DeepPrompts, TextTower, VisionTower

#: Architectures shipped with vlprompt, as open_clip model-config JSON files.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
#: Weights shipped with vlprompt: ``(architecture, pretrained shortcut) -> file`` in :data:`SHIPPED_WEIGHTS_DIR`.
SHIPPED_WEIGHTS_DIR = Path(__file__).parent / "pretrained"
SHIPPED_WEIGHTS = {("vlprompt-tiny", "toy"): "vlprompt-tiny-toy.safetensors",
                   ("vlprompt-small", "toy"): "vlprompt-small-toy.safetensors",
                   ("vlprompt-bert-tiny", "toy"): "vlprompt-bert-tiny-toy.safetensors"}

#: Entries OpenAI's CLIP checkpoints hold besides the weights; they mark a file as OpenAI's format.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")

_registered_config_paths: set[str] = set()
_config_tmpdir: Optional[str] = None


def _register_config_path(path: Path) -> None:
    key = str(path.resolve())
    if key not in _registered_config_paths:
        import open_clip

        open_clip.add_model_config(path)
        _registered_config_paths.add(key)


def register_model_configs() -> None:
    """Make vlprompt's own architectures (:data:`MODEL_CONFIG_DIR`, and the packaged ones of
    :mod:`vlprompt.clip.toy_architectures` with their towers) known to open_clip."""
    from vlprompt.clip.toy_architectures import register_toy_architectures, resolve_packaged_config

    _register_config_path(MODEL_CONFIG_DIR)
    for path in register_toy_architectures():
        _register_config_dict(resolve_packaged_config(path), name=path.stem)


def _register_config_dict(config: Mapping[str, Any], name: Optional[str] = None) -> str:
    """Register an architecture given as a dict (as ``name``, else a name from its content) and return the name
    open_clip knows it by."""
    global _config_tmpdir
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ConfigError(f"CLIP config dict lacks {missing}; an open_clip model config has embed_dim, vision_cfg and text_cfg")
    text = json.dumps(config, sort_keys=True)
    name = name or "vlprompt-cfg-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    if _config_tmpdir is None:
        _config_tmpdir = tempfile.mkdtemp(prefix="vlprompt-model-configs-")
    path = Path(_config_tmpdir) / f"{name}.json"
    path.write_text(text)
    _register_config_path(path)
    return name


@dataclass(frozen=True)
class PromptTokens:
    """Token ids for one prompt assembled from text pieces, padded to the context length.

    ``spans[i]`` is the ``[start, end)`` token range of piece ``i``; ``length`` counts the real tokens (special
    tokens included, padding not).
    """

    ids: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    length: int


class FrozenCLIP(nn.Module):
    """A frozen CLIP backbone from open_clip, with prompt-injection entry points.

    Args:
        name: an open_clip architecture name (``"ViT-B-16"``), an ``hf-hub:`` or ``local-dir:`` reference, a
            vlprompt architecture (``configs`` in :data:`MODEL_CONFIG_DIR`), or a model-config dict
            (``embed_dim``, ``vision_cfg``, ``text_cfg``) for custom or tiny test models.
        pretrained: an open_clip pretrained tag (downloaded, needs network) or a local checkpoint path. ``None``
            gives random weights, towers included (no pretrained Hugging Face or timm tower is downloaded).
            Ignored by open_clip for ``hf-hub:``/``local-dir:`` names.
        cache_dir: where open_clip caches downloads.
        low_precision_weights: when a learner trains or evaluates in mixed precision (``bf16-mixed``,
            ``16-mixed``), hold the frozen matrix weights in that compute dtype (:meth:`hold_in`) instead of letting
            autocast re-cast them at every step. ``False`` keeps them in fp32 (autocast then casts per call, as
            plain open_clip does).
    """

    def __init__(
        self,
        name: Union[str, dict],
        pretrained: Optional[str] = None,
        cache_dir: Optional[str] = None,
        low_precision_weights: bool = True,
    ):
        # open_clip (and the Hugging Face and timm code it pulls in) is imported when a CLIP is built, not when
        # vlprompt is imported: `vlprompt fit --help` and the protocols' help never pay for it.
        import open_clip
        from open_clip.transformer import QuickGELU

        from vlprompt.clip.towers import text_tower_of, vision_tower_of

        super().__init__()
        pretrained, cache_dir = none_if_null(pretrained), none_if_null(cache_dir)
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
        self._text: Optional[TextTower] = text_tower_of(model, self.tokenizer)
        self._vision: Optional[VisionTower] = vision_tower_of(model)
        # Fixed once built; checkpoints record it on every save, so it is not re-derived from the modules each time.
        self._quick_gelu = any(isinstance(module, QuickGELU) for module in model.modules())
        self._embed_dim: Optional[int] = None
        self.low_precision_weights = low_precision_weights
        #: The dtype the matrix weights are held in once :meth:`hold_in` ran (None: as built, fp32).
        self.compute_dtype: Optional[torch.dtype] = None

    # -- nn.Module plumbing ---------------------------------------------------------------------------------
    def __deepcopy__(self, memo) -> "FrozenCLIP":
        # Frozen weights are shared, never copied: weight averaging and meta-learning deep-copy whole learners.
        return self

    def train(self, mode: bool = True) -> "FrozenCLIP":
        # Frozen means eval mode for good, whatever the learner holding it is switched to.
        self.training = False
        return self

    def _apply(self, fn, recurse=True):
        self._model._apply(fn)
        return super()._apply(fn, recurse)

    def hold_in(self, dtype: torch.dtype) -> None:
        """Hold the matrix weights (linear, convolution, attention projections: open_clip's
        ``convert_weights_to_lp``) in ``dtype``, once, so mixed-precision steps compute with them directly instead
        of autocast casting every frozen weight again at every step. Norms, embeddings and the logit scale stay
        fp32, as autocast runs norms in fp32 anyway. From then on every ``encode_*`` call runs under autocast to
        ``dtype`` (entered here when the caller has not) and returns fp32 features when it entered it. Nothing
        happens when ``low_precision_weights`` is off or the weights already are in ``dtype``."""
        from open_clip.model import convert_weights_to_lp

        if not self.low_precision_weights or dtype == self.compute_dtype:
            return
        if dtype not in (torch.bfloat16, torch.float16):
            raise ConfigError(f"frozen weights can be held in bfloat16 or float16, not {dtype}")
        if self.compute_dtype is not None:
            raise ConfigError(f"this CLIP's weights are already held in {self.compute_dtype}; build another CLIP "
                              f"for {dtype} (holding them twice would lose precision)")
        convert_weights_to_lp(self._model, dtype)
        self.compute_dtype = dtype

    def compute(self, function, *args, **kwargs):
        """``function(*args, **kwargs)`` (a computation with the frozen weights) in the held dtype: under autocast to
        it, entered here when the caller has not entered one, in which case the output (a tensor or a tuple of
        them) comes back as fp32, as an fp32 caller expects. Without held weights it simply calls ``function``."""
        device_type = self.device.type
        if self.compute_dtype is None or torch.is_autocast_enabled(device_type):
            return function(*args, **kwargs)
        with torch.autocast(device_type, dtype=self.compute_dtype):
            output = function(*args, **kwargs)
        return tuple(part.float() for part in output) if isinstance(output, tuple) else output.float()

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
        if self._embed_dim is None:
            dim = getattr(self._model.visual, "output_dim", None)
            if dim is None:  # timm image towers (open_clip's TimmModel) do not record it: measured once
                size = self.preprocess_cfg["size"]
                height, width = size if isinstance(size, (tuple, list)) else (size, size)
                with torch.no_grad():
                    dim = self._model.encode_image(torch.zeros(1, 3, height, width, device=self.device)).shape[-1]
            self._embed_dim = int(dim)
        return self._embed_dim

    @property
    def text_width(self) -> int:
        return self._require_text().width

    @property
    def text_layers(self) -> int:
        return self._require_text().layers

    @property
    def context_length(self) -> int:
        return self._require_text().context_length

    @property
    def supports_learned_text(self) -> bool:
        """Whether learned token embeddings can enter the text tower (not CoCa's, for instance)."""
        return self._text is not None

    @property
    def supports_visual_prompts(self) -> bool:
        return self._vision is not None

    @property
    def vision_width(self) -> int:
        return self._require_vit("report its width").width

    @property
    def vision_layers(self) -> int:
        return self._require_vit("report its depth").layers

    @property
    def preprocess_cfg(self) -> dict:
        """Image size, mean, std and interpolation the pretrained weights expect."""
        import open_clip

        return dict(open_clip.get_model_preprocess_cfg(self._model))

    @property
    def uses_quick_gelu(self) -> bool:
        """Whether the transformer blocks use QuickGELU (OpenAI's activation) rather than GELU."""
        return self._quick_gelu

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._model.logit_scale.exp()

    @property
    def identity(self) -> dict:
        """What checkpoints record to rebuild this backbone and to refuse a different one."""
        size = self.preprocess_cfg.get("size", ()) or ()
        arch = {
            "embed_dim": self.embed_dim,
            "visual": type(self._model.visual).__name__,
            "image_size": list(size) if isinstance(size, (tuple, list)) else [size, size],
            "quick_gelu": self.uses_quick_gelu,
        }
        if self._text is not None:
            arch.update(text_width=self.text_width, text_layers=self.text_layers, context_length=self.context_length,
                        vocab_size=self._text.vocab_size)
        if self._vision is not None:
            arch.update(vision_width=self.vision_width, vision_layers=self.vision_layers)
        return {"source": dict(self.source), "arch": arch}

    @property
    def text_tuning(self):
        """The text tower's tuned thresholds (:class:`~vlprompt.clip.towers.TextTuning`): when a context shared by
        the prompts is encoded once, which attention kernel short prompts take. Assign another to measure it."""
        return self._require_text().tuning

    @text_tuning.setter
    def text_tuning(self, tuning) -> None:
        self._require_text().tuning = tuning

    def _require_text(self) -> TextTower:
        if self._text is None:
            text = getattr(self._model, "text", None)
            raise ConfigError(
                f"the text tower of this CLIP ({type(text or self._model).__name__}) cannot take learned tokens "
                "(CoCa pools a class token appended after the text); use zeroshot, or a CLIP with an open_clip or "
                "Hugging Face text tower")
        return self._text

    def _require_vit(self, purpose: str) -> VisionTower:
        if self._vision is None:
            visual = self._model.visual
            kind = type(getattr(visual, "trunk", None) or visual).__name__
            raise ConfigError(
                f"visual prompts need a ViT image tower, but this CLIP's is {kind} and cannot {purpose}; use a "
                "text-only learner (coop, cocoop, kgcoop, zeroshot) or a ViT backbone (open_clip or timm)")
        return self._vision

    # -- text side -----------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings of ``ids`` (no positional embedding)."""
        return self._require_text().embed(ids)

    def prompt_tokens(self, pieces: Sequence[Union[str, Sequence[int]]]) -> PromptTokens:
        """Token ids of ``[start tokens] piece_0 piece_1 ... [end tokens]`` and where each piece landed.

        A piece is text or already-encoded ids. Text pieces are encoded separately (the tokenizers split on
        white space first, so the result equals tokenizing the joined text) while telling the caller which
        positions came from which piece (for example the context words a learner replaces with vectors).
        """
        tokens = self._require_text().pieces
        ids, spans = list(tokens.prefix), []
        for piece in pieces:
            encoded = tokens.encode(piece) if isinstance(piece, str) else list(piece)
            spans.append((len(ids), len(ids) + len(encoded)))
            ids.extend(encoded)
        ids.extend(tokens.suffix)
        if len(ids) > self.context_length:
            text = " ".join(p if isinstance(p, str) else "<ids>" for p in pieces)
            raise ConfigError(
                f"prompt {text!r} is {len(ids)} tokens, longer than the context length {self.context_length}; "
                "use fewer context tokens or a shorter class name")
        padded = torch.full((self.context_length,), tokens.pad_id, dtype=torch.long)
        padded[: len(ids)] = torch.tensor(ids)
        return PromptTokens(ids=padded, spans=tuple(spans), length=len(ids))

    def prompt_batch(self, prompts: Sequence[PromptTokens]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(ids, pool_index, attention_mask)`` of prompts, on this model's device, cut after the last real token
        where that is exact (a causal mask, or padding masked out) and kept whole where it is not (SigLIP)."""
        tower = self._require_text()
        length = max(p.length for p in prompts) if tower.cut_after_last_token else self.context_length
        ids = torch.stack([p.ids[:length] for p in prompts]).to(self.device)
        return ids, tower.pool_index(ids), tower.attention_mask(ids)

    def encode_words(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self._require_text().pieces.encode(text)

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Position whose final hidden state becomes the text feature, per sequence."""
        return self._require_text().pool_index(ids)

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features of token ids, through the same path as learned prompts (open_clip's own
        ``encode_text`` for towers that cannot take learned tokens)."""
        if self._text is None:
            features = self.compute(self._model.encode_text, ids)
        else:
            if self._text.cut_after_last_token:  # exact, as prompt_batch cuts: padding reaches no feature
                mask = self._text.attention_mask(ids)  # what the tower itself masks (Hugging Face), else padding
                real = mask.bool() if mask is not None else ids != self._text.pieces.pad_id
                ids = ids[:, :int(real.any(dim=0).nonzero().max()) + 1]
            features = self.encode_text_embeddings(self.embed_tokens(ids), self.pool_index(ids),
                                                   attention_mask=self._text.attention_mask(ids))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text_embeddings(
        self,
        embeds: torch.Tensor,
        pool_index: torch.Tensor,
        deep_prompts: Optional[DeepPrompts] = None,
        prompt_start: int = 1,
        attention_mask: Optional[torch.Tensor] = None,
        shared_prefix: int = 0,
        prefix_groups: int = 1,
    ) -> torch.Tensor:
        """Text features of token embeddings (``N x L x width``), some of which may be learned.

        Args:
            embeds: token embeddings without positional embedding.
            pool_index: pooling position per sequence, as from :meth:`prompt_batch` or :meth:`pool_index`.
            deep_prompts: ``{layer: prompts}`` with ``layer >= 1``; before that layer the ``n`` positions
                starting at ``prompt_start`` are replaced by ``prompts`` (``n x width`` or ``N x n x width``).
            prompt_start: first position of the replaced span (1 = right after the start token).
            attention_mask: ``N x L``, 1 for real tokens (Hugging Face towers need it; others ignore it).
            shared_prefix: how many leading positions are the same in every sequence (a context shared by all
                classes, and deep prompts shared by all within it): a causal text tower encodes them once instead
                of once per sequence, exactly. Only a promise the caller can keep: 0 (default) assumes nothing.
            prefix_groups: the prefix is shared within each of this many equal, consecutive groups of sequences
                (one per image for per-image contexts) rather than by all.
        """
        return self.compute(self._require_text().encode, embeds, pool_index, attention_mask, deep_prompts or {},
                            prompt_start, shared_prefix, prefix_groups)

    # -- image side ----------------------------------------------------------------------------------------------
    def encode_image(
        self,
        images: torch.Tensor,
        prompts: Optional[torch.Tensor] = None,
        deep_prompts: Optional[DeepPrompts] = None,
        normalize: bool = False,
        checkpoint: bool = False,
    ) -> torch.Tensor:
        """Image features, optionally with learned visual tokens.

        Args:
            prompts: ``n x width`` or ``B x n x width`` tokens put into the patch sequence before the pre-norm
                (after the patch tokens; after the class token on EVA-02, see :mod:`vlprompt.clip.towers`).
            deep_prompts: ``{layer: prompts}`` with ``layer >= 1``; before that layer the prompt tokens are
                replaced (``n x width`` or ``B x n x width``).
            checkpoint: with prompts, recompute each block's activations in the backward pass instead of keeping
                them (less memory for about a third more compute; exact).
        """
        if prompts is None and deep_prompts:
            raise ConfigError("visual deep prompts need input visual prompts to replace")
        if prompts is None:
            features = self.compute(self._model.encode_image, images)
        else:
            features = self.compute(self._require_vit("take visual prompts").encode, images, prompts,
                                    deep_prompts or {}, checkpoint)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image_inserting(self, images: torch.Tensor, deep_prompts: DeepPrompts,
                               checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features (not normalised) with tokens inserted after the class token at one block's input and replaced
        at later ones (``{layer: Inserted(tokens) or tokens}``, :class:`~vlprompt.clip.towers.Inserted`), and those
        tokens' final states after the tower's last norm (``B x n x vision width``): MMRL's representation tokens.
        Needs an open_clip ViT."""
        return self.compute(self._require_vit("take inserted tokens").encode_inserting, images, deep_prompts,
                            checkpoint)

    def encode_image_tokens(self, images: torch.Tensor, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features and the final-layer patch tokens ``B x N x embed_dim``, projected into the joint space
        as the pooled feature is (ViT towers; the features equal :meth:`encode_image`'s)."""
        features, tokens = self.compute(self._require_vit("give patch tokens").encode_with_tokens, images)
        if normalize:
            features, tokens = F.normalize(features, dim=-1), F.normalize(tokens, dim=-1)
        return features, tokens


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
    import open_clip

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
    if pretrained and tag_cfg_needs_download(model_name, pretrained, cache_dir):
        _check_download_reachable(model_name, pretrained)
    try:
        if not pretrained:  # random means random: no tower weights downloaded either
            options.update(pretrained_text=False, pretrained_image=False)
        if openai_state is None:
            model = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir, **options)
        else:  # loaded below; open_clip's "initialized randomly" warning would be wrong
            with _without_log_records("No pretrained weights loaded"):
                model = open_clip.create_model(model_name, cache_dir=cache_dir, **options)
    except RuntimeError as err:
        if "download" in str(err).lower():
            raise ConfigError(_download_failed(model_name, pretrained)) from err
        raise
    if openai_state is not None:
        try:
            model.load_state_dict(openai_state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise ConfigError(f"the OpenAI weights in {pretrained!r} do not fit architecture {model_name!r} ({first}); "
                              "name the architecture they were trained as") from None
    return model


def none_if_null(value: Optional[str]) -> Optional[str]:
    """``None`` for a ``null`` given on the command line: jsonargparse hands a nested class's ``Optional[str]``
    argument the string 'None' for ``--model.init_args.clip.init_args.pretrained null``. No tag or file is
    called 'None'."""
    return None if value in ("None", "null") else value


def _download_failed(model_name: str, pretrained: str) -> str:
    return (f"could not download the {pretrained!r} weights of {model_name} (offline?); pass a local checkpoint "
            f"file (--model.init_args.clip.init_args.pretrained /path/to/weights.pt) or try the toy CLIP "
            f"(--config configs/clip/toy.yaml)")


def tag_cfg_needs_download(model_name: str, pretrained: str, cache_dir: Optional[str]) -> bool:
    """Whether ``pretrained`` is a tag whose weights are not in the local Hugging Face cache yet."""
    import open_clip

    if ":" in model_name or os.path.isfile(pretrained):
        return False
    cfg = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained) or {}
    hub = cfg.get("hf_hub", "")
    if not hub:
        return bool(cfg.get("url"))
    from huggingface_hub import try_to_load_from_cache

    repo = hub.rstrip("/")
    for weights in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, weights, cache_dir=cache_dir), str):
            return False
    return True


def _check_download_reachable(model_name: str, pretrained: str) -> None:
    """Fail at once, not after a minute of Hugging Face retries, when the download host's name does not resolve
    (offline). Behind a proxy the proxy resolves names, so nothing is checked there."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(_download_failed(model_name, pretrained))
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise ConfigError(_download_failed(model_name, pretrained)) from None


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
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
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
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ConfigError(f"pretrained checkpoint {path!r} cannot be read ({type(err).__name__}); pass a PyTorch "
                          "state dict, a .safetensors file or OpenAI's original file") from None
    if isinstance(state, dict) and all(key in state for key in OPENAI_METADATA_KEYS):
        return {k: v for k, v in state.items() if k not in OPENAI_METADATA_KEYS}
    return None


def load_clip(name: Union[str, dict], pretrained: Optional[str] = None, **kwargs) -> FrozenCLIP:
    """Load a frozen CLIP; see :class:`FrozenCLIP` for the arguments."""
    return FrozenCLIP(name, pretrained=pretrained, **kwargs)
