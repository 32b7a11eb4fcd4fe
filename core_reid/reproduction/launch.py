"""Launchers: run the grid's training commands here (one per visible GPU at a time, one at a
time on the CPU) or on a SLURM cluster through submitit. Both start a run only after the runs it
needs are done (on SLURM: SLURM's own ``--dependency=afterok``), pass ``--resume auto`` so an
interrupted run continues, write each run's training output to ``<grid>/logs/<run>.log`` and
its outcome (and SLURM job id) to ``<grid>/status.json``.

A training script stopped by SIGTERM/SIGUSR1/SIGUSR2 saves ``last.pt`` and exits with
``utils.EXIT_RESUMABLE``; on SLURM, submitit's pre-emption / time-limit signal (USR2) makes the
job stop its training that way and requeue itself, so it continues where it stopped.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import submitit
from submitit.core.utils import JobPaths

from core_reid.engine import train
from core_reid.pretraining import SYNTHETIC, describe_record, synthetic_backbone
from core_reid.reproduction import slurm
from core_reid.reproduction.plan import REPO, Run, recorded_grid
from core_reid.run_data import prepare_synthetic_data
from core_reid.utils import EXIT_RESUMABLE, RunInterrupted, UserError, atomic_write_text

OUTCOME_OF_EXIT = {0: "done", EXIT_RESUMABLE: "interrupted"}
# Outcomes of a run that ended without finishing (the grid's exit status is then 1).
UNFINISHED = ("failed", "timed-out", "blocked", "cancelled")
# What submitit's log of a job says each time the job reaches its time limit, and when it will
# not requeue it again (its max_num_timeout is spent).
TIMED_OUT = "this job is timed-out"
TIMED_OUT_TOO_OFTEN = "timed-out too many times"


class StatusFile:
    """``<grid>/status.json``: each run's last outcome (done, failed, interrupted, blocked,
    cancelled, queued), with its SLURM job id and the reason of a failure."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict] = {}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except ValueError:
                self.data = {}

    def set(self, run: Run, outcome: str, exit_code: Optional[int] = None,
            log: Optional[Path] = None, job_id: Optional[str] = None, reason: str = "") -> None:
        self.data[run.name] = {"outcome": outcome, "exit_code": exit_code,
                               "log": str(log) if log else None, "job_id": job_id,
                               "reason": reason}
        atomic_write_text(self.path, json.dumps(self.data, indent=1))

    def job_id(self, run: Run) -> Optional[str]:
        return self.data.get(run.name, {}).get("job_id")


def run_log(grid_dir: Path, run: Run) -> Path:
    """Where a run's training output goes, whichever the launcher (attempts are appended)."""
    return grid_dir / "logs" / f"{run.name}.log"


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
                 (*UNFINISHED, "interrupted")), None)


