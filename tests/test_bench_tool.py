"""tools/bench.py's shared measures (tools/benchmarks/common.py): the memory model for a CPU (the peak of live tensor
storages, as a GPU's allocator counts them) and the report's sections; and that every measurement family runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
from benchmarks import common as bench  # noqa: E402


def test_live_bytes_count_allocations_until_their_last_tensor_dies():
    weights = torch.randn(1000)  # 4,000 bytes, resident before the mode
    outside = torch.randn(500)  # not resident: a view or an in-place result of it allocates nothing
    with bench.LiveTensorBytes([weights, weights[10:]]) as live:  # a storage counts once however many views
        assert live.peak == 4000
        doubled = weights * 2
        shifted = doubled + 1
        assert live.live == 12000
        del doubled
        view = shifted.view(10, 100)
        view.mul_(2)
        outside.view(5, 100).add_(1)
        del shifted
        assert live.live == 8000  # the view still holds the storage
        del view
        assert live.live == 4000
        big = torch.empty(3000)
    assert (live.peak, live.live) == (16000, 16000)
    del big


def test_backward_allocations_and_gradients_are_counted():
    layer = torch.nn.Linear(128, 256)
    inputs = torch.randn(64, 128, requires_grad=True)
    resident = [inputs, layer.weight, layer.bias]
    with bench.LiveTensorBytes(resident) as live:
        loss = layer(inputs).relu().sum()
        loss.backward()
    gradients = sum(t.grad.numel() * 4 for t in resident)
    assert live.live == sum(t.numel() * 4 for t in resident) + gradients + 4  # + the scalar loss
    assert live.peak >= live.live + 64 * 256 * 4  # the output's gradient was alive while the layer's were made


def test_a_section_is_replaced_in_its_place(tmp_path):
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nold b\n")
    bench.replace_section(report, "## A", ["## A", "", "new a", ""])
    bench.replace_section(report, "## C", ["## C", "", "c", ""])
    bench.replace_section(report, "## B", ["## B", "", "new b", ""])
    assert report.read_text() == "# Benchmarks\n\n## A\n\nnew a\n\n## B\n\nnew b\n\n## C\n\nc\n"


@pytest.mark.slow
def test_the_shared_prefix_measurement_runs_with_its_tuning_passed_to_the_clip(tmp_path):
    """A measurement family end to end on a small CLIP: the prefix is shared from 2 prompts on the measured CLIP
    (passed in, no module constant changed), so 4 classes are measured both ways."""
    out = tmp_path / "bench.md"
    result = subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--shared-prefix", "--model", "ViT-B-32",
                             "--classes", "4", "--repeats", "1", "--batch", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = out.read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 4 | 5 / "))  # SOT + 4 context tokens
    flop_ratio = float(row.rstrip(" |").rsplit("|", 1)[1].strip().rstrip("x"))
    assert flop_ratio < 0.9, row  # the prefix was encoded once: the tuning reached the CLIP
    assert "The learners share from 16 prompts on" in table


@pytest.mark.slow
def test_the_promptkd_memory_comparison_offloads_its_teacher_and_keeps_the_step_working(tmp_path):
    """PromptKD's student step with the teacher cached and moved off (to the meta device on a CPU) runs without
    reading the teacher, and holds less than the step that recomputes it."""
    out = tmp_path / "bench.md"
    result = subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--promptkd-memory", "--model", "ViT-B-32",
                             "--teacher", "ViT-B-16", "--promptkd-batch", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    table = out.read_text()
    assert "## PromptKD student: cached teacher, batch 2" in table
    row = next(line for line in table.splitlines() if line.startswith("| peak of live tensors in all"))
    assert float(row.rstrip(" |").rsplit("|", 1)[1].strip().rstrip("x")) < 0.7, row


def run_bench(tmp_path: Path, *args: str) -> str:
    """``tools/bench.py ARGS`` into a report of its own; the report's text."""
    out = tmp_path / "bench.md"
    result = subprocess.run([sys.executable, str(TOOLS / "bench.py"), *args, "--out", str(out)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return out.read_text()


@pytest.mark.slow
def test_the_label_space_measurement_holds_chunked_memory_flat_as_classes_grow(tmp_path):
    """CoOp's step at 200 and 800 classes on the toy CLIP: in chunks of 100 the peak barely grows (only the per-class
    buffers and features do); all at once it grows with the classes."""
    table = run_bench(tmp_path, "--label-space", "--model", "vlprompt-tiny", "--pretrained", "toy", "--classes", "200",
                      "800", "--class-chunk", "100", "--batch", "8", "--repeats", "1")
    rows = [line for line in table.splitlines() if line.startswith(("| 200 |", "| 800 |"))]
    peaks = [[float(cell.replace(",", "")) for cell in row.strip("| ").split(" | ")[2::2]] for row in rows]
    (chunked_200, whole_200), (chunked_800, whole_800) = peaks
    assert whole_800 / whole_200 > 2.5 and chunked_800 / chunked_200 < 1.5, rows


@pytest.mark.slow
def test_the_sweep_projection_times_steps_and_sums_the_tables_hours(tmp_path):
    table = run_bench(tmp_path, "--sweep-projection", "--model", "vlprompt-tiny", "--pretrained", "toy", "--repeats", "1",
                      "--gpu-eval-batch", "8")
    assert "| ImageNet | 500 |" in table
    total = next(line for line in table.splitlines() if line.startswith("| all 11 x 3 seeds |"))
    assert total.count("|") == table.splitlines()[[i for i, line in enumerate(table.splitlines())
                                                   if line.startswith("| data set |")][0]].count("|")
    assert "coop: batch 32, 200 epochs" in table and "promptsrc: batch 4, 20 epochs" in table


def test_projected_hours_count_steps_epochs_and_test_images():
    from benchmarks import sweep_throughput as sweep

    steps = {name: 0.01 for name in sweep.BENCHMARK_SHAPES}
    evaluation = {name: 0.001 for name in sweep.BENCHMARK_SHAPES}
    hours = sweep.projected_hours(steps, evaluation, batch=32, epochs=10)
    # DTD: 24 base classes x 16 shots = 384 images, 12 steps per epoch; 1,692 test images; 3 seeds.
    assert hours["DTD"] == pytest.approx(3 * (12 * 10 * 0.01 + 1692 * 0.001) / 3600)
