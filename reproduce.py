"""Reproduce the paper's tables: baseline, SELF and CORE (and, on request, any other registered
method: PurifyNet, Co-teaching, ...) x datasets x noise settings x seeds, trained here or on a
SLURM cluster, then turned into the paper-style table and figures.

    python reproduce.py --data_dir ../                       # the paper's grid, this machine
    python reproduce.py --data_dir ../ --datasets market --noise clean random:0.2 --seeds 1
    python reproduce.py --data_dir ../ --launcher slurm --partition gpu --time 720
    python reproduce.py --data_dir ../ --launcher slurm --detach  # submit all, then --status
    python reproduce.py --dry_run                            # the plan and exact commands
    python reproduce.py --report                             # tables and figures only
    python reproduce.py --demo --output_dir grid_demo        # a tiny grid, minutes on a CPU

Any other flag is a training flag and goes to every run (e.g. --epochs 30 --numerics
released; a method's own flags, e.g. --stage1_epochs, to that method's runs only). Rerunning
the same command skips finished runs, resumes interrupted ones and never redoes finished work
(on SLURM it re-attaches to the jobs still queued or running). Every invocation ends by writing
OUTPUT_DIR/results.{md,csv,tex} and OUTPUT_DIR/curves_<dataset>.png, and exits with status 1 if
a run failed, was cancelled or is blocked. docs/slurm.md: running the grid on a SLURM cluster.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from methods import METHODS, PAPER_METHODS
from core_reid.reproduction.launch import (UNFINISHED, SlurmLauncher, grid_status,
                                           prepare_inputs, run_local)
from core_reid.reproduction.plan import (GRID_RECORD, Run, describe_plan, expand, parse_noise,
                                         record_grid, recorded_grid)
from core_reid.reproduction.report import write_report
from core_reid.reproduction.slurm import MAX_TIMEOUTS, check_request, check_time
from core_reid.utils import (ArgumentParser, FolderLock, UserError, check_number,
                             check_writable_folder, run_cli)

# The paper's experiments (docs/reproducing.md): three datasets, clean labels and 10/20/30% random
# and patterned noise, the three methods, three seeds.
PAPER_DATASETS = ["market", "duke", "cuhk03"]
PAPER_NOISE = ["clean", "random:0.1,0.2,0.3", "pattern:0.1,0.2,0.3"]
# The demo grid: synthetic data, 50% random noise, from the synthetic pretraining (the paper's
# regime: a pretrained backbone; --pretrained none: scratch), on the released schedule's
# proportions at 24 epochs (released: 61 epochs, lr x0.1 at 20 and 50, co-refining from 21):
# the large learning rate for the first third, co-refining for the last two thirds.
DEMO = dict(datasets=["market"], noise=["random:0.5"], seeds=[1],
            train_flags=["--demo", "--img_size", "32", "16", "--epochs", "24", "--milestones",
                         "8", "20", "--stage1_epochs", "8", "--eval_every", "4",
                         "--diagnostics_every", "4", "--matmul_convs", "--pretrained",
                         "synthetic"])
GRID_FLAGS = ("--dataset", "--noise_ratio", "--pattern", "--pattern_model", "--seed",
              "--method", "--output_dir", "--run_name", "--resume")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, allow_abbrev=False)  # --seed is not --seeds
    a = parser.add_argument
    a("--datasets", nargs="+", default=None,
      help=f"datasets (default: the paper's, {' '.join(PAPER_DATASETS)})")
    a("--noise", nargs="+", default=None,
      help=f"noise settings: clean, random:R[,R...], pattern:R[,R...] (default: the paper's, "
      f"{' '.join(PAPER_NOISE)})")
    others = [name for name in METHODS if name not in PAPER_METHODS]
    a("--methods", nargs="+", default=None, choices=list(METHODS),
      help=f"methods (default: the paper's, {' '.join(PAPER_METHODS)}; also "
      f"{', '.join(others)}: docs/methods.md)")
    a("--seeds", type=int, nargs="+", default=None, help="seeds (default: 1 2 3); all share "
      "the noisy labels (--noise_seed, default 1)")
    a("--output_dir", default="./grid", help="the grid's folder: runs/, logs/, status.json, "
      "results.*, curves_*.png")
    a("--launcher", default="local", choices=["local", "slurm"],
      help="'local': this machine, one run per visible GPU at a time (serially on the CPU); "
      "'slurm': one submitit job per run")
    a("--jobs", type=int, default=1, help="runs at a time on a machine without a GPU "
      "(--launcher local); give each run as many threads as cores allow, e.g. --jobs 2 "
      "--threads 1 on two cores")
    a("--partition", default=None, help="SLURM partition (--launcher slurm; default: the "
      "cluster's default partition)")
    a("--time", type=int, default=1440, help="SLURM time limit per job in minutes (at least 3); "
      "a job that reaches it saves its run and is requeued (--launcher slurm)")
    a("--max_timeouts", type=int, default=MAX_TIMEOUTS, help="how many times a job may reach "
      "its --time and be requeued to go on (submitit's max_num_timeout); a run that needs "
      "longer ends 'timed-out', its progress saved (--launcher slurm)")
    a("--gpus_per_job", type=int, default=1, help="GPUs per SLURM job (--launcher slurm)")
    a("--cpus_per_job", type=int, default=8, help="CPUs per SLURM job, for data loading")
    a("--slurm_local", action="store_true", help="run the slurm launcher's jobs through "
      "submitit's local executor (no cluster; to try the launcher)")
    a("--detach", action="store_true", help="submit every run (SLURM enforces the order) and "
      "exit; follow them with --status (--launcher slurm)")
    a("--status", action="store_true", help="show each run: done, pending, running, failed, "
      "cancelled, blocked, not started; train nothing. With --report, needs no other flag "
      "than --output_dir: the grid is the one the last launching command recorded there")
    a("--dry_run", action="store_true", help="print the plan and the exact training commands; "
      "train nothing")
    a("--report", action="store_true", help="only write the tables and figures from the runs "
      "there are (no training data needed)")
    a("--demo", action="store_true", help="a tiny grid on synthetic data (CPU, minutes): "
      f"{' '.join(DEMO['noise'])}, seed 1, 24 epochs (lr x0.1 at 8 and 20, co-refining from "
      "9: the released schedule's proportions), from the synthetic pretraining")
    return parser


def parse(argv: Optional[Sequence[str]]):
    """(the grid's own flags, the training flags to pass through)."""
    cli, train_flags = build_parser().parse_known_args(argv)
    for flag in train_flags:
        if flag.split("=", 1)[0] in GRID_FLAGS:
            raise UserError(f"{flag} is set by the grid for each run; use --datasets, --noise, "
                            "--methods, --seeds or --output_dir instead")
    check_number("--time", cli.time, cli.time >= 1, ">= 1 (minutes)")
    check_number("--max_timeouts", cli.max_timeouts, cli.max_timeouts >= 0, ">= 0")
    if cli.launcher == "slurm":
        check_time(cli.time)
    check_number("--gpus_per_job", cli.gpus_per_job, cli.gpus_per_job >= 0, ">= 0")
    check_number("--jobs", cli.jobs, cli.jobs >= 1, ">= 1")
    check_number("--cpus_per_job", cli.cpus_per_job, cli.cpus_per_job >= 1, ">= 1")
    if cli.detach and (cli.launcher != "slurm" or cli.slurm_local):
        raise UserError("--detach needs --launcher slurm (without --slurm_local): only a "
                        "cluster runs the jobs once this command has exited")
    # Unless given: --demo's, else (--report, --status) the grid's own record, else the paper's.
    base = DEMO if cli.demo else (recorded_grid(Path(cli.output_dir))
                                  if cli.report or cli.status else {})
    given = train_flags or any(getattr(cli, key) is not None
                               for key in ("datasets", "noise", "methods", "seeds"))
    cli.recorded = base.get("command") if base and not cli.demo and not given else None
    cli.datasets = cli.datasets or base.get("datasets", PAPER_DATASETS)
    cli.noise = parse_noise(cli.noise or base.get("noise", PAPER_NOISE))
    cli.methods = cli.methods or base.get("methods", list(PAPER_METHODS))
    cli.seeds = cli.seeds or base.get("seeds", [1, 2, 3])
    return cli, [*base.get("train_flags", []), *train_flags]


def main(argv: Optional[Sequence[str]] = None) -> dict[str, str]:
    """Plan, then train (or show, or report) the grid; returns each run's outcome."""
    cli, train_flags = parse(argv)
    grid_dir = Path(cli.output_dir).resolve()
    check_writable_folder("--output_dir", grid_dir)
    looking = cli.status or cli.report  # reads the grid folder alone: no training data needed
    runs = expand(cli.datasets, cli.noise, cli.methods, cli.seeds, train_flags, grid_dir,
                  check=not looking)
    if cli.recorded:
        print(f"grid: as recorded in {grid_dir / GRID_RECORD} by: {cli.recorded}", flush=True)
    if cli.status:
        for line in grid_status(runs, grid_dir):
            print(line)
        return {}
    for line in describe_plan(runs):
        print(line, flush=True)
    outcomes: dict[str, str] = {}
    try:
        if cli.dry_run:
            for run in runs:
                print(shlex.join(run.command()))
        elif not cli.report:
            if all(run.status()[0] == "done" for run in runs):
                print("every run is done: nothing to train")
            else:
                outcomes = launch(cli, runs, grid_dir, train_flags, argv)
    finally:
        grid_dir.mkdir(parents=True, exist_ok=True)
        written = write_report(runs, grid_dir)
        print("report: " + ", ".join(str(p) for p in written), flush=True)
    unfinished = [outcome for outcome in outcomes.values() if outcome in UNFINISHED]
    if unfinished:
        counts = {outcome: unfinished.count(outcome) for outcome in UNFINISHED}
        print("not finished: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()
                                           if n) + " (see the lines above); rerun the same "
              "command to retry them", flush=True)
    return outcomes


