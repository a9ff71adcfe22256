#!/usr/bin/env python
"""ATPrompt's attribute search: which of the candidate attribute words to anchor a data set's prompts on.

    python tools/search_attributes.py --data configs/data/DTD.yaml --candidates dtd-candidates.txt
    python tools/search_attributes.py --data configs/data/toy/ToyShapes.yaml --clip configs/clip/toy.yaml \\
        --candidates candidates.txt --epochs 10 --out runs/attributes-ToyShapes.json

Candidates come from a file: one word per line (or a YAML list); ATPrompt asked a chat model for five (each data
YAML of the 11 data sets names the ones its scripts used, in a comment above ``attributes``). Every combination of
``--sizes`` of them (default 1, 2 and 3 words) gets its own CoOp prompt with the atprompt plug-in, and their logits
are mixed by learned weights, trained as the reference does (``vlprompt/learners/atprompt/search.py``) on
``--shots`` images per base class (16) for ``--epochs`` (40), alternating a prompt step on a training batch and a
weight step on a validation batch. Prints every combination with its weight and the choice as the
``attributes: [...]`` line for the data YAML; ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class SearchError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def read_candidates(path: Path) -> list[str]:
    import yaml

    if not path.is_file():
        raise SearchError(f"{path} does not exist; --candidates is a text file with one attribute word per line")
    text = path.read_text()
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = None
    words = loaded if isinstance(loaded, list) else [line.strip() for line in text.splitlines() if line.strip()]
    if len(words) < 2 or not all(isinstance(word, str) and word.strip() for word in words):
        raise SearchError(f"{path} must list at least two attribute words, one per line (got {words!r})")
    return [word.strip() for word in words]


def read_section(path: Path, section: str) -> dict:
    import yaml

    if not path.is_file():
        raise SearchError(f"{path} does not exist")
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise SearchError(f"{path} must be a mapping of keys (data:, model:)")
    return dict(content.get(section) or {})


def clip_arguments(path: Path) -> dict:
    clip = ((read_section(path, "model").get("init_args") or {}).get("clip") or {}).get("init_args") or {}
    if not clip.get("name"):
        raise SearchError(f"{path} names no CLIP (model.init_args.clip.init_args.name); pass configs/clip/<name>.yaml")
    return dict(clip)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data YAML, e.g. configs/data/DTD.yaml")
    parser.add_argument("--clip", type=Path, default=REPO / "configs" / "clip" / "vit-b16.yaml",
                        help="CLIP YAML (default: configs/clip/vit-b16.yaml)")
    parser.add_argument("--candidates", type=Path, required=True, help="candidate attribute words, one per line")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3],
                        help="how many words a combination has (default 1 2 3; the reference's code: 3 4 5)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--shots", type=int, default=16, help="training images per base class")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-ctx", type=int, default=4, help="context tokens of every combination's prompt")
    parser.add_argument("--n-att", type=int, default=4, help="learned tokens before each attribute word")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--root", type=Path, help="the data set's folder, if not the data YAML's root")
    parser.add_argument("--out", type=Path, help="JSON file for the weights and the choice")
    options = parser.parse_args(argv)
    try:
        candidates = read_candidates(options.candidates)
        data = read_section(options.data, "data")
        clip_args = clip_arguments(options.clip)
        if options.epochs < 1 or options.shots < 1 or options.batch_size < 1:
            raise SearchError("--epochs, --shots and --batch-size must be 1 or more")
        if options.root:
            data["root"] = str(options.root)
        data.update(shots=options.shots, seed=options.seed, subsample="base", batch_size=options.batch_size)
        for unused in ("descriptions", "template_groups", "attributes", "unlabeled_dir"):
            data.pop(unused, None)

        from vlprompt.clip import load_clip
        from vlprompt.data import ImageSplitDataModule
        from vlprompt.errors import ConfigError
        from vlprompt.learners.atprompt.search import search_attributes

        try:
            datamodule = ImageSplitDataModule(**data)
            clip = load_clip(clip_args.pop("name"), **clip_args)
            ranking = search_attributes(clip, datamodule, candidates, options.epochs, options.sizes, options.n_ctx,
                                        options.n_att, options.seed)
        except (ConfigError, TypeError) as err:
            raise SearchError(str(err).splitlines()[0]) from None
    except SearchError as err:
        sys.exit(f"search_attributes: error: {err}")
    for combination, weight in ranking:
        print(f"{weight:.4f}  {', '.join(combination)}")
    best = list(ranking[0][0])
    print(f"attributes: [{', '.join(best)}]")
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps({"candidates": candidates, "choice": best,
                                           "weights": [{"attributes": list(c), "weight": w} for c, w in ranking]},
                                          indent=1) + "\n")


if __name__ == "__main__":
    main()