def run_local(runs: Sequence[Run], grid_dir: Path, cwd: str, cpu_jobs: int = 1
              ) -> dict[str, str]:
    """Run what is not done, one run per visible GPU at a time (without a GPU, ``cpu_jobs`` at
    a time); SIGTERM/SIGINT stop every running run resumably and end with RunInterrupted."""
    status = StatusFile(grid_dir / "status.json")
    slots: list[Optional[str]] = visible_gpus() or [None] * cpu_jobs  # GPU of each slot
    outcomes = {run.name: "done" for run in runs if run.status()[0] == "done"}
    pending = [run for run in runs if run.name not in outcomes]
    running: dict[int, tuple[Run, subprocess.Popen, Path]] = {}  # by slot
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
                    free = next((i for i in range(len(slots)) if i not in running), None)
                    if free is None:
                        break
                    pending.remove(run)
                    log = run_log(grid_dir, run)
                    log.parent.mkdir(parents=True, exist_ok=True)
                    env = dict(os.environ, PYTHONUNBUFFERED="1")
                    gpu = slots[free]
                    if gpu is not None:
                        env["CUDA_VISIBLE_DEVICES"] = gpu
                    print(f"[start] {run.name}" + (f" on GPU {gpu}" if gpu else ""),
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


class TrainingFailed(Exception):
    """A SLURM job's training exited with an error: the job ends FAILED, so that SLURM never
    starts the runs that wait for it (``afterok``)."""


class TrainingJob:
    """What a SLURM job runs: one training command, its output appended to the run's log. At
    the time limit or on pre-emption submitit calls ``checkpoint`` (in its USR2 handler): the
    training saves and stops, and the job is requeued with the same command, which resumes
    with --resume auto."""

    def __init__(self, command: list[str], cwd: str, log: str):
        self.command, self.cwd, self.log = command, cwd, log
        self.process: Optional[subprocess.Popen] = None

    def __call__(self) -> int:
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, stdout=out,
                                            stderr=subprocess.STDOUT)
        while self.process.poll() is None:  # not wait(): see checkpoint
            time.sleep(0.5)
        if self.process.returncode != 0:
            raise TrainingFailed(f"the training exited with status {self.process.returncode}; "
                                 f"see {self.log}")
        return 0

    def checkpoint(self) -> Optional[submitit.helpers.DelayedSubmission]:
        """Stop the training resumably, wait for it to save, then requeue the job, unless the
        training failed on its own. It runs in a signal handler that may have interrupted
        ``__call__`` inside ``Popen.poll()``, which holds Popen's lock: so it waits with
        ``os.waitid(WNOWAIT)``, which takes no lock and leaves the exit status to ``__call__``."""
        process = self.process
        code = None if process is None else process.returncode
        if process is not None and code is None:
            process.send_signal(signal.SIGTERM)  # SLURM's USR2 may have reached it already
            try:
                info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
                code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            except ChildProcessError:  # __call__ collected it meanwhile
                code = process.returncode
        if code is not None and code > 0 and code != EXIT_RESUMABLE:
            return None  # an error of its own: no requeue, the job fails
        return submitit.helpers.DelayedSubmission(TrainingJob(self.command, self.cwd, self.log))

    def __getstate__(self) -> dict:  # a running process does not travel with the job
        return {"command": self.command, "cwd": self.cwd, "log": self.log, "process": None}


def submitit_log(grid_dir: Path, job_id: str) -> Path:
    """submitit's own log of a job (its signals, requeues and errors), appended to by every
    allocation of the job."""
    return JobPaths(grid_dir / "slurm", job_id=job_id, task_id=0).stderr


def existing_log(grid_dir: Path, run: Run, job_id: Optional[str]) -> Optional[Path]:
    """The log to read about a run: its training output, else (a job that ended before the
    training started) submitit's log of its job; None if neither exists."""
    for log in (run_log(grid_dir, run), submitit_log(grid_dir, job_id) if job_id else None):
        if log is not None and log.is_file():
            return log
    return None


def ended(run: Run, state: slurm.JobState, grid_dir: Path, job_id: str) -> tuple[str, str]:
    """A job that ended: its run's outcome (done whatever SLURM's state, cancelled, timed-out
    or failed) and, unless done, why, in words."""
    if run.status()[0] == "done":
        return "done", ""
    if state.state == "CANCELLED":
        return "cancelled", state.describe()
    log = submitit_log(grid_dir, job_id)
    said = log.read_text(errors="replace") if log.is_file() else ""
    if state.state == "TIMEOUT" or TIMED_OUT_TOO_OFTEN in said:
        times = max(said.count(TIMED_OUT), 1)
        command = recorded_grid(grid_dir).get("command", "the same reproduce.py command")
        return "timed-out", (
            f"reached its time limit {times} time{'s' if times > 1 else ''} (saved at "
            f"{run.status()[1]}/{run.epochs} epochs); continue it with: {command} (add "
            "--max_timeouts N for more requeues per job, or give a longer --time)")
    why = last_line(run_log(grid_dir, run)) or last_line(log)
    return "failed", state.describe() + (f"; {why}" if why else "")


