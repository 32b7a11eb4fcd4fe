"""How well the CORE audit finds label errors, against cleanlab (confident learning), on the demo's
synthetic data with injected noise (so the truth is known); and what retraining on each one's
cleaned labels gives.

    nice -n 10 python benchmarks/audit_vs_cleanlab.py        # hours on a 2-core CPU; reruns reuse

For each noise setting (default: random and patterned, 20% and 50%):

1. CORE trains on the noisy labels and ``test.py --audit`` audits its last epoch;
2. three detectors are scored against the injected errors: (a) the audit (suspicion; flagged =
   the refined labels that differ from the annotation), (b) cleanlab on the same run's in-sample
   probabilities (the mean of the peers' softmax, the audit's probabilities.npz): label quality
   scores (self-confidence) and ``find_label_issues``, (c) cleanlab on out-of-sample
   probabilities from K baseline runs, each trained on the other K-1 folds of the training
   images (stratified by annotated label): cleanlab's intended use;
3. CORE is trained again on the audit's refined_labels.csv and on (c)'s cleaned labels (each
   flagged image relabelled with its out-of-sample prediction), both with ``--labels``, once
   every setting has its detection table, the noisiest settings first (results.md is
   rewritten as results come in); ``--detect_only`` stops before this step.

Per detector: flagged images, their precision and recall, precision at K (K = the injected
errors; = recall at K) and the AUROC of the score. Per training-label set: its label precision
and the final epoch's rank-1 and mAP (network 1). Every run is kept under OUTPUT_DIR
(``runs/``, ``folds/``, ``labels/``; the fold datasets under DATA_DIR) and a rerun reuses it.
Training flags given to this script go to every run (e.g. ``--workers 1``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import get_dataset_info, load_split  # noqa: E402
from datasets.custom import prepare_custom  # noqa: E402
from datasets.manifest import write_manifest  # noqa: E402
from datasets.market1501 import JUNK_PID  # noqa: E402
from datasets.noise import load_noise  # noqa: E402
from datasets.split_labels import write_split_labels  # noqa: E402
from methods import METHODS  # noqa: E402
from core_reid.audit import AUDIT_FOLDER, audit_labels, network_probabilities  # noqa: E402
from core_reid.checkpoint_eval import open_checkpoint  # noqa: E402
from core_reid.engine import train  # noqa: E402
from core_reid.options import build_parser, parse_args  # noqa: E402
from core_reid.reproduction.plan import NoiseSetting, parse_noise  # noqa: E402
from core_reid.run_data import load_training_view, prepare_synthetic_data  # noqa: E402
from core_reid.runs import NOISE_FILE  # noqa: E402
from core_reid.utils import (ArgumentParser, UserError, atomic_write_text,  # noqa: E402
                             check_number, run_cli)

# The paper's regime on the demo's data: a pretrained backbone, the large learning rate for a
# third of the run, co-refining after it.
REGIME = ["--arch", "resnet18", "--pretrained", "synthetic", "--img_size", "32", "16",
          "--eval_every", "4", "--workers", "2"]
DEFAULT_NOISE = ["random:0.2,0.5", "pattern:0.2,0.5"]


def build_cli() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    a = parser.add_argument
    a("--output_dir", default="./bench_audit", help="runs, fold manifests, labels, results")
    a("--data_dir", default="./demo_data", help="the demo's data (made there if missing) and "
      "the fold datasets")
    a("--noise", nargs="+", default=DEFAULT_NOISE, help="noise settings: random:R[,R...], "
      "pattern:R[,R...]")
    a("--folds", type=int, default=3, help="K of the K-fold baseline runs for (c)")
    a("--epochs", type=int, default=24, help="epochs of every run")
    a("--milestones", type=int, nargs="*", default=[8, 20], help="learning-rate decays")
    a("--stage1_epochs", type=int, default=8, help="CORE: co-refining from the next epoch")
    a("--fold_seed", type=int, default=0, help="seed of the fold assignment")
    a("--detect_only", action="store_true", help="the detection table alone: no retraining on "
      "the refined and cleaned labels (the noisy labels' scores are the detecting run's)")
    return parser


# ---------------------------------------------------------------------------------------------
# Scoring a detector against the injected errors.

def detection(score: np.ndarray, flagged: np.ndarray, corrupted: np.ndarray) -> dict[str, float]:
    """Flagged count, precision and recall of the flagged set; precision at K (K = the number
    of corrupted labels) and AUROC of the score (higher = more suspicious)."""
    from sklearn.metrics import roc_auc_score
    k = int(corrupted.sum())
    top = np.argsort(-score, kind="stable")[:k]
    hits = int((flagged & corrupted).sum())
    return {"flagged": int(flagged.sum()),
            "precision": hits / flagged.sum() if flagged.any() else float("nan"),
            "recall": hits / k if k else float("nan"),
            "precision_at_k": float(corrupted[top].mean()) if k else float("nan"),
            "auroc": float(roc_auc_score(corrupted, score)) if 0 < k < len(score)
            else float("nan")}


def cleanlab_detection(labels: np.ndarray, probabilities: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's defaults: (suspicion = 1 - label quality score (self-confidence), the
    issues ``find_label_issues`` flags (prune by noise rate))."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    quality = get_label_quality_scores(labels, probabilities)
    return 1.0 - quality, find_label_issues(labels, probabilities, n_jobs=1)


# ---------------------------------------------------------------------------------------------
# Runs.

@dataclass
class Bench:
    """Where the benchmark keeps things, and the flags every run gets."""
    out: Path
    data_dir: Path
    flags: list[str]      # training flags of every run
    core_flags: list[str]  # and of the CORE runs

    def run(self, method: str, name: str, argv: Sequence[str]) -> Path:
        """Train ``name`` (unless it finished before; an interrupted one resumes); its folder."""
        run_dir = self.out / "runs" / name
        argv = [*self.flags, *(self.core_flags if method == "core" else []), *argv,
                "--output_dir", str(run_dir.parent), "--run_name", name]
        if not _finished(run_dir):
            script = METHODS[method].script
            print(f"training {name}: python {script} --method {method} {shlex.join(argv)}",
                  flush=True)
            args = parse_args(build_parser(script), [*argv, "--method", method, "--resume",
                                                     "auto"])
            train(args, method)
        return run_dir


def _finished(run_dir: Path) -> bool:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(metrics["history"]) and metrics["history"][-1]["epoch"] == \
        metrics["epochs"] - 1 and (run_dir / "last.pt").is_file()


def audit(run_dir: Path) -> Path:
    """``test.py --audit`` of the run's last epoch (once); the audit folder."""
    folder = run_dir / AUDIT_FOLDER
    if not (folder / "probabilities.npz").is_file():
        from core_reid.audit import audit_checkpoint
        test_cli = argparse.Namespace(checkpoint=str(run_dir / "last.pt"), device="auto",
                                      gpu=None, data_dir=None, img_size=None, workers=None,
                                      suspects=24)
        audit_checkpoint(test_cli)
    return folder


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each sample's fold, stratified by label: a class's samples, shuffled, are dealt out in
    turn."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    return fold


