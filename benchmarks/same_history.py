"""Does a change leave every method's training exactly as it was? Train the same tiny runs of every
method with an earlier commit's code and with this tree's, on the CPU, and compare their
metrics.json histories bit for bit (every value of every epoch, in order, except the wall-clock
fields ``epoch_time_s`` and ``images_per_s``).

    python benchmarks/same_history.py --before b26f684 --out /tmp/same_history
    python benchmarks/same_history.py --before_code /path/to/old/checkout --out /tmp/same_history

Runs already in OUT (``before/<run>``, ``after/<run>``) are kept, so an interrupted check
continues; the demo data is generated once in OUT/demo_data (or --data_dir). Exit status 1 if
any history differs. The runs use the demo's synthetic data at 32x16, four epochs with both
learning-rate decays (PurifyNet: three per stage), each method's stage switches inside them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core_reid.utils import ArgumentParser, UserError, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("epoch_time_s", "images_per_s")


def commands(out: Path, data_dir: Path) -> list[tuple[str, list[str]]]:
    """(run name, script and flags) of every run, in an order where each run's inputs exist."""
    tiny = ["--demo", "--img_size", "32", "16", "--eval_every", "2", "--workers", "0",
            "--data_dir", str(data_dir), "--output_dir", str(out)]
    four = [*tiny, "--epochs", "4", "--milestones", "2", "3"]
    purify = ["train_self.py", "--method", "purifynet", *tiny, "--epochs", "3"]
    return [
        ("baseline", ["train_self.py", "--method", "baseline", *four]),
        ("self", ["train_self.py", "--method", "self", *four]),
        ("core", ["train_core.py", "--method", "core", *four, "--stage1_epochs", "1"]),
        ("core_selective", ["train_core.py", "--method", "core", *four, "--stage1_epochs", "1",
                            "--selective", "--kl_weight", "0.5"]),
        ("coteaching", ["train_core.py", "--method", "coteaching", *four]),
        ("coteaching_fe2", ["train_core.py", "--method", "coteaching", *four,
                            "--forget_epochs", "2", "--forget_rate", "0.3"]),
        ("purifynet", [*purify, "--milestones", "1", "2", "--ramp_epochs", "4"]),
        ("purifynet_best", [*purify, "--milestones", "2", "--stage2_from", "best"]),
        ("purifynet_st1", [*purify, "--milestones", "2", "--purify_stage", "1"]),
        ("purifynet_st2", [*purify, "--milestones", "1", "--purify_stage", "2",
                           "--stage1_checkpoint", str(out / "purifynet_st1" / "last.pt")]),
        ("core_init", ["train_core.py", "--method", "core", *four, "--stage1_epochs", "1",
                       "--init_from", str(out / "self" / "last.pt"),
                       str(out / "baseline" / "last.pt")]),
    ]


def train_all(code: Path, out: Path, data_dir: Path) -> None:
    """Every run with the code in ``code`` (its own scripts and modules), into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    # one thread: CPU float results depend on the thread count, so both sides use the same
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    for name, (script, *flags) in commands(out, data_dir):
        if (out / name / "metrics.json").is_file():
            continue
        print(f"{code}: {name}", flush=True)
        with open(out / f"{name}.out", "w") as log:
            done = subprocess.run([sys.executable, script, *flags, "--run_name", name],
                                  cwd=code, stdout=log, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            raise UserError(f"{name} failed with {code}'s code; see {out / f'{name}.out'}")


def history(run: Path) -> list[dict]:
    """The run's history without the wall-clock fields."""
    epochs = json.loads((run / "metrics.json").read_text())["history"]
    return [{k: v for k, v in h.items() if k not in WALL_CLOCK} for h in epochs]


def compare(before: Path, after: Path, names: list[str]) -> list[str]:
    """One line per run: identical, or where the histories first differ."""
    lines = []
    for name in names:
        a, b = history(before / name), history(after / name)
        # JSON text, so that key order and float bits count too
        same = [json.dumps(x) for x in a] == [json.dumps(y) for y in b]
        where = "" if same else next(
            (f": first differs at epoch {x.get('epoch')}" for x, y in zip(a, b) if x != y),
            f": {len(a)} epochs before, {len(b)} after")
        lines.append(f"{'identical' if same else 'DIFFERENT':<10} {name} "
                     f"({len(a)} epochs){where}")
    return lines


def main() -> None:
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default=None, metavar="REV",
                        help="the earlier commit (extracted with git archive into OUT)")
    parser.add_argument("--before_code", default=None, metavar="DIR",
                        help="or: a checkout of the earlier code")
    parser.add_argument("--out", required=True, help="where the code, data and runs go")
    parser.add_argument("--data_dir", default=None,
                        help="the demo data's folder (default: OUT/demo_data)")
    cli = parser.parse_args()
    out = Path(cli.out).resolve()
    if (cli.before is None) == (cli.before_code is None):
        raise UserError("give one of --before REV and --before_code DIR")
    code = Path(cli.before_code).resolve() if cli.before_code else out / f"code_{cli.before}"
    if cli.before and not (code / "train_core.py").is_file():
        code.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", cli.before], cwd=REPO, capture_output=True)
        if archive.returncode != 0:
            raise UserError(f"--before {cli.before}: git archive failed "
                            f"({archive.stderr.decode().strip()})")
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    data_dir = Path(cli.data_dir).resolve() if cli.data_dir else out / "demo_data"
    train_all(code, out / "before", data_dir)
    train_all(REPO, out / "after", data_dir)
    lines = compare(out / "before", out / "after", [n for n, _ in commands(out, data_dir)])
    print("\n".join(lines))
    if any(line.startswith("DIFFERENT") for line in lines):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
