"""``vlprompt meta-init``: meta-learn GRAM's prompt initialisation and gradient regulator on image-caption pairs.

    vlprompt meta-init --pairs data/toy/ToyCaptions --learner configs/learners/coop.yaml \\
        --clip configs/clip/toy.yaml --out runs/gram-coop.ckpt
    vlprompt fit --config configs/learners/coop.yaml ... \\
        --model.init_args.plugins+='{name: gram, init_from: runs/gram-coop.ckpt, gradient_regulator: runs/gram-coop.ckpt}'

The context is meta-learned with the learner's own ``n_ctx`` and ``ctx_init`` (read from its YAML) on the CLIP it
will fine-tune, so the checkpoint fits that learner. Our reading of GRAM: :mod:`vlprompt.learners.gram`.
"""

from __future__ import annotations

import shlex
import argparse
import inspect
import time
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

import yaml

from vlprompt.errors import ConfigError, warn
from vlprompt.command_line import plugin_option
from vlprompt.meta_config import OPTION_HELP, REGULATOR_FORMS, MetaConfig
from vlprompt.recipes import resolve_config


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    return yaml.safe_load(path.read_text()) or {}


def _learner_settings(learner_yaml: Path, clip_yaml: Optional[Path]) -> tuple[str, dict, int, Optional[str]]:
    """The learner's registered name, the CLIP's ``FrozenCLIP`` arguments, and its ``n_ctx`` and ``ctx_init``."""
    from vlprompt.learners import get_learner_class, list_learners

    model = _read_yaml(learner_yaml).get("model") or {}
    class_path = model.get("class_path", "")
    names = [n for n in list_learners() if f"{get_learner_class(n).__module__}.{get_learner_class(n).__name__}"
             == class_path]
    if not names:
        raise ConfigError(f"{str(learner_yaml)!r} names no registered learner (model.class_path {class_path!r})")
    init = model.get("init_args") or {}
    clip_source = ((_read_yaml(clip_yaml).get("model") or {}).get("init_args") or {}).get("clip") if clip_yaml else None
    clip_args = dict((init.get("clip") or {}).get("init_args") or {})
    clip_args.update((clip_source or {}).get("init_args") or {})
    if not clip_args.get("name"):
        raise ConfigError("no CLIP named: give --clip configs/clip/<name>.yaml")
    defaults = inspect.signature(get_learner_class(names[0]).__init__).parameters
    if "n_ctx" not in defaults:
        raise ConfigError(f"{names[0]} has no text context (n_ctx) for GRAM to meta-learn; use coop, cocoop, kgcoop, "
                          "maple, ivlp, promptsrc, biomedcoop or vmfcoop")
    n_ctx = int(init.get("n_ctx", defaults["n_ctx"].default))
    ctx_init = init.get("ctx_init", defaults["ctx_init"].default if "ctx_init" in defaults else None)
    return names[0], clip_args, n_ctx, ctx_init


