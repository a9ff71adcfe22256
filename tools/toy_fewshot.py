#!/usr/bin/env python
"""Few-shot accuracy on the toy world with and without GRAM: `vlprompt suite few-shot` for each learner, plain and
``+gram`` (starting from GRAM's meta-learned context and fine-tuning with its regulator), as a Markdown table.

    python tools/toy_fewshot.py                                  # coop, maple, with and without GRAM; ToyShapes
    python tools/toy_fewshot.py --learners coop --datasets ToyShapes ToyPatterns --shots 1 2 4 --seeds 1 2 3

Each learner trains with its toy recipe (as ``tools/toy_benchmark.py``: CoOp 25 epochs) on all classes of the
data set and is tested on its test split. GRAM's checkpoint is meta-learned once per learner with
``vlprompt meta-init``'s defaults on the toy caption corpus (``--gram DIR`` reuses ``gram-<learner>.ckpt`` files
there, e.g. a toy benchmark's run directory). Writes ``--out`` (default ``runs/toy-fewshot.md``) and prints it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from toy_benchmark import CONFIGS, GRAM_LEARNERS, GRAM_SUFFIX, gram_checkpoint, mean_std, recipe_epochs  # noqa: E402

from vlprompt.command_line import plugin_option  # noqa: E402
from vlprompt.eval.suite import run_suite  # noqa: E402
from vlprompt.eval.toy import WORLD_CLIP_CONFIGS, world_of_dataset  # noqa: E402
from vlprompt.toy.world import DATASETS, DOMAIN_SHIFTS, ensure_toy_dataset  # noqa: E402


def main() -> None:
    downstream = [n for n in DATASETS if n not in DOMAIN_SHIFTS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", nargs="+", default=list(GRAM_LEARNERS), choices=GRAM_LEARNERS)
    parser.add_argument("--datasets", nargs="+", default=["ToyShapes"], choices=downstream)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "toy", help="where toy data sets live")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="where the run directory is created")
    parser.add_argument("--gram", type=Path, help="a directory holding gram-<learner>.ckpt to reuse")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "toy-fewshot.md")
    options = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    run_dir = options.runs / time.strftime("toy-fewshot-%Y%m%d-%H%M%S")
    fitted: dict = {}
    if options.gram:
        for learner in options.learners:
            found = options.gram / f"gram-{learner}.ckpt"
            if not found.is_file():
                sys.exit(f"toy_fewshot: --gram {options.gram} holds no gram-{learner}.ckpt")
            fitted[f"gram:{learner}"] = (str(found), 0.0)
    started = time.time()
    table: dict = {}
    for dataset in options.datasets:
        root = ensure_toy_dataset(dataset, options.data)
        data = CONFIGS / "data" / "toy" / f"{dataset}.yaml"
        clip = CONFIGS / "clip" / f"{WORLD_CLIP_CONFIGS[world_of_dataset(dataset)]}.yaml"
        for learner in options.learners:
            for variant in (learner, f"{learner}{GRAM_SUFFIX}"):
                overrides = ["--data.root", str(root), "--trainer.max_epochs", str(recipe_epochs(learner)),
                             "--trainer.enable_progress_bar", "false"]
                if variant.endswith(GRAM_SUFFIX):
                    gram = gram_checkpoint(learner, options.data, run_dir, fitted)
                    overrides.append(plugin_option("gram", init_from=gram, gradient_regulator=gram))
                found = run_suite("few-shot", CONFIGS / "learners" / f"{learner}.yaml", [data], options.seeds,
                                  run_dir / variant, clip_config=clip, shots=options.shots, overrides=overrides)
                for shots in options.shots:
                    table[(dataset, variant, shots)] = [m["acc"] for m in found if m["shots"] == shots]
                print(f"{dataset} {variant}: " + ", ".join(f"{k} shots {mean_std(table[(dataset, variant, k)])}"
                                                          for k in options.shots), flush=True)
    minutes = (time.time() - started) / 60
    command = ("python tools/toy_fewshot.py " + " ".join(sys.argv[1:])).strip()
    shown = run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir
    lines = [f"Few-shot accuracy (all classes, test split), mean ± std over seeds {' '.join(map(str, options.seeds))}; "
             f"`{command}`, {minutes:.1f} min on 2 CPU cores; runs in `{shown}`.", ""]
    for dataset in options.datasets:
        lines += [f"| {dataset} | " + " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in options.shots)
                  + " | mean |", "|---|" + "---:|" * (len(options.shots) + 1)]
        for learner in options.learners:
            for variant in (learner, f"{learner}{GRAM_SUFFIX}"):
                cells = [table[(dataset, variant, k)] for k in options.shots]
                lines.append(f"| {variant} | " + " | ".join(mean_std(c) for c in cells)
                             + f" | {statistics.mean(statistics.mean(c) for c in cells):.1f} |")
        lines.append("")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