def out_of_sample_probabilities(bench: Bench, setting: str, noisy: np.ndarray,
                                folds: int, seed: int) -> np.ndarray:
    """(c)'s probabilities: K baselines, each trained (no noise injected: the noisy labels are
    its annotations) on the training images outside one fold, each predicting that fold."""
    data_dir = bench.data_dir
    split = load_split(data_dir, "market", "train")
    pids = [int(name) for name in split.classes]
    test_rows = [(path, int(pid), int(camid), name)
                 for name in ("query", "gallery")
                 for path, pid, camid in _split_rows(load_split(data_dir, "market", name))
                 if pid != JUNK_PID]
    fold = fold_of(noisy, folds, seed)
    probabilities = np.zeros((len(noisy), len(pids)))
    for f in range(folds):
        dataset = f"auditbench_{setting}_fold{f}"
        manifest = bench.out / "folds" / f"{dataset}.csv"
        if not (data_dir / dataset / "dataset.json").is_file():
            rows = [(split.paths[i], pids[noisy[i]], int(split.camids[i]), "train")
                    for i in np.flatnonzero(fold != f)]
            write_manifest(manifest, [*rows, *test_rows])
            prepare_custom(manifest, data_dir / dataset, progress=False)
        run_dir = bench.run("baseline", f"{setting}_fold{f}",
                            ["--dataset", dataset, "--data_dir", str(data_dir),
                             "--train_split", "train_all", "--noise_ratio", "0"])
        saved = open_checkpoint(str(run_dir / "last.pt"), "auto", None,
                                {"dataset": "market", "data_dir": str(data_dir),
                                 "train_split": "train"})
        info = get_dataset_info(dataset, data_dir)
        fold_classes = load_split(data_dir, dataset, "train_all").classes
        columns = [pids.index(info.annotated_pid(name)) for name in fold_classes]
        _, view = load_training_view(saved.args, saved.device, saved.numerics)
        held_out = fold == f
        predicted = network_probabilities(saved.network(0), view, saved)
        probabilities[np.ix_(held_out, columns)] = predicted[held_out]
    return probabilities


