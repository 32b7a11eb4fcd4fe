"""``reproduce.py --launcher slurm`` on a real SLURM (CI starts a single-node one with
``.ci/slurm/start.sh``): real ``sbatch``/``squeue``/``sacct``/``scancel``/``scontrol``, real
training on tiny data, started the way a user starts it (a subprocess, from a folder outside
the repository). Without a reachable SLURM these tests skip, unless CORE_REID_REQUIRE_SLURM is
set (CI sets it), which turns the skip into a failure."""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core_reid.reproduction.plan import NoiseSetting, Run, expand

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
         "--batchsize", "4", "--workers", "0", "--epochs", "2", "--milestones", "1",
         "--eval_every", "1"]
SLURM = ["--launcher", "slurm", "--gpus_per_job", "0", "--cpus_per_job", "1", "--time", "20"]
TIMING_KEYS = ("epoch_time_s", "images_per_s")  # the only fields a resumed run may change


@pytest.fixture(scope="module")
def cluster() -> None:
    """A SLURM that answers, or a skip (a failure where CORE_REID_REQUIRE_SLURM is set)."""
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                              timeout=60)
        reason = "" if info.returncode == 0 and info.stdout.strip() else (
            f"sinfo: {info.stderr.strip() or 'no nodes'}")
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        reason = f"sinfo: {err}"
    if reason:
        message = (f"no reachable SLURM ({reason}); start one as root with "
                   ".ci/slurm/start.sh")
        if os.environ.get("CORE_REID_REQUIRE_SLURM"):
            pytest.fail(message + " (CORE_REID_REQUIRE_SLURM is set)")
        pytest.skip(message)


