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
from typing import Optional, Sequence

from vlprompt.errors import ConfigError
from vlprompt.eval.accuracy import harmonic_mean
from vlprompt.command_line import OneLineArgumentParser

AVERAGE = "Average"
#: Marks on a data set whose numbers are not comparable with published ones, and what each means.
SPLIT_MARK, SHOTS_MARK = "†", "‡"
MARK_NOTES = {
    SPLIT_MARK: "split built here, not comparable with published numbers (no published split file was found)",
    SHOTS_MARK: "some classes had fewer training images than the shots asked for and trained on all they had "
                "(counts in each run's metrics.json)",
}


#: The label of a learner's transductive runs (``"transductive": true`` in their metrics.json), and what it means:
#: they are rows of their own, so their averages never pool with the same learner's inductive runs.
TRANSDUCTIVE = " (transductive)"
TRANSDUCTIVE_NOTE = ("(transductive): trained on every class's training images, novel included, without labels "
                     "(PromptKD's setting); not comparable with inductive rows, and averaged apart from them")


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
    source). The transfer protocols' average leaves out the source data set, as the papers' tables do. A learner's
    transductive runs are a learner of their own (``<learner> (transductive)``, :data:`TRANSDUCTIVE_NOTE`)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in metrics:
        learner = m["learner"] + (TRANSDUCTIVE if m.get("transductive") else "")
        groups[(m["protocol"], learner, m["shots"], m.get("source"), m["dataset"])].append(m)
    rows = []
    for (protocol, learner, shots, source, dataset), runs in sorted(groups.items(), key=lambda g: str(g[0])):
        keys = metric_keys(protocol)
        row = {"protocol": protocol, "learner": learner, "shots": shots, "source": source, "dataset": dataset,
               "seeds": sorted(r["seed"] for r in runs), "marks": _marks(runs)}
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
                   "seeds": [], "marks": "".join(sorted({m for r in dataset_rows for m in r["marks"]}))}
        keys = ("base_acc", "novel_acc") if protocol == "base2novel" else ("acc",)
        for key in keys:
            average[key] = {"mean": statistics.fmean(r[key]["mean"] for r in dataset_rows), "std": None,
                            "n": len(dataset_rows)}
        if protocol == "base2novel":
            average["hm"] = {"mean": harmonic_mean(average["base_acc"]["mean"], average["novel_acc"]["mean"]),
                             "std": None, "n": len(dataset_rows)}
        averages.append(average)
    return rows + averages


def _marks(runs: Sequence[dict]) -> str:
    """The marks (:data:`MARK_NOTES`) the runs' data records call for."""
    data = [run.get("data") or {} for run in runs]
    marks = SPLIT_MARK if any(d.get("split_built_here") for d in data) else ""
    return marks + (SHOTS_MARK if any(d.get("short_classes") for d in data) else "")


def _marked(name: str, marks: str) -> str:
    return f"{name} {marks}" if marks else name


def mark_notes(rows: Sequence[dict]) -> list[str]:
    """One line per mark the rows carry, saying what it means (and what a transductive row is, when there is one)."""
    used = {m for r in rows for m in r.get("marks", "")}
    notes = [f"{mark} {note}" for mark, note in MARK_NOTES.items() if mark in used]
    return notes + ([TRANSDUCTIVE_NOTE] if any(r["learner"].endswith(TRANSDUCTIVE) for r in rows) else [])


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
TABLE_COLUMNS = ["protocol", "learner", "source", "shots", "dataset", "seeds", "metric", "mean", "std", "ci95",
                 "notes"]


def table_rows(rows: Sequence[dict]) -> list[list]:
    """One row per (aggregated row, metric) in :data:`TABLE_COLUMNS` order; ``std``/``ci95`` None if absent."""
    return [[r["protocol"], r["learner"], r["source"] or "", r["shots"], r["dataset"], " ".join(map(str, r["seeds"])),
             key, r[key]["mean"], r[key]["std"], r[key].get("ci95"), _row_notes(r)]
            for r in rows for key in metric_keys(r["protocol"])]


