"""A user's own dataset, with real image files: a manifest and the folder layout prepared, trained
on without injected noise (diagnostics that never call the annotations true), audited,
retrained on the refined labels; every bad manifest input one line, nothing written."""
from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import file_digests
from PIL import Image

import prepare_market
import reproduce
import test as test_script
import train_core
import train_self
from core_reid.utils import run_cli

TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--lr", "0.05", "--milestones"]
# Ids and cameras of any sign and size; 999 is a gallery identity never queried.
TRAIN_IDS, TEST_IDS, CAMS = (-7, 0, 13, 2024), (500, 501), (3, 11)


def draw(path: Path, pid: int, camid: int, k: int) -> None:
    """A 64x32 person-like picture: the identity sets the colours, the camera the background."""
    rng = np.random.default_rng([pid + 10_000, camid, k])
    picture = np.zeros((64, 32, 3), dtype=np.uint8)
    picture[:] = (camid * 20 % 256, 90, 90)
    colour = np.random.default_rng(pid + 10_000).integers(0, 256, (2, 3))
    picture[8:34, 8:24] = colour[0]
    picture[34:60, 10:22] = colour[1]
    picture = np.clip(picture + rng.normal(0, 8, picture.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """photos/manifest.csv and its images under photos/shots/cam<camid>/, named by number only
    (nothing in a name says who it is)."""
    root = tmp_path_factory.mktemp("own") / "photos"
    lines, n = ["path,pid,camid,split"], 0
    plan = [("train", pid, 3) for pid in TRAIN_IDS] + [("query", pid, 1) for pid in TEST_IDS] \
        + [("gallery", pid, 2) for pid in (*TEST_IDS, 999)]
    for split, pid, per_camera in plan:
        for camid in CAMS:
            for k in range(per_camera):
                path = f"shots/cam{camid}/img{n:03d}.jpg"
                draw(root / path, pid, camid, k)
                lines.append(f"{path},{pid},{camid},{split}")
                n += 1
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def manifest_rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def prepare(argv, capsys, monkeypatch) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of prepare_market.py as its __main__ runs it."""
    monkeypatch.setattr(sys, "argv", ["prepare_market.py", *argv])
    code = 0
    try:
        run_cli(prepare_market.main)
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def tensorboard_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"]) | set(accumulator.Tags()["images"])
    return tags


def test_manifest_prepared_trained_audited_and_retrained(photos, tmp_path, capsys,
                                                         monkeypatch):
    source = file_digests(photos)
    data = tmp_path / "mydata"
    code, out, err = prepare(["--dataset", "custom", "--src", str(photos / "manifest.csv"),
                              "--dst", str(data / "shop")], capsys, monkeypatch)
    assert code == 0, err
    assert f"train on it with --dataset shop --data_dir {data}" in out
    record = json.loads((data / "shop" / "dataset.json").read_text())
    assert record["identities"] == sorted({*TRAIN_IDS, *TEST_IDS, 999})
    assert record["cameras"] == list(CAMS)
    # identity folders are the ids' positions among all the dataset's ids, sorted
    assert sorted(p.name for p in (data / "shop" / "train_all").iterdir()) == \
        ["0000", "0001", "0002", "0006"]
    assert len(list((data / "shop" / "train_all").rglob("*.jpg"))) == 24
    assert len(list((data / "shop" / "val").rglob("*.jpg"))) == 4
    prepared = file_digests(data / "shop")
    code, out, _ = prepare(["--dataset", "custom", "--src", str(photos / "manifest.csv"),
                            "--dst", str(data / "shop")], capsys, monkeypatch)
    assert code == 0 and "was already complete" in out
    assert file_digests(data / "shop") == prepared and file_digests(photos) == source

    common = ["--dataset", "shop", "--data_dir", str(data), "--output_dir",
              str(tmp_path / "res"), "--train_split", "train_all", *TINY, "--eval_every", "2"]
    result = train_core.main([*common, "--noise_ratio", "0", "--epochs", "2",
                              "--stage1_epochs", "0"])
    run = Path(result["run_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["injected_label_precision"] is None
    for entry in metrics["history"]:  # the annotations are never scored as if true
        for stats in (entry, *entry["networks"]):
            assert not {"label_precision", "label_precision_clean", "noisy_corrected",
                        "noisy_memorized"} & stats.keys()
        assert {n["disagree_with_annotation"] for n in entry["networks"]} <= \
            {i / 24 for i in range(25)}
        assert 0 <= entry["labels_changed"] <= 1
    log = (run / "train.log").read_text().lower()
    assert "true" not in log and "label precision" not in log and "label-prec" not in log
    assert "no injected noise" in log and "disagree" in log
    tags = tensorboard_tags(run)
    assert "labels/changed" in tags and "net2/disagree_with_annotation" in tags
    assert not any("precision" in tag or "noisy" in tag for tag in tags)
    assert not any(tag.startswith("labels/net") for tag in tags)  # no "right/wrong" picture

    scores = test_script.main(["--checkpoint", str(run / "last.pt")])
    assert scores["mAP"] == pytest.approx(metrics["final"]["mAP"])
    test_script.main(["--checkpoint", str(run / "last.pt"), "--audit", "--suspects", "4"])
    audit = {row["manifest_path"]: row for row in manifest_rows(run / "audit" /
                                                                "label_audit.csv")}
    train_rows = {row["path"]: row for row in manifest_rows(photos / "manifest.csv")
                  if row["split"] == "train"}
    assert audit.keys() == train_rows.keys()
    for path, row in audit.items():
        assert (row["annotated_pid"], row["camid"]) == (train_rows[path]["pid"],
                                                        train_rows[path]["camid"])
        assert "true_pid" not in row
    changed = sum(row["changed"] == "1" for row in audit.values())
    assert changed / 24 == pytest.approx(metrics["history"][-1]["labels_changed"])

    refined = run / "audit" / "refined_labels.csv"
    retrained = train_self.main([*common, "--method", "baseline", "--labels", str(refined),
                                 "--epochs", "1"])
    state = torch.load(Path(retrained["run_dir"]) / "last.pt", weights_only=False)
    folders = sorted(p.name for p in (data / "shop" / "train_all").iterdir())
    trained_on = [record["identities"][int(folders[c])] for c in state["noisy_labels"]]
    assert trained_on == [int(row["pid"]) for row in manifest_rows(refined)]
    assert retrained["labels"] == str(refined) and retrained["noise_ratio"] == 0


def test_folder_layout_is_the_same_dataset(photos, tmp_path, capsys, monkeypatch):
    """The folder layout <split>/<pid>/<camid>_<name>.jpg of the same images prepares to the
    same identities, cameras and counts, and trains."""
    tree = tmp_path / "tree"
    for row in manifest_rows(photos / "manifest.csv"):
        target = tree / row["split"] / row["pid"] / f"{row['camid']}_{Path(row['path']).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos / row["path"], target)
    (tree / "README.txt").write_text("stray files are ignored\n")
    data = tmp_path / "data"
    for src, name in ((tree, "tree"), (photos / "manifest.csv", "listed")):
        code, _, err = prepare(["--dataset", "custom", "--src", str(src), "--dst",
                                str(data / name)], capsys, monkeypatch)
        assert code == 0, err
    records = [json.loads((data / name / "dataset.json").read_text()) for name in
               ("tree", "listed")]
    assert [(r["identities"], r["cameras"]) for r in records][0] == \
        [(r["identities"], r["cameras"]) for r in records][1]
    for split in ("train_all", "train", "val", "query", "gallery"):
        assert sorted(p.relative_to(data / "tree" / split).parent.as_posix() for p in
                      (data / "tree" / split).rglob("*.jpg")) == \
            sorted(p.relative_to(data / "listed" / split).parent.as_posix() for p in
                   (data / "listed" / split).rglob("*.jpg"))
    result = train_self.main(["--method", "baseline", "--dataset", "tree", "--data_dir",
                              str(data), "--output_dir", str(tmp_path / "res"),
                              "--noise_ratio", "0", "--epochs", "1", *TINY])
    assert result["final"]["mAP"] > 0 and result["history"][-1]["labels_changed"] <= 1


def test_the_grid_takes_an_own_dataset_by_name(photos, tmp_path, capsys, monkeypatch):
    """...and its report scores no labels of a clean setting against the annotations."""
    data, grid = tmp_path / "mydata", tmp_path / "grid"
    assert prepare(["--dataset", "custom", "--src", str(photos / "manifest.csv"), "--dst",
                    str(data / "shop")], capsys, monkeypatch)[0] == 0
    outcomes = reproduce.main(["--datasets", "shop", "--noise", "clean", "--seeds", "1",
                               "--methods", "baseline", "--data_dir", str(data),
                               "--output_dir", str(grid), "--epochs", "1", *TINY])
    assert list(outcomes.values()) == ["done"]
    report = (grid / "results.md").read_text().split("### ")
    changed = next(table for table in report if table.startswith("Final labels changed"))
    precision = next(table for table in report if table.startswith("Final label precision"))
    def baseline_row(table: str) -> str:
        (row,) = [line for line in table.splitlines() if line.startswith("| Baseline | ")]
        return row

    assert "–" not in changed and re.fullmatch(r"\| Baseline \| \d+\.\d \|", baseline_row(changed))
    assert baseline_row(precision) == "| Baseline | – |"


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------

def edit_manifest(photos: Path, tmp_path: Path, change) -> Path:
    """A copy of photos/ whose manifest's lines went through ``change`` (a list -> a list)."""
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)
    lines = (copy / "manifest.csv").read_text().splitlines()
    (copy / "manifest.csv").write_text("\n".join(change(lines)) + "\n")
    return copy / "manifest.csv"


def replace_field(index: int, value: str):
    def change(lines):
        fields = lines[1].split(",")
        fields[index] = value
        return [lines[0], ",".join(fields), *lines[2:]]
    return change


def broken_image(photos: Path, tmp_path: Path) -> Path:
    manifest = edit_manifest(photos, tmp_path, lambda lines: lines)
    first = manifest.parent / manifest_rows(manifest)[0]["path"]
    first.write_bytes(first.read_bytes()[:200])  # truncated: its header reads, its pixels not
    return manifest


def query_without_match(photos: Path, tmp_path: Path) -> Path:
    def change(lines):  # every gallery image of 500 from camera 3 only
        return [line if not line.endswith(",500,11,gallery") else
                line.replace(",500,11,", ",500,3,") for line in lines]
    return edit_manifest(photos, tmp_path, change)


def folder_layout(photos: Path, tmp_path: Path, bad: str) -> Path:
    tree = tmp_path / "tree"
    for row in manifest_rows(photos / "manifest.csv"):
        name = f"{row['camid']}_{Path(row['path']).name}"
        target = tree / row["split"] / row["pid"] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos / row["path"], target)
    example = next((tree / "train" / "13").iterdir())
    if bad == "pid":
        (tree / "train" / "13").rename(tree / "train" / "thirteen")
    elif bad == "camid":
        example.rename(example.with_name("nocamera.jpg"))
    elif bad == "split":
        (tree / "val").mkdir()
    return tree


