#!/usr/bin/env python
"""Zero-shot vs CoOp base-to-novel on every toy data set with the shipped toy CLIP; writes docs/toy-world.md.

    python tools/toy_benchmark.py                 # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vlprompt.clip.frozen import shipped_weights_path  # noqa: E402
from vlprompt.eval.base2novel import run_base_to_novel  # noqa: E402
from vlprompt.toy.world import DATASETS, DOMAIN_SHIFTS, ensure_toy_dataset  # noqa: E402

CONFIGS = REPO / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "toy")
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--epochs", type=int, default=25, help="CoOp epochs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "toy-world.md")
    options = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    run_dir = options.runs / time.strftime("toy-benchmark-%Y%m%d-%H%M%S")
    record = json.loads(shipped_weights_path("vlprompt-tiny", "toy").with_suffix(".json").read_text())
    rows = []
    started = time.time()
    for name in (n for n in DATASETS if n not in DOMAIN_SHIFTS):
        root = ensure_toy_dataset(name, options.data)
        common = ["--config", CONFIGS / "clip" / "toy.yaml", "--config", CONFIGS / "data" / "toy" / f"{name}.yaml",
                  "--data.root", root, "--seed_everything", options.seed, "--data.seed", options.seed,
                  "--trainer.enable_progress_bar", "false"]
        zeroshot = run_base_to_novel(["--config", CONFIGS / "learners" / "zeroshot.yaml", *common], run_dir,
                                     f"{name}-zeroshot", train=False)
        coop = run_base_to_novel(["--config", CONFIGS / "learners" / "coop.yaml", *common, "--trainer.max_epochs",
                                  options.epochs], run_dir, f"{name}-coop")
        rows.append((name, record["zero_shot_test_accuracy"][name], zeroshot, coop))
        print(f"{name}: zero-shot {zeroshot}, CoOp {coop}", flush=True)
    minutes = (time.time() - started) / 60
    command = "python tools/toy_benchmark.py " + " ".join(sys.argv[1:])
    lines = [
        "# The toy world: measured accuracy", "",
        f"Shipped toy CLIP `vlprompt-tiny` (`pretrained=\"toy\"`, sha256 `{record['sha256'][:16]}...`), "
        f"pretrained in {record['train_minutes']} min on {record['torch_threads']} CPU threads by "
        f"`{record['command'].strip()}`.", "",
        "## Zero-shot accuracy on every toy data set (all classes, test split)", "",
        "| data set | classes | zero-shot |", "|---|---:|---:|",
        *(f"| {name} | {len(DATASETS[name].classes())} | {acc:.1f} |"
          for name, acc in record["zero_shot_test_accuracy"].items()), "",
        f"## Base-to-novel, 16 shots, seed {options.seed}, CoOp {options.epochs} epochs", "",
        "| data set | zero-shot Base | CoOp Base | gain | zero-shot Novel | CoOp Novel | zero-shot HM | CoOp HM |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {name} | {z['base_acc']:.1f} | {c['base_acc']:.1f} | {c['base_acc'] - z['base_acc']:+.1f} | "
          f"{z['novel_acc']:.1f} | {c['novel_acc']:.1f} | {z['hm']:.1f} | {c['hm']:.1f} |" for name, _, z, c in rows),
        "", f"Measured with `{command.strip()}` in {minutes:.1f} min (2 CPU cores).", "",
    ]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
