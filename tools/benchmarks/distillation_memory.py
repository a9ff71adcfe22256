"""Memory and step time of learners distilled from a frozen teacher, with the teacher's image features cached (and
the teacher off the device) against recomputed: CasPL's stage 1 (``--caspl-memory``) and PromptKD's student
(``--promptkd-memory``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import vlprompt

from benchmarks.common import (
    LiveTensorBytes, classnames, describe_machine, image_size, mb, peak_memory, replace_section)

CASPL_HEADING = "## CasPL stage 1: cached teacher"
PROMPTKD_HEADING = "## PromptKD student: cached teacher"
CASPL_MEMORY_TARGET = 0.5


def _clips(options, device: torch.device):
    torch.manual_seed(0)
    student = vlprompt.load_clip(options.model).to(device)
    teacher = vlprompt.load_clip(options.teacher).to(device)
    bf16 = torch.bfloat16 if options.precision == "bf16-mixed" else None
    if bf16 is not None:
        student.hold_in(bf16)
        teacher.hold_in(bf16)
    return student, teacher, bf16


def _tensors(*modules) -> list[torch.Tensor]:
    return [t for module in modules for t in [*module.parameters(), *module.buffers()]]


def measure_cached_against_recomputed(learner, device: torch.device, bf16, batch: int, resident) -> dict:
    """One training step (forward and backward) with the teacher's image features from the cache and the teacher off
    the device (as a fit on a GPU runs it), against the same step computing them with the teacher on the device.
    The peak counts everything allocated, weights included: on a GPU as allocated, on a CPU as modelled by
    ``LiveTensorBytes`` (the teacher moved to the meta device stands for it leaving the GPU), from ``resident()``,
    every tensor the step finds on the device. The bytes autograd keeps for backward are reported too."""
    size = image_size(learner.clip)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.full((batch,), -1, device=device)  # distillation reads no label
    keys = [f"image-{i}" for i in range(batch)]
    with torch.no_grad():
        learner._batch_keys = keys
        learner.teacher_image_features(images)  # fills the cache, as the fit does before its first step
        learner._batch_keys = None

    def step(cached: bool):
        def run():
            learner._batch_keys = keys if cached else None
            with torch.autocast(device.type, dtype=bf16, enabled=bf16 is not None):
                loss = learner.training_loss(images, labels).total
            loss.backward()
            learner.zero_grad(set_to_none=True)
            learner._batch_keys = None
        return run
    measured = {}
    gpu = device.type == "cuda"
    for cached in (False, True):
        if cached:  # as the learner's on_train_start does once the cache is full
            learner.on_teacher_offloaded()
            learner.move_teacher("cpu" if gpu else "meta")
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
            tensors = [*resident(), images, labels, *learner._teacher_cache.values()]
            with LiveTensorBytes(tensors) as live:
                kept = peak_memory(run, device, tensors)
            total = live.peak
        measured[cached] = {"kept": kept, "total": total, "seconds": time.perf_counter() - step_started}
    return measured


def _table(measured: dict, gpu: bool) -> list[str]:
    lines = ["| measure | teacher cached | teacher recomputed | ratio |", "|---|---:|---:|---:|"]
    rows = [("peak allocated in all, weights included (MB)" if gpu
             else "peak of live tensors in all, weights included (MB)", "total"),
            ("peak allocated above the step's start (MB)" if gpu else "kept by autograd for backward (MB)", "kept")]
    for label, key in rows:
        lines.append(f"| {label} | {mb(measured[True][key])} | {mb(measured[False][key])} | "
                     f"{measured[True][key] / max(measured[False][key], 1):.3f}x |")
    lines.append(f"| step time (s) | {measured[True]['seconds']:.3f} | {measured[False]['seconds']:.3f} | "
                 f"{measured[True]['seconds'] / measured[False]['seconds']:.3f}x |")
    return lines


def _setting(options, device: torch.device, bf16) -> tuple[str, str]:
    """The heading's setting and the command line's flags."""
    gpu = device.type == "cuda"
    checkpointed = options.activation_checkpointing
    parts = ["GPU"] * gpu + ["bf16" if bf16 is not None else "fp32"] * (gpu or bf16 is not None) + \
        ["checkpointed"] * checkpointed
    flags = (f"{' --device cuda' if gpu else ''}{' --precision bf16-mixed' if bf16 is not None else ''}"
             f"{' --activation-checkpointing' if checkpointed else ''}")
    return (f" ({', '.join(parts)})" if parts else ""), flags


CPU_NOTE = (" On a CPU the peak is modelled (`LiveTensorBytes` in tools/bench.py): every live tensor storage, weights "
            "included, as a GPU's `max_memory_allocated` counts them.")


def write_caspl_section(options, device: torch.device) -> None:
    """CasPL stage 1 at ``--caspl-batch``: cached against recomputed (:func:`measure_cached_against_recomputed`)."""
    started = time.time()
    student, teacher, bf16 = _clips(options, device)
    names = classnames(10)
    learner = vlprompt.build_learner("caspl_boost", student, names, teacher=teacher,
                                     activation_checkpointing=options.activation_checkpointing).to(device).train()
    teacher_bytes = sum(t.numel() * t.element_size() for t in _tensors(teacher.model))

    def resident() -> list[torch.Tensor]:
        return [*_tensors(student.model, teacher.model, learner),
                *([] if learner._teacher_text is None else [learner._teacher_text])]
    measured = measure_cached_against_recomputed(learner, device, bf16, options.caspl_batch, resident)
    ratio = measured[True]["total"] / measured[False]["total"]
    setting, flags = _setting(options, device, bf16)
    lines = [CASPL_HEADING + setting, "",
             f"`python tools/bench.py --caspl-memory{flags}` ({describe_machine(device)}; torch {torch.__version__}; "
             f"student {options.model}, teacher {options.teacher}, random init; batch {options.caspl_batch}, "
             f"{len(names)} classes, {'bf16 autocast, frozen weights held in bf16' if bf16 is not None else 'fp32'}"
             f"{'; the student recomputes its image-tower blocks in backward' if options.activation_checkpointing else ''}"
             f"; {(time.time() - started) / 60:.1f} min): one stage-1 training step (forward and backward) with the "
             "teacher's image features read from the cache and the teacher off the device, as a fit on a GPU runs "
             "it, against the same step computing them with the teacher on the device."
             + ("" if device.type == "cuda" else CPU_NOTE), "", *_table(measured, device.type == "cuda")]
    lines += ["", f"Target: cached at most {CASPL_MEMORY_TARGET:g}x recomputed: "
              f"{'met' if ratio <= CASPL_MEMORY_TARGET else 'not met'} ({ratio:.3f}x). A recomputed teacher adds "
              f"its weights ({mb(teacher_bytes)} MB here), its forward's transient activations (under no_grad, "
              "freed layer by layer: autograd keeps nothing of it) and its compute (the time row). The rest of the "
              "peak is the same in both steps: the student's weights and the activations its deep prompts keep for "
              "backward through both towers, which `activation_checkpointing: true` shrinks.", ""]
    replace_section(options.out, lines[0], lines)


def write_promptkd_section(options, device: torch.device) -> None:
    """PromptKD's student at each ``--promptkd-batch`` with a promptsrc teacher on ``--teacher`` (random prompts):
    cached against recomputed (:func:`measure_cached_against_recomputed`); the teacher that leaves the device is its
    CLIP and its prompts."""
    import vlprompt.learners.checkpoint as checkpoint_module

    started = time.time()
    student, teacher_clip, bf16 = _clips(options, device)
    names = classnames(10)
    teacher = vlprompt.build_learner("promptsrc", clip=teacher_clip, classnames=names).to(device)
    path = Path(tempfile.mkdtemp(prefix="vlprompt-bench-")) / "teacher.ckpt"
    checkpoint = {"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}
    teacher.on_save_checkpoint(checkpoint)  # the learner's own record, as a fit writes it
    torch.save(checkpoint, path)
    teacher_bytes = sum(t.numel() * t.element_size() for t in _tensors(teacher_clip.model, teacher))
    load = checkpoint_module.load_learner  # the teacher on these weights, not on a second random copy
    checkpoint_module.load_learner = lambda file, **kw: load(file, clip=teacher_clip)
    try:
        for batch in options.promptkd_batch:
            teacher_clip.to(device)
            learner = vlprompt.build_learner("promptkd", clip=student, classnames=names, teacher_checkpoint=str(path),
                                             activation_checkpointing=options.activation_checkpointing)
            learner = learner.to(device).train()
            learner.move_teacher(device)
            learner.text_features()  # every class's text features, once, as at the start of a fit
            loaded = learner.teacher.learner(device)

            def resident() -> list[torch.Tensor]:
                return _tensors(student.model, teacher_clip.model, loaded, learner)
            measured = measure_cached_against_recomputed(learner, device, bf16, batch, resident)
            setting, flags = _setting(options, device, bf16)
            lines = [f"{PROMPTKD_HEADING}, batch {batch}{setting}", "",
                     f"`python tools/bench.py --promptkd-memory --promptkd-batch {batch}{flags}` "
                     f"({describe_machine(device)}; torch {torch.__version__}; student {options.model}, teacher "
                     f"promptsrc on {options.teacher}, random init; {len(names)} classes, "
                     f"{'bf16 autocast, frozen weights held in bf16' if bf16 is not None else 'fp32'}; "
                     f"{(time.time() - started) / 60:.1f} min with the batches before): one student training step "
                     "(forward and backward) with the teacher's image features read from the cache and the teacher "
                     "(its CLIP and prompts) off the device, as a fit runs it when augmentation is off, against the "
                     "same step computing them with the teacher on the device (the reference's way)."
                     + ("" if device.type == "cuda" else CPU_NOTE), "", *_table(measured, device.type == "cuda"),
                     "", f"A recomputed teacher adds its weights ({mb(teacher_bytes)} MB here), its prompted image "
                     "tower's transient activations (under no_grad) and its compute (the time row).", ""]
            replace_section(options.out, lines[0], lines)
    finally:
        checkpoint_module.load_learner = load