def _row_notes(row: dict) -> str:
    notes = [MARK_NOTES[m] for m in row.get("marks", "")]
    return "; ".join(notes + ([TRANSDUCTIVE_NOTE] if row["learner"].endswith(TRANSDUCTIVE) else []))


def tables(rows: Sequence[dict], ci: bool = False) -> dict[str, str]:
    """``{"md": ..., "csv": ..., "tex": ...}`` for the aggregated rows; the Markdown and LaTeX say whether ± is the
    standard deviation over seeds or the 95% confidence interval."""
    spread = "95% confidence interval (t distribution) over seeds" if ci else "standard deviation over seeds"
    md, tex = [f"Mean ± {spread}.", ""], [f"% mean $\\pm$ {spread}", ""]
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
            cells = [learner, str(r["shots"]), _marked(r["dataset"], r.get("marks", "")),
                     *(_cell(r[key], ci) for key, _ in columns)]
            md.append("| " + " | ".join(cells) + " |")
            tex_cells = [c.replace("_", r"\_") for c in cells[:3]] + [_cell(r[key], ci, latex=True)
                                                                    for key, _ in columns]
            tex.append(" & ".join(tex_cells) + r" \\")
        for *cells, mean, std, ci95, notes in table_rows(protocol_rows):
            writer.writerow([*cells, *("" if value is None else f"{value:.4f}" for value in (mean, std, ci95)), notes])
        md.append("")
        tex += [r"\bottomrule", r"\end{tabular}", ""]
        _emit_mark_notes(protocol_rows, md, tex)
    return {"md": "\n".join(md), "csv": buffer.getvalue(), "tex": "\n".join(tex)}


def _datasets_in_order(rows: Sequence[dict]) -> list[str]:
    """The data sets of ``rows``, the average first (as the papers' tables put it), then in the papers' order."""
    from vlprompt.data.benchmarks import CROSS_DATASET_TARGETS, DOMAIN_GENERALIZATION_TARGETS

    names = {r["dataset"] for r in rows}
    known = [name for name in ("ImageNet", *CROSS_DATASET_TARGETS, *DOMAIN_GENERALIZATION_TARGETS) if name in names]
    return [AVERAGE] * (AVERAGE in names) + known + sorted(names - set(known) - {AVERAGE})


def _learners_in_order(rows: Sequence[dict]) -> list[str]:
    """Learners as the papers list them: zero-shot CLIP first, then by name."""
    return sorted({r["learner"] for r in rows}, key=lambda name: (name != "zeroshot", name))


def _seed_counts(rows: Sequence[dict]) -> tuple[int, str]:
    """The usual number of seeds per cell and a sentence saying so (and that cells marked ``(n=k)`` differ)."""
    counts = [len(r["seeds"]) for r in rows if r["dataset"] != AVERAGE]
    if not counts:
        return 0, ""
    usual = statistics.mode(counts)
    seeds = sorted({seed for r in rows for seed in r["seeds"]})
    text = f"Each cell is the mean over {usual} seed{'s' * (usual != 1)} ({', '.join(map(str, seeds))})"
    if any(count != usual for count in counts):
        text += "; cells marked (n=k) average k seeds"
    average = "; Average: the mean over data sets" if any(r["dataset"] == AVERAGE for r in rows) else ""
    return usual, text + average + "."


def _paper_cell(row: Optional[dict], key: str, usual: int) -> str:
    if row is None:
        return "-"
    text = f"{row[key]['mean']:.2f}"
    if row["dataset"] != AVERAGE and len(row["seeds"]) != usual:
        text += f" (n={len(row['seeds'])})"
    return text


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body), ""]


