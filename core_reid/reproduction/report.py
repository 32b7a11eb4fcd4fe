"""The grid's results as the paper shows them: tables (Markdown, CSV, LaTeX) with rows =
methods and column groups = dataset x noise setting, cells = rank-1 / mAP as mean ± std over
seeds, for the final epoch and for the best-by-rank-1 epoch (chosen on the test set:
optimistic), the final label precision and noisy labels corrected / memorised, and figures
of label precision and mAP over epochs.
Runs that are missing, failed or unfinished are shown as such, never dropped.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from methods import METHODS
from core_reid.reproduction.plan import NoiseSetting, Run
from core_reid.utils import atomic_write, atomic_write_text

# Network 1's training labels after the final epoch (none to correct without noise).
LABEL_KEYS = ("label_precision", "noisy_corrected", "noisy_memorized")


@dataclass
class Cell:
    """One (dataset, noise setting, method): its seeds' finished results and what is missing."""
    expected: int
    results: list[dict] = field(default_factory=list)  # metrics.json of finished runs
    states: list[str] = field(default_factory=list)     # of the unfinished ones

    def values(self, key: str, which: str = "final") -> list[float]:
        if key in LABEL_KEYS:
            return [m["history"][-1][key] for m in self.results
                    if m["history"][-1].get(key) is not None]
        return [m[which][key] for m in self.results if m.get(which)]

    def missing_note(self) -> str:
        """'' when every seed finished, else what the others are doing."""
        if len(self.results) == self.expected:
            return ""
        counts = {state: self.states.count(state) for state in dict.fromkeys(self.states)}
        return ", ".join(f"{n} {state}" for state, n in counts.items())


def run_state(run: Run, outcomes: dict[str, dict]) -> str:
    state, finished = run.status()
    if state == "done":
        return "done"
    outcome = outcomes.get(run.name, {}).get("outcome")
    if outcome in ("failed", "blocked", "cancelled", "queued"):
        return outcome
    return f"interrupted at {finished}/{run.epochs} epochs" if state == "partial" \
        else "missing"


def collect(runs: Sequence[Run], status_path: Path) -> dict[tuple[str, NoiseSetting, str], Cell]:
    """Every grid cell with its finished runs' metrics and the states of the others."""
    outcomes = json.loads(status_path.read_text()) if status_path.is_file() else {}
    cells: dict[tuple[str, NoiseSetting, str], Cell] = {}
    grid_runs = [run for run in runs if run.in_grid]
    for run in grid_runs:
        key = (run.dataset, run.noise, run.method)
        cell = cells.setdefault(key, Cell(sum((r.dataset, r.noise, r.method) == key
                                              for r in grid_runs)))
        state = run_state(run, outcomes)
        if state == "done":
            cell.results.append(json.loads((run.run_dir / "metrics.json").read_text()))
        else:
            cell.states.append(state)
    return cells


