"""Per-class descriptions: a JSON file ``{"class name": ["sentence", ...]}`` that learners such as KAPT and
BiomedCoOp read beside the class names (``data.descriptions``); and a data set's attribute words
(``data.attributes``, ATPrompt's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from vlprompt.errors import ConfigError


def read_descriptions(root: Path, path: str, classnames: Sequence[str]) -> dict[str, list[str]]:
    """The descriptions of ``classnames`` from ``path`` (relative to ``root`` or absolute), or a one-line error:
    the file is missing or not JSON, not a mapping of lists of sentences, or lacks some classes (named)."""
    file = Path(path).expanduser()
    file = file if file.is_absolute() else Path(root) / file
    if not file.is_file():
        raise ConfigError(f"descriptions file {str(file)!r} does not exist; data.descriptions is a JSON file "
                          '{"class name": ["sentence", ...]} (tools/describe_classes.py writes one; toy data sets '
                          "write theirs: python -m vlprompt.toy data/toy)")
    try:
        raw = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"descriptions file {str(file)!r} is not valid JSON ({err})") from None
    bad = _malformed(raw)
    if bad:
        raise ConfigError(f"descriptions file {str(file)!r}: {bad}; it must map each class name to a list of "
                          "sentences")
    missing = [name for name in classnames if not raw.get(name)]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        raise ConfigError(f"descriptions file {str(file)!r} lacks {len(missing)} of the {len(classnames)} classes: "
                          f"{shown}{' ...' if len(missing) > 5 else ''}; describe every class")
    return {name: list(raw[name]) for name in classnames}


def _malformed(raw) -> Optional[str]:
    if not isinstance(raw, dict):
        return f"the top level is a {type(raw).__name__}, not a mapping"
    for name, sentences in raw.items():
        if not isinstance(sentences, list) or not all(isinstance(s, str) and s.strip() for s in sentences):
            return f"the entry for {name!r} is not a list of non-empty sentences"
    return None


def check_attributes(attributes: Optional[Sequence[str]], where: str) -> Optional[list[str]]:
    """Attribute words as a list, refusing anything but non-empty words (``where`` names the option)."""
    if attributes is None:
        return None
    if isinstance(attributes, str) or not all(isinstance(word, str) and word.strip() for word in attributes):
        raise ConfigError(f"{where} must be a list of words such as [color, shape], got {attributes!r}")
    if not attributes:
        raise ConfigError(f"{where} is empty; give at least one attribute word, or leave it unset")
    return [word.strip() for word in attributes]
