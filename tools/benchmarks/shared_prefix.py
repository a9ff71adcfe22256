"""CoOp's text step with the shared context encoded once or whole (``--shared-prefix``)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import vlprompt
from vlprompt.clip.towers import TextTuning

from benchmarks.common import Timer, classnames, flops, describe_machine, replace_section

PREFIX_HEADING = "## Shared prefix"


def write_shared_prefix_section(options, device: torch.device) -> None:
    """CoOp's text-side training step (text features, logits against fixed image features, backward) with the
    context shared by all classes encoded once, against the same prompts encoded whole, interleaved in one process,
    at every ``--classes`` count. The learners share from ``TextTuning.min_sequences_to_share`` classes on; the CLIP
    measured here shares from 2, so every count is measured both ways."""
    torch.manual_seed(0)
    clip = vlprompt.load_clip(options.model).to(device)
    clip.text_tuning = TextTuning(min_sequences_to_share=2)
    started, rows = time.time(), []
    for n_classes in options.classes:
        coop = vlprompt.build_learner("coop", clip, classnames(n_classes)).to(device).train()
        prompts = coop.prompts
        features = F.normalize(torch.randn(options.batch, clip.embed_dim, device=device), dim=-1)
        labels = torch.arange(options.batch, device=device) % n_classes

        def step(share: bool):
            def run():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.precision == "bf16-mixed"):
                    text = clip.encode_text_embeddings(prompts.embeddings(), prompts.pool_index,
                                                       prompt_start=prompts.prompt_start,
                                                       attention_mask=prompts.attention_mask,
                                                       shared_prefix=prompts.shared_prefix if share else 0)
                    logits = coop.logits(features, F.normalize(text.float(), dim=-1))
                F.cross_entropy(logits, labels).backward()
            return run
        timer, seconds = Timer(device, options.repeats), {True: float("inf"), False: float("inf")}
        for _ in range(3):  # interleaved rounds; the best median of each
            for share in (True, False):
                seconds[share] = min(seconds[share], timer(step(share)))
        work = {share: flops(step(share)) for share in (True, False)}
        rows.append((n_classes, prompts.shared_prefix, prompts.token_embeds.shape[1], seconds[True], seconds[False],
                     work[True], work[False]))
        print(rows[-1], flush=True)
    machine = describe_machine(device)
    lines = [PREFIX_HEADING, "",
             f"`python tools/bench.py --shared-prefix --classes {' '.join(map(str, options.classes))}` ({machine}; "
             f"torch {torch.__version__}; {options.model}, random init, precision {options.precision}; CoOp's "
             f"defaults (4 context tokens initialised from \"a photo of a\"), batch {options.batch}; best of 3 "
             f"interleaved medians of {options.repeats}; {(time.time() - started) / 60:.1f} min): the text-side "
             "training step with the shared prefix encoded once, against every prompt encoded whole. GFLOP: the "
             "step's matrix products as `torch.utils.flop_counter` counts them, the work any device does (attention "
             "scores, under 1% at these prompt lengths, count only where torch knows the kernel: not on a CPU).", "",
             "| classes | shared prefix / prompt length | encoded once (s) | whole (s) | ratio | GFLOP once / whole "
             "| ratio |", "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {prefix} / {length} | {shared:.4f} | {whole:.4f} | {shared / whole:.2f}x | "
              f"{work_shared / 1e9:,.1f} / {work_whole / 1e9:,.1f} | {work_shared / work_whole:.2f}x |"
              for n, prefix, length, shared, whole, work_shared, work_whole in rows]
    lines += ["", f"The learners share from {TextTuning().min_sequences_to_share} prompts on "
              "(`vlprompt/clip/towers.py`, `TextTuning.min_sequences_to_share`).", ""]
    replace_section(options.out, PREFIX_HEADING, lines)
