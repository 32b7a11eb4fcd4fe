"""prepare_market.py on real files: folder and zip sources, reruns, interruptions, bad inputs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import file_digests, file_states, zip_download

from datasets import market1501 as m
from datasets.synthetic import make_preset
from datasets.prepare import format_summary, prepare
from core_reid.utils import UserError

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDER = {"train_all": m.TRAIN_FOLDER, "train": m.TRAIN_FOLDER, "val": m.TRAIN_FOLDER,
                 "query": m.QUERY_FOLDER, "gallery": m.TEST_FOLDER, "multi-query": m.GT_BBOX_FOLDER}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "prepare_market.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def download_zip(synthetic_download, tmp_path_factory) -> Path:
    archive = tmp_path_factory.mktemp("zip") / f"{m.DOWNLOAD_FOLDER}.zip"
    return zip_download(synthetic_download, archive)


def test_layout_and_counts(synthetic_download, prepared_market):
    def jpgs(folder):
        return sorted(p.name for p in (synthetic_download / folder).glob("*.jpg"))

    train = jpgs(m.TRAIN_FOLDER)
    first_per_pid = {}
    for name in train:
        first_per_pid.setdefault(name.split("_")[0], name)
    expected = {
        "train_all": train,
        "val": sorted(first_per_pid.values()),
        "train": sorted(set(train) - set(first_per_pid.values())),
        "query": jpgs(m.QUERY_FOLDER),
        "gallery": jpgs(m.TEST_FOLDER),
        "multi-query": jpgs(m.GT_BBOX_FOLDER),
    }
    for split, names in expected.items():
        files = sorted((prepared_market / split).glob("*/*"))
        assert sorted(p.name for p in files) == names, split
        assert all(p.parent.name == p.name.split("_")[0] for p in files)
    assert sorted(p.name for p in prepared_market.iterdir()) == sorted(expected)
    assert not list(prepared_market.rglob("Thumbs.db"))
    assert {"-1", "0000"} <= {p.name for p in (prepared_market / "gallery").iterdir()}
    # Copies keep the bytes exactly.
    source = file_digests(synthetic_download)
    for relative, digest in file_digests(prepared_market).items():
        split, _, name = relative.split("/")
        assert source[f"{SOURCE_FOLDER[split]}/{name}"] == digest


def test_summary_counts_and_warning(prepared_market, tmp_path, synthetic_download):
    summary = prepare(synthetic_download, tmp_path / "market", progress=False)
    ids_per_split = defaultdict(set)
    for path in (tmp_path / "market").glob("*/*/*.jpg"):
        ids_per_split[path.parts[-3]].add(path.parent.name)
    for split, (ids, images) in summary.counts.items():
        assert ids == len(ids_per_split[split])
        assert images == len(list((tmp_path / "market" / split).glob("*/*.jpg")))
    assert summary.counts["val"][1] == summary.counts["train_all"][0]
    assert summary.written == sum(images for _, images in summary.counts.values())
    text = format_summary(summary)
    assert "train_all" in text and "12936" in text and "WARNING" in text and "differ" in text


def test_zip_and_folder_give_identical_trees(prepared_market, download_zip, synthetic_download,
                                             tmp_path):
    expected = file_digests(prepared_market)
    prepare(download_zip, tmp_path / "from_zip", progress=False)
    assert file_digests(tmp_path / "from_zip") == expected
    flat = zip_download(synthetic_download, tmp_path / "flat.zip", top_folder=False)
    prepare(flat, tmp_path / "from_flat_zip", progress=False)
    assert file_digests(tmp_path / "from_flat_zip") == expected
    prepare(synthetic_download.parent, tmp_path / "from_parent", progress=False)
    assert file_digests(tmp_path / "from_parent") == expected


def test_fresh_download_prepares_identically(prepared_market, tmp_path):
    again = make_preset(tmp_path / "new_src", "tiny", workers=2)
    prepare(again, tmp_path / "market", progress=False)
    assert file_digests(tmp_path / "market") == file_digests(prepared_market)


def test_rerun_changes_nothing_and_says_verified(synthetic_download, tmp_path):
    dst = tmp_path / "market"
    prepare(synthetic_download, dst, progress=False)
    before = file_states(dst)
    result = run_cli("--src", str(synthetic_download), "--dst", str(dst))
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stdout and "nothing changed" in result.stdout
    assert file_states(dst) == before


def test_interrupted_run_is_completed_exactly(prepared_market, synthetic_download, tmp_path):
    dst = tmp_path / "market"
    shutil.copytree(prepared_market, dst)
    removed = sorted(dst.rglob("*.jpg"))[::7]
    for path in removed:
        path.unlink()
    shutil.rmtree(dst / "query")
    half = dst / "train" / removed[0].parent.name / f".{removed[0].name}.part"
    half.parent.mkdir(parents=True, exist_ok=True)
    half.write_bytes(b"half a jpeg")
    summary = prepare(synthetic_download, dst, progress=False)
    assert file_digests(dst) == file_digests(prepared_market)
    assert summary.removed_partials == [half.relative_to(dst).as_posix()]
    assert summary.written == len(removed) + summary.counts["query"][1] - sum(
        p.parts[-3] == "query" for p in removed)


def test_foreign_files_are_kept_with_a_warning(prepared_market, synthetic_download, tmp_path):
    dst = tmp_path / "market"
    shutil.copytree(prepared_market, dst)
    note = dst / "train" / "notes.txt"
    note.write_text("mine")
    summary = prepare(synthetic_download, dst, progress=False)
    assert summary.extra_files == ["train/notes.txt"] and note.read_text() == "mine"
    assert "WARNING: 1 files" in format_summary(summary)


def test_file_of_wrong_size_stops_before_any_change(prepared_market, synthetic_download, tmp_path):
    dst = tmp_path / "market"
    shutil.copytree(prepared_market, dst)
    victim = sorted(dst.rglob("*.jpg"))[0]
    victim.write_bytes(b"x")
    (dst / "query").rename(tmp_path / "moved_query")
    before = file_states(dst)
    with pytest.raises(UserError, match="differ in size"):
        prepare(synthetic_download, dst, progress=False)
    assert file_states(dst) == before


def test_source_is_never_changed(synthetic_download, download_zip, tmp_path):
    before = file_digests(synthetic_download.parent)
    zip_before = file_digests(download_zip.parent)
    prepare(synthetic_download, tmp_path / "copy", progress=False)
    prepare(synthetic_download, tmp_path / "link", link=True, progress=False)
    prepare(download_zip, tmp_path / "zip", progress=False)
    assert file_digests(synthetic_download.parent) == before
    assert file_digests(download_zip.parent) == zip_before


def test_link_makes_hard_links(synthetic_download, tmp_path):
    summary = prepare(synthetic_download, tmp_path / "market", link=True, progress=False)
    linked = sorted((tmp_path / "market").rglob("*.jpg"))
    assert len(linked) == summary.written > 0
    for path in linked:
        source = synthetic_download / SOURCE_FOLDER[path.parts[-3]] / path.name
        assert path.stat().st_ino == source.stat().st_ino


def snapshot(path: Path):
    """What a failed run must leave as it was: nothing, a file's bytes, or a folder's files."""
    if path.is_dir():
        return file_states(path)
    return path.read_bytes() if path.exists() else None


def check_cli_error(dst: Path, *args: str, message: str) -> None:
    """Non-zero exit, one 'error:' line naming the problem, no traceback, DST untouched."""
    before = snapshot(dst)
    result = run_cli(*args, "--dst", str(dst))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(dst) == before


def test_cli_missing_source(tmp_path):
    check_cli_error(tmp_path / "dst", "--src", str(tmp_path / "nowhere"), message="not found")


def test_cli_not_a_market_folder(tmp_path):
    (tmp_path / "src" / m.TRAIN_FOLDER).mkdir(parents=True)
    check_cli_error(tmp_path / "dst", "--src", str(tmp_path / "src"),
                    message="no bounding_box_test/, query/")


def damage_first_image(archive: Path, damaged: Path) -> Path:
    """A copy of ``archive`` with part of its first image's data zeroed (headers intact)."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        member = next(i for i in zf.infolist() if i.filename.endswith(".jpg"))
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    data[start + 10:start + 40] = bytes(30)
    damaged.write_bytes(bytes(data))
    return damaged


