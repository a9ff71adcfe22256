#!/usr/bin/env python
"""Speed and memory of every learner, measured side by side with a naive baseline and bare open_clip.

    python tools/bench.py                      # ViT-B/16 shape, random init, CPU: about 7 minutes on 2 cores
    python tools/bench.py --device cuda --precision bf16-mixed --classes 100 1000   # on a GPU
    python tools/bench.py --startup            # start-up times of the vlprompt command against `import torch`
    python tools/bench.py --caspl-memory       # CasPL stage 1: cached teacher vs recomputed, ViT-B/16 vs ViT-L/14

Everything runs in one process on the same model, data and settings, so the ratios compare like with like on
a noisy machine. The naive baseline is written here, as the reference repos do it: the full 77-token context,
text features recomputed for every batch, CoCoOp's prompts for every image encoded at once. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU; on a CPU it is the bytes autograd keeps for the backward pass
(activations), which is what grows with batch x classes. Writes the tables to ``runs/benchmarks.md``
(``--out docs/benchmarks.md`` for the tracked copy). ``--startup`` and ``--caspl-memory`` replace only their
own section there.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import platform
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vlprompt  # noqa: E402
from vlprompt.learners import get_learner_class, list_learners  # noqa: E402

TARGETS = {"coop_text_step": 0.35, "eval_throughput": 0.9, "cocoop_memory": 0.5}
#: `vlprompt fit --help` may take at most this many times a bare `import torch`.
STARTUP_TARGET = 2.0
STARTUP_HEADING = "## Start-up"
CASPL_HEADING = "## CasPL stage 1: cached teacher"
#: A stage-1 step with the teacher's features cached may use at most this fraction of the memory of one that
#: recomputes them.
CASPL_MEMORY_TARGET = 0.5
ADJECTIVES = ("red", "small", "golden", "spotted", "wild", "striped", "old", "great", "common", "long-tailed")
NOUNS = ("fox", "sparrow", "retriever", "maple tree", "sports car", "tabby cat", "fire truck", "orchid",
         "sea turtle", "pizza")


def classnames(count: int) -> list[str]:
    """Realistic names of 1-5 tokens (the EOT position is what the cut saves on)."""
    names = [f"{a} {n}" for a in ADJECTIVES for n in NOUNS]
    return [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names)}") for i in range(count)]


class Timer:
    def __init__(self, device: torch.device, repeats: int):
        self.device, self.repeats = device, repeats

    def __call__(self, fn) -> float:
        """Median seconds of ``repeats`` calls after one warm-up call."""
        fn()
        times = []
        for _ in range(self.repeats):
            self._sync()
            start = time.perf_counter()
            fn()
            self._sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def peak_memory(fn, device: torch.device, weights=()) -> int:
    """Bytes: peak allocated on a GPU; on a CPU, the tensors autograd saves for backward during ``fn``
    (weights it saves are not counted: they exist anyway)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    seen, total = {w.untyped_storage().data_ptr() for w in weights}, [0]

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total[0]


