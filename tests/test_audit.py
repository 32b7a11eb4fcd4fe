"""test.py --audit on real tiny runs: the CSV complete and consistent with the checkpoint and the
run's own records, the refined labels in the manifest's form, --labels trains on them (and
refuses a file that does not fit), one-network runs, and the comparison with cleanlab."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test as test_script
import train_core
import train_self
from core_reid.utils import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--lr", "0.05", "--milestones"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def resolved(csv_path: Path, relative: str) -> Path:
    return (csv_path.parent / relative).resolve()


@pytest.fixture(scope="module")
def noisy_run(data_dir, tmp_path_factory) -> Path:
    """CORE on the tiny data with 50% random noise, co-refining from epoch 1, audited."""
    out = tmp_path_factory.mktemp("res")
    result = train_core.main(["--data_dir", str(data_dir), "--output_dir", str(out), *TINY,
                              "--noise_ratio", "0.5", "--epochs", "3", "--stage1_epochs", "0",
                              "--eval_every", "3"])
    run = Path(result["run_dir"])
    test_script.main(["--checkpoint", str(run / "last.pt"), "--audit", "--suspects", "5"])
    return run


def test_audit_is_complete_and_consistent_with_the_checkpoint(noisy_run, data_dir):
    audit_csv = noisy_run / "audit" / "label_audit.csv"
    rows = read_csv(audit_csv)
    state = torch.load(noisy_run / "last.pt", weights_only=False)
    metrics = json.loads((noisy_run / "metrics.json").read_text())
    split = data_dir / "market" / "train"
    paths = sorted(split.rglob("*.jpg"))  # sample order: folders, then files, sorted
    classes = sorted(p.name for p in split.iterdir())
    index = {path.resolve(): i for i, path in enumerate(paths)}
    assert len(rows) == len(paths) == len(state["noisy_labels"])
    assert sorted(index[resolved(audit_csv, row["path"])] for row in rows) == \
        list(range(len(paths)))
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    suspicion = [float(row["suspicion"]) for row in rows]
    assert suspicion == sorted(suspicion, reverse=True)

    saved = np.load(noisy_run / "audit" / "probabilities.npz")
    probabilities = saved["probabilities"].astype(np.float64)
    assert probabilities.shape == (2, len(paths), len(classes))
    assert np.allclose(probabilities.sum(axis=2), 1, atol=1e-5)
    assert np.array_equal(saved["annotated"], state["noisy_labels"])
    pid = [int(name) for name in classes]
    for row in rows:
        i = index[resolved(audit_csv, row["path"])]
        annotated, true = state["noisy_labels"][i], state["true_labels"][i]
        assert int(row["annotated_pid"]) == pid[annotated]
        assert (int(row["true_pid"]), row["corrupted"]) == (pid[true], str(int(true !=
                                                                               annotated)))
        mean = probabilities[:, i].mean(axis=0)  # saved as float32: equal to ~1e-7
        best_other = max(mean[c] for c in range(len(classes)) if c != annotated)
        proposed = pid.index(int(row["proposed_pid"]))
        assert proposed != annotated and mean[proposed] == pytest.approx(best_other, abs=1e-6)
        assert float(row["suspicion"]) == pytest.approx(best_other - mean[annotated],
                                                        abs=2e-6)
        predicted = [int(row["net1_pid"]), int(row["net2_pid"])]
        for k in (0, 1):
            assert predicted[k] == pid[int(probabilities[k, i].argmax())]
            assert float(row[f"net{k + 1}_prob"]) == pytest.approx(
                probabilities[k, i].max(), abs=2e-6)
        agree = predicted[0] == predicted[1]
        assert row["peers_agree"] == str(int(agree))
        assert int(row["refined_pid"]) == (predicted[0] if agree else pid[annotated])
        assert row["changed"] == str(int(row["refined_pid"] != row["annotated_pid"]))
    # the networks' predictions are the run's own refined labels of its last epoch
    last = metrics["history"][-1]["networks"]
    for k in (0, 1):
        right = np.mean([row[f"net{k + 1}_pid"] == row["true_pid"] for row in rows])
        assert right == pytest.approx(last[k]["label_precision"])

    refined_csv = noisy_run / "audit" / "refined_labels.csv"
    refined = read_csv(refined_csv)
    assert [resolved(refined_csv, row["path"]) for row in refined] == \
        [path.resolve() for path in paths]
    by_path = {resolved(audit_csv, row["path"]): row for row in rows}
    for row in refined:
        audited = by_path[resolved(refined_csv, row["path"])]
        assert (row["pid"], row["camid"], row["split"]) == (audited["refined_pid"],
                                                            audited["camid"], "train")
    picture = Image.open(noisy_run / "audit" / "suspects.png")
    assert picture.width > 400 and picture.height > 140
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    images = set()
    for events in (noisy_run / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        images |= set(accumulator.Tags()["images"])
    assert "audit/suspects" in images


def test_labels_round_trip_and_a_one_network_audit(noisy_run, data_dir, tmp_path):
    refined_csv = noisy_run / "audit" / "refined_labels.csv"
    result = train_self.main(["--method", "baseline", "--data_dir", str(data_dir),
                              "--output_dir", str(tmp_path), *TINY, "--epochs", "1",
                              "--labels", str(refined_csv)])
    run = Path(result["run_dir"])
    assert run.name == "market_baseline_labels-refined_labels_lr0.05_seed1_resnet18"
    state = torch.load(run / "last.pt", weights_only=False)
    classes = sorted(p.name for p in (data_dir / "market" / "train").iterdir())
    assert [int(classes[c]) for c in state["noisy_labels"]] == \
        [int(row["pid"]) for row in read_csv(refined_csv)]
    assert state["is_clean"].all() and result["injected_label_precision"] is None
    assert "label_precision" not in result["history"][-1]

    test_script.main(["--checkpoint", str(run / "last.pt"), "--audit"])
    rows = read_csv(run / "audit" / "label_audit.csv")
    assert "net2_pid" not in rows[0] and "peers_agree" not in rows[0]
    assert "true_pid" not in rows[0]  # trained on given labels: no truth known
    assert all(row["refined_pid"] == row["net1_pid"] for row in rows)
    given = {resolved(refined_csv, r["path"]): r["pid"] for r in read_csv(refined_csv)}
    audit_csv = run / "audit" / "label_audit.csv"
    assert all(given[resolved(audit_csv, row["path"])] == row["annotated_pid"] for row in rows)
    changed = np.mean([row["changed"] == "1" for row in rows])
    assert changed == pytest.approx(result["history"][-1]["labels_changed"])


def labels_case(change):
    def make(refined_csv: Path, tmp_path: Path) -> Path:
        lines = refined_csv.read_text().splitlines()
        copy = refined_csv.parent / "edited.csv"  # beside it: the relative paths still hold
        copy.write_text("\n".join(change(lines)) + "\n")
        return copy
    return make


def field(line: str, index: int, value: str) -> str:
    fields = line.split(",")
    fields[index] = value
    return ",".join(fields)


LABEL_CASES = [
    ("unknown identity", labels_case(lambda ls: [ls[0], field(ls[1], 1, "9999"), *ls[2:]]),
     [], "edited.csv line 2: pid 9999 is not one of the training split's"),
    ("an image left out", labels_case(lambda ls: ls[:-1]), [], "no row for 1 of the"),
    ("another split", labels_case(lambda ls: [ls[0], field(ls[1], 3, "query"), *ls[2:]]), [],
     "edited.csv line 2: split query; a labels file holds the training images only"),
    ("not a training image", labels_case(lambda ls: [ls[0], field(
        ls[1], 0, ls[1].split(",")[0].replace("/train/", "/val/")), *ls[2:]]), [],
     "is not an image of the training split"),
    ("another camera", labels_case(lambda ls: [ls[0], field(ls[1], 2, "9"), *ls[2:]]), [],
     "edited.csv line 2: camid 9, but"),
    ("twice", labels_case(lambda ls: [*ls, ls[1]]), [], "is listed again"),
    ("with injected noise", labels_case(lambda ls: ls), ["--noise_ratio", "0.2"],
     "--labels with --noise_ratio 0.2: the run trains on the given labels as they are"),
    ("missing file", lambda refined, tmp: tmp / "none.csv", [], "none.csv: no such file"),
]


@pytest.mark.parametrize("make, extra, message", [c[1:] for c in LABEL_CASES],
                         ids=[c[0] for c in LABEL_CASES])
def test_a_labels_file_that_does_not_fit_is_one_line(noisy_run, data_dir, tmp_path, capsys,
                                                      monkeypatch, make, extra, message):
    labels = make(noisy_run / "audit" / "refined_labels.csv", tmp_path)
    out = tmp_path / "res"
    monkeypatch.setattr(sys, "argv", ["train_self.py", "--data_dir", str(data_dir),
                                      "--output_dir", str(out), *TINY, "--epochs", "1",
                                      "--labels", str(labels), *extra])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_self.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())  # no run folder left


def test_audit_flags_that_do_not_fit_are_one_line(noisy_run, capsys, monkeypatch):
    for extra, message in ((["--rerank"], "--rerank with --audit"),
                           (["--suspects", "0"], "--suspects 0: must be >= 1")):
        monkeypatch.setattr(sys, "argv", ["test.py", "--checkpoint",
                                          str(noisy_run / "last.pt"), "--audit", *extra])
        with pytest.raises(SystemExit) as exit_info:
            run_cli(test_script.main)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
        assert message in err, err


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "audit_vs_cleanlab", REPO / "benchmarks" / "audit_vs_cleanlab.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_comparison_with_cleanlab_on_tiny_data(data_dir, tmp_path):
    from cleanlab.filter import find_label_issues
    bench = load_benchmark()
    data = tmp_path / "data"
    shutil.copytree(data_dir / "market", data / "market",
                    ignore=shutil.ignore_patterns(".cache"))
    out = tmp_path / "bench"
    argv = ["--data_dir", str(data), "--output_dir", str(out), "--noise", "random:0.5",
            "--folds", "2", "--epochs", "2", "--milestones", "--stage1_epochs", "0",
            "--pretrained", "none", "--batchsize", "4", "--workers", "0", "--lr", "0.01",
            "--eval_every", "2"]
    (detected,) = bench.main([*argv, "--detect_only"])
    assert list(detected["training"]) == ["noisy"]  # the detecting run's scores alone
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "random0.5_core", "random0.5_fold0", "random0.5_fold1"]  # no retraining
    results = bench.main(argv)  # the retraining, reusing the rest
    (result,) = results
    assert result["detectors"] == detected["detectors"]
    core_run = out / "runs" / "random0.5_core"
    audit_csv = core_run / "audit" / "label_audit.csv"
    rows = read_csv(audit_csv)
    errors = sum(row["corrupted"] == "1" for row in rows)
    assert result["errors"] == errors
    audit = result["detectors"]["CORE audit"]
    assert audit["precision_at_k"] == pytest.approx(
        np.mean([row["corrupted"] == "1" for row in rows[:errors]]))
    assert audit["flagged"] == sum(row["changed"] == "1" for row in rows)

    saved = np.load(core_run / "audit" / "probabilities.npz")
    issues = find_label_issues(saved["annotated"], saved["probabilities"].astype(
        np.float64).mean(axis=0), n_jobs=1)
    assert result["detectors"]["cleanlab, in-sample"]["flagged"] == issues.sum()

    # (c): each fold's baseline never saw the images it predicts
    split = data / "market" / "train"
    images = {p.resolve() for p in split.rglob("*.jpg")}
    held_out = []
    for f in range(2):
        manifest = out / "folds" / f"auditbench_random0.5_fold{f}.csv"
        trained = {resolved(manifest, row["path"]) for row in read_csv(manifest)
                   if row["split"] == "train"}
        assert trained < images
        held_out.append(images - trained)
    assert held_out[0] | held_out[1] == images and not held_out[0] & held_out[1]

    cleaned = read_csv(out / "labels" / "random0.5_cleanlab.csv")
    assert {resolved(out / "labels" / "x.csv", row["path"]) for row in cleaned} == images
    training = result["training"]
    final = json.loads((core_run / "metrics.json").read_text())["final"]
    assert training["noisy"]["mAP"] == final["mAP"]
    refined_right = np.mean([row["refined_pid"] == row["true_pid"] for row in rows])
    assert training["CORE refined"]["label_precision"] == pytest.approx(refined_right)
    assert "| random 0.5 (K = " in (out / "results.md").read_text()

    runs = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/last.pt")}
    assert len(runs) == 5  # CORE, two folds, two retrainings
    assert json.dumps(bench.main(argv)) == json.dumps(results)  # a rerun reuses every run
    assert {p: p.stat().st_mtime_ns for p in runs} == runs
