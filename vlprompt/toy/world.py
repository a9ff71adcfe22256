"""The toy world: compositional 32x32 images of patterned, coloured shapes on backgrounds, in several styles.

Every image is described by four concepts (colour, shape, pattern, background) and drawn in one style
(domain). Captions name the concepts, so a CLIP pretrained on them (``tools/pretrain_toy_clip.py``) can
classify any combination zero-shot. Downstream data sets (:data:`DATASETS`) pick a class family (for
example colour x shape) and draws it in one domain that pretraining saw rarely (sketches) or never (faded,
low-contrast photos), as a benchmark data set such as EuroSAT is one domain few web captions cover. Zero-shot
works but not perfectly, and a learned prompt can adapt the classifier to the domain.

Everything is deterministic given a seed: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vlprompt.errors import ConfigError
from vlprompt.toy.medical import MEDICAL_DATASETS

IMAGE_SIZE = 32
#: Bumped whenever drawing or a data set's definition changes, so data written before is not mistaken for it.
WORLD_VERSION = 2
#: Written beside each data set's split file: what wrote it, so stale data is detected instead of reused.
MANIFEST = "toy_world.json"
#: Per-class descriptions written beside each data set's split file (``data.descriptions`` in its config).
DESCRIPTIONS = "descriptions.json"

COLOURS = {
    "red": (214, 39, 40), "orange": (255, 127, 14), "yellow": (238, 210, 2), "green": (44, 160, 44),
    "cyan": (23, 190, 207), "blue": (31, 80, 220), "purple": (148, 60, 189), "pink": (247, 112, 182),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring")
PATTERNS = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS = ("plain", "grass", "water", "sand", "night")
#: How captions and class names place a shape on its background.
BACKGROUND_PHRASES = {"grass": "on grass", "water": "on water", "sand": "on sand", "night": "at night"}
#: Styles (domains) and how captions name them.
STYLES = {
    "photo": "photo", "sketch": "sketch", "noisy": "noisy photo", "tinted": "tinted photo",
    "faded": "faded photo", "cluttered": "cluttered photo", "blurry": "blurry photo",
}
#: The styles pretraining draws from, with their weights; the rest are only seen downstream.
PRETRAIN_STYLES = {"photo": 6, "sketch": 1, "noisy": 1, "tinted": 1, "blurry": 1}

_BACKGROUND_COLOURS = {
    "grass": ((60, 140, 50), (110, 190, 80)), "water": ((30, 90, 160), (90, 160, 220)),
    "sand": ((200, 175, 120), (235, 215, 165)), "night": ((10, 10, 35), (45, 45, 80)),
}


@dataclass(frozen=True)
class Concept:
    """What an image shows."""

    colour: str
    shape: str
    pattern: str = "solid"
    background: str = "plain"

    def phrase(self, with_colour=True, with_shape=True, with_pattern=True, with_background=True) -> str:
        """``striped red circle on grass``; leaving the shape out says ``shape`` instead."""
        words = []
        if with_pattern and self.pattern != "solid":
            words.append(self.pattern)
        if with_colour:
            words.append(self.colour)
        words.append(self.shape if with_shape else "shape")
        text = " ".join(words)
        if with_background and self.background != "plain":
            text += f" {BACKGROUND_PHRASES[self.background]}"
        return text


def caption(concept: Concept, style: str, rng: random.Random, drop: float = 0.15) -> str:
    """A pretraining caption; each concept is left out with probability ``drop``, so the text encoder learns
    every concept alone and in combination, as web captions mention some attributes only. The style is always
    named ("a sketch of ...", "a noisy photo of ..."), so a plain "a photo of" prompt fits other styles less
    well: the gap prompt learning closes on the shifted downstream sets."""
    keep = [rng.random() >= drop for _ in range(4)]
    if not any(keep[:3]):
        keep[rng.randrange(3)] = True
    style_word = STYLES[style]
    article = "an" if style_word[0] in "aeiou" else "a"
    return f"{article} {style_word} of a {concept.phrase(*keep)}."


# -- drawing --------------------------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape in ("square", "diamond"):
        corners, offset = 4, math.pi / 4 if shape == "square" else 0.0
        radii = [r] * corners
    elif shape == "triangle":
        corners, offset, radii = 3, -math.pi / 2, [r] * 3
    elif shape == "hexagon":
        corners, offset, radii = 6, 0.0, [r] * 6
    elif shape == "star":
        corners, offset, radii = 10, -math.pi / 2, [r if i % 2 == 0 else r * 0.45 for i in range(10)]
    else:
        raise ValueError(shape)
    if shape == "diamond":
        radii = [r if i % 2 == 0 else r * 0.65 for i in range(4)]
    return [(cx + radii[i] * math.cos(offset + angle + 2 * math.pi * i / corners),
             cy + radii[i] * math.sin(offset + angle + 2 * math.pi * i / corners)) for i in range(corners)]


def _shape_mask(shape: str, rng: random.Random, size: int, outline: int = 0) -> Image.Image:
    """A white-on-black mask of the shape, randomly placed, scaled and rotated; ``outline`` draws only edges."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = rng.uniform(0.32, 0.45) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    angle = rng.uniform(-0.35, 0.35)
    fill, width = (None, outline) if outline else (255, 0)
    line = 255 if outline else None
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=line, width=width)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=None, outline=255, width=max(int(r * 0.4), outline))
    elif shape == "cross":
        arm = r * 0.35
        for box in ((cx - r, cy - arm, cx + r, cy + arm), (cx - arm, cy - r, cx + arm, cy + r)):
            draw.rectangle(box, fill=fill, outline=line, width=width)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill, outline=line, width=width)
    return mask


