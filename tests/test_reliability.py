"""Faults and bad input a careful operator tries: each must end in a clear refusal, never a wrong number or lost work."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import vlprompt
from vlprompt.commands import main
from vlprompt.errors import user_error_message
from vlprompt.data import ImageSplitDataModule, Item, read_split_file
from vlprompt.data.images import check_images, read_rgb
from vlprompt.data.splits import cached_few_shot_split, write_split_file
from vlprompt.errors import ConfigError, UnreadableImageError
from vlprompt.eval.runlock import RunLock
from vlprompt.files import write_json_atomically

from conftest import REPO

CONFIGS = REPO / "configs"


def cli_args(learner: str, shapes: Path, runs: Path) -> list:
    return ["--config", CONFIGS / "learners" / f"{learner}.yaml", "--config", CONFIGS / "clip" / "tiny-random.yaml",
            "--config", CONFIGS / "data" / "toy" / "ToyShapes.yaml", "--data.root", shapes, "--data.shots", 4,
            "--data.batch_size", 8, "--data.num_workers", 0, "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", runs, "--seed_everything", 1]


def run_main(args, capsys) -> tuple[int, str]:
    """``vlprompt ARGS`` in this process: (exit status, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code or 0
    return code, capsys.readouterr().err


def last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("vlprompt: error:")]
    assert lines, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def checkpoints(shapes, tmp_path_factory) -> dict[str, Path]:
    """A CoOp (n_ctx 4) and a KgCoOp checkpoint, one epoch each."""
    runs = tmp_path_factory.mktemp("runs")
    paths = {}
    for learner in ("coop", "kgcoop"):
        with _no_exit():
            main([str(a) for a in ["fit", *cli_args(learner, shapes, runs), "--trainer.max_epochs", 1,
                                   "--trainer.logger.init_args.name", learner]])
        paths[learner] = next((runs / learner).rglob("last.ckpt"))
    return paths


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is SystemExit and not value.code


# -- 1. a checkpoint must agree with the configured learner and explicit overrides ------------------------------------
def test_checkpoint_of_another_learner_is_refused(shapes, checkpoints, tmp_path, capsys):
    code, err = run_main(["test", *cli_args("coop", shapes, tmp_path), "--ckpt_path", checkpoints["kgcoop"]], capsys)
    line = last_error_line(err)
    assert code == 2 and "'kgcoop'" in line and "'coop'" in line and "--model kgcoop" in line


def test_explicit_override_that_disagrees_with_the_checkpoint_is_refused(shapes, checkpoints, tmp_path, capsys):
    code, err = run_main(["test", *cli_args("coop", shapes, tmp_path), "--model.init_args.n_ctx", 8,
                          "--ckpt_path", checkpoints["coop"]], capsys)
    line = last_error_line(err)
    assert code == 2 and "n_ctx" in line and "8" in line and "4" in line


def test_matching_configuration_still_tests(shapes, checkpoints, tmp_path, capsys):
    code, err = run_main(["test", *cli_args("kgcoop", shapes, tmp_path), "--model.init_args.n_ctx", 4,
                          "--ckpt_path", checkpoints["kgcoop"]], capsys)
    assert code == 0, err[-2000:]


# -- 7. unreadable checkpoints: one line, from the CLI and from load_learner ------------------------------------------
def damaged_checkpoints(good: Path, directory: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {"missing": directory / "nothing.ckpt", "empty": directory / "empty.ckpt",
             "truncated": directory / "truncated.ckpt", "text": directory / "notes.ckpt",
             "foreign": directory / "foreign.ckpt"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("these are my notes\n")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, files["foreign"])
    return files


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "text", "foreign"])
def test_unreadable_checkpoints_give_one_line(kind, shapes, checkpoints, tmp_path, capsys):
    path = damaged_checkpoints(checkpoints["coop"], tmp_path)[kind]
    code, err = run_main(["test", *cli_args("coop", shapes, tmp_path), "--ckpt_path", path], capsys)
    assert code == 2 and str(path) in last_error_line(err)
    with pytest.raises(vlprompt.VlpromptError, match=str(path.name)):
        vlprompt.load_learner(path)