def reproduce(cwd: Path, *argv: str, wait: bool = True, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python /abs/path/reproduce.py ARGV`` run from ``cwd``, under umask 022."""
    command = [sys.executable, str(REPO / "reproduce.py"), *argv]
    if wait:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, umask=0o022,
                              env=env, timeout=timeout)
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, umask=0o022, env=env)


def grid(data_dir: Path, out: Path, noise: str, *extra: str) -> list[str]:
    return ["--datasets", "market", "--noise", noise, "--methods", "baseline", "--seeds", "1",
            "--output_dir", str(out), "--data_dir", str(data_dir), *TRAIN, *SLURM, *extra]


def wait_until(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def squeue(*fields: str) -> list[list[str]]:
    """My jobs SLURM holds, one list of ``fields`` (squeue's % codes) each."""
    out = subprocess.run(["squeue", "-h", "-o", "|".join(fields)], capture_output=True,
                         text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def job_ids(text: str) -> dict[str, str]:
    """run name -> job id, from the launcher's [submitted]/[attached] lines."""
    return dict(re.findall(r"\[(?:submitted|attached)\] (\S+): job (\d+)", text))


def history(run_dir: Path) -> list[dict]:
    entries = json.loads((run_dir / "metrics.json").read_text())["history"]
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in entries]


def status_job(out: Path, run: Run) -> str:
    """The job id status.json records for ``run``."""
    return json.loads((out / "status.json").read_text())[run.name]["job_id"]


def one_error_line(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert message in lines[0], lines[0]


def test_a_run_submitted_from_any_folder_survives_a_usr2_without_losing_work(
        cluster, data_dir, tmp_path):
    """From a folder outside the repository, a job named after its run; ``scancel
    --signal=USR2`` (what SLURM sends before a time limit or at pre-emption) makes the running
    job save, requeue itself and finish with the history of an uninterrupted run; the
    launcher watches it to the end; files follow the umask."""
    out, elsewhere = tmp_path / "grid", tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = grid(data_dir, out, "random:0.5")
    launcher = reproduce(elsewhere, *argv, wait=False)
    run, = expand(["market"], [NoiseSetting("random", 0.5)], ["baseline"], [1],
                  ["--data_dir", str(data_dir), *TRAIN], tmp_path / "ref")
    reference = subprocess.Popen(run.command(), cwd=elsewhere, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT)  # the same run, never interrupted

    wait_until(lambda: squeue("%j") == [[run.name]], "the job", 120)  # named after its run
    (job,), = squeue("%i")
    log = out / "logs" / f"{run.name}.log"
    wait_until(lambda: log.is_file() and "epoch 0/" in log.read_text(), "the first epoch")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    stdout, stderr = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, stdout + stderr
    assert reference.wait(timeout=600) == 0
    text = log.read_text()
    assert "stopped by" in text and "resuming at epoch 1" in text, text
    assert f"[done] {run.name} (job {job})" in stdout
    assert "[interrupted]" not in stdout and "Traceback" not in stdout + stderr
    assert history(out / "runs" / run.name) == history(run.run_dir)

    status = json.loads((out / "status.json").read_text())
    assert status[run.name]["job_id"] == job and status[run.name]["outcome"] == "done"
    for path in (out / "runs" / run.name / "metrics.json", out / "runs" / run.name /
                 "last.pt", out / "results.md", out / "status.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not list((out / "slurm").glob("%j")) and not list(out.rglob(".lock"))


def test_one_job_per_run_detach_status_requeue_and_a_stopped_launcher(
        cluster, data_dir, tmp_path):
    """--detach submits and exits; the next launcher re-attaches instead of submitting again;
    ``scontrol requeue`` does not end the watching; SIGHUP stops the launcher (the job goes on,
    the message says how to cancel it); the next launcher re-attaches and sees it finish."""
    out, since = tmp_path / "grid", time.strftime("%Y-%m-%dT%H:%M:%S")
    argv = grid(data_dir, out, "random:0.5")
    detached = reproduce(tmp_path, *argv, "--detach")
    assert detached.returncode == 0, detached.stdout + detached.stderr
    (name, job), = job_ids(detached.stdout).items()
    assert "[submitted]" in detached.stdout and "1 jobs queued on SLURM" in detached.stdout
    shown = reproduce(tmp_path, *argv, "--status").stdout
    assert re.match(rf"(pending|running) +{name} \(job {job}", shown), shown

    launcher = reproduce(tmp_path, *argv, wait=False)
    log = out / "logs" / f"{name}.log"
    wait_until(lambda: log.is_file() and "epoch 0/" in log.read_text(), "the first epoch")
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_until(lambda: [job, "PENDING"] in squeue("%i", "%T"), "the requeued job", 60)
    time.sleep(5)
    assert launcher.poll() is None  # still watching the requeued job
    launcher.send_signal(signal.SIGHUP)
    stdout, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 75, stdout + stderr
    assert f"1 jobs still queued or running, which continue: {job}" in stderr
    assert f"cancel them with: scancel {job}" in stderr and "Traceback" not in stderr
    assert (out / "results.md").is_file()  # the report was written on the way out

    final = reproduce(tmp_path, *argv)
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"[attached] {name}: job {job}" in final.stdout
    assert f"[done] {name} (job {job})" in final.stdout
    assert "resuming" in log.read_text()
    accounted = subprocess.run(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobIDRaw",
                                "-S", since], capture_output=True, text=True).stdout
    assert accounted.split() == [job]  # one job for the run, ever


def test_a_failed_run_blocks_its_dependents_and_the_exit_status_says_so(
        cluster, data_dir, tmp_path):
    """The clean baseline fails (its checkpoint is damaged): one line with SLURM's state, the
    training's last line and the log; the patterned run, submitted with afterok on it, is
    blocked (cancelled by the launcher); exit status 1."""
    out = tmp_path / "grid"
    argv = grid(data_dir, out, "pattern:0.5")
    runs = expand(["market"], [NoiseSetting("pattern", 0.5)], ["baseline"], [1],
                  ["--data_dir", str(data_dir), *TRAIN], out)
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "last.pt").write_text("not a checkpoint")
    done = reproduce(tmp_path, *argv)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("[failed]")]
    assert len(failed) == 1 and runs[0].name in failed[0], done.stdout
    assert "FAILED, exit 1:0" in failed[0] and "damaged or truncated" in failed[0]
    assert f"log: {out / 'logs' / runs[0].name}.log" in failed[0]
    assert f"[blocked] {runs[1].name}" in done.stdout
    submitted = (out / "slurm" / f"{status_job(out, runs[1])}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{status_job(out, runs[0])}\n" in submitted
    assert "not finished: 1 failed, 1 blocked" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr and not squeue("%i")
    status = json.loads((out / "status.json").read_text())
    assert [status[run.name]["outcome"] for run in runs] == ["failed", "blocked"]


def test_a_job_that_can_never_start_is_reported_and_cancelled_is_not_failed(
        cluster, data_dir, tmp_path):
    """A time over the partition's limit: SLURM accepts the job but never starts it
    (Reason=PartitionTimeLimit). --status shows it pending, then cancelled after scancel; the
    foreground launcher prints SLURM's reason, cancels it and exits 1."""
    out = tmp_path / "grid"
    argv = grid(data_dir, out, "random:0.5", "--partition", "short", "--time", "5")
    detached = reproduce(tmp_path, *argv, "--detach")
    (name, job), = job_ids(detached.stdout).items()
    wait_until(lambda: re.match(rf"pending +{name} \(job {job}: PartitionTimeLimit\)",
                                reproduce(tmp_path, *argv, "--status").stdout),
               "SLURM's reason", 60)
    subprocess.run(["scancel", job], check=True)
    wait_until(lambda: reproduce(tmp_path, *argv, "--status").stdout.startswith("cancelled"),
               "the cancelled state", 60)

    done = reproduce(tmp_path, *argv)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SLURM will never start it (Reason=PartitionTimeLimit)" in done.stdout
    assert not squeue("%i")


def test_a_run_that_reaches_its_time_limit_too_often_says_so_and_how_to_continue(
        cluster, data_dir, tmp_path):
    """--time 3 with no requeue allowed (--max_timeouts 0): SLURM's warning before the time
    limit stops the training, which saves; the job is not requeued and ends FAILED. The
    launcher names the cause, where the run stands and the command that continues it; --status
    says the same; the runs that need it would be blocked (exit 1)."""
    out = tmp_path / "grid"
    argv = grid(data_dir, out, "random:0.5", "--time", "3", "--max_timeouts", "0",
                "--epochs", "100000", "--eval_every", "100000")  # far longer than 3 minutes
    done = reproduce(tmp_path, *argv)
    assert done.returncode == 1, done.stdout + done.stderr
    (name, job), = job_ids(done.stdout).items()
    line, = [line for line in done.stdout.splitlines() if line.startswith("[timed-out]")]
    assert line.startswith(f"[timed-out] {name} (job {job}): reached its time limit 1 time "
                           "(saved at "), line
    assert f"continue it with: python reproduce.py {' '.join(argv)} (add --max_timeouts" in line
    assert "not finished: 1 timed-out" in done.stdout and "Traceback" not in done.stderr
    run_dir = out / "runs" / name
    assert (run_dir / "last.pt").is_file() and "stopped by SIGTERM" in (
        run_dir / "train.log").read_text()
    shown = reproduce(tmp_path, "--status", "--output_dir", str(out)).stdout
    assert f"timed-out    {name} (job {job}: reached its time limit 1 time" in shown, shown


def test_slurm_unreachable_absent_or_refusing_is_one_line_before_any_work(
        cluster, tmp_path):
    """A partition or GPUs the cluster does not have, a controller that does not answer, no
    SLURM at all: one line, exit 2, before the demo's data or pretraining are made."""
    demo = ["--demo", "--output_dir", "grid", "--launcher", "slurm", "--cpus_per_job", "1"]
    for short in ("1", "2"):  # SLURM's warning before the time limit would come at the start
        one_error_line(reproduce(tmp_path, *demo, "--gpus_per_job", "0", "--time", short),
                       f"--time {short}: must be >= 3 (minutes)")
    one_error_line(reproduce(tmp_path, *demo, "--gpus_per_job", "0", "--partition", "nope"),
                   "invalid partition")
    one_error_line(reproduce(tmp_path, *demo, "--gpus_per_job", "1"), "--gpus_per_job 1")
    conf = tmp_path / "slurm.conf"  # this cluster's configuration, its controller elsewhere
    conf.write_text(re.sub(r"(?m)^SlurmctldHost=.*$", "SlurmctldHost=nowhere(127.0.0.1)\n"
                           "SlurmctldPort=6999", Path("/etc/slurm/slurm.conf").read_text())
                    + "MessageTimeout=2\n")  # each SLURM command gives up after 2 s, not 10
    one_error_line(reproduce(tmp_path, *demo, "--gpus_per_job", "0",
                             env=dict(os.environ, SLURM_CONF=str(conf))),
                   "cannot reach the SLURM controller")
    one_error_line(reproduce(tmp_path, *demo, "--gpus_per_job", "0",
                             env=dict(os.environ, PATH=str(tmp_path))),  # no SLURM commands
                   "sbatch not found: SLURM is not installed")
    assert not (tmp_path / "demo_data").exists()  # no data, hence no pretraining
    assert not (tmp_path / "grid" / "runs").exists() and not (tmp_path / "grid" / "slurm"
                                                                ).exists()
