#!/usr/bin/env python
"""`make demo`: zero-shot CLIP and CoOp, base-to-novel, end to end on generated images and a tiny CLIP.

Generates the data set if it is missing, trains CoOp on the base classes, evaluates both learners on the base
and novel test sets and prints a Base / Novel / HM table. Everything lands in a fresh run directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing, too

from vlprompt.cli import create_cli  # noqa: E402
from vlprompt.errors import VlpromptError  # noqa: E402
from vlprompt.toy import write_shapes_dataset  # noqa: E402

CONFIGS = REPO / "configs"


def harmonic_mean(base: float, novel: float) -> float:
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def test_accuracy(args: list[str]) -> float:
    cli = create_cli(["test", *args, "--trainer.enable_model_summary", "false"])
    return float(cli.trainer.callback_metrics["test/acc"])


def run(data: Path, run_dir: Path, epochs: int) -> dict[str, tuple[float, float]]:
    if not (data / "split_zhou_Shapes.json").is_file():
        print(f"generating the shapes data set in {data}")
        write_shapes_dataset(data, per_class=20)
    common = ["--config", str(CONFIGS / "clip" / "tiny-random.yaml"), "--config", str(CONFIGS / "data" / "shapes.yaml"),
              "--data.root", str(data), "--trainer.logger.init_args.save_dir", str(run_dir)]
    results = {}
    zeroshot = ["--config", str(CONFIGS / "learners" / "zeroshot.yaml"), *common,
                "--trainer.logger.init_args.name", "zeroshot"]
    results["zeroshot"] = tuple(test_accuracy([*zeroshot, "--data.subsample", half]) for half in ("base", "novel"))

    coop = ["--config", str(CONFIGS / "learners" / "coop.yaml"), *common, "--trainer.logger.init_args.name", "coop"]
    fit = create_cli(["fit", *coop, "--data.subsample", "base", "--trainer.max_epochs", str(epochs)])
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    results["coop"] = tuple(test_accuracy([*coop, "--data.subsample", half, "--ckpt_path", checkpoint])
                            for half in ("base", "novel"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "shapes", help="data set directory")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="where the run directory is created")
    parser.add_argument("--epochs", type=int, default=5, help="CoOp training epochs")
    options = parser.parse_args()
    run_dir = options.runs / time.strftime("demo-%Y%m%d-%H%M%S")
    started = time.time()
    try:
        results = run(options.data, run_dir, options.epochs)
    except VlpromptError as err:
        sys.exit(f"demo: error: {err}")
    lines = ["| learner | Base | Novel | HM |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {base:.1f} | {novel:.1f} | {harmonic_mean(base, novel):.1f} |"
              for name, (base, novel) in results.items()]
    table = "\n".join(lines)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.md").write_text(table + "\n")
    print(f"\n{table}\n\nFinished in {time.time() - started:.0f} s; logs, checkpoints and results.md in {run_dir}")


if __name__ == "__main__":
    main()
