"""One writer per run folder: two identical ``train_self.py --resume auto`` started together
never both write it (the second gets one line naming the holder), and the lock of a writer
killed with ``kill -9`` does not keep the next one out."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16", "--batchsize",
        "4", "--workers", "0", "--epochs", "2", "--milestones", "1", "--eval_every", "1",
        "--run_name", "locked", "--resume", "auto"]


def train(data_dir: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train_self.py"), "--data_dir",
                             str(data_dir), "--output_dir", str(out), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_writers_started_together_one_trains_the_other_is_told_who_holds_the_run(
        data_dir, tmp_path):
    first, second = train(data_dir, tmp_path), train(data_dir, tmp_path)
    results = [(p.wait(timeout=600), *p.communicate()) for p in (first, second)]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    (_, _, err), = [r for r in results if r[0] == 2]
    holder = first if results[0][0] == 0 else second
    assert err.strip() == (f"error: {tmp_path / 'locked'} is in use: a training run by pid "
                           f"{holder.pid} on {socket.gethostname()} since "
                           f"{err.split(' since ')[1].split(';')[0]}; wait for it to end (or "
                           "stop it) and try again")
    history = json.loads((tmp_path / "locked" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]  # one run's epochs, written once
    assert not (tmp_path / "locked" / ".lock").exists()  # released and removed at the end


def test_the_lock_of_a_killed_writer_is_taken_over(data_dir, tmp_path):
    killed = train(data_dir, tmp_path)
    run = tmp_path / "locked"
    deadline = time.time() + 600
    while not (run / "last.pt").is_file():  # the first epoch saved
        assert killed.poll() is None and time.time() < deadline, killed.communicate()
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (run / ".lock").read_text().startswith(f"pid {killed.pid} on ")  # left behind
    again = train(data_dir, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "resuming after epoch 0" in (run / "train.log").read_text()
