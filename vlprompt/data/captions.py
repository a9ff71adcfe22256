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
                pairs.append(CaptionPair(image, text.read_text().strip()))
        if not pairs:
            raise ConfigError(f"{str(source)!r} holds no image with a same-name .txt caption beside it; give a folder "
                              "of such pairs or a CSV file with filepath and caption columns")
        return pairs
    if not source.is_file():
        raise ConfigError(f"image-caption pairs {str(source)!r} do not exist; give a CSV file (filepath, caption) "
                          "or a folder of images with .txt captions")
    text = source.read_text()
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows or not {"filepath", "caption"} <= set(rows[0]):
        raise ConfigError(f"{str(source)!r} needs the columns filepath and caption (open_clip's CSV format); "
                          f"found {sorted(rows[0]) if rows else 'no rows'}")
    pairs = []
    for row in rows:
        image = Path(row["filepath"]).expanduser()
        image = image if image.is_absolute() else source.parent / image
        if not image.is_file():
            raise ConfigError(f"{str(source)!r} lists {row['filepath']!r}, which does not exist (paths are relative "
                              "to the CSV file's folder)")
        pairs.append(CaptionPair(image, row["caption"].strip()))
    return pairs
