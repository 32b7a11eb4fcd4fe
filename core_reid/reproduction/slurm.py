"""What the grid's launcher asks SLURM itself, through its commands: whether the jobs' request
would be accepted (asked before any data is made or any backbone pretrained), where each job
stands (``squeue`` for live jobs, ``sacct`` for ended ones) and cancelling jobs. Every failure
to reach SLURM is one UserError line."""
from __future__ import annotations

import getpass
import subprocess
from dataclasses import dataclass
from typing import Iterable, Optional

from core_reid.utils import UserError

# States of a job that will not run again (SLURM's own names; a requeued job is PENDING again).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}
# Reasons a job is PENDING that no waiting cures: the request exceeds what the partition or
# the account allows (e.g. more CPUs than any node has, a time over the partition's limit).
NEVER_STARTS = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
                "BadConstraints", "InvalidAccount", "InvalidQOS", "AccountNotAllowed",
                "QOSNotAllowed"}
BLOCKED = "DependencyNeverSatisfied"  # a job it waits for (afterok) did not succeed
UNREACHABLE = "Unable to contact slurm controller"
# A job asks SLURM to signal it this long before its time limit (submitit's --signal=USR2@90),
# to save its run and requeue itself; SLURM may send the signal up to a minute earlier (the
# resolution of its event handling). A job of less than MIN_TIME_MIN minutes would get it as it
# starts, before the training runs.
SIGNAL_DELAY_S = 90
SIGNAL_EARLY_S = 60
MIN_TIME_MIN = -(-(SIGNAL_DELAY_S + SIGNAL_EARLY_S + 30) // 60)
MAX_TIMEOUTS = 3  # times a job may reach its time limit and be requeued (submitit's default)
TIMEOUT_S = 60  # a SLURM command that takes longer: the controller is not answering


@dataclass(frozen=True)
class JobState:
    """A job's SLURM state with, for a pending job, squeue's Reason and, for an ended one,
    sacct's ExitCode (``status:signal``)."""
    state: str
    reason: str = ""
    exit_code: str = ""

    @property
    def active(self) -> bool:
        return self.state not in ENDED

    def describe(self) -> str:
        """e.g. 'PENDING (Dependency)', 'FAILED, exit 1:0'."""
        return self.state + (f" ({self.reason})" if self.reason and self.reason != "None"
                             else "") + (f", exit {self.exit_code}" if self.exit_code else "")


def slurm_command(argv: list[str]) -> str:
    """Run a SLURM command; its stdout, or a UserError with its first error line."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} not found: SLURM is not installed on this machine; run "
                        "reproduce.py on the cluster's login node, or use --launcher local"
                        ) from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{argv[0]} got no answer from SLURM in {TIMEOUT_S} s: is slurmctld "
                        "running? (try sinfo)") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()
                 if line.strip()]
        said = lines[0] if lines else f"exit status {done.returncode}"
        if UNREACHABLE in said:
            raise UserError(f"{argv[0]} cannot reach the SLURM controller ({said}); check that "
                            "slurmctld runs (sinfo) and try again")
        raise UserError(f"SLURM refused {' '.join(argv[:2])}: {said}")
    return done.stdout


def check_time(time_min: int) -> None:
    """UserError for a ``--time`` too short for the job's warning signal to come after it
    starts."""
    if time_min < MIN_TIME_MIN:
        raise UserError(f"--time {time_min}: must be >= {MIN_TIME_MIN} (minutes) with --launcher "
                        f"slurm: SLURM signals a job {SIGNAL_DELAY_S} s before its time limit "
                        f"(up to {SIGNAL_EARLY_S} s earlier) to save and requeue it, so a shorter "
                        "job gets the signal as it starts and dies")


def check_request(partition: Optional[str], time_min: int, gpus: int, cpus: int) -> None:
    """``sbatch --test-only`` with the jobs' resources: the cluster is reachable and would
    accept them (partition, GPUs, CPUs, time), or a UserError naming the flags to change."""
    argv = ["sbatch", "--test-only", "--nodes=1", "--ntasks-per-node=1",
            f"--cpus-per-task={cpus}", f"--time={time_min}", "--wrap=true",
            *([f"--gpus-per-node={gpus}"] if gpus else []),
            *([f"--partition={partition}"] if partition else [])]
    try:
        slurm_command(argv)
    except UserError as err:
        if UNREACHABLE in str(err):
            raise
        flags = f"--cpus_per_job {cpus} --gpus_per_job {gpus} --time {time_min}" + (
            f" --partition {partition}" if partition else "")
        raise UserError(f"{err} (the jobs' request: {flags}; see sinfo for what the cluster "
                        "has)") from None


def job_states(job_ids: Iterable[str]) -> dict[str, JobState]:
    """Where each job stands: squeue for jobs SLURM still holds, sacct for the others (ended
    jobs leave squeue after MinJobAge). A job in neither is left out."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    states: dict[str, JobState] = {}
    ended: dict[str, JobState] = {}  # ended jobs squeue still shows, until sacct has them
    for line in slurm_command(["squeue", "-h", "-t", "all", "-u", getpass.getuser(),
                               "-o", "%i|%T|%r"]).splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if job_id in wanted:
            (ended if state in ENDED else states)[job_id] = JobState(state, reason)
    gone = sorted(wanted - set(states))
    if gone:
        for line in slurm_command(["sacct", "-n", "-P", "-X", "-j", ",".join(gone), "-o",
                                   "JobIDRaw,State,ExitCode"]).splitlines():
            job_id, state, exit_code = (line.split("|") + ["", ""])[:3]
            if job_id in wanted:
                states[job_id] = JobState(state.split()[0] if state else "UNKNOWN", "",
                                          exit_code)
    for job_id, state in ended.items():  # sacct may lag behind: not yet there, or RUNNING
        if job_id not in states or states[job_id].active:
            states[job_id] = state
    return states


def cancel(job_ids: Iterable[str]) -> None:
    ids = list(job_ids)
    if ids:
        slurm_command(["scancel", *ids])
