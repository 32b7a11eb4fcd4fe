"""The synthetic downloads: Market-1501's layout and names, determinism, options, and the shapes
of DukeMTMC-reID, CUHK03-NP and MSMT17."""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import file_digests
from PIL import Image

from datasets import market1501 as m
from datasets.cuhk03 import parse_cuhk03_name
from datasets.dukemtmc import parse_duke_name
from datasets.msmt17 import parse_msmt17_name
from datasets.synthetic import PRESETS, make_preset, make_synthetic_market
from core_reid.utils import UserError

REPO = Path(__file__).resolve().parents[1]
IMAGE_FOLDERS = (m.TRAIN_FOLDER, m.TEST_FOLDER, m.QUERY_FOLDER, m.GT_BBOX_FOLDER)


def names(download: Path, folder: str) -> list[m.MarketName]:
    return [m.parse_market_name(p.name) for p in sorted((download / folder).glob("*.jpg"))]


def test_same_seed_same_bytes_any_worker_count(synthetic_download, tmp_path):
    again = make_preset(tmp_path / "again", "tiny", workers=2)
    assert again.name == m.DOWNLOAD_FOLDER
    assert file_digests(again) == file_digests(synthetic_download)
    other = make_preset(tmp_path / "other", "tiny", workers=1, seed=1)
    assert file_digests(other) != file_digests(synthetic_download)


def test_layout_matches_the_download(synthetic_download):
    assert (synthetic_download / "readme.txt").is_file()
    assert (synthetic_download / m.GT_QUERY_FOLDER).is_dir()
    for folder in IMAGE_FOLDERS:
        assert (synthetic_download / folder / "Thumbs.db").is_file()
        files = [p.name for p in (synthetic_download / folder).iterdir() if p.name != "Thumbs.db"]
        assert files and all(m.format_market_name(*m.parse_market_name(f)) == f for f in files)


def test_images_are_128_by_64_jpegs(synthetic_download):
    for path in sorted(synthetic_download.rglob("*.jpg"))[::5]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 128)


def test_identities_and_cameras_like_market(synthetic_download):
    spec = PRESETS["tiny"]
    train = names(synthetic_download, m.TRAIN_FOLDER)
    gallery = names(synthetic_download, m.TEST_FOLDER)
    query = names(synthetic_download, m.QUERY_FOLDER)
    train_ids = {n.pid for n in train}
    test_ids = {n.pid for n in gallery} - {m.JUNK_PID, m.DISTRACTOR_PID}
    assert len(train_ids) == spec.num_train_ids and len(test_ids) == spec.num_test_ids
    assert not train_ids & test_ids and m.DISTRACTOR_PID not in train_ids | test_ids
    assert {n.pid for n in query} == test_ids
    assert {n.pid for n in names(synthetic_download, m.GT_BBOX_FOLDER)} <= test_ids
    # Distractors and junk only in the gallery.
    assert sum(n.pid == m.DISTRACTOR_PID for n in gallery) > 0
    assert sum(n.pid == m.JUNK_PID for n in gallery) > 0
    assert m.JUNK_PID not in train_ids and m.JUNK_PID not in {n.pid for n in query}
    # One query per (person, camera); each query has a gallery match seen by another camera.
    query_cams = defaultdict(list)
    for n in query:
        query_cams[n.pid].append(n.camid)
    gallery_cams = defaultdict(set)
    for n in gallery:
        gallery_cams[n.pid].add(n.camid)
    for pid, cams in query_cams.items():
        assert len(cams) == len(set(cams)) >= 2
        assert all(gallery_cams[pid] - {cam} for cam in cams)
    for n in train + gallery + query:
        assert 1 <= n.camid <= spec.num_cams
    # Every training identity is seen by at least two cameras.
    train_cams = defaultdict(set)
    for n in train:
        train_cams[n.pid].add(n.camid)
    assert all(len(cams) >= 2 for cams in train_cams.values())


def test_exact_totals_are_honoured(tmp_path):
    download = make_synthetic_market(
        tmp_path, num_train_ids=7, num_test_ids=5, images_per_id=4, num_cams=4, seed=3,
        workers=1, train_images=30, gallery_images=26, query_images=13, distractor_images=3,
        junk_images=4, gt_bbox_per_id=1)
    gallery = names(download, m.TEST_FOLDER)
    assert len(names(download, m.TRAIN_FOLDER)) == 30
    assert len(names(download, m.QUERY_FOLDER)) == 13
    assert len(gallery) == 26 + 3 + 4
    assert sum(n.pid == m.DISTRACTOR_PID for n in gallery) == 3
    assert sum(n.pid == m.JUNK_PID for n in gallery) == 4
    assert len(names(download, m.GT_BBOX_FOLDER)) == 5


def test_market_preset_has_official_counts():
    spec = PRESETS["market"]
    counts = m.OFFICIAL_COUNTS
    assert (spec.num_train_ids, spec.train_images) == (counts["train_ids"], counts["train_images"])
    assert (spec.num_test_ids, spec.query_images) == (counts["query_ids"], counts["query_images"])
    gallery = spec.gallery_images + spec.distractor_images + spec.junk_images
    assert gallery == counts["gallery_images"]


@pytest.mark.parametrize("bad", [dict(num_cams=1), dict(images_per_id=1), dict(similar_fraction=2),
                                 dict(query_images=100)])
