"""``vlprompt data check``: a data set checked before any training, and its split built from class folders.

    vlprompt data check --config configs/data/DTD.yaml --data.root /data/dtd
    vlprompt data check --config configs/data/DTD.yaml --build-split

It reads the data section of the config files (later files and ``--data.X`` options win) and checks, in order, what
training would trip over: the data set's folder, its image folder, its split file (present, in CoOp's format, for
this data set and not another), every listed image (present and decodable, with a progress bar), and the class
counts per split. Each problem is printed with its fix; the status is 1 when there is one. ``--build-split`` builds
a missing split file as the protocol does (50/20/30 per class from class folders, or the official lists), under a
name of its own for data sets whose paper publishes one; an existing file is never replaced.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from vlprompt.data.benchmarks import BENCHMARKS, Benchmark, class_folders, get_benchmark, split_file_path
from vlprompt.data.images import CHECK_CHUNK, check_many
from vlprompt.data.splits import (
    PREPARATION_NOTES, SPLITS, Item, images_per_class, read_split_file, write_split_file)
from vlprompt.errors import ConfigError

#: The data options the check reads (from the config files and ``--data.X``).
DATA_KEYS = ("root", "dataset", "split_file", "image_dir")
#: At most this many examples are named per problem.
SHOWN = 3


@dataclass
class DataCheck:
    """What the check found: lines to show, and problems (each says what is wrong and how to fix it)."""

    name: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: Images per class, per split, when the split file could be read.
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def data_options(config_files: Sequence[Path], overrides: Optional[dict] = None,
                 keys: Sequence[str] = DATA_KEYS) -> dict:
    """The ``keys`` of the data section of ``config_files`` (later files win), with ``overrides`` over it."""
    data: dict = {}
    for path in config_files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; the shipped data configs are in configs/data")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML ({' '.join(str(err).split())[:160]})") \
                from None
        if not isinstance(content, dict):
            raise ConfigError(f"config file {str(path)!r} must be a mapping of keys (data:, ...)")
        section = content.get("data") or {}
        data.update({key: section[key] for key in keys if key in section})
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    if not data.get("root"):
        raise ConfigError("no data.root: give a data config (--config configs/data/<Name>.yaml) or --data.root")
    return data


def _layout(benchmark: Optional[Benchmark], image_dir: str, split_file: str) -> str:
    if benchmark is None:
        return f"<root>/{image_dir}/ (the split file's relpaths start there) and <root>/{split_file}"
    return (f"{benchmark.name} lives in a folder named {benchmark.directory}/ holding {image_dir}/ and "
            f"{benchmark.split_file} (table in {PREPARATION_NOTES})")


def _other_data_set(split_name: str, benchmark: Optional[Benchmark]) -> Optional[Benchmark]:
    """The benchmark whose split file is called ``split_name``, when it is not ``benchmark``."""
    for other in BENCHMARKS.values():
        if split_name in (other.split_file, other.built_split_file) and other is not benchmark:
            if benchmark is None or split_name not in (benchmark.split_file, benchmark.built_split_file):
                return other
    return None


def build_split(root: Path, image_dir: Path, benchmark: Optional[Benchmark], path: Path) -> str:
    """Build the split the protocol would (``benchmark``'s own recipe; 50/20/30 per class from class folders for a
    folder of one's own) and write it to ``path``; what was done, as a line."""
    build = benchmark.build if benchmark is not None else class_folders()
    split = build(root, image_dir)
    write_split_file(path, split)
    sizes = ", ".join(f"{name} {len(split[name])}" for name in SPLITS)
    published = benchmark is not None and benchmark.published_split
    note = (f"; not {benchmark.split_file}, the published one: numbers from it are not comparable with published "
            "tables" if published else "")
    return f"built {path.name} ({sizes} images){note}"


def check_dataset(data: dict, build: bool = False, progress: bool = True, images: bool = True) -> DataCheck:
    """Check the data set ``data`` (its ``root``, ``dataset``, ``split_file``, ``image_dir``) as training will read it;
    with ``build``, build a missing split file first. ``images``: also open every listed image."""
    dataset = data.get("dataset")
    benchmark = get_benchmark(dataset) if dataset else None
    root = Path(str(data["root"])).expanduser()
    image_folder = str(data.get("image_dir") if data.get("image_dir") is not None
                       else benchmark.image_dir if benchmark else "images")
    report = DataCheck(dataset or root.name)
    split_name = data.get("split_file") or (benchmark.split_file if benchmark else "split.json")
    if not root.is_dir():
        report.problems.append(f"data set folder {str(root)!r} does not exist; {_layout(benchmark, image_folder, split_name)}"
                               f"; point data.root at it")
        return report
    image_dir = root / image_folder
    report.lines.append(f"folder {root}")
    if not image_dir.is_dir():
        report.problems.append(f"image folder {str(image_dir)!r} is missing; {_layout(benchmark, image_folder, split_name)}"
                               "; move the images there, or set data.image_dir to the folder that holds them")
    path = split_file_path(root, benchmark, data.get("split_file"))
    other = _other_data_set(path.name, benchmark)
    if other is not None:
        wanted = benchmark.split_file if benchmark else "your data set's own split file"
        report.problems.append(f"{path.name} is {other.name}'s split file, not {report.name}'s; use {wanted} "
                               "(data.split_file)")
        return report
    if not path.is_file():
        if build and image_dir.is_dir():
            try:
                report.lines.append(build_split(root, image_dir, benchmark, path))
            except ConfigError as err:
                report.problems.append(f"cannot build a split: {err}")
                return report
        else:
            report.problems.append(_missing_split(path, benchmark, image_dir))
            return report
    elif build:
        report.lines.append(f"--build-split: {path.name} exists and is kept (never replaced); delete it to build "
                            "another")
    try:
        split = read_split_file(path)
    except ConfigError as err:
        report.problems.append(str(err))
        return report
    published = benchmark is not None and benchmark.published_split and path.name == benchmark.split_file
    built = benchmark is not None and benchmark.built_here(path.name)
    report.lines.append(f"split file {path.name}" + (" (the published one)" if published else
                                                     " (built here: not the published one)" if built else ""))
    _count(report, split, benchmark)
    if image_dir.is_dir() and images:
        _check_listed_images(report, image_dir, split, path.name, progress)
    return report


def _missing_split(path: Path, benchmark: Optional[Benchmark], image_dir: Path) -> str:
    if benchmark is None:
        return (f"split file {str(path)!r} is missing; write one in CoOp's format ({PREPARATION_NOTES}), or run with "
                "--build-split to build a 50/20/30 split from the class folders under "
                f"{str(image_dir)!r}")
    if not benchmark.published_split:
        return (f"split file {path.name} is missing: it is built from {benchmark.name}'s official lists at the first "
                "run, or now with --build-split")
    return (f"split file {benchmark.split_file} is missing from {str(path.parent)!r}; download CoOp's (linked in "
            f"{PREPARATION_NOTES}) for numbers comparable with published tables, or run with --build-split to build "
            f"one from {benchmark.name}'s own files (not the published split)")


def _count(report: DataCheck, split: dict[str, list[Item]], benchmark: Optional[Benchmark]) -> None:
    for name in SPLITS:
        report.counts[name] = per_class = images_per_class(split[name])
        if per_class:
            low = min(per_class.items(), key=lambda pair: pair[1])
            report.lines.append(f"{name}: {len(split[name])} images, {len(per_class)} classes, "
                                f"{low[1]} to {max(per_class.values())} per class (fewest: {low[0]!r})")
        else:
            report.lines.append(f"{name}: empty")
    test_only = benchmark is not None and benchmark.test_only
    every = {item.classname for items in split.values() for item in items}
    for name in (("test",) if test_only else SPLITS):
        lacking = sorted(every - set(report.counts[name]))
        if lacking:
            report.problems.append(f"{len(lacking)} classes have no {name} images (first: {lacking[0]!r}); every "
                                   f"class needs some in each split: rebuild the split (--build-split after moving "
                                   "this one away)")
    if not test_only and every:
        base = math.ceil(len(every) / 2)
        report.lines.append(f"base-to-novel: {base} base and {len(every) - base} novel classes")


def _check_listed_images(report: DataCheck, image_dir: Path, split: dict[str, list[Item]], listed_in: str,
                         progress: bool) -> None:
    """Every listed image present and decodable; a split that lists mostly absent folders is called out as
    probably another data set's."""
    relpaths = sorted({item.path for items in split.values() for item in items})
    missing = [p for p in relpaths if not (image_dir / p).is_file()]
    if missing:
        folders = sorted({p.split("/", 1)[0] for p in missing if "/" in p})
        absent = [f for f in folders if not (image_dir / f).is_dir()]
        if len(missing) > len(relpaths) // 2 and absent:
            report.problems.append(
                f"{len(missing)} of {len(relpaths)} images listed in {listed_in} are missing, under folders that "
                f"{str(image_dir)!r} lacks ({', '.join(absent[:SHOWN])}{', ...' if len(absent) > SHOWN else ''}): "
                "the split file is probably another data set's, or data.image_dir names the wrong folder")
            return
        report.problems.append(f"{len(missing)} of {len(relpaths)} images listed in {listed_in} are missing under "
                               f"{str(image_dir)!r} ({', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''}"
                               f"); complete the download or remove them from {listed_in}")
    absent_files = set(missing)
    present = [p for p in relpaths if p not in absent_files]
    problems = []
    from tqdm import tqdm

    with tqdm(total=len(present), desc=f"{report.name}: reading images", unit="img", leave=False, file=sys.stderr,
              disable=not (progress and sys.stderr.isatty())) as bar:
        for start in range(0, len(present), CHECK_CHUNK * 8):
            chunk = present[start:start + CHECK_CHUNK * 8]
            problems += [(p, why) for p, why in zip(chunk, check_many([image_dir / p for p in chunk])) if why]
            bar.update(len(chunk))
    if problems:
        shown = "; ".join(f"{p}: {why}" for p, why in problems[:SHOWN])
        report.problems.append(f"{len(problems)} listed images cannot be read ({shown}{'; ...' if len(problems) > SHOWN else ''}"
                               f"); replace them or remove them from {listed_in}")
    report.lines.append(f"images: {len(present) - len(problems)} of {len(relpaths)} listed are present and readable")


def print_report(report: DataCheck) -> None:
    print(f"[data check] {report.name}")
    for line in report.lines:
        print(f"  {line}")
    for problem in report.problems:
        print(f"  PROBLEM: {problem}")
    print(f"  {'ok' if report.ok else f'{len(report.problems)} problem(s): fix them before training'}")


def main(argv: Sequence[str]) -> None:
    """``vlprompt data check ...``."""
    from vlprompt.command_line import OneLineArgumentParser
    from vlprompt.recipes import resolve_config

    parser = OneLineArgumentParser(prog="vlprompt data", description="Check a data set before training.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a data set's layout, split file and images",
                                description="Check a data set's folder, split file and every listed image; print "
                                            "class counts per split. Exit status 1 when something is wrong.")
    check.add_argument("--config", "-c", type=Path, action="append", required=True,
                       help="data YAML, e.g. configs/data/DTD.yaml (several compose, the last wins)")
    for key in DATA_KEYS:
        check.add_argument(f"--data.{key}", dest=key, help=f"override data.{key}")
    check.add_argument("--build-split", action="store_true",
                       help="build a missing split file as the protocol does (50/20/30 per class from class folders; "
                            "the official lists for ImageNet and FGVC-Aircraft); an existing one is kept")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    options = parser.parse_args(list(argv))
    data = data_options([resolve_config(path) for path in options.config],
                        {key: getattr(options, key) for key in DATA_KEYS})
    report = check_dataset(data, build=options.build_split, progress=not options.no_progress)
    print_report(report)
    if not report.ok:
        sys.exit(1)


def check_before_runs(data_configs: Sequence[Path], overrides: Sequence[str] = ()) -> None:
    """What the suite does before its first run: every data set checked (images included), a split file the first run
    would build from the data set's own files built now (as that run would, and saying so); the first problem is
    refused in one line that names the command showing all of them."""
    from vlprompt.command_line import option_values

    given = {key: (option_values(overrides, f"--data.{key}") or [None])[-1] for key in ("split_file", "image_dir")}
    for config in dict.fromkeys(Path(path) for path in data_configs):
        report = check_dataset(data_options([config], given), build=True)
        print(f"[suite] data set {report.name}: " + ("ok" if report.ok else "not ready"), flush=True)
        if not report.ok:
            raise ConfigError(f"data set {report.name} ({config}) is not ready: {report.problems[0]}"
                              f"{f' (and {len(report.problems) - 1} more)' if len(report.problems) > 1 else ''}; "
                              f"vlprompt data check --config {config} shows everything (--skip-data-check skips this)")
