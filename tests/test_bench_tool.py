"""tools/bench.py's memory model for a CPU: the peak of live tensor storages, as a GPU's allocator counts them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SPEC = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "tools" / "bench.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


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