def _latex_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    def escape(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%")

    return [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
            " & ".join(map(escape, header)) + r" \\", r"\midrule",
            *(" & ".join(map(escape, cells)) + r" \\" for cells in body), r"\bottomrule", r"\end{tabular}", ""]


def _learner_label(row: dict, usual_shots: Optional[int]) -> str:
    if row["shots"] in (0, usual_shots):
        return row["learner"]
    return f"{row['learner']} ({row['shots']} shots)"


def paper_tables(rows: Sequence[dict]) -> dict[str, str]:
    """The papers' layouts, ``{"md": ..., "tex": ...}``: base-to-novel as one block per data set (the average
    first) with Base / Novel / HM per learner; cross-dataset and domain generalisation as one row per learner and
    one column per data set (source first, then the targets and their average); few-shot as one block per data set
    with one column per shot count (zero-shot CLIP in the 0 column). Every table says how many seeds a cell
    averages."""
    md, tex = [], []

    def emit(title: str, header: Sequence[str], body: Sequence[Sequence[str]], note: str) -> None:
        md.extend([f"#### {title}", "", *_markdown_table(header, body)])
        tex.extend([f"% {title}", *_latex_table(header, body)])
        if note:
            md.extend([note, ""])
            tex.extend([f"% {note}", ""])

    b2n = [r for r in rows if r["protocol"] == "base2novel"]
    if b2n:
        md += ["### Base-to-novel generalisation", ""]
        usual, note = _seed_counts(b2n)
        trained_shots = [r["shots"] for r in b2n if r["shots"]]
        usual_shots = statistics.mode(trained_shots) if trained_shots else None
        datasets = _datasets_in_order(b2n)
        for dataset in datasets:
            block = sorted((r for r in b2n if r["dataset"] == dataset),
                           key=lambda r: ((r["learner"] != "zeroshot", r["learner"]), r["shots"]))
            title = dataset
            if dataset == AVERAGE:
                sizes = sorted({r["base_acc"]["n"] for r in block})
                title = f"Average over {'/'.join(map(str, sizes))} data sets"
            title = _marked(title, _union_marks(block))
            body = [[_learner_label(r, usual_shots), *(_paper_cell(r, key, usual) for key in ("base_acc", "novel_acc",
                                                                                                "hm"))] for r in block]
            emit(title, ["", "Base", "Novel", "HM"], body, note if dataset == datasets[0] else "")
        _emit_mark_notes(b2n, md, tex)
    for protocol, heading in (("cross-dataset", "Cross-dataset transfer"),
                              ("domain-generalization", "Domain generalisation")):
        transfer = [r for r in rows if r["protocol"] == protocol]
        if not transfer:
            continue
        md += [f"### {heading}", ""]
        for source in sorted({r["source"] for r in transfer}):
            group = [r for r in transfer if r["source"] == source]
            usual, note = _seed_counts(group)
            targets = [d for d in _datasets_in_order(group) if d not in (AVERAGE, source)]
            columns = [source, *targets] + ([AVERAGE] if any(r["dataset"] == AVERAGE for r in group) else [])
            labels = sorted({(r["learner"], r["shots"]) for r in group}, key=lambda p: (p[0] != "zeroshot", p))
            body = []
            for learner, shots in labels:
                cells = {r["dataset"]: r for r in group if (r["learner"], r["shots"]) == (learner, shots)}
                label = learner if shots in (0, 16) else f"{learner} ({shots} shots)"
                body.append([label, *(_paper_cell(cells.get(d), "acc", usual) for d in columns)])
            marks = {d: _union_marks([r for r in group if r["dataset"] == d]) for d in columns}
            header = ["", _marked(f"{source} (source)", marks[source]), *(_marked(t, marks[t]) for t in targets)] + (
                [_marked("Average (targets)", marks[AVERAGE])] if AVERAGE in columns else [])
            emit(f"Trained on {source}", header, body, note)
        _emit_mark_notes(transfer, md, tex)
    few = [r for r in rows if r["protocol"] == "few-shot"]
    if few:
        md += ["### Few-shot classification", ""]
        usual, note = _seed_counts(few)
        shots = sorted({r["shots"] for r in few})
        datasets = _datasets_in_order(few)
        for dataset in datasets:
            block = [r for r in few if r["dataset"] == dataset]
            body = []
            for learner in _learners_in_order(block):
                cells = {r["shots"]: r for r in block if r["learner"] == learner}
                body.append([learner, *(_paper_cell(cells.get(k), "acc", usual) for k in shots)])
            header = ["", *("0 (zero-shot)" if k == 0 else f"{k} shot{'s' * (k != 1)}" for k in shots)]
            emit(_marked(dataset, _union_marks(block)), header, body, note if dataset == datasets[0] else "")
        _emit_mark_notes(few, md, tex)
    return {"md": "\n".join(md), "tex": "\n".join(tex)}


def _union_marks(rows: Sequence[dict]) -> str:
    return "".join(mark for mark in MARK_NOTES if any(mark in r.get("marks", "") for r in rows))


def _emit_mark_notes(rows: Sequence[dict], md: list[str], tex: list[str]) -> None:
    for note in mark_notes(rows):
        md.extend([note, ""])
        tex.extend([f"% {note}", ""])


def plots(rows: Sequence[dict], out: Path) -> list[Path]:
    """PNG plots: HM per data set (with the spread over seeds) and base against novel accuracy (base-to-novel);
    accuracy against shots per data set with zero-shot CLIP as a line (few-shot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    b2n = [r for r in rows if r["protocol"] == "base2novel"]
    if b2n:
        learners = _learners_in_order(b2n)
        datasets = _datasets_in_order(b2n)
        fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(datasets) * max(1, len(learners)) / 2), 3.4))
        width = 0.8 / len(learners)
        for i, learner in enumerate(learners):
            by_dataset = {r["dataset"]: r["hm"] for r in b2n if r["learner"] == learner}
            positions = [j + i * width for j, d in enumerate(datasets) if d in by_dataset]
            present = [d for d in datasets if d in by_dataset]
            ax.bar(positions, [by_dataset[d]["mean"] for d in present], width, label=learner,
                   yerr=[by_dataset[d]["std"] or math.nan for d in present], capsize=2, error_kw={"linewidth": 0.8})
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(datasets))], datasets, rotation=30, ha="right")
        ax.set_ylabel("HM (%)"), ax.set_title("Harmonic mean of base and novel accuracy (error bars: std over seeds)",
                                              fontsize="small")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1)), fig.tight_layout()
        written.append(out / "hm_per_dataset.png")
        fig.savefig(written[-1], dpi=120), plt.close(fig)

        fig, ax = plt.subplots(figsize=(5, 5))
        points = [r for r in b2n if r["dataset"] != AVERAGE]
        values = [v for r in points for v in (r["base_acc"]["mean"], r["novel_acc"]["mean"])]
        low, high = max(0.0, min(values) - 5), min(100.0, max(values) + 5)
        ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=0.8, label="novel = base")
        for learner in learners:
            mine = [r for r in points if r["learner"] == learner]
            ax.scatter([r["base_acc"]["mean"] for r in mine], [r["novel_acc"]["mean"] for r in mine], label=learner)
            for r in mine:
                ax.annotate(r["dataset"], (r["base_acc"]["mean"], r["novel_acc"]["mean"]), fontsize="x-small",
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(low, high), ax.set_ylim(low, high), ax.set_aspect("equal")
        ax.set_xlabel("Base accuracy (%)"), ax.set_ylabel("Novel accuracy (%)")
        ax.set_title("Base against novel accuracy (below the line: novel classes lose)", fontsize="small")
        ax.legend(fontsize="small"), fig.tight_layout()
        written.append(out / "base_vs_novel.png")
        fig.savefig(written[-1], dpi=120), plt.close(fig)
    few = [r for r in rows if r["protocol"] == "few-shot"]
    if few:
        datasets = _datasets_in_order(few)
        columns = min(4, len(datasets))
        lines = (len(datasets) + columns - 1) // columns
        fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.8 * lines), squeeze=False)
        shots = sorted({r["shots"] for r in few if r["shots"]})
        colours = {learner: f"C{i}" for i, learner in enumerate(_learners_in_order(few))}
        for ax, dataset in zip(axes.flat, datasets):
            for learner, colour in colours.items():
                mine = sorted((r for r in few if (r["learner"], r["dataset"]) == (learner, dataset)),
                              key=lambda r: r["shots"])
                trained = [r for r in mine if r["shots"]]
                if trained:
                    ax.errorbar([r["shots"] for r in trained], [r["acc"]["mean"] for r in trained],
                                yerr=[r["acc"]["std"] or math.nan for r in trained], marker="o", markersize=3,
                                capsize=2, color=colour, label=learner)
                for r in mine:
                    if not r["shots"]:  # zero-shot: no training data, one horizontal line
                        ax.axhline(r["acc"]["mean"], linestyle="--", color=colour,
                                   label="zero-shot CLIP" if learner == "zeroshot" else f"{learner} (no training)")
            ax.set_xscale("log", base=2)
            if shots:
                ax.set_xticks(shots, [str(k) for k in shots])
            ax.set_title(dataset, fontsize="small"), ax.set_xlabel("shots per class", fontsize="small")
            ax.set_ylabel("accuracy (%)", fontsize="small")
        for ax in list(axes.flat)[len(datasets):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
        fig.tight_layout(rect=(0, 0.12 if lines == 1 else 0.06, 1, 1))
        written.append(out / "few_shot.png")
        fig.savefig(written[-1], dpi=120), plt.close(fig)
    return written


def long_table_name(ci: bool) -> str:
    """The long tables' file name: ``report`` (mean ± std) or ``report-ci`` (mean ± 95% confidence interval)."""
    return "report-ci" if ci else "report"


def write_report(rows: Sequence[dict], out: Path, ci: bool = False) -> tuple[dict[str, str], list[Path]]:
    """``report.{md,csv,tex}`` (every row, mean ± std; ``report-ci.*`` with ``ci``: ± the 95% confidence interval),
    ``paper.{md,tex}`` (the papers' layouts) and the PNG plots in ``out``; returns the long tables and the plot
    paths."""
    out.mkdir(parents=True, exist_ok=True)
    rendered = tables(rows, ci=ci)
    for suffix, text in rendered.items():  # the CI tables beside the std ones, never over them
        (out / f"{long_table_name(ci)}.{suffix}").write_text(text)
    for suffix, text in paper_tables(rows).items():
        (out / f"paper.{suffix}").write_text(text)
    return rendered, plots(rows, out)


def main(argv: Sequence[str]) -> None:
    parser = OneLineArgumentParser(prog="vlprompt report", description="Aggregate metrics.json files over seeds.")
    parser.add_argument("runs", type=Path, help="directory searched for metrics.json files")
    parser.add_argument("--ci", action="store_true", help="report 95%% confidence intervals instead of std")
    parser.add_argument("--out", type=Path, help="where the tables and plots go (default RUNS/report)")
    parser.add_argument("--layout", choices=("paper", "long"), default="paper",
                        help="what is printed: the papers' table layouts (default) or one row per data set and "
                             "learner with mean ± std; both are written")
    options = parser.parse_args(argv)
    rows = aggregate(collect(options.runs), ci=options.ci)
    out = options.out or options.runs / "report"
    rendered, images = write_report(rows, out, ci=options.ci)
    paper = paper_tables(rows)["md"]
    # Runs of `vlprompt test` alone have no paper layout: the long table shows them.
    print(paper if options.layout == "paper" and paper.strip() else rendered["md"])
    name = long_table_name(options.ci)
    spread = "± the 95% confidence interval" if options.ci else "± std"
    print(f"report written to {out}: {name}.md, {name}.csv, {name}.tex (every row, {spread}), paper.md, paper.tex (the "
          "papers' layouts), " + ", ".join(p.name for p in images))
