#!/usr/bin/env python
"""`make demo`: zero-shot CLIP and CoOp, base-to-novel, on a toy data set with the shipped toy CLIP.

Writes the data set if it is missing, trains CoOp on the base classes (16 shots), evaluates both learners on
the base and novel test sets with the same prompts, and prints a Base / Novel / HM table. Logs, checkpoints
and the table land in a fresh run directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # also runs from a checkout that is not installed

from vlprompt.errors import VlpromptError  # noqa: E402
from vlprompt.eval.base2novel import run_base_to_novel  # noqa: E402
from vlprompt.eval.toy import toy_run_args  # noqa: E402
from vlprompt.toy.world import DATASETS  # noqa: E402

CONFIGS = REPO / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ToyShapes", choices=list(DATASETS), help="toy data set")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "toy", help="where toy data sets live")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="where the run directory is created")
    parser.add_argument("--epochs", type=int, default=25, help="CoOp training epochs")
    options = parser.parse_args()
    run_dir = options.runs / time.strftime("demo-%Y%m%d-%H%M%S")
    started = time.time()
    try:
        args = {learner: toy_run_args(CONFIGS, learner, options.dataset, options.data, seed=1)
                for learner in ("zeroshot", "coop")}
        results = {
            "zeroshot": run_base_to_novel(args["zeroshot"], run_dir, "zeroshot", train=False),
            "coop": run_base_to_novel([*args["coop"], "--trainer.max_epochs", str(options.epochs)], run_dir, "coop"),
        }
    except VlpromptError as err:
        sys.exit(f"demo: error: {err}")
    lines = [f"{options.dataset}, 16 shots, seed 1 (accuracy in %)", "",
             "| learner | Base | Novel | HM |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['base_acc']:.1f} | {r['novel_acc']:.1f} | {r['hm']:.1f} |" for name, r in results.items()]
    table = "\n".join(lines)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.md").write_text(table + "\n")
    print(f"\n{table}\n\nFinished in {time.time() - started:.0f} s. Logs, checkpoints and results.md: {run_dir}")


if __name__ == "__main__":
    main()