def last_line(path: Path) -> str:
    """The last non-empty line of a log (a training's error, a traceback's last line)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class SlurmLauncher:
    """Submits the grid's runs as submitit jobs named after the runs, the runs that need
    others with SLURM's ``--dependency=afterok`` (submitit's local executor, which has no
    dependencies: once those are done), and watches them until each has truly ended: a
    requeued job is the same job, PENDING again. Each run's job id goes to status.json, so
    that a later launcher re-attaches to a job still queued or running instead of submitting
    the run twice."""

    POLL_S = 3.0

    def __init__(self, runs: Sequence[Run], grid_dir: Path, cwd: str,
                 partition: Optional[str], time_min: int, gpus: int, cpus: int, local: bool,
                 max_timeouts: int = slurm.MAX_TIMEOUTS):
        self.runs, self.grid_dir, self.cwd, self.local = runs, grid_dir, cwd, local
        self.status = StatusFile(grid_dir / "status.json")
        self.executor = submitit.AutoExecutor(
            folder=grid_dir / "slurm", cluster="local" if local else "slurm",
            **{f"{'local' if local else 'slurm'}_max_num_timeout": max_timeouts})
        # the job's Python unpickles a TrainingJob: it must find core_reid wherever it starts
        path = f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"
        self.executor.update_parameters(
            timeout_min=time_min, gpus_per_node=gpus, cpus_per_task=cpus,
            slurm_setup=[path], local_setup=[path], slurm_signal_delay_s=slurm.SIGNAL_DELAY_S,
            **({} if local or partition is None else {"slurm_partition": partition}))
        self.outcomes = {run.name: "done" for run in runs if run.status()[0] == "done"}
        self.jobs: dict[str, str] = {}  # run name -> id of its job being watched
        self.local_jobs: dict[str, submitit.Job] = {}

    def states(self) -> dict[str, slurm.JobState]:
        if not self.local:
            return slurm.job_states(self.jobs.values())
        return {job.job_id: slurm.JobState("RUNNING") if not job.done() else
                slurm.JobState("COMPLETED" if job.exception() is None else "FAILED")
                for job in self.local_jobs.values()}

    def attach(self) -> None:
        """Watch the jobs an earlier launcher submitted that SLURM still holds."""
        recorded = {run.name: self.status.job_id(run) for run in self.runs
                    if run.name not in self.outcomes and self.status.job_id(run)}
        if self.local or not recorded:
            return
        live = slurm.job_states(recorded.values())
        for run in self.runs:
            state = live.get(recorded.get(run.name, ""))
            if state is not None and state.active:
                self.jobs[run.name] = recorded[run.name]
                print(f"[attached] {run.name}: job {recorded[run.name]} "
                      f"({state.describe()})", flush=True)

    def settle(self, run: Run, outcome: str, job_id: Optional[str] = None,
               detail: str = "") -> None:
        """Record a run's outcome and print it, one line."""
        self.outcomes[run.name] = outcome
        self.jobs.pop(run.name, None)
        log = existing_log(self.grid_dir, run, job_id)
        self.status.set(run, outcome, log=log, job_id=job_id, reason=detail)
        where = f" (job {job_id})" if job_id else ""
        print(f"[{outcome}] {run.name}{where}" + (f": {detail}" if detail else "") + (
            f"; log: {log}" if outcome == "failed" and log else ""), flush=True)

    def submit_ready(self) -> None:
        """Submit every run not yet submitted whose needs are done or (on SLURM) submitted;
        a run whose need did not finish is blocked."""
        for run in self.runs:
            if run.name in self.outcomes or run.name in self.jobs:
                continue
            blocker = blocked_by(run, self.outcomes)
            if blocker:
                self.settle(run, "blocked", detail=f"needs {blocker}, which is "
                            f"{self.outcomes[blocker]}")
                continue
            waits = [self.jobs[need] for need in run.needs if need in self.jobs]
            if not all(self.outcomes.get(need) == "done" or need in self.jobs
                       for need in run.needs) or (waits and self.local):
                continue
            self.submit(run, waits)

    def submit(self, run: Run, waits: list[str]) -> None:
        extra = {"dependency": "afterok:" + ":".join(waits)} if waits else {}
        self.executor.update_parameters(name=run.name, slurm_additional_parameters=extra)
        log = run_log(self.grid_dir, run)
        try:
            job = self.executor.submit(TrainingJob(run.command(), self.cwd, str(log)))
        except Exception as err:  # sbatch refused (the check before passed: a changed cluster)
            for leftover in (self.grid_dir / "slurm").glob(".submission_file_*"):
                if not leftover.is_symlink():  # a symlink stands for a submitted job's script
                    leftover.unlink()
            said = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise UserError(f"SLURM refused the job of {run.name}: "
                            f"{said[-1] if said else type(err).__name__}") from None
        self.jobs[run.name] = job.job_id
        if self.local:
            self.local_jobs[run.name] = job
        else:
            self.status.set(run, "queued", log=log, job_id=job.job_id)
        print(f"[submitted] {run.name}: job {job.job_id}" +
              (f" (after job {', '.join(waits)})" if waits else ""), flush=True)

    def watch_once(self) -> None:
        """One look at the watched jobs: settle those that ended, stop waiting for those that
        can never start or wait for a run that did not finish."""
        states = self.states()
        for run in self.runs:
            job_id = self.jobs.get(run.name)
            state = states.get(job_id or "")
            if state is None:  # not yet known to sacct
                continue
            if state.active:
                blocker = blocked_by(run, self.outcomes)
                if state.reason in slurm.NEVER_STARTS:
                    slurm.cancel([job_id])
                    self.settle(run, "failed", job_id, f"SLURM will never start it "
                                f"(Reason={state.reason}); cancelled it: change --partition, "
                                "--cpus_per_job, --gpus_per_job or --time")
                elif blocker or state.reason == slurm.BLOCKED:
                    slurm.cancel([job_id])
                    self.settle(run, "blocked", job_id,
                                f"needs {blocker or ' '.join(run.needs)}, which did not finish")
                continue
            outcome, detail = ended(run, state, self.grid_dir, job_id)
            self.settle(run, outcome, job_id, detail)

    def run(self, detach: bool) -> dict[str, str]:
        """Submit (and, unless ``detach``, watch until every job ended); SIGHUP, SIGTERM and
        Ctrl-C stop the watching only: the jobs stay queued, and the message says how to
        cancel them."""
        self.attach()
        if detach:
            self.submit_ready()
            queued = {name: "queued" for name in self.jobs}
            print(f"{len(self.jobs)} jobs queued on SLURM: follow them with --status, write "
                  f"the tables with --report (each with --output_dir {self.grid_dir} alone: the "
                  "grid is recorded there)", flush=True)
            return {**self.outcomes, **queued}
        stop: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, _: stop.append(signum))
                    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                self.submit_ready()
                if not self.jobs or stop:
                    break
                time.sleep(self.POLL_S)
                self.watch_once()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if stop:
            ids = " ".join(self.jobs.values())
            where = ("; cancel them with: scancel " + ids) if not self.local else ""
            raise RunInterrupted(f"stopped watching on {signal.Signals(stop[0]).name}; "
                                 f"{len(self.jobs)} jobs still queued or running, which "
                                 f"continue: {ids}; follow them with --status{where}")
        return self.outcomes


