"""The toy medical world: 32x32 scans and stained slides whose classes differ by one small local finding.

An image is an organ seen in one modality (x-ray, MRI scan, ultrasound scan, stained slide) with one finding
(a nodule, a cyst, a calcification, a mass or a scar) at one site (upper or lower, left or right). The finding
covers a few pixels of the image, as the lesions of real biomedical benchmarks do, and captions name the modality,
the finding and the site, so the toy biomedical CLIP (``vlprompt-bert-tiny``, a BERT-style text tower and a timm
ViT, pretrained by ``tools/pretrain_toy_clip.py --arch vlprompt-bert-tiny``) can classify them zero-shot. The
downstream data sets (:data:`MEDICAL_DATASETS`) each use one modality: low-dose x-rays (noisier and flatter than
any x-ray pretraining saw, as a benchmark's scanner differs from the web's), ultrasound scans and stained slides
(each about a fifth of pretraining, where small findings are hardest to see: speckle and nuclei hide them).

Deterministic given a seed, as the rest of the toy world.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

FINDINGS = ("nodule", "cyst", "calcification", "mass", "scar")
SITES = ("upper left", "upper right", "lower left", "lower right")
#: Modalities (domains) and how captions name them.
MODALITIES = {"xray": "x-ray", "low-dose": "low-dose x-ray", "mri": "mri scan", "ultrasound": "ultrasound scan",
              "stain": "stained slide"}
#: The modalities pretraining draws from, with their weights; low-dose x-rays are only seen downstream.
PRETRAIN_MODALITIES = {"xray": 3, "mri": 2, "ultrasound": 2, "stain": 2}

#: What the toy medical world knows of each finding and site, as a description source could say it.
_FINDING_FACTS = {
    "nodule": ("A small round spot, brighter than the tissue around it.", "It is a solid dot with a sharp edge."),
    "cyst": ("A small dark hole with a thin bright rim.", "It is round and hollow, darker inside than outside."),
    "calcification": ("A few tiny very bright specks close together.", "It looks like grains of sand in the tissue."),
    "mass": ("A large irregular bright blob with a soft edge.", "It is the biggest finding, wider than a nodule."),
    "scar": ("A short thin bright line.", "It is a straight streak across the tissue."),
}
_SITE_FACTS = {
    "upper left": ("It lies in the upper left of the image.", "It sits above the middle, on the left side."),
    "upper right": ("It lies in the upper right of the image.", "It sits above the middle, on the right side."),
    "lower left": ("It lies in the lower left of the image.", "It sits below the middle, on the left side."),
    "lower right": ("It lies in the lower right of the image.", "It sits below the middle, on the right side."),
}
#: Sentences true of every class: what a description-based learner must filter out.
_UNINFORMATIVE = ("It is seen in many patients.", "Doctors look for it on routine images.",
                  "It is described in medical textbooks.", "It can be found at any age.",
                  "It is often reported by radiologists.", "It may need a second look.")

_SITE_CENTRES = {"upper left": (10.5, 10.5), "upper right": (21.5, 10.5), "lower left": (10.5, 21.5),
                 "lower right": (21.5, 21.5)}


@dataclass(frozen=True)
class Finding:
    """What a scan shows: one finding at one site."""

    finding: str
    site: str

    def phrase(self, with_finding: bool = True, with_site: bool = True) -> str:
        """``nodule in the upper left``; leaving the finding out says ``finding`` instead."""
        text = self.finding if with_finding else "finding"
        return f"{text} in the {self.site}" if with_site else text


def medical_caption(concept: Finding, modality: str, rng: random.Random, drop: float = 0.2) -> str:
    """A pretraining caption, the finding or the site left out with probability ``drop`` (never both)."""
    with_finding, with_site = rng.random() >= drop, rng.random() >= drop
    if not (with_finding or with_site):
        with_finding = True
    return f"{with_article(MODALITIES[modality])} of a {concept.phrase(with_finding, with_site)}."


def with_article(name: str) -> str:
    """``an x-ray``, ``an mri scan``, ``a stained slide``: by the sound, not the letter."""
    return f"{'an' if name[0] in 'aeiouxm' else 'a'} {name}"


def sample_finding(fixed: dict, rng: random.Random) -> Finding:
    return Finding(finding=fixed.get("finding") or rng.choice(FINDINGS), site=fixed.get("site") or rng.choice(SITES))


# -- drawing --------------------------------------------------------------------------------------------------
def _organ(modality: str, rng: random.Random, np_rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """The modality's background as an ``H x W`` grey image (0-255) and the intensity change a finding makes."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.uniform(-1.5, 1.5)
    if modality in ("xray", "low-dose"):
        body = ((x - centre) / (size * 0.47)) ** 2 + ((y - centre) / (size * 0.5)) ** 2 < 1
        image = np.where(body, 150.0, 15.0)
        for side in (-1, 1):  # two darker lung fields
            lung = ((x - centre - side * size * 0.2) / (size * 0.17)) ** 2 + ((y - centre) / (size * 0.36)) ** 2 < 1
            image = np.where(lung, 70.0, image)
        return image, 95.0
    if modality == "mri":
        organ = ((x - centre) / (size * 0.46)) ** 2 + ((y - centre) / (size * 0.46)) ** 2 < 1
        texture = np_rng.random((size // 4, size // 4)).astype(np.float32)
        texture = np.kron(texture, np.ones((4, 4), np.float32))
        return np.where(organ, 95.0 + 25.0 * texture, 10.0), 100.0
    if modality == "ultrasound":  # a sector of speckle
        angle = np.arctan2(x - size / 2, y + size * 0.15)
        radius = np.hypot(x - size / 2, y + size * 0.15)
        sector = (np.abs(angle) < 0.8) & (radius < size * 1.1)
        speckle = np_rng.rayleigh(35.0, (size, size)).astype(np.float32)
        return np.where(sector, 30.0 + speckle, 5.0), 110.0
    if modality == "stain":  # pink tissue with purple nuclei, drawn as darkness here and coloured in _colour
        image = np.full((size, size), 60.0, np.float32)
        for _ in range(rng.randint(28, 36)):
            cx, cy = rng.uniform(0, size), rng.uniform(0, size)
            image[((x - cx) ** 2 + (y - cy) ** 2) < rng.uniform(0.6, 1.4)] = 150.0
        return image, 120.0
    raise ValueError(modality)


def _draw_finding(image: np.ndarray, finding: Finding, strength: float, rng: random.Random) -> np.ndarray:
    size = image.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = (c + rng.uniform(-2.0, 2.0) for c in _SITE_CENTRES[finding.site])
    distance = np.hypot(x - cx, y - cy)
    if finding.finding == "nodule":
        return image + strength * (distance < rng.uniform(1.8, 2.4))
    if finding.finding == "cyst":
        r = rng.uniform(2.2, 2.8)
        return np.where(distance < r - 0.9, image * 0.2, image + strength * 0.8 * (distance < r + 0.4))
    if finding.finding == "calcification":
        for _ in range(rng.randint(3, 4)):
            px, py = int(round(cx + rng.uniform(-2, 2))), int(round(cy + rng.uniform(-2, 2)))
            image[min(max(py, 0), size - 1), min(max(px, 0), size - 1)] += strength * 1.5
        return image
    if finding.finding == "mass":
        wobble = 1 + 0.25 * np.sin(3 * np.arctan2(y - cy, x - cx) + rng.uniform(0, 6))
        return image + strength * 0.7 * np.clip(rng.uniform(3.6, 4.4) * wobble - distance, 0, 1.5) / 1.5
    if finding.finding == "scar":
        theta = rng.uniform(0, math.pi)
        along = (x - cx) * math.cos(theta) + (y - cy) * math.sin(theta)
        across = -(x - cx) * math.sin(theta) + (y - cy) * math.cos(theta)
        return image + strength * ((np.abs(along) < 3.2) & (np.abs(across) < 0.6))
    raise ValueError(finding.finding)


def _colour(grey: np.ndarray, modality: str) -> np.ndarray:
    if modality == "stain":  # eosin pink where light, haematoxylin purple where dark
        weight = np.clip(grey / 255.0, 0, 1)[..., None]
        pink, purple = np.array([236, 178, 206], np.float32), np.array([92, 40, 130], np.float32)
        return pink * (1 - weight) + purple * weight
    return np.repeat(grey[..., None], 3, axis=-1)


def render_scan(concept: Finding, modality: str, rng: random.Random, size: int = 32) -> Image.Image:
    """Draw one image of ``concept`` in ``modality``."""
    np_rng = np.random.default_rng(rng.getrandbits(64))
    image, strength = _organ(modality, rng, np_rng, size)
    image = _draw_finding(image, concept, strength * rng.uniform(0.8, 1.1), rng)
    noise = {"low-dose": 30.0, "ultrasound": 10.0}.get(modality, 6.0)
    image = image + np_rng.normal(0, noise, image.shape)
    if modality == "low-dose":  # less contrast as well as more noise
        image = 0.6 * image + 0.4 * image.mean()
    return Image.fromarray(np.clip(_colour(image, modality), 0, 255).astype(np.uint8))


# -- data sets ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MedicalDataset:
    """A downstream toy medical data set: one class per (finding, site), every image in ``modality``."""

    name: str
    modality: str
    template: str

    #: What a class is made of; the toy benchmark and the data tools read these as for the shapes world.
    varying = ("finding", "site")
    novel_styles = ()

    @property
    def styles(self) -> tuple[str, ...]:
        return (self.modality,)

    def styles_of(self, label: int) -> tuple[str, ...]:
        return self.styles

    def classes(self) -> list[tuple[str, dict]]:
        return [(Finding(f, s).phrase(), {"finding": f, "site": s}) for f in FINDINGS for s in SITES]

    def draw(self, fixed: dict, style: str, rng: random.Random, size: int) -> Image.Image:
        return render_scan(sample_finding(fixed, rng), style, rng, size)

    def describe(self) -> dict[str, list[str]]:
        """Two sentences for the finding, two for the site, one naming the modality (the same for every class)
        and two uninformative ones, in a fixed shuffled order."""
        described = {}
        name = MODALITIES[self.modality]
        for classname, fixed in self.classes():
            rng = random.Random(f"{self.name}:{classname}:descriptions")
            sentences = [*_FINDING_FACTS[fixed["finding"]], *_SITE_FACTS[fixed["site"]],
                         f"The image is {with_article(name)}.", *rng.sample(_UNINFORMATIVE, 2)]
            rng.shuffle(sentences)
            described[classname] = sentences
        return described


#: The toy medical family: one modality each, 20 classes (5 findings x 4 sites), read by ``vlprompt-bert-tiny``.
MEDICAL_DATASETS = {
    "ToyXray": MedicalDataset("ToyXray", "low-dose", "an x-ray of a {}."),
    "ToyUltrasound": MedicalDataset("ToyUltrasound", "ultrasound", "an ultrasound scan of a {}."),
    "ToyHistology": MedicalDataset("ToyHistology", "stain", "a stained slide of a {}."),
}


def draw_medical_pool(size: int, rng: random.Random, image_size: int = 32):
    """``size`` pretraining images of the medical world (uint8 ``N x 3 x H x W``) and what each shows."""
    modalities, weights = zip(*PRETRAIN_MODALITIES.items())
    images = np.empty((size, image_size, image_size, 3), np.uint8)
    described = []
    for i in range(size):
        concept, modality = sample_finding({}, rng), rng.choices(modalities, weights)[0]
        images[i] = np.asarray(render_scan(concept, modality, rng, image_size))
        described.append((concept, modality))
    return images, described


def medical_vocabulary() -> list[str]:
    """Every word the medical world's captions, class names, templates and descriptions use."""
    texts = [*MODALITIES.values(), *FINDINGS, *SITES, "a an of the finding in .",
             *(dataset.template for dataset in MEDICAL_DATASETS.values()),
             *(s for facts in (*_FINDING_FACTS.values(), *_SITE_FACTS.values()) for s in facts), *_UNINFORMATIVE,
             *(f"The image is {with_article(name)}." for name in MODALITIES.values())]
    return sorted({word for text in texts for word in _words(text)})


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+|[^a-z\s]", text.lower())