BAD_SOURCES = [
    ("missing image", lambda p, t: edit_manifest(p, t, lambda lines: [
        *lines, "shots/cam3/gone.jpg,13,3,train"]), "shots/cam3/gone.jpg: no such file"),
    ("unreadable image", broken_image, "cannot be read as an image"),
    ("not an image type", lambda p, t: edit_manifest(p, t, replace_field(0, "a.bmp")),
     "a.bmp is not a .jpg/.jpeg/.png image"),
    ("unknown split", lambda p, t: edit_manifest(p, t, replace_field(3, "val")),
     "manifest.csv line 2: split 'val' is not one of train, query, gallery"),
    ("non-integer pid", lambda p, t: edit_manifest(p, t, replace_field(1, "bob")),
     "manifest.csv line 2: pid 'bob' is not an integer"),
    ("non-integer camid", lambda p, t: edit_manifest(p, t, replace_field(2, "1.5")),
     "manifest.csv line 2: camid '1.5' is not an integer"),
    ("duplicate path", lambda p, t: edit_manifest(p, t, lambda lines: [
        *lines, lines[1].replace(",-7,", ",13,")]), "is listed again (first on line 2)"),
    ("query never matched", query_without_match,
     "has no gallery image of pid 500 from another camera"),
    ("empty split", lambda p, t: edit_manifest(p, t, lambda lines: [
        line for line in lines if not line.endswith(",gallery")]), "no gallery images"),
    ("bad header", lambda p, t: edit_manifest(p, t, lambda lines: ["file,id,cam,set",
                                                                  *lines[1:]]),
     "expected the header path,pid,camid,split"),
    ("wrong field count", lambda p, t: edit_manifest(p, t, lambda lines: [
        lines[0], lines[1] + ",extra", *lines[2:]]), "line 2: 5 fields, but the header has 4"),
    ("not a manifest", lambda p, t: p / "shots" / "cam3" / "img000.jpg",
     "not a .csv manifest or a folder"),
    ("missing source", lambda p, t: t / "nothing.csv", "source not found"),
    ("non-integer id folder", lambda p, t: folder_layout(p, t, "pid"),
     "pid 'thirteen' is not an integer"),
    ("no camid in a file name", lambda p, t: folder_layout(p, t, "camid"),
     "nocamera.jpg: the file name must start with its camera id"),
    ("unknown split folder", lambda p, t: folder_layout(p, t, "split"),
     "not a split folder"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in BAD_SOURCES],
                         ids=[c[0] for c in BAD_SOURCES])
