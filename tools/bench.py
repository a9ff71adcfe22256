#!/usr/bin/env python
"""Speed and memory of every learner, measured side by side with a naive baseline and bare open_clip.

    python tools/bench.py                      # ViT-B/16 shape, random init, CPU: about 7 minutes on 2 cores
    python tools/bench.py --device cuda --precision bf16-mixed --classes 100 1000   # on a GPU
    python tools/bench.py --startup            # start-up times of the vlprompt command against `import torch`
    python tools/bench.py --caspl-memory       # CasPL stage 1: cached teacher vs recomputed, ViT-B/16 vs ViT-L/14
    python tools/bench.py --promptkd-memory    # PromptKD's student, batch 8 and 32: the same, with a promptsrc teacher
    python tools/bench.py --gpu-speed          # GPU step targets: today's way vs weights held in bf16 vs compiled
    python tools/bench.py --data-loading       # does `vlprompt fit` keep the device fed on generated JPEGs?
    python tools/bench.py --shared-prefix --classes 4 100 1000   # CoOp's text step, context encoded once or not
    python tools/bench.py --label-space --classes 1000 5000 21000  # CoOp over 21k classes: class chunks vs all at once
    python tools/bench.py --sweep-throughput   # toy suite runs per hour: 1 worker, N workers, K runs per device
    python tools/bench.py --sweep-projection   # CoOp/PromptSRC steps timed on benchmark-shaped data -> table GPU-hours
    bash tools/gpu_checks.sh docs              # every GPU check in one go (about 9 minutes on an H100 or H200)

Everything runs in one process on the same model, data and settings, so the ratios compare like with like on
a noisy machine. The naive baseline is written here, as the reference repos do it: the full 77-token context,
text features recomputed for every batch, CoCoOp's prompts for every image encoded at once. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU; on a CPU it is the bytes autograd keeps for the backward pass
(activations), which is what grows with batch x classes, and ``--caspl-memory`` models the whole peak as well
(``LiveTensorBytes``: weights included, which is where a cached teacher differs). Writes the tables to ``runs/benchmarks.md``
(``--out docs/benchmarks.md`` for the tracked copy; the GPU report is docs/benchmarks-gpu.md). ``--startup``,
``--caspl-memory``, ``--promptkd-memory``, ``--gpu-speed``, ``--data-loading``, ``--shared-prefix``, ``--label-space``,
``--sweep-throughput`` and ``--sweep-projection`` replace only their own section there.

The measurements live in ``tools/benchmarks/``, one module per family; this file reads the options and runs one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # vlprompt from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/benchmarks, also when loaded from elsewhere

import torch  # noqa: E402

from benchmarks import (  # noqa: E402
    data_loading, distillation_memory, gpu_speed, label_space, learners, shared_prefix, startup, sweep_throughput)
from benchmarks.common import REPO  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random init)")
    parser.add_argument("--classes", type=int, nargs="+", default=[4], help="class counts to measure")
    parser.add_argument("--batch", type=int, default=8, help="training batch of the step-time rows")
    parser.add_argument("--cocoop-batch", type=int, default=32, help="batch of the CoCoOp memory comparison")
    parser.add_argument("--cocoop-chunk", type=int, default=4, help="CoCoOp text_chunk_size (images per chunk)")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks.md",
                        help="Markdown report (default: runs/; the tracked docs/benchmarks.md is rewritten "
                             "only when named here)")
    parser.add_argument("--startup", action="store_true",
                        help="measure only start-up times (each command in a fresh process) and replace the start-up "
                             "section of --out")
    parser.add_argument("--caspl-memory", action="store_true",
                        help="measure only CasPL stage 1's memory, teacher cached vs recomputed (--model the student, "
                             "--teacher, --caspl-batch), and replace that section of --out")
    parser.add_argument("--promptkd-memory", action="store_true",
                        help="measure only PromptKD's student step, teacher cached and off the device vs recomputed "
                             "(--model the student, --teacher's CLIP under a promptsrc teacher, --promptkd-batch), and "
                             "replace those sections of --out")
    parser.add_argument("--promptkd-batch", type=int, nargs="+", default=[8, 32],
                        help="batches of the PromptKD comparison (the paper's is 8)")
    parser.add_argument("--teacher", default="ViT-L-14", help="CasPL's and PromptKD's teacher architecture (random init)")
    parser.add_argument("--caspl-batch", type=int, default=32, help="batch of the CasPL memory comparison")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="the CasPL memory comparison with the student's image-tower blocks recomputed in backward "
                             "(activation_checkpointing), on both sides")
    parser.add_argument("--gpu-speed", action="store_true",
                        help="measure only the GPU step targets (bf16 autocast): CoOp at 1000 classes and batch 32, "
                             "MaPLe at batch 4, evaluation at batch 256, each today's way (fp32 frozen weights), with "
                             "the weights held in bf16, and compiled; replaces that section of --out")
    parser.add_argument("--data-loading", action="store_true",
                        help="measure only whether `vlprompt fit` keeps the device fed on generated JPEGs (5 epochs "
                             "against steps x the step time), and replace that section of --out")
    parser.add_argument("--shared-prefix", action="store_true",
                        help="measure only CoOp's text-side step with the shared context encoded once against once per "
                             "class, at each of --classes, and replace that section of --out")
    parser.add_argument("--jpegs", type=int, default=1600, help="images of the --data-loading set")
    parser.add_argument("--gpu-classes", type=int, default=1000, help="classes of the --gpu-speed CoOp rows")
    parser.add_argument("--gpu-batch", type=int, default=32, help="batch of the --gpu-speed CoOp rows")
    parser.add_argument("--maple-classes", type=int, default=100, help="classes of the --gpu-speed MaPLe rows")
    parser.add_argument("--gpu-rounds", type=int, default=3,
                        help="interleaved timing rounds of the --gpu-speed variants (the best median is kept)")
    parser.add_argument("--gpu-eval-batch", type=int, default=256, help="batch of the --gpu-speed evaluation rows")
    parser.add_argument("--gpu-parts", nargs="+", choices=gpu_speed.GPU_PARTS, default=list(gpu_speed.GPU_PARTS),
                        help="what --gpu-speed measures (default: all)")
    parser.add_argument("--pretrained", help="pretrained tag or file of --model (default: random init)")
    parser.add_argument("--label-space", action="store_true",
                        help="CoOp's step over large label spaces (--classes 1000 5000 21000): class chunks vs all at once")
    parser.add_argument("--class-chunk", type=int, default=1000, help="class_chunk_size of the --label-space rows")
    parser.add_argument("--unchunked-up-to", type=int, default=21000,
                        help="--label-space measures all-at-once only up to this many classes")
    parser.add_argument("--sweep-throughput", action="store_true",
                        help="runs per hour of a toy suite with 1 worker, N workers and K runs per device")
    parser.add_argument("--sweep-workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts of --sweep-throughput (default 1 2)")
    parser.add_argument("--sweep-runs", type=int, default=8, help="configurations of the --sweep-throughput suite")
    parser.add_argument("--sweep-epochs", type=int, default=4, help="epochs of each --sweep-throughput run")
    parser.add_argument("--sweep-projection", action="store_true",
                        help="CoOp and PromptSRC steps on benchmark-shaped synthetic data, projected to the GPU-hours "
                             "of the full base-to-novel tables (11 data sets x 3 seeds)")
    options = parser.parse_args()
    if options.startup:
        startup.write_startup_section(options.out, options.repeats)
        return
    # Each of these measures only its own section of --out.
    sections = {"caspl_memory": distillation_memory.write_caspl_section,
                "promptkd_memory": distillation_memory.write_promptkd_section,
                "gpu_speed": gpu_speed.write_gpu_speed_section,
                "data_loading": data_loading.write_data_section,
                "shared_prefix": shared_prefix.write_shared_prefix_section,
                "label_space": label_space.write_label_space_section,
                "sweep_throughput": sweep_throughput.write_throughput_section,
                "sweep_projection": sweep_throughput.write_projection_section}
    for option, write_section in sections.items():
        if getattr(options, option):
            write_section(options, torch.device(options.device))
            return
    learners.measure(options)


if __name__ == "__main__":
    main()
