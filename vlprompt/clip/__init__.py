"""The frozen CLIP backbone shared by every learner."""

from vlprompt.clip.frozen import MODEL_CONFIG_DIR, FrozenCLIP, PromptTokens, load_clip

__all__ = ["FrozenCLIP", "PromptTokens", "load_clip", "MODEL_CONFIG_DIR"]
