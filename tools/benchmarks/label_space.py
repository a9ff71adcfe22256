"""CoOp's training step over label spaces far beyond ImageNet's (``--label-space``): the class prompts encoded in
chunks recomputed in the backward (``class_chunk_size``) against all at once."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import vlprompt

from benchmarks.common import LiveTensorBytes, Timer, classnames, describe_machine, mb, out_of_memory_as_none, replace_section

LABEL_SPACE_HEADING = "## Label spaces beyond ImageNet: CoOp in class chunks"


def _step(coop, features: torch.Tensor, labels: torch.Tensor, device: torch.device, bf16: bool):
    """CoOp's training step on fixed image features: class text features (the part that grows with the classes),
    logits, cross-entropy, backward."""
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = coop.logits(features, coop.text_features())
        F.cross_entropy(logits.float(), labels).backward()
        coop.zero_grad(set_to_none=True)
    return run


def _peak(run, coop, device: torch.device) -> int:
    """Peak bytes of one step, everything counted: on a GPU as allocated; on a CPU as ``LiveTensorBytes`` models it
    (resident: the CLIP's weights, the learner's parameters and buffers)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    resident = [*coop.clip.model.parameters(), *coop.clip.model.buffers(), *coop.parameters(), *coop.buffers()]
    with LiveTensorBytes(resident) as tracker:
        run()
    return tracker.peak


def write_label_space_section(options, device: torch.device) -> None:
    """At every ``--classes`` count: step time and peak memory with ``class_chunk_size`` ``--class-chunk`` and, up to
    ``--unchunked-up-to`` classes, with all classes encoded at once; the same process, model and image features."""
    torch.manual_seed(0)
    clip = vlprompt.load_clip(options.model, pretrained=options.pretrained).to(device)
    bf16 = options.precision == "bf16-mixed"
    if bf16:
        clip.hold_in(torch.bfloat16)
    started, rows = time.time(), []
    features = F.normalize(torch.randn(options.batch, clip.embed_dim, device=device), dim=-1)
    for n_classes in options.classes:
        names = classnames(n_classes)
        labels = torch.arange(options.batch, device=device) % n_classes
        measured = {}
        for chunk in (options.class_chunk, None):
            if chunk is None and n_classes > options.unchunked_up_to:
                measured[chunk] = None
                continue
            coop = vlprompt.build_learner("coop", clip, names, class_chunk_size=chunk).to(device).train()
            run = _step(coop, features, labels, device, bf16)
            seconds = out_of_memory_as_none(lambda: Timer(device, options.repeats)(run))
            peak = out_of_memory_as_none(lambda: _peak(run, coop, device)) if seconds is not None else None
            measured[chunk] = (seconds, peak) if seconds is not None else "OOM"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append((n_classes, measured[options.class_chunk], measured[None]))
        print(rows[-1], flush=True)

    def cell(value) -> tuple[str, str]:
        if value is None:
            return "not run", "not run"
        if value == "OOM":
            return "OOM", "OOM"
        return f"{value[0]:.3f}", mb(value[1])

    machine = describe_machine(device)
    memory = ("`torch.cuda.max_memory_allocated`" if device.type == "cuda" else
              "`LiveTensorBytes` (CPU model of the peak of live tensors, CLIP weights and learner buffers included)")
    heading = f"{LABEL_SPACE_HEADING} ({options.model})"
    lines = [heading, "",
             f"`python tools/bench.py --label-space --model {options.model}"
             f"{f' --pretrained {options.pretrained}' if options.pretrained else ''} --classes "
             f"{' '.join(map(str, options.classes))} --class-chunk {options.class_chunk} --unchunked-up-to "
             f"{options.unchunked_up_to} --batch {options.batch}` ({machine}; torch {torch.__version__}; precision "
             f"{options.precision}; median of {options.repeats}; {(time.time() - started) / 60:.1f} min): CoOp's "
             "training step (class text features for every class, logits against a batch of image features, "
             f"backward) with `class_chunk_size: {options.class_chunk}` and with all classes at once. Peak memory: "
             f"{memory}, in MiB.", "",
             "| classes | chunked: step (s) | chunked: peak (MiB) | all at once: step (s) | all at once: peak (MiB) |",
             "|---:|---:|---:|---:|---:|"]
    for n_classes, chunked, whole in rows:
        lines.append(f"| {n_classes:,} | {' | '.join(cell(chunked))} | {' | '.join(cell(whole))} |")
    lines.append("")
    replace_section(options.out, heading, lines)
