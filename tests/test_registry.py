"""The method registry: the learning-rate schedules are the released per-epoch decay; a method
defined only here, registered at run time, trains through train_core.py's parser, refuses and
routes its own flags, appears in reproduce.py's plan and report; and checkpoints written by the
code from before the registry (SELF's lambda outside ``method_state``) still resume, ending
exactly as an uninterrupted run."""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reproduce
import train_core
import train_self
from core_reid.utils import EXIT_RESUMABLE, UserError, check_number
from methods import METHODS, Method, register

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "4", "--workers", "0", "--lr", "0.02"]


def args(data_dir, out, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *TINY, *extra]


def released_lr(lr, milestones, epoch):
    """The per-epoch step decay the loop computed before the schedule became an array."""
    return lr * 0.1 ** sum(epoch >= m for m in milestones)


# ---- the schedule ----------------------------------------------------------------------------

def parsed(script, argv):
    return script.parse_args(script.build_parser(), argv, check=False)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_schedule_is_the_released_per_epoch_decay(name):
    rng = random.Random(name)
    script = train_core if METHODS[name].script == "train_core.py" else train_self
    for _ in range(20):
        epochs = rng.randint(2, 70)
        milestones = sorted(rng.sample(range(1, epochs), rng.randint(0, min(3, epochs - 1))))
        lr = rng.choice([0.01, 0.1, 0.035, 1e-3, 0.2])
        run = parsed(script, ["--method", name, "--epochs", str(epochs), "--lr", str(lr),
                              "--milestones", *map(str, milestones)])
        schedule = METHODS[name](run).lr_schedule(run)
        stages = len(schedule) // epochs  # PurifyNet: two stages, each its own decay
        assert len(schedule) == stages * epochs and stages in (1, 2)
        expected = [released_lr(lr, milestones, e) for _ in range(stages) for e in range(epochs)]
        assert schedule.tolist() == expected  # exactly: the same float operations


def test_the_recorded_lr_is_the_schedule_the_optimisers_used(data_dir, tmp_path, monkeypatch):
    applied = []
    original = torch.optim.SGD.step

    def step(self, *a, **k):
        applied.append([group["lr"] for group in self.param_groups])
        return original(self, *a, **k)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    result = train_self.main(args(data_dir, tmp_path, "--method", "purifynet", "--epochs", "2",
                                  "--milestones", "1", "--eval_every", "4"))
    lrs = [h["lr"] for h in result["history"]]
    assert lrs == [released_lr(0.02, [1], e) for e in (0, 1, 0, 1)]  # stage 2 restarts
    steps = len(applied) // 4
    for epoch, lr in enumerate(lrs):  # every step of the epoch: backbone lr, head 10x
        assert all(a == [lr, lr * 10] for a in applied[epoch * steps:(epoch + 1) * steps])


# ---- a method defined here alone ----------------------------------------------------------------

class EmaTeacher(Method):
    """Network 1 learns cross-entropy plus agreement with network 2, an exponential moving
    average of network 1 (a mean teacher) updated after every step, its gradient clipped."""
    name = "emateacher"
    title = "EMA teacher"
    script = "train_core.py"
    summary = "a mean teacher (this test's method)"
    networks = 2

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.decay, self.clip_norm = args.ema_decay, args.clip_norm
        self.steps = 0
        self.norms: list[tuple[float, float]] = []  # gradient norm before and after clipping

    @staticmethod
    def add_args(parser):
        parser.add_argument("--ema_decay", type=float, default=0.9,
                            help="weight of the teacher's own weights in each update")
        parser.add_argument("--clip_norm", type=float, default=1.0,
                            help="the student's gradient norm is clipped to this")

    @classmethod
    def check_args(cls, args):
        check_number("--ema_decay", args.ema_decay, 0 <= args.ema_decay < 1, "in [0, 1)")

    def setup(self, run):
        if self.steps == 0:  # a new run: the teacher starts as the student
            run.peers[1].net.load_state_dict(run.peers[0].net.state_dict())

    def batch_losses(self, epoch, logits, labels, index):
        student, teacher = logits
        agree = F.mse_loss(F.softmax(student, 1), F.softmax(teacher.detach(), 1))
        return [F.cross_entropy(student, labels) + agree, torch.zeros((), device=labels.device)]

    def after_backward(self, run, epoch, step):
        params = list(run.peers[0].net.parameters())
        before = torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params
                                                      if p.grad is not None]))
        self.norms.append((float(before), float(after)))

    def after_step(self, run, epoch, step):
        with torch.no_grad():
            student, teacher = (p.net.state_dict() for p in run.peers)
            for key, value in teacher.items():
                if value.is_floating_point():
                    value.mul_(self.decay).add_(student[key], alpha=1 - self.decay)
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@pytest.fixture
def registered():
    register(EmaTeacher)
    yield EmaTeacher
    del METHODS[EmaTeacher.name]


