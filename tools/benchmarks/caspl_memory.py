"""CasPL stage 1's memory: a cached teacher against a recomputed one (``--caspl-memory``)."""

from __future__ import annotations

import time

import torch

import vlprompt

from benchmarks.common import (
    LiveTensorBytes, classnames, describe_machine, image_size, mb, peak_memory, replace_section)

CASPL_HEADING = "## CasPL stage 1: cached teacher"
CASPL_MEMORY_TARGET = 0.5


def write_caspl_section(options, device: torch.device) -> None:
    """CasPL stage 1 at ``--caspl-batch``: the peak memory of a training step whose teacher image features come
    from the cache, against the same step computing them (the reference's way), in one process. The cached step
    runs as a fit on a GPU runs it, with the teacher off the device once the cache is filled (``offload_teacher``).
    The peak counts everything allocated, weights included: on a GPU as allocated, on a CPU as modelled by
    ``LiveTensorBytes`` (the teacher moved to the meta device stands for it leaving the GPU). The bytes autograd
    keeps for backward are reported too."""
    torch.manual_seed(0)
    student = vlprompt.load_clip(options.model).to(device)
    teacher = vlprompt.load_clip(options.teacher).to(device)
    bf16 = torch.bfloat16 if options.precision == "bf16-mixed" else None
    if bf16 is not None:
        student.hold_in(bf16)
        teacher.hold_in(bf16)
    names = classnames(10)
    learner = vlprompt.build_learner("caspl_boost", student, names, teacher=teacher,
                                     activation_checkpointing=options.activation_checkpointing).to(device).train()
    size = image_size(student)
    images = torch.randn(options.caspl_batch, 3, size, size, device=device)
    labels = torch.full((options.caspl_batch,), -1, device=device)  # stage 1 reads no label
    keys = [f"image-{i}" for i in range(options.caspl_batch)]
    with torch.no_grad():
        learner._batch_keys = keys
        learner.teacher_image_features(images)  # fills the cache, as the fit does before its first step
        learner._batch_keys = None
    teacher_bytes = sum(t.numel() * t.element_size() for t in [*teacher.model.parameters(), *teacher.model.buffers()])

    def resident() -> list[torch.Tensor]:
        """Every tensor the step finds on the device: weights (the teacher's unless offloaded), inputs, caches."""
        return [*student.model.parameters(), *student.model.buffers(), *teacher.model.parameters(),
                *teacher.model.buffers(), *learner.parameters(), *learner.buffers(), images, labels,
                *learner._teacher_cache.values(), *([] if learner._teacher_text is None else [learner._teacher_text])]

    def step(cached: bool):
        def run():
            learner._batch_keys = keys if cached else None
            with torch.autocast(device.type, dtype=bf16, enabled=bf16 is not None):
                loss = learner.training_loss(images, labels).total
            loss.backward()
            learner.zero_grad(set_to_none=True)
            learner._batch_keys = None
        return run
    started = time.time()
    measured = {}
    gpu = device.type == "cuda"
    for cached in (False, True):
        if cached:  # as CasPLBoost.on_train_start does once the cache is full
            learner._teacher_text = learner.teacher_text_features()
            teacher.to("cpu" if gpu else "meta")
            if gpu:
                torch.cuda.empty_cache()
        run = step(cached)
        run()  # warm-up: gradients and lazily built buffers exist before measuring
        step_started = time.perf_counter()  # the measured call itself is timed: a ViT-L/14 step is long on a CPU
        if gpu:
            kept = peak_memory(run, device)
            torch.cuda.synchronize()
            total = torch.cuda.max_memory_allocated()
        else:
            tensors = resident()
            with LiveTensorBytes(tensors) as live:
                kept = peak_memory(run, device, tensors)
            total = live.peak
        measured[cached] = {"kept": kept, "total": total, "seconds": time.perf_counter() - step_started}
    ratio = measured[True]["total"] / measured[False]["total"]
    setting = options.activation_checkpointing
    parts = ["GPU"] * gpu + ["bf16" if bf16 is not None else "fp32"] * (gpu or bf16 is not None) + \
        ["checkpointed"] * setting
    lines = [CASPL_HEADING + (f" ({', '.join(parts)})" if parts else ""), "",
             f"`python tools/bench.py --caspl-memory{' --device cuda' if gpu else ''}"
             f"{' --precision bf16-mixed' if bf16 is not None else ''}"
             f"{' --activation-checkpointing' if setting else ''}` ({describe_machine(device)}; torch {torch.__version__}; "
             f"student {options.model}, teacher {options.teacher}, random init; batch {options.caspl_batch}, "
             f"{len(names)} classes, {'bf16 autocast, frozen weights held in bf16' if bf16 is not None else 'fp32'}"
             f"{'; the student recomputes its image-tower blocks in backward' if setting else ''}; "
             f"{(time.time() - started) / 60:.1f} min): one stage-1 training step (forward and backward) with the "
             "teacher's image features read from the cache and the teacher off the device, as a fit on a GPU runs "
             "it, against the same step computing them with the teacher on the device."
             + ("" if gpu else " On a CPU the peak is modelled (`LiveTensorBytes` in tools/bench.py): every live "
                "tensor storage, weights included, as a GPU's `max_memory_allocated` counts them."), "",
             "| measure | teacher cached | teacher recomputed | ratio |", "|---|---:|---:|---:|"]
    rows = [("peak allocated in all, weights included (MB)" if gpu
             else "peak of live tensors in all, weights included (MB)", "total"),
            ("peak allocated above the step's start (MB)" if gpu else "kept by autograd for backward (MB)", "kept")]
    for label, key in rows:
        lines.append(f"| {label} | {mb(measured[True][key])} | {mb(measured[False][key])} | "
                     f"{measured[True][key] / max(measured[False][key], 1):.3f}x |")
    lines.append(f"| step time (s) | {measured[True]['seconds']:.3f} | {measured[False]['seconds']:.3f} | "
                 f"{measured[True]['seconds'] / measured[False]['seconds']:.3f}x |")
    lines += ["", f"Target: cached at most {CASPL_MEMORY_TARGET:g}x recomputed: "
              f"{'met' if ratio <= CASPL_MEMORY_TARGET else 'not met'} ({ratio:.3f}x). A recomputed teacher adds "
              f"its weights ({mb(teacher_bytes)} MB here), its forward's transient activations (under no_grad, "
              "freed layer by layer: autograd keeps nothing of it) and its compute (the time row). The rest of the "
              "peak is the same in both steps: the student's weights and the activations its deep prompts keep for "
              "backward through both towers, which `activation_checkpointing: true` shrinks.", ""]
    replace_section(options.out, lines[0], lines)