def _pattern(pattern: str, rng: random.Random, size: int) -> np.ndarray:
    """A 0/1 map: 1 where the shape shows its colour, 0 where it shows the light second tone."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if pattern == "solid":
        return np.ones((size, size), np.float32)
    if pattern == "striped":
        theta, period = rng.uniform(0, math.pi), rng.uniform(5.5, 7.5)
        return (np.sin((x * math.cos(theta) + y * math.sin(theta)) * 2 * math.pi / period) > 0).astype(np.float32)
    if pattern == "dotted":
        period, phase = rng.uniform(6.0, 7.5), rng.uniform(0, 6)
        dx, dy = (x + phase) % period - period / 2, (y + phase) % period - period / 2
        return 1.0 - ((dx ** 2 + dy ** 2) < (period * 0.3) ** 2).astype(np.float32)
    if pattern == "checkered":
        cell, phase = rng.randint(4, 5), rng.randint(0, 4)
        return ((((x + phase) // cell) + ((y + phase) // cell)) % 2).astype(np.float32)
    raise ValueError(pattern)


def _background(background: str, rng: random.Random, size: int, np_rng: np.random.Generator) -> np.ndarray:
    if background == "plain":
        base = np.array([rng.randint(205, 250) for _ in range(3)], np.float32)
        return np.broadcast_to(base, (size, size, 3)).copy()
    low, high = (np.array(c, np.float32) for c in _BACKGROUND_COLOURS[background])
    texture = np_rng.random((size // 4 + 1, size // 4 + 1), dtype=np.float32)
    texture = np.kron(texture, np.ones((4, 4), np.float32))[:size, :size]
    if background == "water":  # waves
        y = np.arange(size, dtype=np.float32)[:, None]
        texture = 0.5 * texture + 0.5 * (np.sin(y * 0.9 + rng.uniform(0, 6)) * 0.5 + 0.5)
    return low + (high - low) * texture[..., None]


def render(concept: Concept, style: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw one image of ``concept`` in ``style``."""
    np_rng = np.random.default_rng(rng.getrandbits(64))
    colour = np.array(COLOURS[concept.colour], np.float32) + np.array([rng.uniform(-15, 15) for _ in range(3)])
    if style == "sketch":
        canvas = np.full((size, size, 3), 245.0, np.float32)
        mask = np.asarray(_shape_mask(concept.shape, rng, size, outline=2), np.float32)[..., None] / 255
        filled = np.asarray(_shape_mask(concept.shape, random.Random(rng.random()), size), np.float32)[..., None] / 255
        hatch = _pattern(concept.pattern, rng, size)[..., None] if concept.pattern != "solid" else 0.0
        canvas = canvas * (1 - mask) + colour * mask
        inside = filled * (1 - mask) * (1 - hatch) * 0.5 if concept.pattern != "solid" else 0.0
        canvas = canvas * (1 - inside) + colour * inside
    else:
        canvas = _background(concept.background, rng, size, np_rng)
        if style == "cluttered":
            clutter = Image.new("RGB", (size, size), (0, 0, 0))
            draw = ImageDraw.Draw(clutter)
            for _ in range(rng.randint(4, 7)):
                points = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)]
                draw.line(points, fill=tuple(rng.randint(60, 255) for _ in range(3)), width=rng.randint(1, 2))
            clutter_arr = np.asarray(clutter, np.float32)
            canvas = np.where(clutter_arr.sum(-1, keepdims=True) > 0, clutter_arr, canvas)
        mask = np.asarray(_shape_mask(concept.shape, rng, size), np.float32)[..., None] / 255
        light = 0.35 * colour + 0.65 * 255.0
        fill = _pattern(concept.pattern, rng, size)[..., None]
        shape_pixels = colour * fill + light * (1 - fill)
        canvas = canvas * (1 - mask) + shape_pixels * mask
    if style == "noisy":
        canvas = canvas + np_rng.normal(0, 40, canvas.shape)
    elif style == "tinted":
        tint = np.array([rng.uniform(0.55, 1.0) for _ in range(3)], np.float32)
        canvas = canvas * tint
    elif style == "faded":  # contrast cut to 55%; unseen in pretraining, and still legible
        canvas = 0.55 * canvas + 0.45 * canvas.mean()
    elif style in ("photo", "cluttered"):
        canvas = canvas + np_rng.normal(0, 6, canvas.shape)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if style == "blurry":
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.8, 1.3)))
    return image


