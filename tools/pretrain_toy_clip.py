#!/usr/bin/env python
"""Pretrain the tiny toy-world CLIP (``vlprompt-tiny``) and record what it reaches.

    python tools/pretrain_toy_clip.py --force        # about 9 minutes on 2 CPU cores
    python tools/pretrain_toy_clip.py --arch vlprompt-bert-tiny --force   # the toy biomedical CLIP

Writes ``vlprompt/clip/pretrained/vlprompt-tiny-toy.safetensors`` (fp16), its ``.sha256`` and a
``vlprompt-tiny-toy.json`` record (training settings, sha256, zero-shot accuracy on every toy data set and
on the small check set the test suite re-measures). The run is deterministic for its seed and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import logging  # noqa: E402

import torch  # noqa: E402

from vlprompt.clip.frozen import shipped_weights_path  # noqa: E402
from vlprompt.clip.toy_architectures import TOY_BERT, write_toy_bert_files  # noqa: E402
from vlprompt.toy.medical import medical_vocabulary  # noqa: E402
from vlprompt.eval.toy import CHECK_SETS, WORLD_CHECK_SETS, zero_shot_accuracies  # noqa: E402
from vlprompt.toy.pretrain import (ARCH_WORLDS, TOY_ARCH, TOY_BERT_ARCH, TOY_TEACHER_ARCH, PretrainConfig,  # noqa: E402
                                   pretrain_toy_clip)


def main() -> None:
    defaults = PretrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--style-mix", choices=("world", "even"), default=defaults.style_mix,
                        help="styles drawn as the world's pretraining mix (photos 60%%) or evenly (the toy teacher)")
    parser.add_argument("--degrade", type=float, default=defaults.degrade,
                        help="share of training images noised or blurred, captions unchanged (default 0)")
    parser.add_argument("--arch", choices=(TOY_ARCH, TOY_TEACHER_ARCH, TOY_BERT_ARCH), default=TOY_ARCH,
                        help=f"{TOY_ARCH} (the student), {TOY_TEACHER_ARCH} (the toy teacher of CasPL) or "
                             f"{TOY_BERT_ARCH} (BERT text tower and timm ViT, on the toy medical world)")
    parser.add_argument("--out", type=Path, help="default: the shipped file of --arch (vlprompt/clip/pretrained/)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "toy", help="where toy data sets are written")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="keep the checkpoint at --out and its training record; re-measure the accuracies")
    options = parser.parse_args()
    if options.out is None:
        options.out = shipped_weights_path(options.arch, "toy", must_exist=False)
    if options.out.suffix != ".safetensors":  # checked before minutes of training, not after
        sys.exit(f"pretrain_toy_clip: error: --out {options.out} must end in .safetensors (the weights are written "
                 "in that format, and loaders pick the reader by the suffix)")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    record_path = options.out.with_suffix(".json")
    if options.evaluate_only:
        if not record_path.is_file():
            sys.exit(f"pretrain_toy_clip: error: no training record {record_path}; train first")
        record = json.loads(record_path.read_text())
        write_record(options, record, record_path)
        return
    if options.out.exists() and not options.force:
        sys.exit(f"pretrain_toy_clip: error: {options.out} exists; pass --force to replace it or --out elsewhere")

    if options.arch == TOY_BERT:  # its text tower's config and vocabulary are the project's own files
        print(f"wrote {write_toy_bert_files(medical_vocabulary())}")
    config = PretrainConfig(steps=options.steps, batch_size=options.batch_size, pool_size=options.pool_size,
                            lr=options.lr, seed=options.seed, arch=options.arch,
                            style_mix=options.style_mix, degrade=options.degrade)
    started = time.time()
    model = pretrain_toy_clip(config, report=lambda step, loss, seconds: print(
        f"step {step:5d}/{config.steps}  loss {loss:.3f}  {seconds:6.0f} s", flush=True))
    minutes = (time.time() - started) / 60

    from safetensors.torch import save_file

    options.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, options.out)
    digest = hashlib.sha256(options.out.read_bytes()).hexdigest()
    options.out.with_suffix(".sha256").write_text(f"{digest}  {options.out.name}\n")

    record = {
        "architecture": options.arch, "file": options.out.name, "sha256": digest, "bytes": options.out.stat().st_size,
        "train_minutes": round(minutes, 1), "torch_threads": config.threads, "config": asdict(config),
        "command": "python tools/pretrain_toy_clip.py " + " ".join(sys.argv[1:]),
    }
    print(f"\nwrote {options.out} ({record['bytes'] / 1e6:.1f} MB, sha256 {digest[:12]}...) in {minutes:.1f} min")
    write_record(options, record, record_path)


def write_record(options, record: dict, record_path: Path) -> None:
    """Measure zero-shot accuracy on every toy data set and on the check sets; write them into the record."""
    digest = hashlib.sha256(options.out.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        sys.exit(f"pretrain_toy_clip: error: {options.out} does not match its record's sha256; retrain it")
    accuracies = zero_shot_accuracies(str(options.out), options.data, arch=record["architecture"])
    world = ARCH_WORLDS[record["architecture"]]
    record.update(zero_shot_test_accuracy=accuracies["datasets"], check_set_accuracy=accuracies["check"],
                  check_sets={name: CHECK_SETS[name] for name in WORLD_CHECK_SETS[world]})
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    for name, acc in accuracies["datasets"].items():
        print(f"  zero-shot {name:22s} {acc:5.1f}")
    print(f"  check sets {accuracies['check']}")

if __name__ == "__main__":
    main()
