"""The grid of runs: which (dataset, noise setting, method, seed) runs there are, their exact
training commands, the order their dependencies impose, and where each one stands.

Patterned noise needs a baseline trained on clean labels: one per dataset (the grid's first
seed), added to the grid when the grid does not hold it, trained first, its ``last.pt`` passed
as ``--pattern_model``; all seeds then share the same noisy labels, as in the released code.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from methods import METHODS, method_flags
from core_reid.options import build_parser, check_args, parse_args
from core_reid.runs import run_name
from core_reid.utils import UserError, atomic_write_text

REPO = Path(__file__).resolve().parents[2]  # where the training scripts are
GRID_RECORD = "grid.json"  # in the grid's folder: what makes the grid (record_grid)


@dataclass(frozen=True)
class NoiseSetting:
    """``clean``, ``random:R`` or ``pattern:R`` (one ratio)."""
    kind: str
    ratio: float

    @property
    def label(self) -> str:
        return "clean" if self.kind == "clean" else f"{self.kind} {self.ratio:g}"

    @property
    def spec(self) -> str:
        """As ``--noise`` takes it."""
        return "clean" if self.kind == "clean" else f"{self.kind}:{self.ratio:g}"

    def flags(self) -> list[str]:
        if self.kind == "clean":
            return ["--noise_ratio", "0"]
        return ["--noise_ratio", f"{self.ratio:g}", *(["--pattern"] if self.kind == "pattern"
                                                      else [])]


def parse_noise(specs: Sequence[str]) -> list[NoiseSetting]:
    """``clean random:0.1,0.2 pattern:0.2`` -> settings, in the order given."""
    settings = []
    for spec in specs:
        kind, _, ratios = spec.partition(":")
        if kind == "clean" and not ratios:
            settings.append(NoiseSetting("clean", 0.0))
            continue
        if kind not in ("random", "pattern") or not ratios:
            raise UserError(f"--noise {spec}: give clean, random:R[,R...] or pattern:R[,R...] "
                            "(e.g. random:0.1,0.2,0.3)")
        for text in ratios.split(","):
            try:
                ratio = float(text)
            except ValueError:
                ratio = -1.0
            if not 0 < ratio < 1:
                raise UserError(f"--noise {spec}: ratio {text!r} must be a number in (0, 1)")
            settings.append(NoiseSetting(kind, ratio))
    return list(dict.fromkeys(settings))


@dataclass
class Run:
    """One training run of the grid."""
    dataset: str
    noise: NoiseSetting
    method: str
    seed: int
    argv: list[str]              # the training script's flags
    args: argparse.Namespace     # what they parse to (defaults filled in)
    name: str
    run_dir: Path
    needs: list[str] = field(default_factory=list)  # names of runs that must finish first
    in_grid: bool = True         # False: added only as a dependency

    @property
    def script(self) -> str:
        return METHODS[self.method].script

    @property
    def epochs(self) -> int:
        """Epochs in the whole run (every stage): the length of its method's schedule."""
        return len(METHODS[self.method](self.args).lr_schedule(self.args))

    def command(self) -> list[str]:
        """The exact training command (the script's absolute path: jobs may start elsewhere);
        ``--resume auto`` continues an interrupted run and starts a new one otherwise."""
        return [sys.executable, str(REPO / self.script), *self.argv, "--resume", "auto"]

    def status(self) -> tuple[str, int]:
        """('done' | 'partial' | 'todo', epochs finished), from the run folder alone."""
        metrics = self.run_dir / "metrics.json"
        finished = 0
        if metrics.is_file():
            try:
                history = json.loads(metrics.read_text()).get("history", [])
                finished = len(history)
            except ValueError:
                history = []
            if history and history[-1].get("epoch") == self.epochs - 1 and \
                    (self.run_dir / "last.pt").is_file():
                return "done", finished
        return ("partial" if (self.run_dir / "last.pt").is_file() else "todo"), finished