def grid_status(runs: Sequence[Run], grid_dir: Path) -> list[str]:
    """One line per run: done, queued/pending/running (with SLURM's reason), failed,
    cancelled, blocked, interrupted or not started, from the run folders, status.json and
    SLURM."""
    status = StatusFile(grid_dir / "status.json")
    ids = {run.name: status.job_id(run) for run in runs if status.job_id(run)}
    states = slurm.job_states(ids.values()) if ids else {}
    lines = []
    for run in runs:
        state = states.get(ids.get(run.name, ""))
        recorded = status.data.get(run.name, {})
        job = f"job {ids[run.name]}" if run.name in ids else ""
        if run.status()[0] == "done":
            what, detail = "done", ""
        elif state is not None and state.active:
            what, detail = state.state.lower(), job + (
                f": {state.reason}" if state.reason not in ("", "None") else "")
        elif state is not None:
            what, why = ended(run, state, grid_dir, ids[run.name])
            log = existing_log(grid_dir, run, ids[run.name])
            detail = f"{job}: {why}" + (f"; log: {log}" if what == "failed" and log else "")
        elif recorded.get("outcome") in UNFINISHED:
            what, detail = recorded["outcome"], recorded.get("reason", "")
        else:
            state_now, finished = run.status()
            what = "interrupted" if state_now == "partial" else "not started"
            detail = f"{finished}/{run.args.epochs} epochs" if finished else ""
        lines.append(f"{what:<12} {run.name}" + (f" ({detail})" if detail else ""))
    return lines
