"""A small deterministic image world: coloured shapes on plain backgrounds, one class per (colour, shape).

Written to disk in the same layout real datasets use (an image folder plus a CoOp ``split_zhou_*.json``), so it
exercises the same data pipeline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def _draw(shape: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(0.45, 0.8) * size
    x0, y0 = rng.uniform(0, size - extent), rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    jitter = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in colour)
    if shape == "circle":
        draw.ellipse(box, fill=jitter)
    elif shape == "square":
        draw.rectangle(box, fill=jitter)
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=jitter)
    return image


def write_shapes_dataset(root: Path, per_class: int = 10, size: int = 32, seed: int = 0,
                         split_name: str = "split_zhou_Shapes.json") -> list[str]:
    """Write ``per_class`` images per (colour, shape) class and a 50/20/30 split file; return class names.

    Same seed, same bytes.
    """
    root = Path(root)
    rng = random.Random(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    classnames = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    n_train, n_val = round(per_class * 0.5), round(per_class * 0.2)
    for label, name in enumerate(classnames):
        colour, shape = name.split(" ")
        folder = root / "images" / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            relpath = f"{name.replace(' ', '_')}/{index:04d}.png"
            _draw(shape, COLOURS[colour], size, rng).save(root / "images" / relpath)
            part = "train" if index < n_train else "val" if index < n_train + n_val else "test"
            split[part].append([relpath, label, name])
    (root / split_name).write_text(json.dumps(split, indent=1))
    return classnames