# -- class families and data sets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyDataset:
    """A downstream data set: one class per combination of the ``varying`` concepts.

    Concepts not in ``varying`` are drawn at random per image; ``styles`` are the domains images are drawn in.
    With ``novel_styles``, the novel half of the classes (labels from ``ceil(n/2)`` on, the CoOp/Dassl base/novel
    rule) is drawn in those styles instead, in every split: a cue the base classes share and the novel ones lack.
    """

    name: str
    varying: tuple[str, ...]
    values: dict = field(hash=False)
    styles: tuple[str, ...]
    template: str = "a photo of a {}."
    novel_styles: tuple[str, ...] = ()

    def styles_of(self, label: int) -> tuple[str, ...]:
        """The styles class ``label`` is drawn in."""
        novel = self.novel_styles and label >= math.ceil(len(self.classes()) / 2)
        return self.novel_styles if novel else self.styles

    def classes(self) -> list[tuple[str, dict]]:
        """``(classname, fixed concepts)`` for every class, in label order."""
        combos = [{}]
        for key in self.varying:
            combos = [{**c, key: v} for c in combos for v in self.values[key]]
        return [(_classname(self.varying, combo), combo) for combo in combos]

    def draw(self, fixed: dict, style: str, rng: random.Random, size: int) -> Image.Image:
        """One image of the class whose concepts are ``fixed``, the others drawn at random."""
        return render(sample_concept(fixed, rng), style, rng, size)

    def describe(self) -> dict[str, list[str]]:
        """``{classname: [sentence, ...]}``: two sentences for each concept that defines the class, one naming the
        data set's drawing style (the same for every class), and two uninformative ones, in a fixed shuffled
        order. Only the defining sentences tell classes apart."""
        described = {}
        for classname, fixed in self.classes():
            rng = random.Random(f"{self.name}:{classname}:descriptions")
            sentences = [sentence for key in self.varying for sentence in _FACTS[key](fixed[key])]
            style = STYLES[self.styles[0]]  # the data set's style, the same for every class
            sentences.append(f"The picture is {'an' if style[0] in 'aeiou' else 'a'} {style}.")
            sentences += rng.sample(_UNINFORMATIVE, 2)
            rng.shuffle(sentences)
            described[classname] = sentences
        return described


def _classname(varying: Sequence[str], combo: dict) -> str:
    concept = Concept(colour=combo.get("colour", ""), shape=combo.get("shape", "shape"),
                      pattern=combo.get("pattern", "solid"), background=combo.get("background", "plain"))
    return concept.phrase(with_colour="colour" in varying, with_shape="shape" in varying,
                          with_pattern="pattern" in varying, with_background="background" in varying)


_ALL = {"colour": tuple(COLOURS), "shape": SHAPES, "pattern": PATTERNS, "background": BACKGROUNDS}