def launch(cli: argparse.Namespace, runs: list[Run], grid_dir: Path, train_flags: list[str],
           argv: Optional[Sequence[str]]) -> dict[str, str]:
    """Train what is not done, one launcher per grid at a time; on SLURM, first ask whether the
    cluster accepts the jobs' request, before anything is made for them. The grid is recorded
    in its folder first, for --report and --status."""
    with FolderLock(grid_dir, "a launcher of this grid"):
        record_grid(grid_dir, cli.datasets, cli.noise, cli.methods, cli.seeds, train_flags,
                    ["python", "reproduce.py", *(sys.argv[1:] if argv is None else argv)])
        if cli.launcher == "local":
            prepare_inputs([run for run in runs if run.status()[0] != "done"])
            return run_local(runs, grid_dir, os.getcwd(), cli.jobs)
        if not cli.slurm_local:
            check_request(cli.partition, cli.time, cli.gpus_per_job, cli.cpus_per_job)
        prepare_inputs([run for run in runs if run.status()[0] != "done"])
        return SlurmLauncher(runs, grid_dir, os.getcwd(), cli.partition, cli.time,
                             cli.gpus_per_job, cli.cpus_per_job, cli.slurm_local,
                             cli.max_timeouts).run(cli.detach)


if __name__ == "__main__":
    run_cli(lambda: sys.exit(1 if set(main().values()) & set(UNFINISHED) else 0))
