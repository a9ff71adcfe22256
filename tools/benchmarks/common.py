"""What every measurement family shares: timing, memory models, FLOPs, the naive text baseline, the report's
sections and the machine's description."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
import weakref
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

REPO = Path(__file__).resolve().parents[2]
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


class LiveTensorBytes(TorchDispatchMode):
    """On a CPU, the peak bytes of live tensor storages while the mode is on, as a GPU's
    ``max_memory_allocated`` counts them: ``resident`` tensors (weights, inputs, caches: counted once per storage)
    plus every storage an operation allocates (forward, backward and recomputation alike), freed when its last
    tensor dies. An output sharing an input's storage (a view, an in-place result) allocates nothing. It leaves out
    what a GPU adds: the allocator's rounding and the libraries' workspaces. torch's own
    ``torch.distributed._tools.MemTracker`` would be the tool, but it refuses modules with frozen parameters."""

    def __init__(self, resident=()):
        super().__init__()
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in resident if t.device.type == "cpu"}
        self.live = self.peak = sum(storages.values())

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        allocated = {}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                if storage.nbytes() and storage.data_ptr() not in inputs:
                    allocated[storage.data_ptr()] = storage
        for storage in allocated.values():
            self.live += storage.nbytes()
            # Storages keep their Python object while alive, so this runs when the memory is released.
            weakref.finalize(storage, self._freed, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


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

    def encode(x):
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        return x[torch.arange(x.shape[0]), pool_index] @ model.text_projection
    # Weights held in bf16 compute in it, as the wrapper's own paths do.
    return F.normalize(clip.compute(encode, x), dim=-1)


def seconds_of(command: list[str], repeats: int, env: dict | None = None) -> float:
    """Median wall time of ``command`` in a fresh process (Python's own start included)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def replace_section(out: Path, heading: str, lines: list[str]) -> None:
    """Write ``lines`` (starting with ``heading``) as that section of ``out``, in its place when it is there
    already (at the end when not), keeping the rest of the file."""
    text = out.read_text() if out.is_file() else "# Benchmarks\n"
    section = "\n".join(lines).rstrip("\n") + "\n"
    start = text.find(heading + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n".join(lines))


def image_size(clip) -> int:
    size = clip.preprocess_cfg["size"]
    return size[0] if isinstance(size, (tuple, list)) else size


def flops(step) -> int:
    """Floating-point operations of one call of ``step`` in matrix products and convolutions (and attention
    kernels torch has a formula for), as ``torch.utils.flop_counter`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def kernel_seconds(step, device: torch.device, steps: int = 5) -> Optional[float]:
    """Seconds per call of ``step`` that the device spends in kernels and copies (the profiler's device events,
    summed); None on a CPU."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    busy_us = sum(event.time_range.elapsed_us() for event in profiler.events() if event.device_type == DeviceType.CUDA)
    return busy_us / 1e6 / steps


def host_syncs(step, device: torch.device, where: Optional[list[str]] = None) -> Optional[int]:
    """Host-device synchronisations in one call of ``step`` (torch's sync debug mode); None on a CPU. The Python
    line that caused each one is appended to ``where`` when given."""
    if device.type != "cuda":
        return None
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    if where is not None:
        where.extend(f"{w.filename}:{w.lineno}" for w in syncs)
    return len(syncs)


def or_none(measure, notes: list[str]):
    """``measure()``, or None with the reason added to ``notes`` (a profiler that cannot run loses one column)."""
    try:
        return measure()
    except Exception as error:
        notes.append(f"{getattr(measure, '__name__', 'a measurement')} failed: {type(error).__name__}: {error}")
        return None


def training_step_of(learner, images, labels, autocast_dtype: Optional[torch.dtype], device: torch.device):
    """One optimiser step as a fit takes it: forward under autocast, backward, SGD with momentum."""
    params = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    graphs = learner._compiled and learner.compile_mode in ("reduce-overhead", "max-autotune")

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = learner.training_loss(images, labels).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def describe_machine(device: torch.device) -> str:
    """The card, or the CPU and its threads, as each report names its machine."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def mb(value: int) -> str:
    return f"{value / 2**20:,.1f}"
