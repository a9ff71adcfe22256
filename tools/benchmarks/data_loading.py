"""Whether ``vlprompt fit`` keeps the device fed on generated JPEGs (``--data-loading``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import vlprompt

from benchmarks.common import REPO, Timer, classnames, image_size, replace_section, training_step_of

DATA_HEADING = "## Data loading"
#: `vlprompt fit` wall time, less start-up, at most this many times steps x the measured step time.
DATA_TARGET = 1.3


def _write_jpeg(task: tuple[Path, int, int, int]) -> None:
    """One JPEG of ImageNet's typical size (500 x 375): a smooth pattern of its class, shifted, with noise, so
    that decoding costs what a photo's does."""
    import numpy as np
    from PIL import Image

    path, index, label, classes = task
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:375, 0:500]
    base = np.stack([np.sin(xx / (9 + 3 * c + label % 7) + yy / (11 + label % 13)) for c in range(3)], -1)
    base = np.roll(base, shift=int(rng.integers(0, 500)), axis=1)
    pixels = np.clip(127 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _write_jpeg_set(root: Path, count: int, classes: int) -> None:
    """``count`` JPEGs in ``root/images``, with a CoOp split file listing them all as training images."""
    from concurrent.futures import ProcessPoolExecutor

    (root / "images").mkdir(parents=True, exist_ok=True)
    names = classnames(classes)
    items = [[f"{i % classes:03d}_{i:05d}.jpg", i % classes, names[i % classes]] for i in range(count)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_jpeg, [(root / "images" / path, i, label, classes)
                                    for i, (path, label, _) in enumerate(items)], chunksize=32))
    split = {"train": items, "val": items[:classes], "test": items[:classes]}
    (root / "split.json").write_text(json.dumps(split))


def write_data_section(options, device: torch.device) -> None:
    """`vlprompt fit` (CoOp, bf16 on a GPU) for 5 epochs on generated JPEGs, against the number of steps times a
    step measured here on device-resident batches, plus the start-up measured as a 1-step fit. The data module's
    defaults decide workers, pinning and persistence."""
    from vlprompt.data.datamodule import default_num_workers

    started = time.time()
    classes, batch, epochs = 100, 32, 5
    precision = "bf16-mixed" if device.type == "cuda" else "32"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "jpegs"
        _write_jpeg_set(root, options.jpegs, classes)
        generated = time.time() - started
        command = [sys.executable, "-m", "vlprompt", "fit", "--config", str(REPO / "configs/learners/coop.yaml"),
                   "--model.init_args.clip", json.dumps({"class_path": "vlprompt.clip.FrozenCLIP",
                                                         "init_args": {"name": options.model, "pretrained": None}}),
                   "--data.root", str(root), "--data.shots", "-1", "--data.batch_size", str(batch),
                   "--trainer.precision", precision, "--trainer.limit_val_batches", "0",
                   "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.accelerator", device.type,
                   "--checkpoint.dirpath", str(Path(folder) / "checkpoints"),
                   "--trainer.default_root_dir", str(Path(folder) / "runs")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

        def fit_seconds(*extra) -> float:
            begin = time.perf_counter()
            done = subprocess.run([*command, *extra], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"vlprompt fit failed: {done.stderr.strip().splitlines()[-1:]}")
            return time.perf_counter() - begin
        startup = fit_seconds("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--checkpoint.dirpath",
                              str(Path(folder) / "checkpoints-startup"))
        wall = fit_seconds("--trainer.max_epochs", str(epochs))
    steps = epochs * (options.jpegs // batch)
    # The step itself, on batches already on the device, the same learner and precision.
    clip = vlprompt.load_clip(options.model).to(device)
    bf16 = torch.bfloat16 if precision == "bf16-mixed" else None
    if bf16 is not None:
        clip.hold_in(bf16)
    learner = vlprompt.build_learner("coop", clip, classnames(classes)).to(device).train()
    size = image_size(clip)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % classes
    step_seconds = Timer(device, max(options.repeats, 10))(training_step_of(learner, images, labels, bf16, device))
    ratio = (wall - startup) / (steps * step_seconds)
    machine = (f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores" if device.type == "cuda"
               else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    lines = [DATA_HEADING, "",
             f"`python tools/bench.py --data-loading` ({machine}; torch {torch.__version__}; CoOp on {options.model}, "
             f"random init, precision {precision}; {options.jpegs} generated 500x375 JPEGs in {classes} classes, "
             f"batch {batch}, Dassl augmentation; data-module defaults: {default_num_workers()} workers, persistent, "
             f"pinned on a GPU; {(time.time() - started) / 60:.1f} min, {generated:.0f} s of it writing the JPEGs).",
             "",
             "| measure | seconds |", "|---|---:|",
             f"| `vlprompt fit`, {epochs} epochs ({steps} steps) | {wall:.1f} |",
             f"| start-up: the same fit stopped after 1 step | {startup:.1f} |",
             f"| one step on device-resident batches (median) | {step_seconds:.4f} |",
             f"| steps x step | {steps * step_seconds:.1f} |", "",
             f"(fit - start-up) / (steps x step) = {ratio:.2f}x; target at most {DATA_TARGET:g}x: "
             f"{'met' if ratio <= DATA_TARGET else 'not met'}.", ""]
    replace_section(options.out, DATA_HEADING, lines)
