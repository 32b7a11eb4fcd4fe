"""The reproduction grid end to end on tiny synthetic data: plan, dependency order, runs,
tables and figures, a rerun that trains nothing, a grid stopped by SIGTERM and completed by a
rerun with the same table, and the slurm launcher through submitit's local executor."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import reproduce
from core_reid.reproduction.launch import TrainingFailed, TrainingJob
from core_reid.reproduction.plan import NoiseSetting, expand, parse_noise
from core_reid.utils import EXIT_RESUMABLE, UserError

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
         "--batchsize", "8", "--workers", "0", "--epochs", "3", "--milestones", "2",
         "--stage1_epochs", "1", "--eval_every", "1"]


def grid_argv(data_dir, out, *extra):
    return ["--datasets", "market", "--noise", "random:0.5", "pattern:0.5", "--methods",
            "baseline", "core", "--seeds", "1", "--output_dir", str(out), "--data_dir",
            str(data_dir), *TRAIN, *extra]


@pytest.fixture(scope="module")
def finished_grid(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    outcomes = reproduce.main(grid_argv(data_dir, out))
    return out, outcomes


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_noise_settings_parse_and_bad_ones_are_one_line():
    assert parse_noise(["clean", "random:0.1,0.2", "pattern:0.3"]) == [
        NoiseSetting("clean", 0.0), NoiseSetting("random", 0.1), NoiseSetting("random", 0.2),
        NoiseSetting("pattern", 0.3)]
    for bad in ("random", "random:1.5", "gaussian:0.2", "pattern:x"):
        with pytest.raises(UserError, match=f"--noise {bad}"):
            parse_noise([bad])


def test_plan_orders_the_clean_baseline_first_and_passes_its_checkpoint(data_dir, tmp_path):
    runs = expand(["market"], parse_noise(["random:0.5", "pattern:0.5"]), ["baseline", "core"],
                  [1, 2], ["--data_dir", str(data_dir), *TRAIN], tmp_path)
    assert len(runs) == 9 and runs[0].name == "market_baseline_clean_lr0.01_seed1_resnet18"
    assert not runs[0].in_grid  # added only because patterned noise needs it
    clean_ckpt = str(runs[0].run_dir / "last.pt")
    for run in runs[1:]:
        pattern = run.noise.kind == "pattern"
        assert (clean_ckpt in run.command()) == pattern and run.needs == (
            [runs[0].name] if pattern else [])
        assert ("--stage1_epochs" in run.argv) == (run.method == "core")
        assert run.command()[-2:] == ["--resume", "auto"]
    assert len({run.name for run in runs}) == 9


def test_dry_run_prints_the_exact_commands(data_dir, tmp_path, capsys):
    reproduce.main(grid_argv(data_dir, tmp_path, "--dry_run"))
    out = capsys.readouterr().out
    assert "grid: 5 runs (1 clean baselines added for patterned noise): 0 done" in out
    commands = [line for line in out.splitlines() if "train_" in line]
    assert len(commands) == 5 and "train_self.py --method baseline" in commands[0]
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_grid_flags_cannot_be_passed_through(data_dir, tmp_path):
    with pytest.raises(UserError, match="--seed is set by the grid"):
        reproduce.main(grid_argv(data_dir, tmp_path, "--seed", "3"))


def test_grid_runs_and_writes_the_paper_style_tables(finished_grid):
    out, outcomes = finished_grid
    assert sorted(outcomes.values()) == ["done"] * 5
    rows = read_csv(out / "results.csv")
    assert [(r["noise"], r["method"]) for r in rows] == [
        ("random 0.5", "baseline"), ("random 0.5", "core"), ("pattern 0.5", "baseline"),
        ("pattern 0.5", "core")]
    for row in rows:
        metrics = json.loads(next((out / "runs").glob(
            f"market_{row['method']}_{row['noise'].replace(' ', '')}_*/metrics.json")
        ).read_text())
        assert float(row["final_rank1_mean"]) == pytest.approx(metrics["final"]["rank1"], 1e-5)
        assert float(row["best_mAP_mean"]) == pytest.approx(metrics["best"]["mAP"], 1e-5)
        assert row["seeds_done"] == row["seeds_expected"] == "1"
    markdown = (out / "results.md").read_text()
    assert "| CORE |" in markdown and "optimistic" in markdown and "label precision" in markdown
    assert r"\multicolumn{2}{c}{market}" in (out / "results.tex").read_text()
    with Image.open(out / "curves_market.png") as figure:
        assert figure.size[0] > figure.size[1] > 300


def test_a_second_invocation_trains_nothing(data_dir, finished_grid, capsys):
    out, _ = finished_grid
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/last.pt")}
    reproduce.main(grid_argv(data_dir, out))
    assert "every run is done: nothing to train" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints


def test_two_cpu_jobs_run_side_by_side_with_the_serial_grids_results(data_dir, finished_grid,
                                                                     tmp_path, capsys):
    out = tmp_path / "grid"
    outcomes = reproduce.main(["--datasets", "market", "--noise", "random:0.5", "--methods",
                               "baseline", "--seeds", "1", "2", "--jobs", "2", "--output_dir",
                               str(out), "--data_dir", str(data_dir), *TRAIN])
    assert sorted(outcomes.values()) == ["done", "done"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[start]", "[start]", "[done]", "[done]"]
    timing = ("epoch_time_s", "images_per_s")
    history = lambda path: [{k: v for k, v in h.items() if k not in timing}  # noqa: E731
                            for h in json.loads(path.read_text())["history"]]
    name = "market_baseline_random0.5_noiseseed1_lr0.01_seed1_resnet18"
    assert history(out / "runs" / name / "metrics.json") == \
        history(finished_grid[0] / "runs" / name / "metrics.json")


def test_missing_runs_are_shown_not_dropped(data_dir, finished_grid, tmp_path):
    out = tmp_path / "grid"
    shutil.copytree(finished_grid[0], out)
    reproduce.main(grid_argv(data_dir, out, "--seeds", "1", "2", "--report"))
    rows = read_csv(out / "results.csv")
    assert {(r["seeds_done"], r["seeds_expected"], r["missing"]) for r in rows} == {
        ("1", "2", "1 missing")}
    assert "(1/2 seeds; 1 missing)" in (out / "results.md").read_text()


def test_report_and_status_need_only_the_grid_folder(finished_grid, tmp_path, capsys):
    """The grid records its own invocation: --report and --status need no other flag than
    --output_dir, and no training data (here: the data folder the grid names is gone)."""
    out = tmp_path / "grid"
    shutil.copytree(finished_grid[0], out)
    record = json.loads((out / "grid.json").read_text())
    flags = record["train_flags"]
    flags[flags.index("--data_dir") + 1] = str(tmp_path / "gone")
    (out / "grid.json").write_text(json.dumps(record))
    (out / "results.csv").unlink()
    capsys.readouterr()
    reproduce.main(["--status", "--output_dir", str(out)])
    shown = capsys.readouterr().out
    assert f"as recorded in {out / 'grid.json'} by: python reproduce.py --datasets market" in shown
    assert [line.split()[0] for line in shown.splitlines()[1:]] == ["done"] * 5, shown
    reproduce.main(["--report", "--output_dir", str(out)])
    assert read_csv(out / "results.csv") == read_csv(finished_grid[0] / "results.csv")


def test_sigterm_stops_the_grid_resumably_and_a_rerun_gives_the_same_table(
        data_dir, finished_grid, tmp_path):
    """The finished grid with one run missing: the grid trains that run, is stopped in its
    first epoch, and a rerun resumes it to the finished grid's table."""
    out = tmp_path / "grid"
    shutil.copytree(finished_grid[0], out)
    missing = next(name for name in finished_grid[1] if "_core_random" in name)
    shutil.rmtree(out / "runs" / missing)
    log = out / "runs" / missing / "train.log"
    proc = subprocess.Popen([sys.executable, "reproduce.py", *grid_argv(data_dir, out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not log.is_file() or "epoch 0/" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == EXIT_RESUMABLE, err
    assert "interrupted: stopped by SIGTERM" in err and "Traceback" not in err
    status = json.loads((out / "status.json").read_text())
    assert [name for name, s in status.items() if s["outcome"] == "interrupted"] == [missing]
    state = torch.load(out / "runs" / missing / "last.pt", weights_only=False)
    assert state["method"] == "core"  # loadable

    again = subprocess.run([sys.executable, "reproduce.py", *grid_argv(data_dir, out)],
                           cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert "1 interrupted (will resume)" in again.stdout
    assert read_csv(out / "results.csv") == read_csv(finished_grid[0] / "results.csv")


def test_slurm_launcher_through_submitits_local_executor(data_dir, finished_grid, tmp_path):
    out = tmp_path / "grid"
    argv = ["--datasets", "market", "--noise", "random:0.5", "--methods", "baseline",
            "--seeds", "1", "--output_dir", str(out), "--data_dir", str(data_dir), *TRAIN,
            "--launcher", "slurm", "--slurm_local", "--gpus_per_job", "0", "--time", "20"]
    outcomes = reproduce.main(argv)
    assert list(outcomes.values()) == ["done"]
    expected = [r for r in read_csv(finished_grid[0] / "results.csv")
                if (r["noise"], r["method"]) == ("random 0.5", "baseline")]
    assert read_csv(out / "results.csv") == expected  # the same run, the same numbers
    assert list((out / "slurm").glob("*_log.out")) and not (out / "slurm" / "%j").exists()
    assert "epoch 0/" in (out / "logs" / f"{next(iter(outcomes))}.log").read_text()


def test_a_preempted_job_stops_its_run_and_requeues_it(data_dir, tmp_path):
    """What submitit calls on pre-emption: ``checkpoint`` stops the training resumably and
    returns the same job, which continues the run to its end."""
    runs = expand(["market"], [NoiseSetting("random", 0.5)], ["baseline"], [1],
                  ["--data_dir", str(data_dir), *TRAIN, "--batchsize", "2"], tmp_path)
    job = TrainingJob(runs[0].command(), str(REPO), str(tmp_path / "job.log"))
    errors = []

    def call() -> None:
        try:
            job()
        except TrainingFailed as err:
            errors.append(str(err))
    worker = threading.Thread(target=call)
    worker.start()
    log = runs[0].run_dir / "train.log"
    deadline = time.time() + 300
    while not (log.is_file() and "epoch 0/" in log.read_text()):
        assert worker.is_alive() and time.time() < deadline
        time.sleep(0.05)
    requeued = job.checkpoint()
    worker.join(timeout=300)
    assert errors == [f"the training exited with status {EXIT_RESUMABLE}; see {job.log}"]
    assert requeued.function() == 0  # the requeued job resumes and finishes
    assert "resuming" in log.read_text() and runs[0].status()[0] == "done"


def test_the_demo_grid_plans_on_the_demo_data(tmp_path):
    cli, train_flags = reproduce.parse(["--demo", "--output_dir", str(tmp_path)])
    runs = expand(cli.datasets, cli.noise, cli.methods, cli.seeds, train_flags, tmp_path)
    assert len(runs) == 3  # 50% random noise x 3 methods
    assert {run.args.data_dir for run in runs} == {"./demo_data"}  # --demo's values apply
    assert {run.args.arch for run in runs} == {"resnet18"}
    assert {run.args.pretrained for run in runs} == {"synthetic"}
    assert all(run.args.epochs == 24 and run.args.img_size == [32, 16] for run in runs)
    # the released schedule's proportions: lr x0.1 after a third, co-refining the last 2/3
    assert {tuple(run.args.milestones) for run in runs} == {(8, 20)}
    assert next(run for run in runs if run.method == "core").args.stage1_epochs == 8
    cli, train_flags = reproduce.parse(["--demo", "--output_dir", str(tmp_path), "--noise",
                                        "pattern:0.2", "--pretrained", "none"])
    runs = expand(cli.datasets, cli.noise, cli.methods, cli.seeds, train_flags, tmp_path)
    assert len(runs) == 4  # and the clean baseline patterned noise needs
    assert {run.args.pretrained for run in runs} == {"none"}  # the user's flags win


def test_the_five_method_grid_routes_each_methods_own_flags(tmp_path):
    cli, train_flags = reproduce.parse(["--demo", "--output_dir", str(tmp_path), "--methods",
                                        "baseline", "self", "core", "purifynet", "coteaching",
                                        "--forget_epochs", "5", "--stage2_from", "best"])
    runs = {run.method: run for run in expand(cli.datasets, cli.noise, cli.methods, cli.seeds,
                                              train_flags, tmp_path)}
    assert list(runs) == ["baseline", "self", "core", "purifynet", "coteaching"]
    assert runs["coteaching"].script == "train_core.py" == runs["core"].script
    assert runs["purifynet"].script == "train_self.py"
    assert runs["coteaching"].argv[:2] == ["--method", "coteaching"]
    for method, run in runs.items():  # each method gets its own flags, no other's
        assert ("--stage1_epochs" in run.argv) == (method == "core")
        assert ("--forget_epochs" in run.argv) == (method == "coteaching")
        assert ("--stage2_from" in run.argv) == (method == "purifynet")
    assert runs["coteaching"].args.forget_rate == 0.5  # the grid's noise ratio
    assert runs["purifynet"].args.epochs == 24 and runs["purifynet"].epochs == 48  # 2 stages
    assert runs["core"].epochs == 24
