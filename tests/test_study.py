"""benchmarks/study.py on a tiny study of its five parts (real runs on the tests' synthetic data):
one row per run in docs/results/<part>.csv with what it was told of the noise rate, the tables
between the markers, the time it took, a second invocation that trains nothing, and one row's
command that, run alone, gives that row's rank-1 and mAP."""
from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import study  # noqa: E402

TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16", "--batchsize",
        "8", "--workers", "0", "--epochs", "2", "--milestones", "1", "--eval_every", "1",
        "--forget_epochs", "1"]
GRIDS = [  # part, grid, methods and flags, labels
    ("main", "main", ("baseline", "coteaching"), (), {}),
    ("auto", "auto", ("coteaching",), ("--forget_rate", "auto"), {"variant": "forget rate auto"}),
    ("tau", "tau0.3", ("coteaching",), ("--forget_rate", "0.3"), {"variant": "forget rate 0.3"}),
    ("jocor", "jocor_lambda0.1", ("jocor",), ("--co_lambda", "0.1"), {"variant": "λ 0.1"}),
    ("schedule", "schedule_old", ("baseline",), ("--epochs", "3"), {"schedule": "earlier demo"})]
PARTS = {part: study.Part(part, "tiny", [study.Grid(grid, ("--methods", *methods, "--noise",
                                                           "random:0.5", "--seeds", "1", *flags),
                                                    **labels)])
         for part, grid, methods, flags, labels in GRIDS}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def block(text: str, name: str) -> str:
    return text.split(study.MARKER.format(name), 1)[1].split(study.END_MARKER.format(name))[0]


@pytest.fixture(scope="module")
def tiny_study(data_dir, tmp_path_factory, request):
    """The five tiny parts trained, and the tables written into a copy of README and docs."""
    patch = pytest.MonkeyPatch()
    request.addfinalizer(patch.undo)
    patch.setattr(study, "DEMO", ["--datasets", "market", "--data_dir", str(data_dir), *TINY])
    patch.setattr(study, "PARTS", PARTS)
    root = tmp_path_factory.mktemp("study")
    out, docs = root / "study", root / "docs"
    docs.mkdir()
    shutil.copy(REPO / "docs" / "results.md", docs / "results.md")
    shutil.copy(REPO / "README.md", root / "README.md")
    for part in PARTS.values():
        for grid in part.grids:
            study.train_grid(grid, out)
    study.write_tables(out, docs)
    return out, docs


def test_each_run_is_a_row_saying_what_it_was_told(tiny_study):
    out, docs = tiny_study
    rows = {part: read_csv(docs / "results" / f"{part}.csv") for part in PARTS}
    assert [len(rows[part]) for part in PARTS] == [2, 1, 1, 1, 1]
    told = {(r["grid"], r["method"]): r["told_noise_rate"] for part in rows for r in rows[part]}
    metrics = json.loads(next((out / "auto" / "runs").glob("*/metrics.json")).read_text())
    estimate = metrics["history"][-1]["networks"][0]["forget_rate_estimate"]
    assert 0 <= estimate <= 1
    assert told == {("main", "baseline"): "no", ("main", "coteaching"): "yes",
                    ("auto", "coteaching"): f"no: estimated {estimate:.2f}",
                    ("tau0.3", "coteaching"): "a wrong rate, 0.3 (truth 0.5)",
                    ("jocor_lambda0.1", "jocor"): "yes",
                    ("schedule_old", "baseline"): "no"}
    assert rows["schedule"][0]["epochs"] == "3" and rows["main"][0]["epochs"] == "2"
    for part in rows.values():
        for row in part:
            final = json.loads((out / row["grid"] / "runs" / row["run"] /
                                "metrics.json").read_text())["final"]
            assert float(row["mAP"]) == pytest.approx(100 * final["mAP"], abs=0.005)


def test_the_tables_fill_the_markers_with_their_source(tiny_study):
    out, docs = tiny_study
    readme, results = (docs.parent / "README.md").read_text(), (docs / "results.md").read_text()
    headline = block(readme, "headline")
    assert "From `python benchmarks/study.py --parts main auto`" in headline
    assert "| method | told the noise rate |" in headline
    assert "| Co-teaching (forget rate auto) | no |" in headline
    assert f"at commit {study.commit()}" in headline
    assert "| Co-teaching | yes |" in block(results, "main")
    assert "a wrong rate, 0.3 (truth 0.5)" in block(results, "tau")
    assert "| JoCoR (λ 0.1) | yes |" in block(results, "jocor")
    assert "ordering by mean mAP" in block(results, "schedule")
    invocations = json.loads((out / "main" / "provenance.json").read_text())["invocations"]
    assert [(i["runs_trained"], i["runs"]) for i in invocations] == [(2, 2)]
    assert "| `main` | 2 of 2 |" in block(results, "time")
    # the rest of the files is untouched
    assert readme.split(study.MARKER.format("headline"))[0] == \
        (REPO / "README.md").read_text().split(study.MARKER.format("headline"))[0]


def test_a_second_invocation_trains_nothing(tiny_study, capsys):
    out, _ = tiny_study
    study.train_grid(PARTS["main"].grids[0], out)
    assert "== main: 2 runs, 0 to train" in capsys.readouterr().out
    assert len(json.loads((out / "main" / "provenance.json").read_text())["invocations"]) == 1


def test_a_rows_command_alone_gives_its_scores(tiny_study, tmp_path):
    _, docs = tiny_study
    row = next(r for r in read_csv(docs / "results" / "main.csv") if r["method"] == "coteaching")
    argv = shlex.split(row["command"])
    assert argv[:2] == ["python", "train_core.py"] and "--threads" in argv
    subprocess.run([sys.executable, str(REPO / argv[1]), *argv[2:]], cwd=tmp_path, check=True,
                   capture_output=True)
    final = json.loads((tmp_path / "rerun" / row["run"] / "metrics.json").read_text())["final"]
    assert 100 * final["rank1"] == pytest.approx(float(row["rank1"]), abs=0.05)
    assert 100 * final["mAP"] == pytest.approx(float(row["mAP"]), abs=0.05)
