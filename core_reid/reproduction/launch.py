"""Launchers: run the grid's training commands here (one per visible GPU at a time, one at a
time on the CPU) or on a SLURM cluster through submitit. Both start a run only after the runs it
needs are done, pass ``--resume auto`` so an interrupted run continues, and write each run's
outcome to ``<grid>/status.json``.

A training script stopped by SIGTERM/SIGUSR1 saves ``last.pt`` and exits with
``utils.EXIT_RESUMABLE``; on SLURM, submitit's pre-emption / time-out signal makes the job stop
its training that way and requeue itself, so it continues where it stopped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import submitit

from core_reid.engine import train
from core_reid.pretraining import SYNTHETIC, describe_record, synthetic_backbone
from core_reid.reproduction.plan import Run
from core_reid.run_data import prepare_synthetic_data
from core_reid.utils import EXIT_RESUMABLE, RunInterrupted, atomic_write_text

OUTCOME_OF_EXIT = {0: "done", EXIT_RESUMABLE: "interrupted"}


class StatusFile:
    """``<grid>/status.json``: each run's last outcome (done, failed, interrupted, blocked)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict] = {}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                self.data = {}

    def set(self, run: Run, outcome: str, exit_code: Optional[int] = None,
            log: Optional[Path] = None) -> None:
        self.data[run.name] = {"outcome": outcome, "exit_code": exit_code,
                               "log": str(log) if log else None}
        atomic_write_text(self.path, json.dumps(self.data, indent=1))


def prepare_inputs(runs: Sequence[Run]) -> None:
    """Make what the runs would each make on their own, once, before any starts (parallel jobs
    would race for it): the demo's synthetic data and the synthetic pretraining of each
    architecture and image size that starts from it (its time counts in the grid's)."""
    demo = [run.args for run in runs if run.args.demo]
    if demo:
        prepare_synthetic_data(Path(demo[0].data_dir), demo[0].workers)
    pretrained = {(run.args.data_dir, run.args.arch, tuple(run.args.img_size)): run.args
                  for run in runs if run.args.pretrained == SYNTHETIC}
    for args in pretrained.values():
        print(describe_record(synthetic_backbone(args, train)[1]), flush=True)