# -- 2. divergence is an error, never a result ------------------------------------------------------------------------
@pytest.mark.slow
def test_divergence_stops_the_fit_and_leaves_no_non_finite_checkpoint(shapes, tmp_path, capsys):
    code, err = run_main(["fit", *cli_args("coop", shapes, tmp_path), "--model.init_args.lr", 1e6,
                          "--model.init_args.warmup_epochs", 0, "--trainer.max_epochs", 3], capsys)
    assert code == 2 and "diverged" in last_error_line(err) and "--model.init_args.lr" in last_error_line(err)
    for path in tmp_path.rglob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values()), path


def test_a_non_finite_checkpoint_is_refused(checkpoints, tmp_path):
    checkpoint = torch.load(checkpoints["coop"], weights_only=True)
    checkpoint["state_dict"]["prompts.ctx"][0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    with pytest.raises(vlprompt.VlpromptError, match="non-finite"):
        vlprompt.load_learner(tmp_path / "nan.ckpt")


def test_diverged_suite_run_writes_no_metrics_and_report_refuses_non_results(shapes, tmp_path, capsys):
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n  num_workers: 0\n"
                    "  batch_size: 8\n")
    runs = tmp_path / "runs"
    code, err = run_main(["suite", "base2novel", "--learner", CONFIGS / "learners" / "coop.yaml", "--clip",
                          CONFIGS / "clip" / "tiny-random.yaml", "--data", data, "--seeds", 1, "--shots", 4,
                          "--runs", runs, "--", "--trainer.max_epochs", 2, "--model.init_args.lr", 1e6,
                          "--model.init_args.warmup_epochs", 0, "--trainer.enable_progress_bar", "false"], capsys)
    assert code == 2 and "diverged" in last_error_line(err)
    assert not list(runs.rglob("metrics.json"))

    # A metrics.json holding what is not an accuracy (hand-edited, or from an older version) is never a row.
    run = next(runs.rglob("shots4_seed1"))  # the unfinished run's directory
    (run / "metrics.json").write_text(json.dumps({"learner": "coop", "dataset": "ToyShapes", "seed": 1, "shots": 4,
                                                  "protocol": "base2novel", "base_acc": float("nan"),
                                                  "novel_acc": 20.0, "hm": float("nan")}))
    code, err = run_main(["report", runs], capsys)
    assert code == 2 and "metrics.json" in last_error_line(err) and "base_acc" in last_error_line(err)


# -- 7. damaged metrics.json, in the report and in a resumed suite ----------------------------------------------------
def test_damaged_metrics_file_is_named(shapes, tmp_path, capsys):
    run = tmp_path / "runs" / "base2novel" / "coop" / shapes.name / "shots4_seed1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"learner": "coop", "base_acc": 7')
    code, err = run_main(["report", tmp_path / "runs"], capsys)
    assert code == 2 and str(run / "metrics.json") in last_error_line(err)
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n")
    code, err = run_main(["suite", "base2novel", "--learner", CONFIGS / "learners" / "coop.yaml", "--data", data,
                          "--seeds", 1, "--shots", 4, "--runs", tmp_path / "runs"], capsys)
    assert code == 2 and str(run / "metrics.json") in last_error_line(err)


def test_storage_errors_are_one_line():
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.ckpt")
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = full
    assert "'/runs/x/last.ckpt'" in user_error_message(wrapped) and "space" in user_error_message(wrapped)
    assert user_error_message(KeyError("a bug")) is None


# -- 3. data that would silently give wrong prompts ----------------------------------------------------------------
def write_split(root: Path, entries: dict) -> Path:
    path = root / "split.json"
    path.write_text(json.dumps({"train": [], "val": [], "test": [], **entries}))
    return path


def test_empty_class_name_is_refused(tmp_path):
    path = write_split(tmp_path, {"train": [["a.png", 0, "cat"], ["b.png", 1, " "]]})
    with pytest.raises(ConfigError, match="empty class name"):
        read_split_file(path)


def test_one_label_with_two_names_is_refused(tmp_path):
    path = write_split(tmp_path, {"train": [["a.png", 0, "cat"]], "test": [["b.png", 0, "kitten"]]})
    with pytest.raises(ConfigError, match="'kitten'.*'cat'"):
        read_split_file(path)


