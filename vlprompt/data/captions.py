"""Image-caption pairs, as open_clip trains on them: a CSV file with ``filepath`` and ``caption`` columns (paths
relative to the file's folder or absolute; open_clip's ``--csv-separator`` is a tab by default, so tabs and commas
are both read), or a folder of images each with a same-name ``.txt`` caption beside it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vlprompt.data.images import IMAGE_SUFFIXES
from vlprompt.errors import ConfigError


@dataclass(frozen=True)
class CaptionPair:
    image: Path
    caption: str


def read_caption_pairs(source) -> list[CaptionPair]:
    """Every pair of ``source`` (a CSV file or a folder), in a fixed order."""
    source = Path(source).expanduser()
    if source.is_dir():
        pairs = []
        for image in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            text = image.with_suffix(".txt")
            if text.is_file():
                pairs.append(CaptionPair(image, _read_text(text, "caption file").strip()))
        if not pairs:
            raise ConfigError(f"{str(source)!r} holds no image with a same-name .txt caption beside it; give a folder "
                              "of such pairs or a CSV file with filepath and caption columns")
        return pairs
    if not source.is_file():
        raise ConfigError(f"image-caption pairs {str(source)!r} do not exist; give a CSV file (filepath, caption) "
                          "or a folder of images with .txt captions")
    text = _read_text(source, "CSV file")
    if not text.strip():
        raise ConfigError(f"{str(source)!r} is empty; give a CSV file with a header line (filepath, caption) and one "
                          "row per pair")
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    if not {"filepath", "caption"} <= set(reader.fieldnames or ()):
        raise ConfigError(f"{str(source)!r} needs the columns filepath and caption (open_clip's CSV format); its "
                          f"header has {', '.join(map(repr, reader.fieldnames or ())) or 'nothing'}")
    rows = list(reader)
    if not rows:
        raise ConfigError(f"{str(source)!r} has a header but no pairs; add one row (filepath, caption) per image")
    pairs = []
    for line, row in enumerate(rows, 2):
        if not row["filepath"]:
            raise ConfigError(f"{str(source)!r} line {line} names no image (empty filepath); fix or remove that row")
        image = Path(row["filepath"]).expanduser()
        image = image if image.is_absolute() else source.parent / image
        if not image.is_file():
            raise ConfigError(f"{str(source)!r} lists {row['filepath']!r}, which does not exist (paths are relative "
                              "to the CSV file's folder)")
        pairs.append(CaptionPair(image, (row["caption"] or "").strip()))
    return pairs


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{str(path)!r} is not a UTF-8 text {what} (binary or another encoding); give open_clip's "
                          "CSV (filepath, caption) or a folder of images with .txt captions") from None
