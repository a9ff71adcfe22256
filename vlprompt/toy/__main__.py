"""``python -m vlprompt.toy [ROOT] [--names ...]``: write the toy data sets (default ``data/toy``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vlprompt.toy.world import CAPTION_CORPUS, TOY_DATASETS as DATASETS, ensure_toy_dataset, write_caption_corpus


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m vlprompt.toy", description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="data/toy", help="directory that receives one folder per data set")
    parser.add_argument("--names", nargs="+", default=list(DATASETS), metavar="NAME",
                        help=f"data sets to write (default: all of {', '.join(DATASETS)})")
    parser.add_argument("--captions", type=int, default=0, metavar="N",
                        help="also write N captioned images of the toy world (ToyCaptions: GRAM's meta-training "
                             "corpus for `vlprompt meta-init`)")
    options = parser.parse_args()
    unknown = [n for n in options.names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown toy data sets {unknown}; choose from {', '.join(DATASETS)}")
    for name in options.names:
        started = time.time()
        path = ensure_toy_dataset(name, options.root)
        print(f"{name:22s} {len(DATASETS[name].classes()):3d} classes  {path}  ({time.time() - started:.1f} s)")
    if options.captions:
        started = time.time()
        path = write_caption_corpus(Path(options.root) / CAPTION_CORPUS, options.captions)
        print(f"{CAPTION_CORPUS:22s} {options.captions:5d} captioned images  {path}  ({time.time() - started:.1f} s)")
    sys.exit(0)


if __name__ == "__main__":
    main()
