"""DukeMTMC-reID, CUHK03-NP (detected and labeled) and MSMT17 (V1 and V2) end to end on real
files: a synthetic download in the dataset's exact shape -> prepare_market.py --dataset (from
the folder, its parent and its zip) -> a short train_core.py run -> metrics.json with scores."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import file_digests, file_states, zip_download

import train_core
from datasets import get_dataset_info, load_split
from datasets.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--lr", "0.05", "--milestones", "--epochs", "2",
        "--stage1_epochs", "0", "--eval_every", "1"]  # SELF, then co-refining: both tested

# (synthetic download, --dataset): each dataset and each layout of its download.
CASES = [("duke", "duke"), ("cuhk03", "cuhk03"), ("cuhk03", "cuhk03_labeled"),
         ("msmt17", "msmt17"), ("msmt17_v2", "msmt17")]
CASE_IDS = ["duke", "cuhk03", "cuhk03_labeled", "msmt17_v1", "msmt17_v2"]


def listed(download: Path, list_file: str, folder: str) -> list[str]:
    """The files a list file names, relative to the download (written out by hand here, not by
    the code under test)."""
    lines = (download / list_file).read_text().split("\n")
    return [f"{folder}/{line.split(' ')[0]}" for line in lines if line]


def in_folder(download: Path, folder: str, suffix: str) -> list[str]:
    return [f"{folder}/{p.name}" for p in (download / folder).iterdir() if p.suffix == suffix]


def expected_sources(download: Path, dataset: str) -> dict[str, list[str]]:
    """Split -> the download files it must hold, from each dataset's documented layout."""
    if dataset == "duke":
        parts = {split: in_folder(download, folder, ".jpg") for split, folder in
                 [("train_all", "bounding_box_train"), ("query", "query"),
                  ("gallery", "bounding_box_test")]}
    elif dataset.startswith("cuhk03"):
        mode = "labeled" if dataset == "cuhk03_labeled" else "detected"
        parts = {split: in_folder(download, f"{mode}/{folder}", ".png") for split, folder in
                 [("train_all", "bounding_box_train"), ("query", "query"),
                  ("gallery", "bounding_box_test")]}
    else:
        train, test = ("train", "test") if download.name == "MSMT17_V1" else (
            "mask_train_v2", "mask_test_v2")
        parts = {"train_all": listed(download, "list_train.txt", train)
                 + listed(download, "list_val.txt", train),
                 "query": listed(download, "list_query.txt", test),
                 "gallery": listed(download, "list_gallery.txt", test)}
    first = {}
    for source in sorted(parts["train_all"], key=lambda path: path.rsplit("/", 1)[1]):
        first.setdefault(source.rsplit("/", 1)[1].split("_")[0], source)
    parts["val"] = sorted(first.values())
    parts["train"] = sorted(set(parts["train_all"]) - set(parts["val"]))
    return parts


@pytest.mark.parametrize("shape, dataset", CASES, ids=CASE_IDS)
def test_prepared_layout_holds_the_right_files(synthetic_downloads, tmp_path, shape, dataset):
    download = synthetic_downloads(shape)
    summary = prepare(download, tmp_path / dataset, progress=False, dataset=dataset)
    source_digests = file_digests(download)
    expected = {}
    for split, sources in expected_sources(download, dataset).items():
        for source in sources:
            name = source.rsplit("/", 1)[1]
            expected[f"{split}/{name.split('_')[0]}/{name}"] = source_digests[source]
    assert file_digests(tmp_path / dataset) == expected
    assert sorted(p.name for p in (tmp_path / dataset).iterdir()) == sorted(
        ["train_all", "train", "val", "query", "gallery"])
    assert summary.counts["train_all"][1] == len(expected_sources(download, dataset)["train_all"])
    info = get_dataset_info(dataset)
    for split in ("train_all", "query", "gallery"):  # names parse, cameras are the dataset's
        data = load_split(tmp_path, dataset, split)
        assert set(data.camids) <= set(range(1, info.num_cams + 1))
        assert [int(data.classes[t]) for t in data.targets] == data.pids.tolist()


def test_detected_and_labeled_are_different_images(synthetic_downloads, tmp_path):
    download = synthetic_downloads("cuhk03")
    prepare(download, tmp_path / "detected", progress=False, dataset="cuhk03")
    prepare(download, tmp_path / "labeled", progress=False, dataset="cuhk03_labeled")
    detected, labeled = file_digests(tmp_path / "detected"), file_digests(tmp_path / "labeled")
    assert detected.keys() == labeled.keys()  # the same people and names in this synthetic data
    assert all(detected[path] != labeled[path] for path in detected)


@pytest.mark.parametrize("shape, dataset", CASES, ids=CASE_IDS)
def test_folder_parent_and_zip_agree_rerun_changes_nothing(synthetic_downloads, tmp_path, shape,
                                                           dataset):
    download = synthetic_downloads(shape)
    archive = zip_download(download, tmp_path / f"{download.name}.zip")
    flat = zip_download(download, tmp_path / "flat.zip", top_folder=False)
    before = file_digests(download), archive.read_bytes()
    prepare(download, tmp_path / "folder", progress=False, dataset=dataset)
    expected = file_digests(tmp_path / "folder")
    for src, dst in [(download.parent, "parent"), (archive, "zip"), (flat, "flat_zip")]:
        prepare(src, tmp_path / dst, progress=False, dataset=dataset)
        assert file_digests(tmp_path / dst) == expected, dst
    states = file_states(tmp_path / "zip")
    result = subprocess.run([sys.executable, "prepare_market.py", "--dataset", dataset, "--src",
                             str(archive), "--dst", str(tmp_path / "zip")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stdout and "nothing changed" in result.stdout
    assert f"{get_dataset_info(dataset).title}'s official" in result.stdout
    assert file_states(tmp_path / "zip") == states
    assert (file_digests(download), archive.read_bytes()) == before  # the download is only read


@pytest.fixture(scope="module")
def prepared_others(synthetic_downloads, tmp_path_factory) -> Path:
    """One --data_dir holding duke/, cuhk03/ and msmt17/."""
    data_dir = tmp_path_factory.mktemp("others")
    for shape, dataset in [CASES[0], CASES[1], CASES[3]]:
        prepare(synthetic_downloads(shape), data_dir / dataset, progress=False, dataset=dataset)
    return data_dir


@pytest.mark.parametrize("dataset", ["duke", "cuhk03", "msmt17"])
def test_train_core_runs_and_scores(prepared_others, tmp_path, dataset):
    result = train_core.main(["--dataset", dataset, "--data_dir", str(prepared_others),
                              "--output_dir", str(tmp_path), *TINY])
    run = Path(result["run_dir"])
    assert run.name.startswith(f"{dataset}_core_random0.2")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == dataset and len(metrics["history"]) == 2
    assert [h["epoch"] for h in metrics["history"] if h["rank1"] is not None] == [0, 1]
    for key in ("rank1", "rank5", "rank10", "mAP"):
        assert 0 <= metrics["final"][key] <= 1
    with np.load(run / "noisy_labels.npz") as labels:
        train = load_split(prepared_others, dataset, "train")
        assert labels["clean_labels"].tolist() == train.targets.tolist()
    if dataset == "duke":  # the released protocol's comparison concerns Market-1501 alone
        proc = subprocess.run([sys.executable, "benchmarks/compare_protocols.py", "--checkpoint",
                               str(run / "last.pt")], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ")
        assert "was trained on duke" in proc.stderr and "Traceback" not in proc.stderr