@pytest.mark.parametrize("shots", [0, -2])
def test_zero_or_negative_shots_other_than_all_are_refused(shots, shapes):
    with pytest.raises(ConfigError, match="-1 for all"):
        ImageSplitDataModule(str(shapes), split_file="split_zhou_ToyShapes.json", shots=shots)


def test_sixteen_bit_greyscale_converts_faithfully(tmp_path):
    values = np.array([[0, 257 * 10, 65535], [257 * 128, 1000, 30000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "scan.png")
    with Image.open(tmp_path / "scan.png") as image:
        assert image.mode.startswith("I")
    rgb = np.asarray(read_rgb(tmp_path / "scan.png"))
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert rgb.shape == (2, 3, 3) and (rgb == expected[..., None]).all()


def test_unconvertible_modes_are_refused_by_name(tmp_path):
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(tmp_path / "depth.tiff")
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "counts.tiff")
    for name in ("depth.tiff", "counts.tiff"):
        with pytest.raises(UnreadableImageError, match=name):
            read_rgb(tmp_path / name)
    with pytest.raises(UnreadableImageError, match="depth.tiff"):
        check_images(tmp_path, ["depth.tiff"], "train")


def test_common_modes_convert_like_open_clip(tmp_path):
    base = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    for mode in ("L", "P", "RGBA", "CMYK", "1", "LA"):
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        base.convert(mode).save(path)
        with Image.open(path) as image:
            assert np.array_equal(np.asarray(read_rgb(path)), np.asarray(image.convert("RGB")))


# -- 4. relpaths that leave the image folder -------------------------------------------------------------------------
@pytest.mark.parametrize("relpath", ["../../../etc/hostname", "/etc/hostname", "a/../../outside.png"])
def test_paths_outside_the_image_folder_are_refused_before_reading(relpath, tmp_path):
    path = write_split(tmp_path, {"test": [["ok.png", 0, "cat"], [relpath, 0, "cat"]]})
    with pytest.raises(ConfigError, match="outside the image folder"):
        read_split_file(path)


# -- 5. damaged images: refused before training, named when they fail later ------------------------------------------
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    picture.save(folder / "good.jpg", quality=90)
    picture.save(folder / "good.png")
    jpeg = (folder / "good.jpg").read_bytes()
    (folder / "trailing.jpg").write_bytes(jpeg + b"camera maker notes")  # valid: PIL reads it
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "cut.png").write_bytes((folder / "good.png").read_bytes()[:-200])
    (folder / "garbage.jpg").write_bytes(b"\x00" * 100)
    return folder


def test_damaged_images_are_refused_before_training_and_valid_ones_pass(tmp_path):
    folder = image_folder(tmp_path)
    check_images(folder, ["good.jpg", "good.png", "trailing.jpg"], "train")
    for name in ("cut.jpg", "cut.png", "garbage.jpg"):
        with pytest.raises(UnreadableImageError, match=name):
            check_images(folder, ["good.jpg", name], "train")