def out_of_memory_as_none(measure):
    """``measure()``, or None when the device runs out of memory (a naive baseline at 1000 classes): the report
    says "OOM" for it instead of the whole run crashing."""
    try:
        return measure()
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def naive_text_features(clip, embeds: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
    """The reference repos' text path: all 77 positions through every layer, pooled at the EOT token."""
    model = clip.model
    context = model.positional_embedding.shape[0]
    padding = model.token_embedding.weight[0].expand(embeds.shape[0], context - embeds.shape[1], -1)
    x = torch.cat([embeds, padding.to(embeds.dtype)], dim=1) + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return F.normalize(x[torch.arange(x.shape[0]), pool_index] @ model.text_projection, dim=-1)


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
    parser.add_argument("--teacher", default="ViT-L-14", help="CasPL teacher architecture (random init)")
    parser.add_argument("--caspl-batch", type=int, default=32, help="batch of the CasPL memory comparison")
    options = parser.parse_args()
    if options.startup:
        write_startup_section(options.out, options.repeats)
        return
    if options.caspl_memory:
        write_caspl_section(options, torch.device(options.device))
        return
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    device = torch.device(options.device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if options.precision == "bf16-mixed"
                else contextlib.nullcontext())
    timer = Timer(device, options.repeats)
    clip = vlprompt.load_clip(options.model).to(device)
    size = clip.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    started = time.time()
    sections = []
    for n_classes in options.classes:
        names = classnames(n_classes)
        labels = torch.arange(options.batch, device=device) % n_classes
        images = torch.randn(options.batch, 3, size, size, device=device)
        eval_images = torch.randn(options.eval_batch, 3, size, size, device=device)
        with torch.no_grad(), autocast:
            image_features = clip.encode_image(images, normalize=True).float()

        # Bare open_clip image encoding: the ceiling for evaluation throughput.
        def bare_encode():
            with torch.no_grad(), autocast:
                clip.model.encode_image(eval_images)
        bare_ips = options.eval_batch / timer(bare_encode)

        rows = []
        weights = [*clip.model.parameters(), *clip.model.buffers()]
        for name in list_learners():
            cls = get_learner_class(name)
            # Defaults (CoCoOp's options below); a learner that distils a teacher gets the same CLIP as teacher here
            # (--caspl-memory compares a real teacher).
            extra = {"teacher": clip} if "teacher" in inspect.signature(cls).parameters else {}
            if cls.needs_descriptions:  # two made-up sentences per class (the measure is speed, not accuracy)
                extra["descriptions"] = {n: [f"a photo of a {n}.", f"a {n} seen up close."] for n in names}
            learner = vlprompt.build_learner(name, clip, names, **extra).to(device)
            row = {"learner": name}
            if cls.needs_training:
                learner.train()
                params = [p for p in learner.parameters() if p.requires_grad]
                optimizer = torch.optim.SGD(params, lr=1e-3)

                def step():
                    with autocast:
                        loss = learner.training_loss(images, labels).total
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                row["step_s"] = timer(step)
                row["memory"] = peak_memory(step, device, weights)
            learner.eval()

            def evaluate():
                with torch.no_grad(), autocast:
                    learner(eval_images)
            row["eval_ips"] = options.eval_batch / timer(evaluate)
            rows.append(row)

        # CoOp's text side, ours (cut after EOT) vs naive (77 tokens), on the same precomputed image features.
        coop = vlprompt.build_learner("coop", clip, names).to(device).train()
        with torch.no_grad():
            exact = (coop.text_features() - naive_text_features(clip, coop.prompts.embeddings(),
                                                                coop.prompts.pool_index)).abs().max().item()

        def text_step(features):
            def run():
                with autocast:
                    logits = coop.logits(image_features, features().float())
                F.cross_entropy(logits, labels).backward()
            return run
        ours_text = timer(text_step(coop.text_features))
        naive_text = timer(text_step(lambda: naive_text_features(clip, coop.prompts.embeddings(),
                                                                 coop.prompts.pool_index)))

        # CoCoOp at a large batch: chunked + checkpointed vs every image's prompts at once over 77 tokens.
        cocoop_kwargs = {"text_chunk_size": options.cocoop_chunk, "activation_checkpointing": True}
        cocoop = vlprompt.build_learner("cocoop", clip, names, **cocoop_kwargs).to(device).train()
        big_labels = torch.arange(options.cocoop_batch, device=device) % n_classes
        big_features = F.normalize(torch.randn(options.cocoop_batch, clip.embed_dim, device=device), dim=-1)

        def cocoop_ours():
            with autocast:
                logits = cocoop.logits(big_features, cocoop.text_features(big_features))
            F.cross_entropy(logits.float(), big_labels).backward()

        def cocoop_naive():
            with autocast:
                ctx = cocoop.prompts.ctx + cocoop.meta_net(big_features).unsqueeze(1)
                embeds = cocoop.prompts.embeddings(ctx).flatten(0, 1)
                text = naive_text_features(clip, embeds, cocoop.prompts.pool_index.repeat(ctx.shape[0]))
                logits = cocoop.logits(big_features, text.view(ctx.shape[0], n_classes, -1))
            F.cross_entropy(logits.float(), big_labels).backward()
        if device.type == "cuda":
            memory_ours = peak_memory(cocoop_ours, device)
        else:
            # Checkpointed chunks save nothing in the forward pass, but each is recomputed with its activations
            # during backward: the peak adds one chunk's activations to what is kept.
            chunk_features = big_features[:options.cocoop_chunk]
            plain_chunk = vlprompt.build_learner("cocoop", clip, names).to(device).train()

            def one_chunk():
                with autocast:
                    text = plain_chunk.text_features(chunk_features)
                text.float().sum().backward()
            memory_ours = (peak_memory(cocoop_ours, device, weights + list(cocoop.parameters()))
                           + peak_memory(one_chunk, device, weights + list(plain_chunk.parameters())))
        memory_naive = out_of_memory_as_none(
            lambda: peak_memory(cocoop_naive, device, weights + list(cocoop.parameters())))

        coop_eval = next(r["eval_ips"] for r in rows if r["learner"] == "coop")
        ratios = {"coop_text_step": ours_text / naive_text, "eval_throughput": coop_eval / bare_ips,
                  "cocoop_memory": memory_ours / memory_naive if memory_naive else None}
        sections.append((n_classes, rows, bare_ips, ours_text, naive_text, memory_ours, memory_naive, ratios, exact))
        print(f"{n_classes} classes: " + ", ".join(f"{k} {'OOM' if v is None else format(v, '.3f') + 'x'}"
                                                   for k, v in ratios.items()), flush=True)

    write_report(options, device, sections, time.time() - started)


def _seconds(command: list[str], repeats: int, env: dict | None = None) -> float:
    """Median wall time of ``command`` in a fresh process (Python's own start included)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def replace_section(out: Path, heading: str, lines: list[str]) -> None:
    """Write ``lines`` (starting with ``heading``) as that section of ``out``, keeping the rest of the file."""
    text = out.read_text() if out.is_file() else "# Benchmarks\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + text[end + 1:] if end >= 0 else text[:start]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines))
    print("\n".join(lines))


def write_caspl_section(options, device: torch.device) -> None:
    """CasPL stage 1 at ``--caspl-batch``: the peak memory of a training step whose teacher image features come
    from the cache, against the same step computing them (the reference's way), in one process."""
    torch.manual_seed(0)
    student = vlprompt.load_clip(options.model).to(device)
    teacher = vlprompt.load_clip(options.teacher).to(device)
    names = classnames(10)
    learner = vlprompt.build_learner("caspl_boost", student, names, teacher=teacher).to(device).train()
    size = student.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(options.caspl_batch, 3, size, size, device=device)
    labels = torch.full((options.caspl_batch,), -1, device=device)  # stage 1 reads no label
    keys = [f"image-{i}" for i in range(options.caspl_batch)]
    with torch.no_grad():
        learner._batch_keys = keys
        learner.teacher_image_features(images)  # fills the cache, as the first epoch does
    weights = [*student.model.parameters(), *student.model.buffers(), *teacher.model.parameters(),
               *teacher.model.buffers()]

    def step(cached: bool):
        def run():
            learner._batch_keys = keys if cached else None
            learner.training_loss(images, labels).total.backward()
            learner.zero_grad(set_to_none=True)
            learner._batch_keys = None
        return run
    started = time.time()
    measured = {}
    for cached in (True, False):
        run = step(cached)
        run()  # warm-up: gradients and lazily built buffers exist before measuring
        step_started = time.perf_counter()  # the measured call itself is timed: a ViT-L/14 step is long on a CPU
        memory = peak_memory(run, device, weights)
        if device.type == "cuda":
            torch.cuda.synchronize()
        measured[cached] = {"memory": memory, "seconds": time.perf_counter() - step_started}
    teacher_bytes = sum(t.numel() * t.element_size() for t in [*teacher.model.parameters(), *teacher.model.buffers()])
    memory_kind = ("peak allocated above the step's start (MB)" if device.type == "cuda"
                   else "kept by autograd for backward (MB)")
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    ratio = measured[True]["memory"] / max(measured[False]["memory"], 1)
    lines = [CASPL_HEADING, "",
             f"`python tools/bench.py --caspl-memory` ({machine}; torch {torch.__version__}; student {options.model}, "
             f"teacher {options.teacher}, random init; batch {options.caspl_batch}, {len(names)} classes, fp32; "
             f"{(time.time() - started) / 60:.1f} min): one stage-1 training step (forward and backward) with the "
             "teacher's image features read from the cache, against the same step computing them.", "",
             "| measure | teacher cached | teacher recomputed | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| memory, {memory_kind} | {_mb(measured[True]['memory'])} | {_mb(measured[False]['memory'])} | "
              f"{ratio:.3f}x |",
              f"| step time (s) | {measured[True]['seconds']:.2f} | {measured[False]['seconds']:.2f} | "
              f"{measured[True]['seconds'] / measured[False]['seconds']:.3f}x |"]
    lines += ["", f"Target: cached at most {CASPL_MEMORY_TARGET:g}x recomputed: "
              f"{'met' if ratio <= CASPL_MEMORY_TARGET else 'not met'} ({ratio:.3f}x). The teacher runs without "
              "gradients, so autograd keeps nothing of it: what a recomputed teacher adds to a step is its compute (the "
              "time row) and its forward's transient activations, freed layer by layer, not memory kept for "
              "backward; the step's peak is the student's own activations, which caching cannot shrink. What caching would also "
              f"allow is taking the teacher's weights off the device after the first epoch ({_mb(teacher_bytes)} MB "
              "here); vlprompt keeps them resident (images not yet in the cache, and DDP's buffer broadcasts, "
              "need them).", ""]
    replace_section(options.out, CASPL_HEADING, lines)


def write_startup_section(out: Path, repeats: int) -> None:
    """The start-up times of the ``vlprompt`` program against a bare ``import torch``, side by side, as the
    ``## Start-up`` section of ``out`` (the rest of the file is kept)."""
    python, program = sys.executable, [sys.executable, "-m", "vlprompt"]
    with tempfile.TemporaryDirectory() as cache:
        kept = {**os.environ, "VLPROMPT_CACHE_DIR": cache}
        rows = [("`python -c 'import torch'` (the yardstick)", [python, "-c", "import torch"], None),
                ("`python -c 'import pytorch_lightning'`", [python, "-c", "import pytorch_lightning"], None),
                ("`vlprompt --help`", [*program, "--help"], None),
                ("`vlprompt suite --help`", [*program, "suite", "--help"], None),
                ("`vlprompt report --help`", [*program, "report", "--help"], None),
                ("`vlprompt fit --help`, built (first call; `VLPROMPT_HELP_CACHE=0`)", [*program, "fit", "--help"],
                 {**os.environ, "VLPROMPT_HELP_CACHE": "0"}),
                ("`vlprompt fit --help`, kept (every later call)", [*program, "fit", "--help"], kept)]
        repeats = max(repeats, 5)
        subprocess.run(rows[0][1], check=True)  # warm the file cache for every measurement alike
        subprocess.run(rows[-1][1], check=True, capture_output=True, env=kept)  # the first call keeps the text
        timed = [(label, _seconds(command, repeats, env)) for label, command, env in rows]
    torch_seconds = timed[0][1]
    built_ratio, kept_ratio = timed[-2][1] / torch_seconds, timed[-1][1] / torch_seconds
    lines = [STARTUP_HEADING, "", f"`python tools/bench.py --startup`: median of {repeats} fresh processes each, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.", "",
             "| command | seconds | x `import torch` |", "|---|---:|---:|"]
    lines += [f"| {label} | {seconds:.2f} | {seconds / torch_seconds:.2f} |" for label, seconds in timed]
    lines += ["", f"Target: `vlprompt fit --help` within {STARTUP_TARGET:g}x `import torch`: "
              f"{'met' if kept_ratio <= STARTUP_TARGET else 'not met'} ({kept_ratio:.2f}x) once the text is kept; "
              f"building it (the first call after vlprompt or its packages change, unless `make install` did) takes "
              f"{built_ratio:.2f}x. vlprompt imports open_clip (and the Hugging Face, timm and CoCa code it pulls in) "
              "only when a CLIP is built, and its packages load their modules on first use, so `vlprompt --help`, "
              "`suite --help` and `report --help` load neither torch nor Lightning. Building `fit --help` needs "
              "Lightning's own import (the LightningCLI reads the Trainer's signature), and that import is the "
              "floor: it brings in torchmetrics, which imports transformers, scipy.signal and torchvision's "
              "detection ops eagerly. So the built text is kept (`vlprompt/help_cache.py`: keyed by vlprompt's "
              "sources, the versions of the packages it shows and the Python; laid out 100 columns wide; "
              "`VLPROMPT_HELP_CACHE=0` turns it off) and a plain `COMMAND --help` reads it back without torch. "
              "`make install` builds it once for each Lightning subcommand, so after installing even the first call "
              "is the fast one.", ""]
    replace_section(out, STARTUP_HEADING, lines)


def _mb(value: int) -> str:
    return f"{value / 2**20:,.1f}"


def write_report(options, device: torch.device, sections, seconds: float) -> None:
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    memory_kind = "peak allocated (MB)" if device.type == "cuda" else "saved for backward (MB)"
    lines = ["# Benchmarks", "",
             f"`python tools/bench.py {' '.join(sys.argv[1:])}`".replace("`python tools/bench.py `",
                                                                          "`python tools/bench.py`"),
             "", f"Machine: {machine}; torch {torch.__version__}; {options.model} (random init), precision "
             f"{options.precision}; training batch {options.batch}, evaluation batch {options.eval_batch}, "
             f"median of {options.repeats}; {seconds / 60:.1f} min.", ""]
    for n_classes, rows, bare_ips, ours_text, naive_text, memory_ours, memory_naive, ratios, exact in sections:
        # A baseline that ran out of memory leaves its ratio unmeasured; ours fitting where it did not is a pass.
        met = {k: (v is None or (v <= TARGETS[k] if k != "eval_throughput" else v >= TARGETS[k]))
               for k, v in ratios.items()}
        lines += [f"## {n_classes} classes", "",
                  f"| learner | training step (s) | evaluation (images/s) | training memory, {memory_kind} |",
                  "|---|---:|---:|---:|"]
        for row in rows:
            step = f"{row['step_s']:.3f}" if "step_s" in row else "-"
            memory = _mb(row["memory"]) if "memory" in row else "-"
            lines.append(f"| {row['learner']} | {step} | {row['eval_ips']:.1f} | {memory} |")
        lines += [f"| bare open_clip `encode_image` | - | {bare_ips:.1f} | - |", "",
                  "| comparison | ours | naive | ratio | target | met |", "|---|---:|---:|---:|---:|---|",
                  f"| CoOp text-side training step (s) | {ours_text:.4f} | {naive_text:.4f} | "
                  f"{ratios['coop_text_step']:.3f}x | <= {TARGETS['coop_text_step']}x | "
                  f"{'yes' if met['coop_text_step'] else 'no'} |",
                  f"| CoOp evaluation vs bare image encoding (images/s) | "
                  f"{next(r['eval_ips'] for r in rows if r['learner'] == 'coop'):.1f} | {bare_ips:.1f} | "
                  f"{ratios['eval_throughput']:.3f}x | >= {TARGETS['eval_throughput']}x | "
                  f"{'yes' if met['eval_throughput'] else 'no'} |",
                  f"| CoCoOp training memory at batch {options.cocoop_batch}, {memory_kind} | {_mb(memory_ours)} | "
                  f"{_mb(memory_naive) if memory_naive else 'OOM'} | "
                  f"{'-' if memory_naive is None else format(ratios['cocoop_memory'], '.3f') + 'x'} | "
                  f"<= {TARGETS['cocoop_memory']}x | "
                  f"{'yes' if met['cocoop_memory'] else 'no'} |", "",
                  f"Ours vs naive CoOp text features: max abs difference {exact:.2e} (the cut after EOT is exact). "
                  f"Learners run with their defaults; the CoCoOp comparison uses text_chunk_size "
                  f"{options.cocoop_chunk} and activation checkpointing"
                  + ("" if device.type == "cuda" else " (its memory adds the one chunk recomputed at a time "
                     "during backward to what the forward keeps)") + ".", ""]
    # The sections measured by their own options stay as they were.
    text = options.out.read_text() if options.out.is_file() else ""
    kept = [text[start:(end + 1 if (end := text.find("\n## ", start + 1)) >= 0 else len(text))].rstrip("\n")
            for start in (text.find(heading) for heading in (STARTUP_HEADING, CASPL_HEADING)) if start >= 0]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(lines + [part + "\n" for part in kept]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
