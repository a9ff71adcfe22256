"""Sweeps: runs per hour of a suite with one worker against several (``--sweep-throughput``), and the GPU-hours of the
papers' base-to-novel tables projected from timed steps on benchmark-shaped synthetic data (``--sweep-projection``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

import vlprompt

from benchmarks.common import REPO, Timer, classnames, describe_machine, image_size, replace_section, training_step_of

THROUGHPUT_HEADING = "## Sweeps: runs per hour"
PROJECTION_HEADING = "## Sweeps: the base-to-novel tables in GPU-hours"
#: The 11 data sets of the base-to-novel tables: classes and test images of CoOp's split files (the dataset
#: statistics of CoOp, Zhou et al., IJCV 2022; ImageNet's test set is its 50,000-image val set).
BENCHMARK_SHAPES = {"ImageNet": (1000, 50000), "Caltech101": (100, 2465), "OxfordPets": (37, 3669),
                    "StanfordCars": (196, 8041), "Flowers102": (102, 2463), "Food101": (101, 30300),
                    "FGVCAircraft": (100, 3333), "SUN397": (397, 19850), "DTD": (47, 1692), "EuroSAT": (10, 8100),
                    "UCF101": (101, 3783)}
SHOTS, SEEDS = 16, 3
#: The learners of the projection and their recipe files (batch and epochs are read from them).
PROJECTED = {"coop": "configs/learners/coop.yaml", "promptsrc": "configs/learners/promptsrc.yaml"}
#: The projected rows: (label, learner, trains on cached image features: ``--data.cache_image_features true``).
VARIANTS = (("coop", "coop", False), ("coop, cached image features", "coop", True), ("promptsrc", "promptsrc", False))


def _suite_command(data_config: Path, runs: Path, seeds: int, epochs: int, sweep: list[str]) -> list[str]:
    return [sys.executable, "-m", "vlprompt", "suite", "base2novel", "--learner", str(REPO / PROJECTED["coop"]),
            "--clip", str(REPO / "configs" / "clip" / "toy.yaml"), "--data", str(data_config), "--seeds",
            *map(str, range(1, seeds + 1)), "--runs", str(runs), "--skip-data-check", *sweep, "--",
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false"]


def _wall_seconds(command: list[str], label: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise SystemExit(f"{label} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def write_throughput_section(options, device: torch.device) -> None:
    """The same toy base-to-novel suite (CoOp, ``--sweep-runs`` seeds) run to the end in one process, then as sweeps
    of each ``--sweep-workers`` count (and, on a GPU, 2 and 4 runs per device), each into a fresh runs directory;
    wall-clock time from start to summary, runs per hour."""
    from vlprompt.toy import write_toy_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="vlprompt-sweep-bench-") as scratch:
        scratch = Path(scratch)
        write_toy_dataset("ToyShapes", scratch / "ToyShapes", train_per_class=16, val_per_class=4, test_per_class=8)
        config = scratch / "ToyShapes.yaml"
        config.write_text(f"data:\n  root: {scratch / 'ToyShapes'}\n  split_file: split_zhou_ToyShapes.json\n"
                          "  num_workers: 0\n  batch_size: 32\n")
        settings = [("one process (`vlprompt suite`)", [])]
        settings += [(f"`--workers {n}`", ["--workers", str(n)]) for n in options.sweep_workers]
        if device.type == "cuda":
            settings += [(f"`--runs-per-device {k}`", ["--runs-per-device", str(k)]) for k in (2, 4)]
        for index, (label, sweep) in enumerate(settings):
            command = _suite_command(config, scratch / f"runs{index}", options.sweep_runs, options.sweep_epochs, sweep)
            # The second time every run is finished: what is left is the sweep's own start-up and summary.
            seconds, startup = (_wall_seconds(command, label) for _ in range(2))
            rows.append((label, seconds, startup, options.sweep_runs / seconds * 3600))
            print(rows[-1], flush=True)
    base = rows[0][3]
    cpus = os.cpu_count()
    lines = [THROUGHPUT_HEADING, "",
             f"`python tools/bench.py --sweep-throughput --sweep-workers {' '.join(map(str, options.sweep_workers))} "
             f"--sweep-runs {options.sweep_runs} --sweep-epochs {options.sweep_epochs}` ({describe_machine(device)}, "
             f"{cpus} CPU cores; torch {torch.__version__}): one toy base-to-novel suite (CoOp on the toy CLIP, "
             f"ToyShapes with 16 training images per class, batch 32, {options.sweep_epochs} epochs, "
             f"{options.sweep_runs} seeds: each run a fit and two tests) from start to summary, in one process and as "
             "sweeps (each worker gets an equal share of the CPU threads); then the same command again, every run "
             "finished: its start-up and summary alone.", "",
             "| how | wall time (s) | of it start-up (s) | runs per hour | vs one process |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {label} | {seconds:.1f} | {startup:.1f} | {per_hour:.0f} | {per_hour / base:.2f}x |"
              for label, seconds, startup, per_hour in rows]
    lines.append("")
    replace_section(options.out, THROUGHPUT_HEADING, lines)


def _recipe(path: str) -> tuple[int, int]:
    """(batch, epochs) of a learner YAML."""
    content = yaml.safe_load((REPO / path).read_text())
    return int(content["data"]["batch_size"]), int(content["trainer"]["max_epochs"])


def projected_hours(step_seconds: dict, eval_seconds_per_image: dict, batch: int, epochs: int) -> dict:
    """Hours of every data set's runs over ``SEEDS`` seeds: ``ceil(16 x base classes / batch)`` steps per epoch for
    ``epochs`` epochs, then the base and novel test sets (together the whole test set)."""
    hours = {}
    for name, (n_classes, test_images) in BENCHMARK_SHAPES.items():
        base = math.ceil(n_classes / 2)
        steps = math.ceil(SHOTS * base / batch) * epochs
        seconds = steps * step_seconds[name] + test_images * eval_seconds_per_image[name]
        hours[name] = SEEDS * seconds / 3600
    return hours


def write_projection_section(options, device: torch.device) -> None:
    """Per learner and data set, one training step timed at the paper's batch with the data set's base classes on
    ``--model`` at its image size (synthetic images), and evaluation per image; projected with
    :func:`projected_hours`. Data loading is not in it (``--data-loading`` shows whether the loader keeps up)."""
    torch.manual_seed(0)
    clip = vlprompt.load_clip(options.model, pretrained=options.pretrained).to(device)
    bf16 = torch.bfloat16 if options.precision == "bf16-mixed" else None
    if bf16 is not None:
        clip.hold_in(bf16)
    size, timer, started = image_size(clip), Timer(device, options.repeats), time.time()
    tables = {}
    for label, learner, cached in VARIANTS:
        batch, epochs = _recipe(PROJECTED[learner])
        step_seconds, eval_seconds = {}, {}
        for name, (n_classes, _) in BENCHMARK_SHAPES.items():
            base = math.ceil(n_classes / 2)
            model = vlprompt.build_learner(learner, clip, classnames(base)).to(device).train()
            # Cached: the data module hands the step the frozen tower's normalised features instead of images.
            images = (torch.nn.functional.normalize(torch.randn(batch, clip.embed_dim, device=device), dim=-1)
                      if cached else torch.randn(batch, 3, size, size, device=device))
            labels = torch.arange(batch, device=device) % base
            step_seconds[name] = timer(training_step_of(model, images, labels, bf16, device))
            model.eval()
            eval_images = torch.randn(options.gpu_eval_batch, 3, size, size, device=device)

            def evaluate():
                with torch.no_grad(), torch.autocast(device.type, dtype=bf16, enabled=bf16 is not None):
                    model(eval_images)
            eval_seconds[name] = timer(evaluate) / options.gpu_eval_batch
            print(label, name, step_seconds[name], eval_seconds[name], flush=True)
        tables[label] = (batch, epochs, step_seconds, eval_seconds, projected_hours(step_seconds, eval_seconds,
                                                                                     batch, epochs))
    machine = describe_machine(device)
    lines = [PROJECTION_HEADING, "",
             f"`python tools/bench.py --sweep-projection --model {options.model} --precision {options.precision} "
             f"--device {device.type}` ({machine}; torch {torch.__version__}; {options.model} at {size} px, "
             f"{'random init' if not options.pretrained else options.pretrained}; median of {options.repeats}; "
             f"{(time.time() - started) / 60:.1f} min): one training step per data set at the recipe's batch with its "
             "base classes (16 shots), and evaluation per image (batch "
             f"{options.gpu_eval_batch}), on synthetic images; projected to the paper's epochs and test sets over "
             f"{SEEDS} seeds. Data loading is left out.", "",
             "| data set | base classes | " + " | ".join(f"{name}: step (s) | {name}: hours" for name in tables) + " |",
             "|---|---:|" + "---:|---:|" * len(tables)]
    for name, (n_classes, _) in BENCHMARK_SHAPES.items():
        cells = " | ".join(f"{t[2][name]:.4f} | {t[4][name]:.2f}" for t in tables.values())
        lines.append(f"| {name} | {math.ceil(n_classes / 2)} | {cells} |")
    cells = [f"all 11 x {SEEDS} seeds", ""] + [cell for t in tables.values() for cell in ("", f"**{sum(t[4].values()):.2f}**")]
    lines.append("| " + " | ".join(cells) + " |")
    recipes = "; ".join(f"{name}: batch {_recipe(path)[0]}, {_recipe(path)[1]} epochs ({path})"
                        for name, path in PROJECTED.items())
    lines += ["", f"Recipes: {recipes}.", ""]
    replace_section(options.out, PROJECTION_HEADING, lines)
