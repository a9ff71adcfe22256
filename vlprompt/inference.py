"""Using learned prompts: ``vlprompt predict`` classifies a user's images, ``vlprompt export`` writes the learned
classifier for plain open_clip.

    vlprompt predict --ckpt_path RUN/checkpoints/last.ckpt --images photos/ --classes classes.txt --out preds.csv
    vlprompt export --ckpt_path RUN/checkpoints/last.ckpt --classes configs/data/DTD.yaml --out dtd.safetensors

``--classes`` is a text file (one class name per line) or a data config (the classes a run on it sees, and its hand
templates); by default the classes the checkpoint was trained on. ``predict`` writes one CSV row per image (its
path, the top-k classes and their probabilities); images that cannot be read get a row saying why, and the rest
are classified. ``export`` is for learners whose class scores are a fixed linear classifier on the frozen CLIP's
image features (zero-shot CLIP, CoOp, KgCoOp, TCP, ...): the class text features, the logit scale, the CLIP's identity
and its preprocessing go into one safetensors file (:data:`EXPORT_FORMAT`) that open_clip alone can use. Learners that
prompt the image tower or condition the text on the image are refused in one line.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from vlprompt.command_line import OneLineArgumentParser
from vlprompt.data.images import IMAGE_SUFFIXES, read_rgb
from vlprompt.errors import ConfigError, UnreadableImageError
from vlprompt.files import ensure_writable

#: What ``vlprompt export`` writes, named in the file's metadata.
EXPORT_FORMAT = "vlprompt-classifier/1"
#: The largest difference between the exported classifier's logits and the learner's own that export accepts.
EXPORT_TOLERANCE = 1e-4


# -- inputs ----------------------------------------------------------------------------------------------------------
def read_image_list(source: Path) -> list[Path]:
    """The images to classify: every image file below a folder (sorted), or the paths in a CSV's first column (a
    header ``path`` is skipped; relative paths are relative to the CSV's folder)."""
    source = Path(source).expanduser()
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise ConfigError(f"--images {str(source)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return paths
    if not source.is_file():
        raise ConfigError(f"--images {str(source)!r} does not exist; pass a folder of images or a CSV of paths")
    if source.suffix.lower() != ".csv":
        raise ConfigError(f"--images {str(source)!r} is neither a folder nor a .csv file of image paths")
    with open(source, newline="") as stream:
        rows = [row for row in csv.reader(stream) if row and row[0].strip()]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    if not rows:
        raise ConfigError(f"--images {str(source)!r} lists no image paths (one per row, first column)")
    return [(source.parent / row[0].strip()) if not os.path.isabs(row[0].strip()) else Path(row[0].strip())
            for row in rows]


def read_classes(source: Optional[Path]) -> tuple[Optional[list[str]], Optional[list[str]]]:
    """``(class names, templates)`` from ``--classes``: a text file (one name per line; templates None), or a data
    config (the classes a run on it sees: its split file's, or the ``subsample`` half, in label order, and its hand
    templates). ``(None, None)``: the checkpoint's own classes."""
    if source is None:
        return None, None
    source = Path(source).expanduser()
    if not source.is_file():
        raise ConfigError(f"--classes {str(source)!r} does not exist; pass a text file with one class name per line, "
                          "or a data config (configs/data/<Name>.yaml)")
    if source.suffix.lower() in (".yaml", ".yml"):
        return _classes_of_data_config(source)
    names = [line.strip() for line in source.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise ConfigError(f"--classes {str(source)!r} names no classes (one per line)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--classes {str(source)!r} names {repeated[0]!r} twice; give each class once")
    return names, None


def _classes_of_data_config(path: Path) -> tuple[list[str], list[str]]:
    """The classes a run on this data config trains or tests on (its ``subsample`` half, if any) and its templates,
    named and templated as the data module does."""
    from vlprompt.data.benchmarks import get_benchmark, prompt_templates, split_file_path
    from vlprompt.data.check import DATA_KEYS, data_options
    from vlprompt.data.splits import prompt_classnames, read_split_file, subsample_classes

    data = data_options([path], keys=DATA_KEYS + ("subsample", "templates"))
    benchmark = get_benchmark(data["dataset"]) if data.get("dataset") else None
    root = Path(str(data["root"])).expanduser()
    split_path = split_file_path(root, benchmark, data.get("split_file"))
    if not split_path.is_file():
        raise ConfigError(f"--classes {str(path)!r}: its split file {str(split_path)!r} does not exist (the classes are "
                          f"read from it); vlprompt data check --config {path} says how to fix that")
    split = subsample_classes(read_split_file(split_path), data.get("subsample") or "all")
    return prompt_classnames(split), prompt_templates(benchmark, data.get("templates"))


def load_for_inference(ckpt_path: Path, classes: Optional[Path], device: str):
    """The learner of ``ckpt_path`` on ``device``, in eval mode, with the ``--classes`` classes."""
    from vlprompt.learners.checkpoint import load_learner

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"--ckpt_path {str(ckpt_path)!r} does not exist; pass the last.ckpt a fit wrote "
                          "(<run directory>/checkpoints/last.ckpt)")
    learner = load_learner(ckpt_path, map_location="cpu")
    names, templates = read_classes(classes)
    if names is not None and (names != list(learner.classnames) or templates is not None):
        learner.set_classnames(names, templates)
    return learner.to(_device(device)).eval()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA GPU; use --device cpu")
    return torch.device(name)


class _ImageFiles(torch.utils.data.Dataset):
    """Images as tensors, or the reason one cannot be read (never an exception: one bad file is not fatal)."""

    def __init__(self, paths: Sequence[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return index, self.transform(read_rgb(self.paths[index], "--images")), ""
        except UnreadableImageError as err:  # "image P cannot be read (WHY); replace it ...": keep WHY
            text = str(err)
            start, end = text.find(" ("), text.rfind(");")
            return index, None, text[start + 2:end] if 0 <= start < end else text
        except OSError as err:
            return index, None, f"{type(err).__name__}: {err}"


def _collate(batch):
    good = [(index, image) for index, image, _ in batch if image is not None]
    bad = [(index, why) for index, image, why in batch if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [index for index, _ in good], images, bad


def predict(ckpt_path: Path, images: Path, out: Path, classes: Optional[Path] = None, top_k: int = 5,
            batch_size: int = 64, num_workers: Optional[int] = None, device: str = "auto",
            progress: bool = True) -> dict:
    """Classify ``images`` with the learned prompts of ``ckpt_path`` and write ``out`` (CSV); returns counts and the
    unreadable images."""
    from tqdm import tqdm

    from vlprompt.data.datamodule import default_num_workers, image_transform

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {str(out)!r} exists and is kept; pass another path or delete it")
    if top_k < 1:
        raise ConfigError(f"--top-k must be 1 or more, got {top_k}")
    paths = read_image_list(images)
    ensure_writable(out.parent, "the predictions file's folder (--out)")
    learner = load_for_inference(ckpt_path, classes, device)
    names = list(learner.classnames)
    k = min(top_k, len(names))
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, image_transform(learner.preprocess_cfg or {}, augment=False)), batch_size=batch_size,
        num_workers=default_num_workers() if num_workers is None else num_workers, collate_fn=_collate)
    rows: dict[int, list] = {}
    unreadable = []
    with torch.no_grad(), tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr,
                               disable=not (progress and sys.stderr.isatty())) as bar:
        for indices, batch, bad in loader:
            if batch is not None:
                probabilities = learner(batch.to(learner.clip.device)).float().softmax(dim=-1)
                top = probabilities.topk(k, dim=-1)
                for row, index in enumerate(indices):
                    pairs = zip(top.indices[row].tolist(), top.values[row].tolist())
                    rows[index] = [value for label, p in pairs for value in (names[label], f"{p:.6f}")] + [""]
            for index, why in bad:
                rows[index] = ["", ""] * k + [why]
                unreadable.append((paths[index], why))
            bar.update(len(indices) + len(bad))
    header = ["path", *[f"{what}_{rank}" for rank in range(1, k + 1) for what in ("class", "prob")], "error"]
    partial = out.with_name(out.name + ".partial")
    with open(partial, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for index, path in enumerate(paths):
            writer.writerow([str(path), *rows[index]])
    os.replace(partial, out)
    return {"images": len(paths), "classified": len(paths) - len(unreadable), "unreadable": unreadable,
            "classes": len(names)}


# -- export ----------------------------------------------------------------------------------------------------------
def exported_classifier(learner) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class features C x D, logit scale)`` of a learner whose logits are ``scale * image @ features.T`` on the
    frozen CLIP's normalised image features, checked on random images against the learner itself."""
    name = learner.registry_name
    features = learner.class_features()
    if features is None:
        raise ConfigError(f"{name} cannot be exported as a fixed classifier: its class scores depend on the image "
                          "beyond CLIP's own image features (visual prompts, image-conditioned text, or a plug-in "
                          "that changes the logits); use vlprompt predict with its checkpoint")
    features = features.detach().float()
    scale = learner.clip.logit_scale.detach().float()
    size = (learner.preprocess_cfg or {}).get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    generator = torch.Generator().manual_seed(0)
    device = features.device
    images = torch.randn(4, 3, size, size, generator=generator).to(device)
    with torch.no_grad():
        expected = learner(images).float()
        exported = scale * F.normalize(learner.clip.encode_image(images).float(), dim=-1) @ features.t()
    gap = (expected - exported).abs().max().item()
    if gap > EXPORT_TOLERANCE * max(1.0, expected.abs().max().item()):
        raise ConfigError(f"{name} cannot be exported as a fixed classifier: its logits differ from CLIP's image "
                          f"features times its class features by {gap:.2e}; use vlprompt predict with its checkpoint")
    return features.cpu(), scale.cpu()


def clip_identity_for_open_clip(clip) -> dict:
    """How plain open_clip builds the same CLIP: ``model`` (an open_clip name), ``pretrained`` (a tag or a file),
    ``model_config`` (the architecture, for names open_clip does not ship), ``force_quick_gelu``."""
    import open_clip

    from vlprompt.clip.frozen import SHIPPED_WEIGHTS, shipped_weights_path

    name, pretrained = clip.source["name"], clip.source["pretrained"]
    if not pretrained:
        raise ConfigError("the CLIP has random weights (pretrained: null), which plain open_clip cannot rebuild; "
                          "export a learner trained on a pretrained CLIP")
    identity: dict = {}
    if isinstance(name, dict):
        identity["model"], identity["model_config"] = "vlprompt-exported", name
    else:
        identity["model"] = name
        shipped_by_open_clip = (Path(open_clip.__file__).parent / "model_configs" / f"{name}.json").is_file()
        if ":" not in name and not shipped_by_open_clip:  # one of vlprompt's: open_clip needs its architecture
            identity["model_config"] = open_clip.get_model_config(name)
    if (name if isinstance(name, str) else None, pretrained) in SHIPPED_WEIGHTS:
        pretrained = str(shipped_weights_path(name, pretrained).resolve())
    elif os.path.isfile(str(pretrained)):
        pretrained = str(Path(pretrained).resolve())
    identity["pretrained"] = pretrained
    if clip.uses_quick_gelu:
        identity["force_quick_gelu"] = True
    return identity


def export(ckpt_path: Path, out: Path, classes: Optional[Path] = None) -> dict:
    """Write the learned classifier of ``ckpt_path`` as safetensors (:data:`EXPORT_FORMAT`); returns its metadata."""
    from safetensors.torch import save_file

    import vlprompt

    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {str(out)!r} exists and is kept; pass another path or delete it")
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {str(out)!r} should end in .safetensors (the file is safetensors)")
    ensure_writable(out.parent, "the export's folder (--out)")
    learner = load_for_inference(ckpt_path, classes, "cpu")
    features, scale = exported_classifier(learner)
    preprocess = dict(learner.preprocess_cfg or {})
    size = preprocess.get("size", 224)
    metadata = {
        "format": EXPORT_FORMAT,
        "learner": learner.registry_name,
        "classnames": json.dumps(list(learner.classnames)),
        "clip": json.dumps(clip_identity_for_open_clip(learner.clip)),
        # vlprompt's evaluation transform: bicubic resize of the short side, centre crop, CLIP's normalisation.
        "preprocess": json.dumps({"image_size": size[0] if isinstance(size, (tuple, list)) else size,
                                  "mean": list(preprocess.get("mean", ())), "std": list(preprocess.get("std", ())),
                                  "interpolation": "bicubic", "resize_mode": "shortest"}),
        "checkpoint": str(Path(ckpt_path).resolve()),
        "vlprompt_version": vlprompt.__version__,
    }
    partial = out.with_name(out.name + ".partial")
    save_file({"class_features": features.contiguous(), "logit_scale": scale.reshape(1)}, str(partial), metadata)
    os.replace(partial, out)
    return metadata


# -- commands --------------------------------------------------------------------------------------------------------
def _common_options(parser) -> None:
    parser.add_argument("--ckpt_path", type=Path, required=True, help="the learned prompts: RUN/checkpoints/last.ckpt")
    parser.add_argument("--classes", type=Path,
                        help="a text file with one class name per line, or a data config (its classes and templates); "
                             "default: the classes the checkpoint was trained on")


def predict_main(argv: Sequence[str]) -> None:
    parser = OneLineArgumentParser(prog="vlprompt predict", description="Classify images with learned prompts; "
                                                                        "writes a CSV.")
    _common_options(parser)
    parser.add_argument("--images", type=Path, required=True,
                        help="a folder of images (searched recursively) or a CSV whose first column holds image paths")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"),
                        help="the CSV to write (default predictions.csv; an existing file is kept, never replaced)")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, help="image-reading processes (default: fit the machine)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    options = parser.parse_args(list(argv))
    result = predict(options.ckpt_path, options.images, options.out, options.classes, options.top_k,
                     options.batch_size, options.num_workers, options.device)
    print(f"vlprompt: {result['classified']} of {result['images']} images classified into {result['classes']} "
          f"classes; predictions in {options.out}")
    if result["unreadable"]:
        shown = "; ".join(f"{path}: {why}" for path, why in result["unreadable"][:5])
        print(f"vlprompt: {len(result['unreadable'])} images could not be read (their rows say why): {shown}"
              f"{'; ...' if len(result['unreadable']) > 5 else ''}")


def export_main(argv: Sequence[str]) -> None:
    parser = OneLineArgumentParser(prog="vlprompt export",
                                   description="Write the learned classifier (class text features, logit scale, CLIP "
                                               "identity, preprocessing) as one safetensors file for plain open_clip.")
    _common_options(parser)
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (never replaced)")
    options = parser.parse_args(list(argv))
    metadata = export(options.ckpt_path, options.out, options.classes)
    print(f"vlprompt: {metadata['learner']} classifier over {len(json.loads(metadata['classnames']))} classes written "
          f"to {options.out}; load it with open_clip alone as in the README (Using learned prompts)")
