#!/usr/bin/env python
"""How long the start-up image check takes on a large data set, side by side with the alternatives.

    python tools/bench_image_check.py                 # 100,000 generated files; about 3 minutes on 2 cores
    python tools/bench_image_check.py --files 20000

Writes N small JPEG and PNG files (10% of them cut short or garbage, spread over the list) into a temporary
folder, then times on the same files, in one run: the existence check vlprompt did before (``is_file``), the
check it does now (``vlprompt.data.images.check_images``: header, end marker, a full decode only where the end
marker is missing), and a full decode of every file (PIL ``load``), the naive way to be sure. Also checks that
the header check finds exactly the damaged files. Writes ``docs/benchmarks-image-check.md``.
"""

from __future__ import annotations

import argparse
import io
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vlprompt.data.images import CHECK_THREADS, check_images, check_many  # noqa: E402


def encoded_images() -> dict[str, bytes]:
    """A few distinct small images in both formats, and damaged versions of them."""
    rng = np.random.default_rng(0)
    files = {}
    for i in range(4):
        picture = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
        for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
            buffer = io.BytesIO()
            picture.save(buffer, fmt)
            files[f"{i}.{suffix}"] = buffer.getvalue()
    files["cut.jpg"] = files["0.jpg"][: len(files["0.jpg"]) // 2]
    files["cut.png"] = files["0.png"][:-100]
    files["garbage.jpg"] = b"\x00" * 512
    return files


def write_files(folder: Path, count: int) -> tuple[list[str], set[str]]:
    variants = encoded_images()
    good = [name for name in variants if name[0].isdigit()]
    bad = [name for name in variants if not name[0].isdigit()]
    paths, damaged = [], set()
    for index in range(count):
        sub = folder / f"{index // 1000:03d}"
        if index % 1000 == 0:
            sub.mkdir(parents=True)
        source = bad[index % len(bad)] if index % 10 == 9 else good[index % len(good)]
        relpath = f"{sub.name}/{index}.{source.rsplit('.', 1)[1]}"
        (folder / relpath).write_bytes(variants[source])
        paths.append(relpath)
        if source in bad:
            damaged.add(relpath)
    return paths, damaged


def full_decode(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001
        return False


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks-image-check.md",
                        help="Markdown report (default: runs/; the tracked docs/benchmarks-image-check.md is rewritten "
                             "only when named here)")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vlprompt-image-check-"))
    try:
        write_seconds, (paths, damaged) = timed(lambda: write_files(folder, options.files))
        good = [p for p in paths if p not in damaged]
        exists_s, _ = timed(lambda: [(folder / p).is_file() for p in paths])
        ours_s, _ = timed(lambda: check_images(folder, good, "train"))
        found_s, found = timed(lambda: {p for p, why in zip(paths, check_many([folder / p for p in paths])) if why})
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            decode_s, decoded = timed(lambda: list(pool.map(full_decode, [folder / p for p in paths], chunksize=512)))
        assert found == damaged, "the header check must find exactly the damaged files"
        assert {p for p, ok in zip(paths, decoded) if not ok} == damaged
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        ("existence only (`is_file`, before)", exists_s),
        ("vlprompt check, valid files (`check_images`)", ours_s),
        (f"vlprompt check, with {len(damaged):,} damaged files found", found_s),
        ("full decode of every file (PIL `load`)", decode_s),
    ]
    lines = [
        "# Start-up image check", "", "`python tools/bench_image_check.py" +
        (f" --files {options.files}`" if options.files != 100_000 else "`"), "",
        f"Machine: {platform.machine()}, {CHECK_THREADS} reader threads; {options.files:,} files of 96x96 pixels "
        f"(JPEG and PNG, {len(damaged):,} cut short or garbage) on the local disk, written in {write_seconds:.0f} s; "
        "the operating system's file cache is warm (the files were just written), so this measures the check's own "
        "cost; a cold network file system adds its per-file latency to every row alike.", "",
        "| check | seconds | per 1,000 files (ms) | vs full decode |", "|---|---:|---:|---:|",
    ]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.2f} | {seconds * 1e6 / options.files:.0f} | "
                     f"{seconds / decode_s:.2f}x |")
    lines += ["", "The header check found exactly the damaged files, as the full decode did."]
    options.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
