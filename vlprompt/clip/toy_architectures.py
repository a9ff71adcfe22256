"""vlprompt's toy architectures that are not plain open_clip configs: the toy biomedical CLIP
``vlprompt-bert-tiny``, BiomedCLIP's design in miniature (a BERT-style Hugging Face text tower with a CLS pooler and
an MLP projection, and a timm ViT image tower).

Its parts are data: the open_clip model config (``model_configs/packaged/vlprompt-bert-tiny.json``, whose tower
paths are relative to this package), and the BERT config and WordPiece vocabulary in ``hf/vlprompt-bert-tiny/``,
written by :func:`write_toy_bert_files` from the toy medical world's words (which its caller passes in). The timm image trunk
(``vlprompt_vit_tiny_patch8_32``: 32 px images in 8 px patches, 48 wide, 6 blocks) is a timm model entry point,
registered with timm by :func:`register_toy_architectures` when a CLIP is first built (not on import).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Sequence

from vlprompt.errors import ConfigError

PACKAGE_DIR = Path(__file__).parent
#: open_clip model configs whose tower paths (``hf_model_name``, ``hf_tokenizer_name``) are relative to this package.
PACKAGED_CONFIG_DIR = PACKAGE_DIR / "model_configs" / "packaged"
#: Hugging Face text tower files (``config.json``, ``vocab.txt``) shipped with vlprompt.
HF_TOWER_DIR = PACKAGE_DIR / "hf"
TOY_BERT = "vlprompt-bert-tiny"
#: The BERT tower of ``vlprompt-bert-tiny``: 4 layers, 48 wide, 3 heads, 32 positions (the context length).
TOY_BERT_CONFIG = {"hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 192,
                   "max_position_embeddings": 32, "type_vocab_size": 2}
_BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Words of the learners' context initialisations and hand templates ("a photo of a"), whole tokens as in
#: PubMedBERT's vocabulary, so a context initialised from them has one token per word.
_TEMPLATE_WORDS = ("photo", "picture", "image", "this", "is", "showing", "medical")
_TIMM_TRUNK = "vlprompt_vit_tiny_patch8_32"


def vlprompt_vit_tiny_patch8_32(pretrained: bool = False, **kwargs) -> Any:
    """timm entry point of the toy ViT trunk (random weights; trained by vlprompt's toy pretraining only)."""
    if pretrained:
        raise ConfigError(f"timm has no pretrained weights of {_TIMM_TRUNK}; its weights come with vlprompt-bert-tiny "
                          "(pretrained='toy')")
    from timm.models._builder import build_model_with_cfg
    from timm.models.vision_transformer import VisionTransformer

    kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or {
        "architecture": _TIMM_TRUNK, "input_size": (3, 32, 32), "num_classes": 0, "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5)}
    architecture = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 6, "num_heads": 3}
    return build_model_with_cfg(VisionTransformer, _TIMM_TRUNK, pretrained, **{**architecture, **kwargs})


def register_toy_architectures() -> list[Path]:
    """Register the toy timm trunk with timm (once); return the packaged model configs with absolute tower paths,
    for open_clip's ``add_model_config``."""
    import timm
    from timm.models import register_model

    if _TIMM_TRUNK not in timm.list_models(_TIMM_TRUNK):
        register_model(vlprompt_vit_tiny_patch8_32)
    return sorted(PACKAGED_CONFIG_DIR.glob("*.json"))


def resolve_packaged_config(path: Path) -> dict:
    """The packaged model config at ``path`` with its Hugging Face tower paths made absolute."""
    config = json.loads(path.read_text())
    text = config["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text and not Path(text[key]).is_absolute():
            text[key] = str(PACKAGE_DIR / text[key])
    return config


def toy_bert_vocabulary(world_words: Sequence[str]) -> list[str]:
    """BERT's special tokens, every word of the toy world it reads (``world_words``: the toy medical world's, which
    ``vlprompt.toy.medical.medical_vocabulary`` lists; passed in, since the CLIP layer sits below the toy world) and
    of the learners' context initialisations, and single characters with their ``##`` continuations, so any other
    word is spelled out rather than unknown."""
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = sorted((set(world_words) | set(_TEMPLATE_WORDS)) - set(characters))
    return [*_BERT_SPECIAL_TOKENS, *characters, *(f"##{c}" for c in string.ascii_lowercase + string.digits), *words]


def write_toy_bert_files(world_words: Sequence[str], directory: Path = HF_TOWER_DIR / TOY_BERT) -> Path:
    """Write the BERT config and vocabulary (:func:`toy_bert_vocabulary` of ``world_words``) of
    ``vlprompt-bert-tiny``'s text tower into ``directory``."""
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = toy_bert_vocabulary(world_words)
    (directory / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    transformers.BertConfig(vocab_size=len(vocabulary), **TOY_BERT_CONFIG).to_json_file(directory / "config.json")
    return directory
