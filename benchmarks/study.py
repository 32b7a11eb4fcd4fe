"""The results study: every results table of docs/results.md and README.md from one command, on
the code as it is.

    python benchmarks/study.py                    # the whole study, then the tables
    python benchmarks/study.py --parts main       # one part (the others keep their runs)
    python benchmarks/study.py --tables_only      # the tables from the runs there are

Every part is a ``reproduce.py --demo`` grid (the demo's synthetic data, ResNet-18 at 32x16,
every run from the synthetic pretraining) under ``--output_dir/<grid>/``; a rerun skips what is
finished and continues what was interrupted. Two runs train at a time, one thread each
(``--jobs 2 --threads 1``): on two cores that is faster than one run on two threads, and each
run's numbers depend on its thread count, which a rerun of its command repeats.

The parts (``--parts``):
  main      baseline, SELF, CORE, PurifyNet, Co-teaching and JoCoR x random 20%, random 50%,
            pattern 20% x seeds 1-3: the headline comparison. Co-teaching and JoCoR are told
            the true noise rate (their forget rate), the others are not.
  auto      Co-teaching with ``--forget_rate auto``: the same settings, with the rate estimated
            from the training data instead of told. (JoCoR collapses in this regime even when
            told the rate, see docs/results.md, so its auto runs would say nothing.)
  tau       Co-teaching at random 50% with the forget rate set 0.2 below and above the truth.
  jocor     JoCoR at random 50% with lambda 0.1 (its authors' code's default) beside main's
            0.9 (their paper's), with which it collapses in this regime.
  schedule  baseline, CORE and Co-teaching at random 50% under the earlier demo schedule
            (28 epochs, lr x0.1 at 20 and 25, co-refining from 21) and the released 61-epoch
            one (lr x0.1 at 20 and 50), beside ``main``'s: the demo default, the released
            proportions at 24 epochs (lr x0.1 at 8 and 20, co-refining from 9).

Writes ``docs/results/<part>.csv`` (one row per run: its scores in %, what it was told, and
``command``, the exact command that reproduces that run alone from the repository root) and
the mean +- std tables between the ``<!-- study:NAME -->`` markers of docs/results.md and
README.md, each with the command, the date and the commit.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import reproduce  # noqa: E402
from methods import METHODS  # noqa: E402
from core_reid.reproduction.plan import Run, expand, parse_noise  # noqa: E402
from core_reid.utils import ArgumentParser, UserError, atomic_write_text, run_cli  # noqa: E402

SETTINGS = ["random:0.2", "random:0.5", "pattern:0.2"]
SEEDS = ["1", "2", "3"]
DEMO = ["--demo"]  # what every grid of the study trains on: the demo's data, net and schedule
TWO_JOBS = ["--jobs", "2", "--threads", "1"]
OLD_DEMO = ["--epochs", "28", "--milestones", "20", "25", "--stage1_epochs", "20"]
RELEASED = ["--epochs", "61", "--milestones", "20", "50", "--stage1_epochs", "20"]


@dataclass(frozen=True)
class Grid:
    """One reproduce.py grid of the study: its folder name, what it adds to the demo grid, and
    how its rows are labelled."""
    name: str
    argv: tuple[str, ...]
    variant: str = ""                        # e.g. "forget rate auto"
    schedule: str = "demo"                   # the schedule's label in the tables


@dataclass
class Part:
    name: str
    title: str
    grids: list[Grid] = field(default_factory=list)


PARTS = {
    "main": Part("main", "the headline comparison", [
        Grid("main", ("--methods", "baseline", "self", "core", "purifynet", "coteaching",
                      "jocor", "--noise", *SETTINGS, "--seeds", *SEEDS))]),
    "auto": Part("auto", "Co-teaching not told the noise rate", [
        Grid("auto", ("--methods", "coteaching", "--noise", *SETTINGS, "--seeds",
                      *SEEDS, "--forget_rate", "auto"), variant="forget rate auto")]),
    "tau": Part("tau", "Co-teaching's forget rate off the truth", [
        Grid(f"tau{tau}", ("--methods", "coteaching", "--noise", "random:0.5", "--seeds",
                           *SEEDS, "--forget_rate", tau), variant=f"forget rate {tau}")
        for tau in ("0.3", "0.7")]),
    "jocor": Part("jocor", "JoCoR's co-regularisation weight", [
        Grid("jocor_lambda0.1", ("--methods", "jocor", "--noise", "random:0.5", "--seeds",
                                 *SEEDS, "--co_lambda", "0.1"), variant="λ 0.1")]),
    "schedule": Part("schedule", "the ordering under three schedules", [
        Grid("schedule_old", ("--methods", "baseline", "core", "coteaching", "--noise",
                              "random:0.5", "--seeds", *SEEDS, *OLD_DEMO),
             schedule="earlier demo"),
        Grid("schedule_released", ("--methods", "baseline", "core", "coteaching", "--noise",
                                   "random:0.5", "--seeds", *SEEDS, *RELEASED),
             schedule="released 61 epochs")]),
}
SCHEDULE_TITLES = {
    "demo": "demo default (24 epochs, lr ×0.1 at 8 and 20, co-refining from 9)",
    "earlier demo": "earlier demo (28 epochs, lr ×0.1 at 20 and 25, co-refining from 21)",
    "released 61 epochs": "released (61 epochs, lr ×0.1 at 20 and 50, co-refining from 21)"}
MARKER = "<!-- study:{} -->"
END_MARKER = "<!-- /study:{} -->"


def plan(grid: Grid, out: Path) -> tuple[list[str], list[Run]]:
    """The reproduce.py arguments of ``grid`` and the runs they make."""
    argv = [*DEMO, *grid.argv, *TWO_JOBS, "--output_dir", str(out / grid.name)]
    cli, train_flags = reproduce.parse(argv)
    runs = expand(cli.datasets, cli.noise, cli.methods, cli.seeds, train_flags,
                  Path(cli.output_dir).resolve())
    return argv, runs


def share_clean_baseline(runs: Sequence[Run], out: Path) -> None:
    """A pattern grid needs the clean baseline ``main`` trained already (same flags, same
    run): copy it instead of training it again."""
    for run in runs:
        source = out / "main" / "runs" / run.name
        if not run.in_grid and not run.run_dir.exists() and (source / "last.pt").is_file():
            shutil.copytree(source, run.run_dir)


def train_grid(grid: Grid, out: Path) -> None:
    argv, runs = plan(grid, out)
    share_clean_baseline(runs, out)
    todo = [run for run in runs if run.status()[0] != "done"]
    print(f"== {grid.name}: {len(runs)} runs, {len(todo)} to train", flush=True)
    if not todo:
        return
    started, code = time.time(), commit()
    try:
        outcomes = reproduce.main(argv)
    finally:  # what this invocation trained, even if stopped: minutes, code, date
        record_invocation(out / grid.name, {
            "minutes": round((time.time() - started) / 60, 1),
            "runs_trained": sum(run.status()[0] == "done" for run in todo), "runs": len(runs),
            "commit": code, "date": time.strftime("%Y-%m-%d")})
    failed = [name for name, outcome in outcomes.items() if outcome != "done"]
    if failed:
        raise UserError(f"grid {grid.name}: {len(failed)} runs did not finish ({failed[0]}, "
                        f"...); see {out / grid.name / 'logs'}; rerun the same command")


def record_invocation(folder: Path, invocation: dict) -> None:
    """Add one invocation of the study to the grid's provenance.json (a grid trained over
    several invocations, e.g. one stopped and continued, has one entry each)."""
    atomic_write_text(folder / "provenance.json", json.dumps(
        {"invocations": provenance_of(folder).get("invocations", []) + [invocation]}))


def commit() -> str:
    """HEAD's short hash, marked when the working tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else "")


