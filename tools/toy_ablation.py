#!/usr/bin/env python
"""Ablations on the toy world: a learner's base-to-novel accuracy with parts of its recipe switched off.

    python tools/toy_ablation.py promptsrc ToyShapes          # PromptSRC's variants below, 3 seeds: 6 minutes
    python tools/toy_ablation.py promptsrc ToyShapes --variant "no text term=--model.init_args.text_loss_weight 0"

Each variant is a name and the ``vlprompt`` overrides it adds to the learner's recipe (its YAML, the shipped toy
CLIP and the toy data set's config, with the toy benchmark's epochs, as ``tools/toy_benchmark.py`` runs it).
Prints a Markdown table of mean ± std of Base / Novel / HM over the seeds.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from toy_benchmark import recipe_epochs  # noqa: E402

from vlprompt.eval.base2novel import run_base_to_novel  # noqa: E402
from vlprompt.learners import get_learner_class  # noqa: E402
from vlprompt.eval.toy import toy_run_args  # noqa: E402

CONFIGS = REPO / "configs"
#: Default variants per learner: what each regulariser and the aggregation contribute.
DEFAULT_VARIANTS = {
    "promptsrc": {
        "PromptSRC (paper recipe)": "",
        "ensemble = the toy captions' style ('a sketch of a {}.')": "--model.init_args.ensemble_templates "
                                                                     "\"['a sketch of a {}.']\"",
        "no regularising terms, no aggregation (= IVLP)": "--model.init_args.text_loss_weight 0 "
        "--model.init_args.image_loss_weight 0 --model.init_args.logit_loss_weight 0 --model.init_args.gpa false",
        "aggregation only": "--model.init_args.text_loss_weight 0 --model.init_args.image_loss_weight 0 "
                            "--model.init_args.logit_loss_weight 0",
    },
    "kapt": {
        "KAPT (our reading)": "",
        "no knowledge prompt": "--model.init_args.n_keywords 0",
        "no adaptation head": "--model.init_args.adaptation_head false",
        "neither (= CoOp with KAPT's recipe)": "--model.init_args.n_keywords 0 --model.init_args.adaptation_head false",
    },
    "mocoop": {
        "MoCoOp (paper recipe)": "",
        "no text term": "--model.init_args.text_loss_weight 0",
        "no gate term": "--model.init_args.gate_loss_weight 0",
        "frozen LayerNorms": "--model.init_args.finetune_vision_layernorm false",
    },
}


def mean_std(values):
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("learner", help="a learner with a config in configs/learners/")
    parser.add_argument("dataset", help="a toy data set (ToyShapes, ToyPatterns, ...)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="a named variant; default: the learner's variants in DEFAULT_VARIANTS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "toy")
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    options = parser.parse_args()
    variants = dict(v.split("=", 1) for v in options.variant) or DEFAULT_VARIANTS.get(options.learner)
    if not variants:
        parser.error(f"no default variants for {options.learner}; give --variant NAME=OVERRIDES")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    run_dir = options.runs / time.strftime(f"toy-ablation-{options.learner}-%Y%m%d-%H%M%S")
    # A transductive learner (PromptKD) fits on every class's images, as the benchmark runs it.
    transductive = get_learner_class(options.learner).transductive
    started = time.time()
    lines = [f"| {options.learner} on {options.dataset} | Base | Novel | HM |", "|---|---:|---:|---:|"]
    for index, (name, overrides) in enumerate(variants.items()):
        runs = [run_base_to_novel([*toy_run_args(CONFIGS, options.learner, options.dataset, options.data, seed),
                                   "--trainer.enable_progress_bar", "false",
                                   "--trainer.max_epochs", str(recipe_epochs(options.learner)), *shlex.split(overrides)],
                                  run_dir, f"variant{index}-seed{seed}", transductive=transductive)
                for seed in options.seeds]
        lines.append(f"| {name} | " + " | ".join(mean_std([run[key] for run in runs])
                                               for key in ("base_acc", "novel_acc", "hm")) + " |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    print(f"\nseeds {' '.join(map(str, options.seeds))}; {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