def test_a_method_registered_at_run_time_trains_through_train_core(data_dir, tmp_path,
                                                                   registered, monkeypatch):
    seen, moved = [], []
    original = EmaTeacher.after_step

    def after_step(self, run, epoch, step):  # the teacher moves halfway towards the student
        seen.append(self)
        before = run.peers[1].net.classifier.weight.detach().clone()
        original(self, run, epoch, step)
        student = run.peers[0].net.classifier.weight.detach()
        moved.append(torch.allclose(run.peers[1].net.classifier.weight,
                                    0.5 * before + 0.5 * student))
    monkeypatch.setattr(EmaTeacher, "after_step", after_step)
    result = train_core.main(args(data_dir, tmp_path, "--method", "emateacher", "--epochs", "2",
                                  "--milestones", "1", "--ema_decay", "0.5", "--clip_norm",
                                  "0.5", "--eval_every", "1"))
    assert result["method"] == "emateacher" and result["args"]["ema_decay"] == 0.5
    assert [h["stage"] for h in result["history"]] == ["emateacher"] * 2
    assert [h["lr"] for h in result["history"]] == [0.02, released_lr(0.02, [1], 1)]
    assert moved and all(moved) and len(set(map(id, seen))) == 1
    norms = seen[0].norms  # after_backward clipped every step's gradient before the step
    assert len(norms) == len(moved) and any(before > 0.5 for before, _ in norms)
    assert all(after <= 0.5 + 1e-4 for _, after in norms)
    state = torch.load(Path(result["run_dir"]) / "last.pt", weights_only=False)
    assert state["method_state"] == {"steps": len(moved)}
    log = (Path(result["run_dir"]) / "train.log").read_text()
    assert "emateacher on market/train" in log


def test_a_registered_methods_flags_are_its_own(data_dir, tmp_path, registered, capsys,
                                                monkeypatch):
    with pytest.raises(UserError, match="--ema_decay is a emateacher flag; --method core does "
                                        "not read it: drop it, or train with --method "
                                        "emateacher"):
        train_core.main(args(data_dir, tmp_path, "--ema_decay", "0.5"))
    with pytest.raises(UserError, match="--ema_decay 1.0: must be in"):
        train_core.main(args(data_dir, tmp_path, "--method", "emateacher", "--ema_decay", "1"))
    with pytest.raises(UserError, match="--method: invalid choice: 'emateacher'"):
        train_self.main(args(data_dir, tmp_path, "--method", "emateacher"))  # not its script
    monkeypatch.setattr(sys, "argv", ["train_core.py", "--help"])
    with pytest.raises(SystemExit):
        train_core.main()
    help_text = capsys.readouterr().out
    assert "'emateacher': a mean teacher" in help_text and "EMA teacher (--method emateacher)" \
        in help_text and "--clip_norm" in help_text


def test_a_registered_method_is_planned_and_reported_by_the_grid(data_dir, tmp_path,
                                                                  registered, capsys):
    grid = ["--datasets", "market", "--noise", "random:0.5", "--methods", "baseline",
            "emateacher", "--seeds", "1", "--output_dir", str(tmp_path), "--data_dir",
            str(data_dir), *TINY, "--epochs", "2", "--milestones", "1", "--ema_decay", "0.5",
            "--eval_every", "1"]
    reproduce.main([*grid, "--dry_run"])
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if "train_" in line]
    assert len(commands) == 2 and "train_self.py --method baseline" in commands[0]
    assert "train_core.py --method emateacher" in commands[1]
    assert "--ema_decay 0.5" in commands[1] and "--ema_decay" not in commands[0]
    assert "| EMA teacher | 1 missing |" in (tmp_path / "results.md").read_text()

    # the grid's launcher starts the scripts in a new process, where only the registry's own
    # methods exist; this test's method trains its grid run here, with the grid's command
    from core_reid.reproduction.plan import expand, parse_noise
    runs = expand(["market"], parse_noise(["random:0.5"]), ["emateacher"], [1],
                  ["--data_dir", str(data_dir), *TINY, "--epochs", "2", "--milestones", "1",
                   "--ema_decay", "0.5", "--eval_every", "1"], tmp_path)
    trained = train_core.main(runs[0].argv)
    assert runs[0].status() == ("done", 2)
    reproduce.main([*grid, "--report", "--methods", "emateacher"])
    final = trained["final"]
    row = next(line for line in (tmp_path / "results.md").read_text().splitlines()
               if line.startswith("| EMA teacher |"))
    assert row == f"| EMA teacher | {100 * final['rank1']:.1f} / {100 * final['mAP']:.1f} |"