def provenance_of(folder: Path) -> dict:
    path = folder / "provenance.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def provenance(grid: Grid, out: Path) -> dict:
    """The grid's invocations summed: minutes, runs trained, and the commits and dates."""
    invocations = provenance_of(out / grid.name).get("invocations", [])
    if not invocations:
        return {}
    return {"minutes": sum(i["minutes"] for i in invocations),
            "runs_trained": sum(i["runs_trained"] for i in invocations),
            "runs": invocations[-1]["runs"], "invocations": len(invocations),
            "commit": ", ".join(dict.fromkeys(i["commit"] for i in invocations)),
            "date": ", ".join(dict.fromkeys(i["date"] for i in invocations))}


@dataclass
class Row:
    """One finished run of the study, as docs/results/<part>.csv holds it."""
    grid: Grid
    run: Run
    metrics: dict

    @property
    def told(self) -> str:
        """What the run was told of the noise rate (only Co-teaching and JoCoR use one)."""
        rate = self.metrics["args"].get("forget_rate")
        if rate is None:
            return "no"
        if rate == "auto":
            return f"no: estimated {self.estimate:.2f}"
        truth = self.metrics["noise_ratio"]
        return "yes" if rate == truth else f"a wrong rate, {rate:g} (truth {truth:g})"

    @property
    def estimate(self) -> Optional[float]:
        """With ``--forget_rate auto``: the noise rate the run estimated and kept."""
        return self.metrics["history"][-1]["networks"][0].get("forget_rate_estimate")

    def value(self, key: str) -> Optional[float]:
        """A final score or network 1's final label diagnostic, in %."""
        if key in ("rank1", "mAP"):
            return 100 * self.metrics["final"][key]
        if key.startswith("best_"):
            return 100 * self.metrics["best"][key[5:]]
        value = self.metrics["history"][-1].get(key)
        return None if value is None else 100 * value

    def command(self) -> str:
        """The training command of this run alone, from the repository root, writing to
        ``rerun/`` (the study's folder keeps its own run)."""
        argv, skip = [], False
        for arg in self.run.argv:
            if skip:
                argv.append("rerun")
                skip = False
                continue
            skip = arg == "--output_dir"
            argv.append(relative(arg))
        return shlex.join(["python", self.run.script, *argv])