def expand(datasets: Sequence[str], noise: Sequence[NoiseSetting], methods: Sequence[str],
           seeds: Sequence[int], train_flags: Sequence[str], output_dir: Path,
           check: bool = True) -> list[Run]:
    """Every run of the grid with its command, dependencies first. ``train_flags`` go to every
    run (a method's own flags, those its class adds, to the runs of the methods that read them
    only) and are checked here, once, by the scripts' own parsers (unless ``check`` is False:
    reading a grid's folder needs neither its data nor its inputs)."""
    for method in methods:
        if method not in METHODS:
            raise UserError(f"--methods {method}: choose from {', '.join(METHODS)}")
    runs_dir = output_dir / "runs"
    runs: dict[str, Run] = {}
    readers = method_flags()

    def make(dataset: str, setting: NoiseSetting, method: str, seed: int,
             in_grid: bool) -> Run:
        others = [flag for flag, (_, read_by) in readers.items() if method not in read_by]
        flags = _without(list(train_flags), others)
        argv = ["--method", method, *flags, "--dataset", dataset, *setting.flags(), "--seed",
                str(seed), "--output_dir", str(runs_dir)]
        needs = []
        if setting.kind == "pattern":
            clean = make(dataset, NoiseSetting("clean", 0.0), "baseline", seeds[0],
                         in_grid=False)
            runs.setdefault(clean.name, clean)
            needs = [clean.name]
            argv += ["--pattern_model", str(clean.run_dir / "last.pt")]
        parser = build_parser(METHODS[method].script)
        args = parse_args(parser, argv, check=False)  # checked below, once the order is known
        args.method = method
        name = run_name(args)
        argv += ["--run_name", name]
        return Run(dataset, setting, method, seed, argv, args, name, runs_dir / name, needs,
                   in_grid)

    for dataset in datasets:
        for setting in noise:
            for method in methods:
                for seed in seeds:
                    run = make(dataset, setting, method, seed, in_grid=True)
                    if run.name in runs:
                        runs[run.name].in_grid = True
                    else:
                        runs[run.name] = run
    needed = {need for run in runs.values() for need in run.needs}
    ordered = sorted(runs.values(), key=lambda r: (r.name not in needed, len(r.needs)))
    for run in ordered:  # the scripts' own checks, but not of files the grid will make
        if check and not run.needs:
            check_args(run.args)
    return ordered


def record_grid(grid_dir: Path, datasets: Sequence[str], noise: Sequence[NoiseSetting],
                methods: Sequence[str], seeds: Sequence[int], train_flags: Sequence[str],
                command: Sequence[str]) -> None:
    """Write what makes the grid (``GRID_RECORD``), so that --report and --status need none of
    its flags again: the last command that launched runs in ``grid_dir``."""
    atomic_write_text(grid_dir / GRID_RECORD, json.dumps(
        {"datasets": list(datasets), "noise": [setting.spec for setting in noise],
         "methods": list(methods), "seeds": list(seeds), "train_flags": list(train_flags),
         "command": shlex.join(command)}, indent=1))


def recorded_grid(grid_dir: Path) -> dict[str, Any]:
    """The grid ``record_grid`` wrote in ``grid_dir`` ({} if none)."""
    path = grid_dir / GRID_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "command" not in record:
            raise ValueError("not a grid record")
    except ValueError:
        raise UserError(f"{path}: damaged; pass the grid's flags again (its datasets, noise, "
                        "methods, seeds and training flags), or delete it") from None
    return record


def _without(flags: list[str], names: Sequence[str]) -> list[str]:
    """``flags`` without the named flags and their values."""
    kept, skipping = [], False
    for flag in flags:
        if flag.startswith("--"):
            skipping = flag.split("=", 1)[0] in names
        if not skipping:
            kept.append(flag)
    return kept


def epoch_seconds(runs: Sequence[Run]) -> dict[tuple[str, str], float]:
    """Mean measured seconds per epoch for each (dataset, method), from the runs' metrics."""
    times: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        metrics = run.run_dir / "metrics.json"
        if metrics.is_file():
            try:
                history = json.loads(metrics.read_text()).get("history", [])
            except ValueError:
                continue
            times.setdefault((run.dataset, run.method), []).extend(
                h["epoch_time_s"] for h in history if "epoch_time_s" in h)
    return {key: sum(v) / len(v) for key, v in times.items() if v}


def describe_plan(runs: Sequence[Run]) -> list[str]:
    """The plan's lines: counts, what is done, and the estimated remaining compute time."""
    states = [run.status() for run in runs]
    done = sum(state == "done" for state, _ in states)
    partial = sum(state == "partial" for state, _ in states)
    added = sum(not run.in_grid for run in runs)
    lines = [f"grid: {len(runs)} runs ({added} clean baselines added for patterned noise): "
             f"{done} done, {partial} interrupted (will resume), {len(runs) - done - partial} "
             "to start"]
    seconds = epoch_seconds(runs)
    remaining, unknown = 0.0, 0
    for run, (state, finished) in zip(runs, states):
        if state == "done":
            continue
        per_epoch = seconds.get((run.dataset, run.method))
        if per_epoch is None:
            unknown += 1
        else:
            remaining += per_epoch * (run.epochs - finished)
    if unknown:
        lines.append(f"estimate: {unknown} runs have no measured epoch time yet (it appears once "
                     "one epoch of the same dataset and method has run)"
                     + (f"; the others need about {remaining / 3600:.2f} device-hours"
                        if remaining else ""))
    elif remaining:
        lines.append(f"estimate: about {remaining / 3600:.2f} device-hours left, from the "
                     "measured seconds per epoch")
    return lines


def find_run(runs: Sequence[Run], name: str) -> Optional[Run]:
    return next((run for run in runs if run.name == name), None)