def test_bad_source_is_one_line_and_writes_nothing(photos, tmp_path, capsys, monkeypatch,
                                                   make, message):
    src = make(photos, tmp_path)
    before = file_digests(tmp_path)
    dst = tmp_path / "mydata" / "shop"
    code, _, err = prepare(["--dataset", "custom", "--src", str(src), "--dst", str(dst)],
                           capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not dst.parent.exists() and file_digests(tmp_path) == before


def test_bad_destination_is_one_line_and_writes_nothing(photos, tmp_path, capsys,
                                                        monkeypatch):
    manifest = photos / "manifest.csv"
    code, _, err = prepare(["--dataset", "custom", "--src", str(manifest), "--dst",
                            str(tmp_path / "market")], capsys, monkeypatch)
    assert code == 2 and "'market' is a built-in dataset's name" in err
    assert not (tmp_path / "market").exists()
    other = edit_manifest(photos, tmp_path, lambda lines: lines[:1] + lines[4:])
    assert prepare(["--dataset", "custom", "--src", str(other), "--dst",
                    str(tmp_path / "shop")], capsys, monkeypatch)[0] == 0
    before = file_digests(tmp_path)
    code, _, err = prepare(["--dataset", "custom", "--src", str(manifest), "--dst",
                            str(tmp_path / "shop")], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds another dataset" in err and file_digests(tmp_path) == before


def test_unknown_dataset_names_the_way_to_prepare_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train_core.py", "--dataset", "shop", "--data_dir",
                                      str(tmp_path), "--output_dir", str(tmp_path / "res")])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_core.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"python prepare_market.py --dataset custom --src <manifest.csv or folder> --dst " \
           f"{tmp_path / 'shop'}" in err
    (tmp_path / "shop").mkdir()
    with pytest.raises(SystemExit):
        run_cli(train_core.main)
    assert "has no dataset.json" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()