def relative(arg: str) -> str:
    path = Path(arg)
    if path.is_absolute() and path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    return arg


CSV_KEYS = ("rank1", "mAP", "best_rank1", "best_mAP", "label_precision", "noisy_corrected",
            "noisy_memorized")


def finished_rows(grid: Grid, out: Path) -> list[Row]:
    """The grid's finished runs (the clean baseline that patterned noise needs included)."""
    _, runs = plan(grid, out)
    return [Row(grid, run, json.loads((run.run_dir / "metrics.json").read_text()))
            for run in runs if run.status()[0] == "done"]


def write_csv(part: Part, rows: Sequence[Row], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["grid", "method", "variant", "schedule", "noise", "seed", "told_noise_rate",
                     "forget_rate", "epochs", *CSV_KEYS, "run", "command"])
    for row in rows:
        m = row.metrics
        noise = "clean" if m["noise_ratio"] == 0 else f"{m['noise_type']} {m['noise_ratio']:g}"
        rate = m["args"].get("forget_rate")
        writer.writerow([row.grid.name, m["method"], row.grid.variant, row.grid.schedule, noise,
                         m["seed"], row.told, "" if rate is None else rate, m["epochs"],
                         *("" if row.value(k) is None else f"{row.value(k):.2f}"
                           for k in CSV_KEYS), row.run.name, row.command()])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())