def test_bad_options_are_user_errors(tmp_path, bad):
    options = dict(num_train_ids=3, num_test_ids=3, images_per_id=3, num_cams=3, workers=1) | bad
    with pytest.raises(UserError):
        make_synthetic_market(tmp_path, **options)
    assert not list(tmp_path.iterdir())


def test_existing_output_is_refused(synthetic_download):
    with pytest.raises(UserError, match="already exists"):
        make_preset(synthetic_download.parent, "tiny")


def test_cli(tmp_path):
    run = [sys.executable, "-m", "datasets.synthetic"]
    help_text = subprocess.run(run + ["--help"], cwd=REPO, capture_output=True, text=True)
    assert help_text.returncode == 0 and "--preset" in help_text.stdout
    made = subprocess.run(run + ["--out", str(tmp_path), "--preset", "tiny", "--ids", "3"],
                          cwd=REPO, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert len({n.pid for n in names(tmp_path / m.DOWNLOAD_FOLDER, m.TRAIN_FOLDER)}) == 3
    again = subprocess.run(run + ["--out", str(tmp_path), "--preset", "tiny"], cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert again.stderr.startswith("error:") and "already exists" in again.stderr


# ---- the other downloads' shapes ---------------------------------------------------------------

def relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_duke_shape(synthetic_downloads):
    download = synthetic_downloads("duke")
    assert download.name == "DukeMTMC-reID"
    folders = ("bounding_box_train", "bounding_box_test", "query")
    assert sorted(p.name for p in download.iterdir() if p.is_dir()) == sorted(folders)
    parsed = {folder: [parse_duke_name(p.name) for p in (download / folder).iterdir()]
              for folder in folders}  # every name parses: 0001_c2_f0046182.jpg
    cams = {n.camid for names_ in parsed.values() for n in names_}
    assert cams <= set(range(1, 9))
    train, gallery, query = (
        {n.pid for n in parsed[f]} for f in ("bounding_box_train", "bounding_box_test", "query"))
    assert not train & gallery and query < gallery and -1 not in gallery and 0 not in gallery
    distractors = gallery - query  # people of their own, never queried
    assert distractors and all(pid > max(train | query) for pid in distractors)


def test_cuhk03_shape(synthetic_downloads):
    download = synthetic_downloads("cuhk03")
    assert download.name == "cuhk03-np"
    for mode in ("detected", "labeled"):
        for folder in ("bounding_box_train", "bounding_box_test", "query"):
            files = sorted((download / mode / folder).iterdir())
            assert files and all(p.suffix == ".png" for p in files)
            with Image.open(files[0]) as image:
                assert image.format == "PNG" and image.size == (64, 128)
            assert {parse_cuhk03_name(p.name).camid for p in files} == {1, 2}
    # The query holds each test person once per camera: two queries each, as in CUHK03-NP.
    query = [parse_cuhk03_name(p.name) for p in (download / "detected" / "query").iterdir()]
    assert sorted((n.pid, n.camid) for n in query) == sorted(
        (pid, cam) for pid in {n.pid for n in query} for cam in (1, 2))
    detected = file_digests(download / "detected")
    labeled = file_digests(download / "labeled")
    assert detected.keys() == labeled.keys() and detected != labeled


@pytest.mark.parametrize("shape, top, train, test", [
    ("msmt17", "MSMT17_V1", "train", "test"),
    ("msmt17_v2", "MSMT17_V2", "mask_train_v2", "mask_test_v2")])
def test_msmt17_shape(synthetic_downloads, shape, top, train, test):
    download = synthetic_downloads(shape)
    assert download.name == top
    lists = {}
    for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt"):
        lines = (download / name).read_text().splitlines()
        lists[name] = [(line.split(" ")[0], int(line.split(" ")[1])) for line in lines]
    for name, entries in lists.items():
        for path, label in entries:  # <pid>/<file> <pid>, the file's own person
            folder, file = path.split("/")
            assert int(folder) == label == parse_msmt17_name(file).pid
            assert 1 <= parse_msmt17_name(file).camid <= 15
    trained = [path for name in ("list_train.txt", "list_val.txt") for path, _ in lists[name]]
    tested = [path for name in ("list_query.txt", "list_gallery.txt") for path, _ in lists[name]]
    assert sorted(trained) == relative_files(download / train)  # each image listed once
    assert sorted(tested) == relative_files(download / test)
    assert lists["list_val.txt"] and set(lists["list_query.txt"]).isdisjoint(
        lists["list_gallery.txt"])
    # Persons are counted from 0000 within each folder, so train and test reuse the numbers.
    assert min(label for _, label in lists["list_train.txt"]) == 0
    assert min(label for _, label in lists["list_gallery.txt"]) == 0


def test_other_shapes_are_deterministic_and_checked(synthetic_downloads, tmp_path):
    again = make_preset(tmp_path / "again", "tiny", workers=2, shape="msmt17")
    assert file_digests(again) == file_digests(synthetic_downloads("msmt17"))
    with pytest.raises(UserError, match="num_cams must be 2..2 for CUHK03-NP"):
        make_preset(tmp_path / "c", "tiny", shape="cuhk03", num_cams=3)
    with pytest.raises(UserError, match="unknown synthetic download 'viper'"):
        make_preset(tmp_path / "v", "tiny", shape="viper")