#: The downstream toy data sets: different class families, at least 20 classes each, each in one domain
#: (styles) pretraining saw rarely or never. Single-domain sets are what prompt learning adapts to: on mixed
#: domains one shared context cannot fit every domain, and CoOp gained under 5 points on them.
DATASETS = {
    "ToyShapes": ToyDataset("ToyShapes", ("colour", "shape"),
                            {"colour": ("red", "yellow", "green", "blue", "purple"),
                             "shape": ("circle", "square", "triangle", "star", "cross")},
                            styles=("sketch",)),
    "ToyPatterns": ToyDataset("ToyPatterns", ("pattern", "background"),
                              {"pattern": PATTERNS, "background": BACKGROUNDS}, styles=("faded",)),
    "ToyPalette": ToyDataset("ToyPalette", ("pattern", "colour"),
                             {"pattern": PATTERNS, "colour": ("red", "orange", "green", "cyan", "blue", "pink")},
                             styles=("faded",)),
    "ToyScenes": ToyDataset("ToyScenes", ("shape", "background"),
                            {"shape": ("circle", "square", "triangle", "star", "ring"), "background": BACKGROUNDS},
                            styles=("faded", "noisy")),
}
#: Base-to-novel forgetting: ToyShapes' classes, the base half sketched (a domain pretraining saw rarely) and the
#: novel half photographed (its main domain). A context learned on the base classes adapts the prompts to
#: sketches, which the novel classes never are, so it hurts them: CoOp gains on base and loses on novel, as it
#: does on real CLIP (docs/toy-world.md).
DATASETS["ToySketchedBase"] = ToyDataset("ToySketchedBase", DATASETS["ToyShapes"].varying, DATASETS["ToyShapes"].values,
                                         styles=("sketch",), novel_styles=("photo",))
#: Domain-shifted copies of ToyShapes (same classes, one style each, none of ToyShapes' own), for domain
#: generalisation.
DOMAIN_SHIFTS = {f"ToyShapes-{style.capitalize()}": style for style in ("noisy", "cluttered", "blurry")}
for _name, _style in DOMAIN_SHIFTS.items():
    _base = DATASETS["ToyShapes"]
    DATASETS[_name] = ToyDataset(_name, _base.varying, _base.values, styles=(_style,))


#: Every toy data set: the shapes world's and the medical world's (:mod:`vlprompt.toy.medical`).
TOY_DATASETS = {**DATASETS, **MEDICAL_DATASETS}


# -- per-class descriptions ----------------------------------------------------------------------------------
#: What the toy world knows of each concept value, as sentences a description source could give.
_FACTS = {
    "colour": lambda v: [f"Its colour is {v}.", f"It is painted a bright {v}."],
    "shape": lambda v: [f"Its outline is a {v}.", {
        "circle": "It is round, with no corners.", "square": "It has four equal sides and four right angles.",
        "triangle": "It has three straight sides and three corners.",
        "diamond": "It looks like a square standing on one corner.",
        "star": "It has five pointed arms around its centre.", "cross": "It is made of two bars crossing at the middle.",
        "hexagon": "It has six sides of equal length.", "ring": "It is a round band with a hole in the middle.",
    }[v]],
    "pattern": lambda v: [{
        "solid": "It is filled with one flat colour.", "striped": "Parallel stripes run across its surface.",
        "dotted": "Its surface is covered in small round dots.",
        "checkered": "Its surface is a checkerboard of small squares.",
    }[v], f"Its pattern is {v}."],
    "background": lambda v: [{
        "plain": "It stands on a plain light background.", "grass": "It lies on green grass.",
        "water": "It floats on blue rippling water.", "sand": "It rests on yellow sand.",
        "night": "It is seen against a dark night sky.",
    }[v], f"The scene around it is {v}."],
}
#: Sentences true of every class (nothing to tell classes apart by): what a description-based learner must filter.
_UNINFORMATIVE = ("It is a common sight in pictures.", "People recognise it at a glance.",
                  "It is often shown in illustrations.", "It can appear in many different places.",
                  "It is an object people talk about.", "Many photographs include one.")


def toy_dataset(name: str):
    """The definition of toy data set ``name``, of the shapes world or the medical one."""
    if name not in TOY_DATASETS:
        raise ConfigError(f"unknown toy data set {name!r}; choose from {', '.join(TOY_DATASETS)}")
    return TOY_DATASETS[name]


def describe_classes(name: str) -> dict[str, list[str]]:
    """``{classname: [sentence, ...]}`` for toy data set ``name`` (what its ``describe`` writes)."""
    return toy_dataset(name).describe()


def write_descriptions(name: str, root) -> Path:
    """Write :func:`describe_classes` of ``name`` as ``root/descriptions.json`` (the ``data.descriptions`` format)."""
    path = Path(root) / DESCRIPTIONS
    path.write_text(json.dumps(describe_classes(name), indent=1) + "\n")
    return path