# ---- checkpoints written before the registry ------------------------------------------------

BEFORE_REGISTRY = "b26f684"  # main before the registry: SELF's lambdas outside method_state
# Run the earlier code's script with a real SIGTERM in ``step`` (from 1) of ``epoch``: it saves
# a resumable mid-epoch checkpoint, as a cluster's pre-emption makes it do.
STOP_DRIVER = """
import os, signal, sys
import methods, train_core, train_self
from core_reid.utils import run_cli
cls, epoch, step = getattr(methods, sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
original, calls = cls.batch_losses, []
def batch_losses(self, e, *rest):
    calls.append(e)
    if e == epoch and calls.count(e) == step:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, e, *rest)
cls.batch_losses = batch_losses
script = train_core if sys.argv[4] == "train_core.py" else train_self
sys.argv = sys.argv[4:]
run_cli(script.main)
"""


@pytest.fixture(scope="module")
def code_before(tmp_path_factory):
    """The code of BEFORE_REGISTRY, extracted from the repository's history."""
    known = subprocess.run(["git", "cat-file", "-e", f"{BEFORE_REGISTRY}^{{commit}}"], cwd=REPO,
                           capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {BEFORE_REGISTRY} is not in this clone's history (shallow clone)")
    root = tmp_path_factory.mktemp("before_registry")
    archive = subprocess.run(["git", "archive", BEFORE_REGISTRY], cwd=REPO, capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    for built in (REPO / "eval_lib").glob("_eval_cy*.so"):  # eval_lib is unchanged since then
        shutil.copy(built, root / "eval_lib")
    return root


THREE = ["--epochs", "3", "--milestones", "2"]
OLD_RUNS = [  # method, its class then, script, flags, (epoch, step) of the SIGTERM
    ("baseline", "Baseline", "train_self.py", THREE, (1, 3)),
    ("self", "SelfRefining", "train_self.py", THREE, (1, 3)),
    ("core", "CoRefining", "train_core.py", [*THREE, "--stage1_epochs", "1"], (1, 3)),
    ("purifynet", "PurifyNet", "train_self.py", ["--epochs", "2", "--milestones", "1",
                                                 "--ramp_epochs", "4"], (2, 3)),
    ("coteaching", "CoTeaching", "train_core.py", [*THREE, "--forget_epochs", "2",
                                                   "--noise_ratio", "0.5"], (1, 3)),
]


def same_method_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


@pytest.mark.parametrize("method, cls, script, flags, stop", OLD_RUNS, ids=[r[0] for r in OLD_RUNS])
def test_a_checkpoint_from_before_the_registry_resumes_exactly(
        data_dir, tmp_path, code_before, method, cls, script, flags, stop):
    common = args(data_dir, tmp_path, "--method", method, *flags, "--eval_every", "2")
    old = subprocess.run([sys.executable, "-c", STOP_DRIVER, cls, *map(str, stop), script,
                          *common, "--run_name", "old"], cwd=code_before, capture_output=True,
                         text=True, timeout=900)
    assert old.returncode == EXIT_RESUMABLE, old.stderr
    saved = torch.load(tmp_path / "old" / "last.pt", weights_only=False)
    assert "lambdas" in saved and saved["partial"]["step"] == stop[1]  # the earlier layout
    if method in ("self", "core"):
        assert "lambdas" not in saved["method_state"]

    main = (train_core if script == "train_core.py" else train_self).main
    if method == "purifynet":  # what the code before --stage2_view did, and says it did
        common += ["--stage2_view", "plain"]
        with pytest.raises(UserError, match="the run used --stage2_view plain"):
            main([*common[:-1], "flipped", "--run_name", "old", "--resume"])
    resumed = main([*common, "--run_name", "old", "--resume"])
    whole = main([*common, "--run_name", "whole"])
    a = torch.load(tmp_path / "old" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    for net_a, net_b in zip(a["networks"], b["networks"]):
        for key in net_a:
            assert torch.equal(net_a[key], net_b[key]), key
    wall_clock = ("epoch_time_s", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in wall_clock} for h in resumed["history"]] == \
        [{k: v for k, v in h.items() if k not in wall_clock} for h in whole["history"]]
    assert resumed["final"] == whole["final"]
    assert same_method_state(a["method_state"], b["method_state"])
