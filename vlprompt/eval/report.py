"""``vlprompt report RUNS_DIR``: mean ± std over seeds of every ``metrics.json`` below a directory.

Rows are data sets, plus an average row per (protocol, learner, shots); for base-to-novel the average HM is
computed from the average base and novel accuracies, as the papers do. Tables are written as Markdown, CSV and
LaTeX. Runs copied together from several machines are simply more ``metrics.json`` files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from vlprompt.errors import ConfigError
from vlprompt.eval.accuracy import harmonic_mean
from vlprompt.eval.arguments import OneLineArgumentParser

AVERAGE = "Average"


#: What every metrics.json holds besides its accuracies.
REQUIRED_KEYS = ("learner", "dataset", "seed", "shots", "protocol")


def load_metrics(path: Path) -> dict:
    """One run's ``metrics.json``, or a one-line :class:`ConfigError` naming the file when it is damaged or holds
    something that is not an accuracy (a diverged run never writes one; a hand-edited or truncated file can)."""
    fix = "delete it to run that configuration again"
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{str(path)!r} is damaged ({type(err).__name__}: {str(err)[:80]}); {fix}") from None
    if not isinstance(metrics, dict) or any(key not in metrics for key in REQUIRED_KEYS):
        raise ConfigError(f"{str(path)!r} is damaged (it lacks {', '.join(REQUIRED_KEYS)}); {fix}")
    missing = [key for key in metric_keys(metrics["protocol"]) if key not in metrics]
    bad = [key for key in metric_keys(metrics["protocol"]) if key in metrics and not _is_accuracy(metrics[key])]
    if missing or bad:
        raise ConfigError(f"{str(path)!r} is damaged ({'no ' + ', '.join(missing) if missing else ''}"
                          f"{'; ' if missing and bad else ''}{', '.join(f'{k}={metrics[k]!r}' for k in bad)}"
                          f"{' is not an accuracy in 0..100' if bad else ''}); {fix}")
    return metrics


def _is_accuracy(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 100


def collect(runs_dir: Path) -> list[dict]:
    if not runs_dir.is_dir():
        raise ConfigError(f"runs directory {str(runs_dir)!r} does not exist")
    metrics = [load_metrics(p) for p in sorted(runs_dir.rglob("metrics.json"))]
    if not metrics:
        raise ConfigError(f"no metrics.json below {str(runs_dir)!r}; run `vlprompt suite` first")
    return metrics


def _summary(values: Sequence[float], ci: bool) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    result = {"mean": mean, "std": std, "n": len(values)}
    if ci:
        from scipy.stats import t

        result["ci95"] = t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return result


def aggregate(metrics: Sequence[dict], ci: bool = False) -> list[dict]:
    """One row per (protocol, learner, shots, source, data set) and an average row per (protocol, learner, shots,
    source). The transfer protocols' average leaves out the source data set, as the papers' tables do."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in metrics:
        groups[(m["protocol"], m["learner"], m["shots"], m.get("source"), m["dataset"])].append(m)
    rows = []
    for (protocol, learner, shots, source, dataset), runs in sorted(groups.items(), key=lambda g: str(g[0])):
        keys = metric_keys(protocol)
        row = {"protocol": protocol, "learner": learner, "shots": shots, "source": source, "dataset": dataset,
               "seeds": sorted(r["seed"] for r in runs)}
        row.update({key: _summary([r[key] for r in runs], ci) for key in keys})
        rows.append(row)
    averages = []
    by_setting: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["dataset"] != row["source"]:
            by_setting[(row["protocol"], row["learner"], row["shots"], row["source"])].append(row)
    for (protocol, learner, shots, source), dataset_rows in by_setting.items():
        if len(dataset_rows) < 2:
            continue
        average = {"protocol": protocol, "learner": learner, "shots": shots, "source": source, "dataset": AVERAGE,
                   "seeds": []}
        keys = ("base_acc", "novel_acc") if protocol == "base2novel" else ("acc",)
        for key in keys:
            average[key] = {"mean": statistics.fmean(r[key]["mean"] for r in dataset_rows), "std": None,
                            "n": len(dataset_rows)}
        if protocol == "base2novel":
            average["hm"] = {"mean": harmonic_mean(average["base_acc"]["mean"], average["novel_acc"]["mean"]),
                             "std": None, "n": len(dataset_rows)}
        averages.append(average)
    return rows + averages


def _cell(stat: dict, ci: bool, latex: bool = False) -> str:
    pm = r"$\pm$" if latex else "±"
    if stat["std"] is None:
        return f"{stat['mean']:.2f}"
    spread = stat.get("ci95") if ci else stat["std"]
    return f"{stat['mean']:.2f} {pm} {spread:.2f}"


def _columns(protocol: str) -> list[tuple[str, str]]:
    if protocol == "base2novel":
        return [("base_acc", "Base"), ("novel_acc", "Novel"), ("hm", "HM")]
    return [("acc", "Acc")]


def metric_keys(protocol: str) -> list[str]:
    """The metrics a run of ``protocol`` reports: ``base_acc``, ``novel_acc``, ``hm``, or ``acc``."""
    return [key for key, _ in _columns(protocol)]


#: Columns of :func:`table_rows` (and of ``report.csv``).
TABLE_COLUMNS = ["protocol", "learner", "source", "shots", "dataset", "seeds", "metric", "mean", "std", "ci95"]