def test_data_module_checks_images_at_setup(shapes, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shapes, root)
    victim = sorted((root / "images").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    module = ImageSplitDataModule(str(root), split_file="split_zhou_ToyShapes.json", shots=-1, num_workers=0)
    with pytest.raises(UnreadableImageError, match=victim.name):
        module.setup("fit")
        module.setup("test")


def test_an_image_that_fails_later_is_named_even_from_a_worker(shapes, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(shapes, root)
    module = ImageSplitDataModule(str(root), split_file="split_zhou_ToyShapes.json", shots=-1, num_workers=0,
                                  image_size=32)
    module.setup("test")
    victim = root / "images" / module.split["test"][0].path
    victim.write_bytes(b"\x89PNG broken")  # damaged after the check
    loader = DataLoader(module.datasets["test"], batch_size=4, num_workers=1)
    with pytest.raises(UnreadableImageError) as info:
        next(iter(loader))
    line = user_error_message(info.value)
    assert victim.name in line and "\n" not in line


# -- 8. files for others to read; no temporaries left by interrupted writes --------------------------------------------
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_split_and_few_shot_files_are_readable_by_others_and_stale_temporaries_removed(tmp_path):
    old_mask = os.umask(0o022)
    try:
        split = {"train": [Item(f"{i}.png", i % 2, f"c{i % 2}") for i in range(8)], "val": [], "test": []}
        path = tmp_path / "split.json"
        leftover = tmp_path / f".split.json.tmp-{socket.gethostname()}-pid{dead_pid()}-abc"
        leftover.write_text("{half")
        assert write_split_file(path, split)
        assert (path.stat().st_mode & 0o777) == 0o644
        assert not leftover.exists()
        cached_few_shot_split(read_split_file(path), 2, 1, path)
        cache = next((tmp_path / "split_fewshot").glob("*.json"))
        assert (cache.stat().st_mode & 0o777) == 0o644
        live = tmp_path / f".other.json.tmp-{socket.gethostname()}-pid{os.getpid()}-abc"
        live.write_text("{")
        write_json_atomically(tmp_path / "other.json", {})
        assert live.exists()  # a writer that is still running keeps its temporary
    finally:
        os.umask(old_mask)


# -- 6. run ownership ----------------------------------------------------------------------------------------------------
def test_run_lock_is_exclusive_and_released(tmp_path):
    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    assert first.acquire() and not second.acquire()
    assert f"pid {os.getpid()}" in second.describe_owner()
    first.release()
    assert second.acquire()
    second.release()
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.slow
def test_a_lock_file_left_by_a_dead_process_is_taken_over(shapes, tmp_path, capsys):
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n  num_workers: 0\n"
                    "  batch_size: 8\n")
    run = tmp_path / "runs" / "base2novel" / "zeroshot" / shapes.name / "shots0_seed1"  # zero-shot: 0 shots
    run.mkdir(parents=True)
    (run / "half-written.txt").write_text("interrupted")
    (run.parent / "shots0_seed1.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    main(["suite", "base2novel", "--learner", str(CONFIGS / "learners" / "zeroshot.yaml"), "--clip",
          str(CONFIGS / "clip" / "tiny-random.yaml"), "--data", str(data), "--seeds", "1", "--shots", "4",
          "--runs", str(tmp_path / "runs"), "--", "--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out
    assert "taking over" in out and (run / "metrics.json").is_file() and not (run / "half-written.txt").exists()


SUITE_SCRIPT = textwrap.dedent("""
    import sys
    from vlprompt.commands import main
    main(sys.argv[1:])
""")


@pytest.mark.slow
def test_two_suites_on_one_runs_directory_share_the_work(shapes, tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text(f"data:\n  root: {shapes}\n  split_file: split_zhou_ToyShapes.json\n  num_workers: 0\n"
                    "  batch_size: 8\n")
    args = [sys.executable, "-c", SUITE_SCRIPT, "suite", "base2novel", "--learner", str(CONFIGS / "learners" / "coop.yaml"),
            "--clip", str(CONFIGS / "clip" / "tiny-random.yaml"), "--data", str(data), "--seeds", "1", "2", "3", "4",
            "--shots", "4", "--runs", str(tmp_path / "runs"), "--", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false"]
    processes = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    ran = [line for out, _ in outputs for line in out.splitlines()
           if line.startswith("[suite] run ") and "(starting)" in line]
    assert len(ran) == 4 and len(set(ran)) == 4  # every configuration run once, by one of the two
    assert len(list((tmp_path / "runs").rglob("metrics.json"))) == 4
    assert not list((tmp_path / "runs").rglob("*.lock"))
    for out, _ in outputs:
        assert "4 configurations finished" in out


# -- 7. an output directory that cannot be written --------------------------------------------------------------------
def _namespace_mount_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _namespace_mount_works(), reason="needs unshare and mount in a user namespace")
@pytest.mark.parametrize("state", ["read-only", "full"])
def test_read_only_or_full_output_directory_is_one_line(state, shapes, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    prepare = {"read-only": f"mount -o remount,ro {out}",
               "full": f"dd if=/dev/zero of={out}/filler bs=4k 2>/dev/null; true"}[state]
    command = " ".join(map(str, [sys.executable, "-m", "vlprompt.cli", "fit", *cli_args("coop", shapes, out),
                                 "--trainer.max_epochs", 1]))
    script = f"mount -t tmpfs -o size=256k tmpfs {out} && {prepare} && {command}"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_error_line(result.stderr)
    assert str(out) in line and ("Read-only" in line or "No space" in line)