def visible_gpus() -> list[str]:
    """The GPUs runs may use: CUDA_VISIBLE_DEVICES if set, else every CUDA device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def blocked_by(run: Run, outcomes: dict[str, str]) -> Optional[str]:
    return next((need for need in run.needs if outcomes.get(need) in
                 ("failed", "blocked", "interrupted")), None)


def run_local(runs: Sequence[Run], grid_dir: Path, cwd: str) -> dict[str, str]:
    """Run what is not done, one run per visible GPU at a time (on the CPU one at a time);
    SIGTERM/SIGINT stop every running run resumably and end with RunInterrupted."""
    status = StatusFile(grid_dir / "status.json")
    slots: list[Optional[str]] = visible_gpus() or [None]
    outcomes = {run.name: "done" for run in runs if run.status()[0] == "done"}
    pending = [run for run in runs if run.name not in outcomes]
    running: dict[Optional[str], tuple[Run, subprocess.Popen, Path]] = {}
    stop: list[int] = []
    signalled: set[int] = set()
    previous = {sig: signal.signal(sig, lambda signum, _: stop.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while pending or running:
            if stop:
                for _, process, _ in running.values():
                    if process.pid not in signalled:  # once: the run saves last.pt and exits
                        process.send_signal(signal.SIGTERM)
                        signalled.add(process.pid)
            for slot, (run, process, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[slot]
                outcomes[run.name] = OUTCOME_OF_EXIT.get(code, "failed")
                status.set(run, outcomes[run.name], code, log)
                print(f"[{outcomes[run.name]}] {run.name}" + (
                    f" (exit {code}; see {log})" if outcomes[run.name] == "failed" else ""),
                    flush=True)
            if stop:
                if not running:
                    raise RunInterrupted(f"stopped by {signal.Signals(stop[0]).name}; rerun "
                                         "the same command to continue the grid")
                time.sleep(0.2)
                continue
            for run in list(pending):
                blocker = blocked_by(run, outcomes)
                if blocker:
                    pending.remove(run)
                    outcomes[run.name] = "blocked"
                    status.set(run, "blocked")
                    print(f"[blocked] {run.name}: {blocker} did not finish", flush=True)
                elif all(outcomes.get(need) == "done" for need in run.needs):
                    free = next((s for s in slots if s not in running), "busy")
                    if free == "busy":
                        break
                    pending.remove(run)
                    log = grid_dir / "logs" / f"{run.name}.log"
                    log.parent.mkdir(parents=True, exist_ok=True)
                    env = dict(os.environ, PYTHONUNBUFFERED="1")
                    if free is not None:
                        env["CUDA_VISIBLE_DEVICES"] = free
                    print(f"[start] {run.name}" + (f" on GPU {free}" if free else ""),
                          flush=True)
                    with open(log, "a") as out:
                        # its own session: a Ctrl-C in the terminal reaches only this
                        # launcher, which stops the run resumably with SIGTERM
                        process = subprocess.Popen(run.command(), cwd=cwd, env=env,
                                                   stdout=out, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
                    running[free] = (run, process, log)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcomes


class TrainingJob:
    """What a SLURM job runs: one training command. On pre-emption or time-out submitit calls
    ``checkpoint``: the training is stopped resumably and the job requeued with the same
    command (which resumes with --resume auto)."""

    def __init__(self, command: list[str], cwd: str):
        self.command, self.cwd = command, cwd
        self.process: Optional[subprocess.Popen] = None

    def __call__(self) -> int:
        self.process = subprocess.Popen(self.command, cwd=self.cwd)
        return self.process.wait()

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait()
        return submitit.helpers.DelayedSubmission(TrainingJob(self.command, self.cwd))

    def __getstate__(self) -> dict:  # a running process does not travel with the job
        return {"command": self.command, "cwd": self.cwd, "process": None}


def run_slurm(runs: Sequence[Run], grid_dir: Path, cwd: str, partition: Optional[str],
              time_min: int, gpus: int, cpus: int, local: bool = False) -> dict[str, str]:
    """Submit what is not done through submitit, dependencies first (wave by wave), one job per
    run, and wait for the jobs. ``local``: submitit's local executor (no cluster needed)."""
    status = StatusFile(grid_dir / "status.json")
    executor = submitit.AutoExecutor(folder=grid_dir / "slurm" / "%j",
                                     cluster="local" if local else "slurm")
    executor.update_parameters(timeout_min=time_min, gpus_per_node=gpus, cpus_per_task=cpus,
                               name="core-reid", **({} if local or partition is None else
                                                    {"slurm_partition": partition}))
    outcomes = {run.name: "done" for run in runs if run.status()[0] == "done"}
    waves = sorted({len(run.needs) for run in runs})
    for wave in waves:
        jobs = []
        for run in runs:
            if len(run.needs) != wave or run.name in outcomes:
                continue
            blocker = blocked_by(run, outcomes)
            if blocker or not all(outcomes.get(need) == "done" for need in run.needs):
                outcomes[run.name] = "blocked"
                status.set(run, "blocked")
                continue
            job = executor.submit(TrainingJob(run.command(), cwd))
            print(f"[submitted] {run.name}: job {job.job_id}", flush=True)
            jobs.append((run, job))
        for run, job in jobs:
            try:
                code = job.result()
            except Exception as err:  # the job itself failed (node failure, cancelled, ...)
                print(f"[failed] {run.name}: {type(err).__name__}", flush=True)
                code = -1
            outcomes[run.name] = OUTCOME_OF_EXIT.get(code, "failed")
            status.set(run, outcomes[run.name], code, Path(job.paths.stdout))
            print(f"[{outcomes[run.name]}] {run.name}", flush=True)
    return outcomes