def mean_std(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    values = np.array(values) * scale
    return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def cell_text(cell: Optional[Cell], which: str) -> str:
    if cell is None:
        return "–"
    if not cell.results:
        return cell.missing_note() or "missing"
    if which in LABEL_KEYS:
        text = mean_std(cell.values(which))
    else:
        text = (f"{mean_std(cell.values('rank1', which))} / "
                f"{mean_std(cell.values('mAP', which))}")
    note = cell.missing_note()
    return text + (f" ({len(cell.results)}/{cell.expected} seeds; {note})" if note else "")


TABLES = [("final", "Final epoch: rank-1 / mAP (%)"),
          ("best", "Best epoch by test rank-1 (optimistic: chosen on the test set): "
                   "rank-1 / mAP (%)"),
          ("label_precision", "Final label precision (%), network 1"),
          ("noisy_corrected", "Final noisy labels corrected (%): wrong annotations whose "
                              "refined label is the true one, network 1"),
          ("noisy_memorized", "Final noisy labels memorised (%): wrong annotations the "
                              "network still predicts, network 1")]


def write_report(runs: Sequence[Run], grid_dir: Path) -> list[Path]:
    """Write results.md, results.csv, results.tex and one curves_<dataset>.png per dataset;
    returns the paths."""
    cells = collect(runs, grid_dir / "status.json")
    grid_runs = [run for run in runs if run.in_grid]
    datasets = list(dict.fromkeys(run.dataset for run in grid_runs))
    settings = list(dict.fromkeys(run.noise for run in grid_runs))
    methods = list(dict.fromkeys(run.method for run in grid_runs))
    columns = [(d, s) for d in datasets for s in settings]
    paths = [grid_dir / "results.md", grid_dir / "results.csv", grid_dir / "results.tex"]
    atomic_write_text(paths[0], _markdown(cells, columns, methods))
    atomic_write_text(paths[1], _csv(cells, columns, methods))
    atomic_write_text(paths[2], _latex(cells, datasets, settings, methods))
    for dataset in datasets:
        path = grid_dir / f"curves_{dataset}.png"
        _figure(cells, dataset, settings, methods, path)
        paths.append(path)
    return paths


def _markdown(cells, columns, methods) -> str:
    out = []
    for which, title in TABLES:
        out += [f"### {title}", "",
                "| method | " + " | ".join(f"{d} {s.label}" for d, s in columns) + " |",
                "|---|" + "---|" * len(columns)]
        for method in methods:
            out.append(f"| {METHODS[method].title} | " + " | ".join(
                cell_text(cells.get((d, s, method)), which) for d, s in columns) + " |")
        out.append("")
    return "\n".join(out)


def _csv(cells, columns, methods) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    stats = [("final", "rank1"), ("final", "mAP"), ("best", "rank1"), ("best", "mAP"),
             *(("final", key) for key in LABEL_KEYS)]
    writer.writerow(["dataset", "noise", "method", "seeds_done", "seeds_expected", "missing"]
                    + [f"{w}_{k}_{m}" for w, k in stats for m in ("mean", "std")])
    for dataset, setting in columns:
        for method in methods:
            cell = cells.get((dataset, setting, method))
            if cell is None:
                continue
            row = [dataset, setting.label, method, len(cell.results), cell.expected,
                   cell.missing_note()]
            for which, key in stats:
                values = np.array(cell.values(key, which))
                row += ([f"{values.mean():.6f}", f"{values.std():.6f}"] if values.size
                        else ["", ""])
            writer.writerow(row)
    return buffer.getvalue()


def _latex(cells, datasets, settings, methods) -> str:
    def escape(text: str) -> str:
        return text.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")

    out = []
    for which, title in TABLES:
        out += [f"% {title}", r"\begin{tabular}{l" + "c" * len(datasets) * len(settings) + "}",
                r"\toprule",
                " & " + " & ".join(rf"\multicolumn{{{len(settings)}}}{{c}}{{{escape(d)}}}"
                                   for d in datasets) + r" \\",
                "Method & " + " & ".join(escape(s.label) for _ in datasets for s in settings)
                + r" \\", r"\midrule"]
        for method in methods:
            out.append(METHODS[method].title + " & " + " & ".join(
                escape(cell_text(cells.get((d, s, method)), which))
                for d in datasets for s in settings) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(out)


def _figure(cells, dataset: str, settings: list[NoiseSetting], methods: list[str],
            path: Path) -> None:
    """Label precision (top) and mAP (bottom) over epochs, one column per noise setting; line =
    mean over seeds, band = min..max; dashed = the injected labels' precision."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(settings), figsize=(4 * len(settings), 6.5), squeeze=False)
    for col, setting in enumerate(settings):
        top, bottom = axes[0][col], axes[1][col]
        for method in methods:
            cell = cells.get((dataset, setting, method))
            if cell is None or not cell.results:
                continue
            for ax, key in ((top, "label_precision"), (bottom, "mAP")):
                curves = [[(h["epoch"], h[key]) for h in m["history"] if h.get(key) is not None]
                          for m in cell.results]
                length = min(len(c) for c in curves)
                epochs = [e for e, _ in curves[0][:length]]
                values = 100 * np.array([[v for _, v in c[:length]] for c in curves])
                line, = ax.plot(epochs, values.mean(axis=0), label=METHODS[method].title)
                ax.fill_between(epochs, values.min(axis=0), values.max(axis=0),
                                color=line.get_color(), alpha=0.2)
        finished = [cells[(dataset, setting, m)].results[0] for m in methods
                    if (dataset, setting, m) in cells and cells[(dataset, setting, m)].results]
        if finished:  # the same noisy labels in every run of this setting (one noise seed)
            top.axhline(100 * finished[0]["injected_label_precision"], color="gray", ls="--",
                        label="injected labels")
        top.set_title(f"{dataset}, {setting.label}: label precision (%)")
        bottom.set_title(f"{dataset}, {setting.label}: mAP (%)")
        for ax in (top, bottom):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