def _split_rows(split: Any) -> list[tuple[Path, int, int]]:
    return [(path, int(pid), int(camid))
            for path, pid, camid in zip(split.paths, split.pids, split.camids)]


# ---------------------------------------------------------------------------------------------
# One noise setting, then the tables.

def detect(bench: Bench, noise: NoiseSetting, folds: int, fold_seed: int,
           pattern_model: Optional[Path]) -> dict[str, Any]:
    """Train CORE on the noisy labels, audit it, run the K-fold baselines and score the three
    detectors; write cleanlab's cleaned labels. The setting's results, without retraining."""
    setting = f"{noise.kind}{noise.ratio:g}"
    noise_flags = noise.flags() + (["--pattern_model", str(pattern_model)]
                                   if noise.kind == "pattern" else [])
    core_dir = bench.run("core", f"{setting}_core", ["--data_dir", str(bench.data_dir),
                                                     *noise_flags])
    folder = audit(core_dir)
    labels = load_noise(core_dir / NOISE_FILE)
    noisy, corrupted = labels.noisy_labels, ~labels.is_clean
    saved = np.load(folder / "probabilities.npz")
    if not np.array_equal(saved["annotated"], noisy):
        raise UserError(f"{folder}: audited other labels than {core_dir}'s; delete {folder}")
    core = audit_labels(saved["probabilities"], noisy)
    in_sample = cleanlab_detection(noisy, core.probabilities.mean(axis=0))
    out_of_sample_probs = out_of_sample_probabilities(bench, setting, noisy, folds, fold_seed)
    out_of_sample = cleanlab_detection(noisy, out_of_sample_probs)
    cleaned = noisy.copy()
    cleaned[out_of_sample[1]] = out_of_sample_probs[out_of_sample[1]].argmax(axis=1)
    split = load_split(bench.data_dir, "market", "train")
    cleanlab_csv = bench.out / "labels" / f"{setting}_cleanlab.csv"
    write_split_labels(cleanlab_csv, split, get_dataset_info("market"), cleaned)
    true = labels.clean_labels
    noisy_precision = float((noisy == true).mean())
    return {"setting": noise.label, "name": setting, "ratio": noise.ratio, "images": len(noisy),
            "errors": int(corrupted.sum()),
            "detectors": {
                "CORE audit": detection(core.suspicion, core.refined != noisy, corrupted),
                "cleanlab, in-sample": detection(*in_sample, corrupted),
                "cleanlab, out-of-sample": detection(*out_of_sample, corrupted)},
            "labels": {"noisy": (noisy_precision, str(core_dir)),
                       "CORE refined": (float((core.refined == true).mean()),
                                        str(folder / "refined_labels.csv")),
                       "cleanlab cleaned": (float((cleaned == true).mean()),
                                            str(cleanlab_csv))},
            # the noisy labels' scores: the detecting run's
            "training": {"noisy": {"label_precision": noisy_precision,
                                   **final_scores(core_dir)}}}