def test_cli_corrupt_zips(synthetic_download, download_zip, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(download_zip.read_bytes()[: download_zip.stat().st_size // 2])
    check_cli_error(tmp_path / "dst", "--src", str(truncated), message="truncated.zip")
    damaged = damage_first_image(download_zip, tmp_path / "damaged.zip")
    check_cli_error(tmp_path / "dst", "--src", str(damaged), message="damaged.zip")
    stored = zip_download(synthetic_download, tmp_path / "stored.zip", True, zipfile.ZIP_STORED)
    bad_crc = damage_first_image(stored, tmp_path / "bad_crc.zip")
    check_cli_error(tmp_path / "dst", "--src", str(bad_crc), message="CRC")
    (tmp_path / "text.zip").write_text("not a zip")
    check_cli_error(tmp_path / "dst", "--src", str(tmp_path / "text.zip"), message="text.zip")


def test_cli_link_from_zip_says_copy(download_zip, tmp_path):
    check_cli_error(tmp_path / "dst", "--src", str(download_zip), "--link", message="drop --link")


def test_cli_unwritable_destination(synthetic_download, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    check_cli_error(blocker / "market", "--src", str(synthetic_download), message="is a file")
    check_cli_error(blocker, "--src", str(synthetic_download), message="is a file")
    check_cli_error(synthetic_download / "market", "--src", str(synthetic_download),
                    message="inside the download")


def test_cli_read_only_parent(synthetic_download, tmp_path):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("this user (root) may write to read-only folders")
        check_cli_error(parent / "market", "--src", str(synthetic_download), message="not writable")
    finally:
        parent.chmod(0o755)