def encode_pair_images(clip, pairs, batch_size: int = 256):
    """Normalised frozen image features of the pairs' images, in order."""
    import torch

    from vlprompt.data import image_transform
    from vlprompt.data.images import read_rgb

    transform = image_transform(clip.preprocess_cfg)
    features = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = torch.stack([transform(read_rgb(p.image, "the image-caption pairs (--pairs)"))
                                 for p in pairs[start:start + batch_size]])
            features.append(clip.encode_image(batch, normalize=True))
    return torch.cat(features)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="vlprompt meta-init", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Every option's default is vlprompt's reading of GRAM (no public code).")
    parser.add_argument("--pairs", type=Path, required=True,
                        help="image-caption pairs: a CSV file (filepath, caption) or a folder of images with .txt captions")
    parser.add_argument("--learner", type=Path, required=True,
                        help="the learner's YAML (its n_ctx and ctx_init shape the meta-learned context)")
    parser.add_argument("--clip", type=Path, help="CLIP config YAML (default: the learner YAML's)")
    parser.add_argument("--out", type=Path, required=True, help="the GRAM checkpoint to write")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 is fastest for the "
                                                     "toy CLIP while other processes share the cores)")
    for field in fields(MetaConfig):
        option = "--" + field.name.replace("_", "-")
        described = f"{OPTION_HELP[field.name]} (default {field.default})"
        if field.name == "regulator":
            parser.add_argument(option, choices=REGULATOR_FORMS, default=field.default, help=described)
        else:
            parser.add_argument(option, type=type(field.default), default=field.default, help=described)
    options = parser.parse_args(argv)
    options.learner = resolve_config(options.learner)  # configs/... as the README writes them, from anywhere
    options.clip = resolve_config(options.clip) if options.clip else None
    if options.out.exists() and not options.force:
        raise ConfigError(f"{options.out} exists; pass --force to replace it or choose another --out")
    if options.out.suffix not in (".ckpt", ".pt", ".pth"):
        raise ConfigError(f"--out {options.out} should end in .ckpt (a torch checkpoint)")
    config = MetaConfig(**{f.name: getattr(options, f.name) for f in fields(MetaConfig)})
    check_options(config)

    import torch

    if options.threads:
        torch.set_num_threads(options.threads)
    from vlprompt.clip import FrozenCLIP
    from vlprompt.data.captions import read_caption_pairs
    from vlprompt.learners.gram.meta import describe_gram, meta_train, save_gram

    learner, clip_args, n_ctx, ctx_init = _learner_settings(options.learner, options.clip)
    pairs = usable_pairs(read_caption_pairs(options.pairs), options.pairs, config)
    started = time.time()
    clip = FrozenCLIP(**clip_args)
    image_features = encode_pair_images(clip, pairs)
    print(f"[meta-init] {len(pairs)} pairs encoded with {clip_args['name']} ({time.time() - started:.0f} s); "
          f"meta-learning {learner}'s context ({n_ctx} tokens from {ctx_init!r})", flush=True)
    content = meta_train(clip, image_features, [p.caption for p in pairs], n_ctx, ctx_init, config,
                         report=lambda step, loss: print(f"[meta-init] step {step:4d}/{config.steps}  query loss "
                                                         f"{loss:.3f}  {time.time() - started:5.0f} s", flush=True),
                         inform=lambda line: print(f"[meta-init] {line}", flush=True))
    content.update(learner=learner, seconds=time.time() - started)
    save_gram(content, options.out)
    print(f"[meta-init] {describe_gram(content)}\n[meta-init] wrote {options.out} in {(time.time() - started) / 60:.1f} "
          "min", flush=True)
    stalled = loss_did_not_move(content["query_loss"])
    if stalled:
        warn(f"{stalled}: the meta-learned context and regulator are hardly different from their start, so {options.out} "
             "would change little; check that the captions tell the images apart, or raise --steps or --outer-lr")
    else:
        print("[meta-init] fine-tune with " + shlex.quote(plugin_option("gram", init_from=options.out,
                                                                         gradient_regulator=options.out)))


#: Query losses that all lie within this fraction of the first did not move. (Each step draws other tasks, so a
#: context that learns, or merely meets other tasks, changes the loss; a constant one is a context that no task's
#: loss depends on, as when every pseudo-class has the same name.)
STALLED_FRACTION = 1e-4


def loss_did_not_move(losses) -> str:
    """A sentence when every step's query loss was the first one's, else ""."""
    if len(losses) < 2 or max(losses) - min(losses) > STALLED_FRACTION * max(abs(losses[0]), 1e-12):
        return ""
    return f"the query loss did not move in {len(losses)} steps (it stayed at {losses[0]:.4f})"


def check_options(config: MetaConfig) -> None:
    """Counts at least 1 (ways 2, the cluster sample at least the clusters), learning rates finite and positive."""
    for name in ("steps", "tasks_per_step", "ways", "shots", "queries", "inner_steps", "clusters", "cluster_sample"):
        least = {"ways": 2, "cluster_sample": config.clusters}.get(name, 1)
        if getattr(config, name) < least:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {least}")
    from vlprompt.learners.hyperparameters import check_number

    for name in ("inner_lr", "outer_lr", "regulator_lr"):
        check_number(f"--{name.replace('_', '-')}", getattr(config, name))


def usable_pairs(pairs, source: Path, config: MetaConfig):
    """The pairs with a caption; refuses a corpus whose captions are empty or name too few distinct things for a
    task of ``ways`` pseudo-classes (each is named by a caption, and identical names cannot be told apart)."""
    kept = [pair for pair in pairs if pair.caption]
    distinct = len({pair.caption.lower() for pair in kept})
    if distinct < config.ways:
        empty = f"{len(pairs) - len(kept)} of its {len(pairs)} captions are empty and " if len(kept) < len(pairs) else ""
        raise ConfigError(f"--pairs {str(source)!r}: {empty}its captions name {distinct} distinct thing"
                          f"{'s' * (distinct != 1)}, too few for tasks of --ways {config.ways}; give captions that "
                          "describe the images")
    if len(kept) < len(pairs):
        print(f"[meta-init] left out {len(pairs) - len(kept)} of {len(pairs)} pairs whose caption is empty", flush=True)
    return kept