def final_scores(run_dir: Path) -> dict[str, float]:
    """The run's final rank-1 and mAP (network 1)."""
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    return {"rank1": final["rank1"], "mAP": final["mAP"]}


def retrain(bench: Bench, result: dict[str, Any]) -> None:
    """CORE trained again on the refined and on the cleaned labels: each label set's final
    rank-1 and mAP, into ``result``."""
    for name, (precision, source) in result["labels"].items():
        if name != "noisy":  # the detecting run's, already there
            result["training"][name] = {"label_precision": precision, **final_scores(bench.run(
                "core", f"{result['name']}_core_{name.split()[-1]}",
                ["--data_dir", str(bench.data_dir), "--labels", source]))}


def cost_note(images: int, folds: int, epochs: int) -> str:
    """(c)'s extra training, counted in network-epochs over the training images (not timed)."""
    core = 2 * epochs * images
    kfold = folds * epochs * images * (folds - 1) / folds
    return (f"(c) trains {folds} baselines on {folds - 1}/{folds} of the images each: "
            f"{kfold / core:.2f}x the CORE run's training (network-image-epochs, CORE = 2 "
            "networks); (a) and (b) need no training beyond the CORE run")


def tables(results: list[dict[str, Any]]) -> str:
    """The two Markdown tables."""
    def pct(x: float) -> str:
        return "–" if x != x else f"{100 * x:.1f}"

    lines = ["| noise | detector | flagged | precision | recall | precision@K | AUROC |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for name, d in r["detectors"].items():
            lines.append(f"| {r['setting']} (K = {r['errors']}) | {name} | {d['flagged']} | "
                         f"{pct(d['precision'])} | {pct(d['recall'])} | "
                         f"{pct(d['precision_at_k'])} | {d['auroc']:.3f} |")
    lines += ["", "| noise | CORE trained on | label precision | rank-1 | mAP |",
              "| --- | --- | --- | --- | --- |"]
    for r in results:
        for name, (precision, _) in r["labels"].items():
            t = r["training"].get(name, {"rank1": float("nan"), "mAP": float("nan")})
            lines.append(f"| {r['setting']} | {name} labels | {pct(precision)} | "
                         f"{pct(t['rank1'])} | {pct(t['mAP'])} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    cli, extra = build_cli().parse_known_args(argv)
    check_number("--folds", cli.folds, cli.folds >= 2, ">= 2")
    settings = parse_noise(cli.noise)
    if any(s.kind == "clean" for s in settings):
        raise UserError("--noise clean: the benchmark needs injected errors to score")
    data_dir, out = Path(cli.data_dir), Path(cli.output_dir)
    if not (data_dir / "market").is_dir():
        prepare_synthetic_data(data_dir, 2)
    schedule = ["--epochs", str(cli.epochs), "--milestones", *map(str, cli.milestones)]
    bench = Bench(out, data_dir, [*REGIME, *schedule, *extra],
                  ["--stage1_epochs", str(cli.stage1_epochs)])
    pattern_model = None
    if any(s.kind == "pattern" for s in settings):
        pattern_model = bench.run("baseline", "clean_baseline",
                                  ["--data_dir", str(data_dir), "--noise_ratio", "0"]) / "last.pt"
    results = []
    for setting in settings:  # the detection tables first, then the retraining
        results.append(detect(bench, setting, cli.folds, cli.fold_seed, pattern_model))
        report = write_results(out, results, cli.folds, cli.epochs)
    # the most noise first
    for result in [] if cli.detect_only else sorted(results, key=lambda r: -r["ratio"]):
        retrain(bench, result)
        report = write_results(out, results, cli.folds, cli.epochs)
    print(report)
    return results


def write_results(out: Path, results: list[dict[str, Any]], folds: int, epochs: int) -> str:
    """results.json and results.md (the tables so far); returns the Markdown."""
    report = "\n\n".join([tables(results), cost_note(results[0]["images"], folds, epochs)])
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "results.md", report + "\n")
    return report


if __name__ == "__main__":
    run_cli(main)