def table_rows(rows: Sequence[dict]) -> list[list]:
    """One row per (aggregated row, metric) in :data:`TABLE_COLUMNS` order; ``std``/``ci95`` None if absent."""
    return [[r["protocol"], r["learner"], r["source"] or "", r["shots"], r["dataset"], " ".join(map(str, r["seeds"])),
             key, r[key]["mean"], r[key]["std"], r[key].get("ci95")] for r in rows for key in metric_keys(r["protocol"])]


def tables(rows: Sequence[dict], ci: bool = False) -> dict[str, str]:
    """``{"md": ..., "csv": ..., "tex": ...}`` for the aggregated rows."""
    md, tex = [], []
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(TABLE_COLUMNS)
    for protocol in sorted({r["protocol"] for r in rows}):
        columns = _columns(protocol)
        header = ["learner", "shots", "dataset", *(title for _, title in columns)]
        md += [f"### {protocol}", ""]
        if any(r["source"] for r in rows if r["protocol"] == protocol):
            md += ["Trained on the source data set (`from <source>`); the average row leaves the source out.", ""]
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        tex += [r"\begin{tabular}{lll" + "r" * len(columns) + "}", r"\toprule", " & ".join(header) + r" \\",
                r"\midrule"]
        protocol_rows = [r for r in rows if r["protocol"] == protocol]
        for r in protocol_rows:
            learner = f"{r['learner']} from {r['source']}" if r["source"] else r["learner"]
            cells = [learner, str(r["shots"]), r["dataset"], *(_cell(r[key], ci) for key, _ in columns)]
            md.append("| " + " | ".join(cells) + " |")
            tex_cells = [c.replace("_", r"\_") for c in cells[:3]] + [_cell(r[key], ci, latex=True)
                                                                    for key, _ in columns]
            tex.append(" & ".join(tex_cells) + r" \\")
        for *cells, mean, std, ci95 in table_rows(protocol_rows):
            writer.writerow([*cells, *("" if value is None else f"{value:.4f}" for value in (mean, std, ci95))])
        md.append("")
        tex += [r"\bottomrule", r"\end{tabular}", ""]
    return {"md": "\n".join(md), "csv": buffer.getvalue(), "tex": "\n".join(tex)}


def plots(rows: Sequence[dict], out: Path) -> list[Path]:
    """PNG plots: HM per data set and base vs novel (base-to-novel), accuracy against shots (few-shot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    b2n = [r for r in rows if r["protocol"] == "base2novel"]
    if b2n:
        learners = sorted({r["learner"] for r in b2n})
        datasets = sorted({r["dataset"] for r in b2n}, key=lambda d: (d == AVERAGE, d))
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(datasets)), 3))
        width = 0.8 / len(learners)
        for i, learner in enumerate(learners):
            hm = {r["dataset"]: r["hm"]["mean"] for r in b2n if r["learner"] == learner}
            ax.bar([j + i * width for j in range(len(datasets))], [hm.get(d, 0) for d in datasets], width,
                   label=learner)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=30, ha="right")
        ax.set_ylabel("HM (%)"), ax.legend(fontsize="small"), fig.tight_layout()
        written.append(out / "hm_per_dataset.png")
        fig.savefig(written[-1], dpi=120), plt.close(fig)

        fig, ax = plt.subplots(figsize=(4, 4))
        for learner in learners:
            points = [r for r in b2n if r["learner"] == learner and r["dataset"] != AVERAGE]
            ax.scatter([r["base_acc"]["mean"] for r in points], [r["novel_acc"]["mean"] for r in points], label=learner)
        ax.set_xlabel("Base accuracy (%)"), ax.set_ylabel("Novel accuracy (%)"), ax.legend(fontsize="small")
        fig.tight_layout()
        written.append(out / "base_vs_novel.png")
        fig.savefig(written[-1], dpi=120), plt.close(fig)
    few = [r for r in rows if r["protocol"] != "base2novel"]
    if few:
        fig, ax = plt.subplots(figsize=(4, 3))
        for (learner, dataset) in sorted({(r["learner"], r["dataset"]) for r in few}):
            points = sorted((r["shots"], r["acc"]["mean"]) for r in few if (r["learner"], r["dataset"]) == (learner, dataset))
            ax.plot(*zip(*points), marker="o", label=f"{learner} {dataset}")
        ax.set_xscale("log", base=2), ax.set_xlabel("shots per class"), ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize="x-small"), fig.tight_layout()
        written.append(out / "few_shot.png")
        fig.savefig(written[-1], dpi=120), plt.close(fig)
    return written


def write_report(rows: Sequence[dict], out: Path, ci: bool = False) -> tuple[dict[str, str], list[Path]]:
    """``report.{md,csv,tex}`` and the PNG plots in ``out``; returns the tables and the plot paths."""
    out.mkdir(parents=True, exist_ok=True)
    rendered = tables(rows, ci=ci)
    for suffix, text in rendered.items():
        (out / f"report.{suffix}").write_text(text)
    return rendered, plots(rows, out)


def main(argv: Sequence[str]) -> None:
    parser = OneLineArgumentParser(prog="vlprompt report", description="Aggregate metrics.json files over seeds.")
    parser.add_argument("runs", type=Path, help="directory searched for metrics.json files")
    parser.add_argument("--ci", action="store_true", help="report 95%% confidence intervals instead of std")
    parser.add_argument("--out", type=Path, help="where report.{md,csv,tex} go (default RUNS/report)")
    options = parser.parse_args(argv)
    rows = aggregate(collect(options.runs), ci=options.ci)
    out = options.out or options.runs / "report"
    rendered, images = write_report(rows, out, ci=options.ci)
    print(rendered["md"])
    print(f"report written to {out}: report.md, report.csv, report.tex, " + ", ".join(p.name for p in images))