def sample_concept(fixed: dict, rng: random.Random) -> Concept:
    """A concept with ``fixed`` values and the rest drawn at random (the background stays mostly plain)."""
    values = {key: fixed.get(key) or rng.choice(options) for key, options in _ALL.items() if key != "background"}
    background = fixed.get("background") or ("plain" if rng.random() < 0.6 else rng.choice(BACKGROUNDS[1:]))
    return Concept(background=background, **values)


def write_toy_dataset(name: str, root, train_per_class: int = 24, val_per_class: int = 6, test_per_class: int = 20,
                      seed: int = 0, size: int = IMAGE_SIZE) -> list[str]:
    """Write data set ``name`` under ``root`` (``images/``, ``split_zhou_<name>.json`` and per-class
    ``descriptions.json``); return class names.

    The layout and split file are those of real data sets, so the same data module reads both.
    """
    spec = toy_dataset(name)
    root = Path(root)
    rng = random.Random(f"{name}:{seed}")
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    classes = spec.classes()
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for part, count in counts.items():
        for index in range(count):
            # Round-robin over classes, as real split files interleave them.
            for label, (classname, fixed) in enumerate(classes):
                folder = classname.replace(" ", "_")
                relpath = f"{folder}/{part}_{index:03d}.png"
                path = root / "images" / relpath
                path.parent.mkdir(parents=True, exist_ok=True)
                style = rng.choice(spec.styles_of(label))
                spec.draw(fixed, style, rng, size).save(path, optimize=False)
                split[part].append([relpath, label, classname])
    (root / f"split_zhou_{name}.json").write_text(json.dumps(split, indent=1))
    (root / MANIFEST).write_text(json.dumps(_manifest(name, seed, size, counts), indent=1) + "\n")
    write_descriptions(name, root)
    return [classname for classname, _ in classes]


def _manifest(name: str, seed: int, size: int, counts: dict) -> dict:
    return {"dataset": name, "world_version": WORLD_VERSION, "seed": seed, "image_size": size, "per_class": counts}


def ensure_toy_dataset(name: str, root="data/toy", train_per_class: int = 24, val_per_class: int = 6,
                       test_per_class: int = 20, seed: int = 0, size: int = IMAGE_SIZE) -> Path:
    """The directory of toy data set ``name`` under ``root``, written first if it is not there yet.

    A directory written by another version of the world or with other settings is an error, not silently
    reused: its accuracies would not match the recorded ones.
    """
    directory = Path(root) / name
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    if not (directory / f"split_zhou_{name}.json").is_file():
        write_toy_dataset(name, directory, train_per_class, val_per_class, test_per_class, seed, size)
        return directory
    manifest_path = directory / MANIFEST
    found = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if found != _manifest(name, seed, size, counts):
        raise ConfigError(f"{directory} holds toy data written by another version of the toy world or with other "
                          f"settings; delete that directory to have it written again")
    if not (directory / DESCRIPTIONS).is_file():  # data written before descriptions existed: they depend on nothing else
        write_descriptions(name, directory)
    return directory


#: The toy image-caption corpus (GRAM's meta-training data): its folder name under the toy data root.
CAPTION_CORPUS = "ToyCaptions"


def write_caption_corpus(root, size: int = 2000, seed: int = 0) -> Path:
    """Write ``size`` captioned images of the toy world under ``root`` (``NNNNN.png`` with ``NNNNN.txt``), drawn as
    pretraining draws them (every concept and pretraining style, captions leaving concepts out). Their random
    stream is the corpus's own, so no image is one of a downstream data set's. Returns ``root``."""
    root = Path(root)
    rng = random.Random(f"{CAPTION_CORPUS}:{seed}")
    styles, weights = zip(*PRETRAIN_STYLES.items())
    root.mkdir(parents=True, exist_ok=True)
    for index in range(size):
        concept, style = sample_concept({}, rng), rng.choices(styles, weights)[0]
        render(concept, style, rng).save(root / f"{index:05d}.png", optimize=False)
        (root / f"{index:05d}.txt").write_text(caption(concept, style, rng) + "\n")
    (root / MANIFEST).write_text(json.dumps({"corpus": CAPTION_CORPUS, "world_version": WORLD_VERSION, "seed": seed,
                                             "size": size}, indent=1) + "\n")
    return root