def mean_std(values: Sequence[Optional[float]]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 \
        else f"{values[0]:.1f}"


def label(rows: Sequence[Row]) -> str:
    """A table row's method name, with its variant."""
    variant = rows[0].grid.variant
    return METHODS[rows[0].metrics["method"]].title + (f" ({variant})" if variant else "")


def told(rows: Sequence[Row]) -> str:
    """What the seeds' runs were told of the noise rate (estimates as mean ± std)."""
    estimates = [r.estimate for r in rows]
    if all(e is not None for e in estimates):
        return f"no: estimated {mean_std([100 * e for e in estimates])} %"
    return rows[0].told


def means(rows: Sequence[Row], keys: Sequence[str]) -> list[str]:
    """The seeds' mean ± std of each of ``keys`` (``Row.value``)."""
    return [mean_std([r.value(k) for r in rows]) for k in keys]


def grouped(rows: Sequence[Row]) -> dict[tuple, list[Row]]:
    """Rows of the same method, variant, schedule and noise setting (the seeds), in the
    order the study ran them; the clean baseline of patterned noise is left out."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.run.in_grid:
            m = row.metrics
            key = (m["method"], row.grid.variant, row.grid.schedule, m["noise_type"],
                   m["noise_ratio"])
            groups.setdefault(key, []).append(row)
    return groups


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(line) + " |" for line in lines)]


SETTING_TITLES = {("random", 0.2): "random 20%", ("random", 0.5): "random 50%",
                  ("pattern", 0.2): "pattern 20%"}
COMMON = ("the demo's synthetic data, ResNet-18 at 32×16 from the synthetic pretraining, seeds "
          "1–3 on one set of noisy labels (noise seed 1), final epoch (no choice on the test "
          "set), network 1; mean ± std over the seeds, in %")


def source(parts: Sequence[Part], out: Path, link: str) -> str:
    """Where a block's numbers come from: the command, the per-run CSVs, date and commit."""
    recorded = [prov for prov in (provenance(grid, out) for part in parts for grid in part.grids)
                if prov]  # the grids that have runs
    commits = ", ".join(sorted({c for prov in recorded for c in prov["commit"].split(", ")}))
    dates = ", ".join(sorted({d for prov in recorded for d in prov["date"].split(", ")}))
    csvs = ", ".join(f"[{p.name}.csv]({link}{p.name}.csv)" for p in parts)
    command = "python benchmarks/study.py --parts " + " ".join(p.name for p in parts)
    return (f"From `{command}`, measured on {dates} at commit {commits} (per run: {csvs}); "
            f"{COMMON}.")


def ordered_methods(groups: dict[tuple, list[Row]]) -> list[tuple]:
    """Group keys in the order of the registry's methods, each method's variants after it."""
    order = list(METHODS)
    return sorted(groups, key=lambda k: (order.index(k[0]), k[1]))


def headline_block(rows: Sequence[Row]) -> list[str]:
    groups = grouped(rows)
    methods = list(dict.fromkeys((k[0], k[1]) for k in ordered_methods(groups)))
    lines = []
    for method, variant in methods:
        mine = {(k[3], k[4]): g for k, g in groups.items() if (k[0], k[1]) == (method, variant)}
        first = next(iter(mine.values()))
        lines.append([label(first), told(first).split(":")[0]] + [
            mean_std([r.value("mAP") for r in mine.get(s, [])]) for s in SETTING_TITLES])
    return markdown_table(["method", "told the noise rate", *(f"mAP, {t}" for t in
                                                              SETTING_TITLES.values())], lines)


def main_block(rows: Sequence[Row]) -> list[str]:
    groups = grouped(rows)
    out = []
    for (kind, ratio), title in SETTING_TITLES.items():
        keys = [k for k in ordered_methods(groups) if (k[3], k[4]) == (kind, ratio)]
        if not keys:
            continue
        injected = 100 * groups[keys[0]][0].metrics["injected_label_precision"]
        out += [f"**{title}** (injected labels: label precision {injected:.1f})", ""]
        out += markdown_table(
            ["method", "told the noise rate", "rank-1", "mAP", "label precision",
             "noisy corrected", "noisy memorised"],
            [[label(groups[k]), told(groups[k]),
              *means(groups[k], ("rank1", "mAP", "label_precision", "noisy_corrected",
                                 "noisy_memorized"))]
             for k in keys])
        out.append("")
    return out[:-1]


def variants_block(rows: Sequence[Row], method: str, first_column: str) -> list[str]:
    """``method``'s runs at random 50% under the demo schedule, one line per variant."""
    groups = grouped(rows)
    keys = [k for k in groups if k[0] == method and (k[3], k[4]) == ("random", 0.5)
            and k[2] == "demo"]
    keys.sort(key=lambda k: k[1])
    return markdown_table(
        [first_column, "told the noise rate", "rank-1", "mAP", "label precision",
         "noisy memorised"],
        [[label(groups[k]), told(groups[k]),
          *means(groups[k], ("rank1", "mAP", "label_precision", "noisy_memorized"))]
         for k in keys])


def schedule_block(rows: Sequence[Row]) -> list[str]:
    groups = grouped(rows)
    schedules = list(dict.fromkeys(k[2] for k in groups))
    keys = [k for k in ordered_methods(groups) if (k[3], k[4]) == ("random", 0.5) and not k[1]]
    compared = {k[0] for k in keys if k[2] != "demo"}  # the methods trained under the others
    keys = [k for k in keys if not compared or k[0] in compared]
    methods = list(dict.fromkeys(k[0] for k in keys))
    table = []
    for method in methods:
        line = [label(groups[next(k for k in keys if k[0] == method)])]
        for schedule in schedules:
            g = groups.get(next((k for k in keys if k[0] == method and k[2] == schedule), ()))
            line.append(f"{mean_std([r.value('rank1') for r in g])} / "
                        f"{mean_std([r.value('mAP') for r in g])}" if g else "–")
        table.append(line)
    order = ["ordering by mean mAP"]
    for schedule in schedules:
        here = [k for k in keys if k[2] == schedule]
        here.sort(key=lambda k: np.mean([r.value("mAP") for r in groups[k]]))
        order.append(" < ".join(label(groups[k]) for k in here))
    return markdown_table(["method", *(f"{SCHEDULE_TITLES.get(s, s)}: rank-1 / mAP"
                                       for s in schedules)], [*table, order])


def time_block(out: Path) -> list[str]:
    lines = []
    for part in PARTS.values():
        for grid in part.grids:
            p = provenance(grid, out)
            if p:
                lines.append([f"`{grid.name}`", f"{p['runs_trained']} of {p['runs']}",
                              f"{p['minutes']:.1f}", str(p["invocations"]), p["date"],
                              p["commit"]])
    return markdown_table(["grid", "runs trained", "minutes", "invocations", "date", "commit"],
                          lines)


def replace_block(path: Path, name: str, lines: Sequence[str]) -> None:
    """Put ``lines`` between the ``<!-- study:name -->`` markers of ``path``."""
    text = path.read_text()
    start, end = MARKER.format(name), END_MARKER.format(name)
    if start not in text or end not in text:
        raise UserError(f"{path}: no {start} ... {end} markers to write the {name} table "
                        "between")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(path, head + start + "\n" + "\n".join(lines) + "\n" + end + tail)


def write_tables(out: Path, docs: Path) -> None:
    """docs/results/<part>.csv for every part with finished runs, then the tables."""
    rows = {name: [row for grid in part.grids for row in finished_rows(grid, out)]
            for name, part in PARTS.items()}
    for name, part in PARTS.items():
        if rows[name]:
            write_csv(part, rows[name], docs / "results" / f"{name}.csv")
    main, auto, tau = rows["main"], rows["auto"], rows["tau"]
    results, readme = docs / "results.md", docs.parent / "README.md"
    told_or_not = [PARTS["main"], PARTS["auto"]]
    replace_block(readme, "headline", [source(told_or_not, out, "docs/results/"), "",
                                       *headline_block(main + auto)])
    replace_block(results, "main", [source(told_or_not, out, "results/"), "",
                                    *main_block(main + auto)])
    replace_block(results, "tau", [source([PARTS["main"], PARTS["auto"], PARTS["tau"]], out,
                                          "results/"), "",
                                   *variants_block(main + auto + tau, "coteaching",
                                                   "Co-teaching (truth 0.5)")])
    replace_block(results, "jocor", [source([PARTS["main"], PARTS["jocor"]], out, "results/"),
                                     "", *variants_block(main + rows["jocor"], "jocor",
                                                         "JoCoR")])
    replace_block(results, "schedule", [source([PARTS["main"], PARTS["schedule"]], out,
                                               "results/"), "",
                                        *schedule_block(main + rows["schedule"])])
    replace_block(results, "time", time_block(out))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS),
                        help="which parts to train (default: all); the tables use every "
                        "finished run")
    parser.add_argument("--output_dir", default="study", help="the study's grids: "
                        "OUTPUT_DIR/<grid>/ (runs/, logs/, results.*, provenance.json)")
    parser.add_argument("--tables_only", action="store_true",
                        help="train nothing: write the CSVs and tables from the finished runs")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir).resolve()
    os.chdir(REPO)  # the demo's data (./demo_data) and the CSV's commands are the repository's
    if not args.tables_only:
        started = time.time()
        for name in args.parts:
            for grid in PARTS[name].grids:
                train_grid(grid, out)
        print(f"study: {(time.time() - started) / 60:.1f} minutes", flush=True)
    write_tables(out, REPO / "docs")
    print(f"tables: {REPO / 'docs' / 'results.md'}, {REPO / 'README.md'}; per run: "
          f"{REPO / 'docs' / 'results'}/*.csv", flush=True)


if __name__ == "__main__":
    run_cli(main)
