"""ReIDFolder's sample order and parsing, the dataset registry, and clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from datasets import DATASETS, get_dataset_info, load_split
from datasets.folder import ReIDFolder, load_image
from datasets.market1501 import parse_market_name
from core_reid.utils import UserError


def test_order_is_imagefolder_order(prepared_market):
    """Noise indices must mean the same images as in the released code, which uses ImageFolder."""
    for split in ("train", "gallery", "query"):
        ours = ReIDFolder(prepared_market / split)
        theirs = ImageFolder(str(prepared_market / split))
        assert ours.classes == theirs.classes
        assert [str(p) for p in ours.paths] == [path for path, _ in theirs.samples]
        assert ours.targets.tolist() == [target for _, target in theirs.samples]


def test_classes_sorted_as_strings_and_files_sorted(prepared_market):
    gallery = ReIDFolder(prepared_market / "gallery")
    assert gallery.classes[:2] == ["-1", "0000"]
    assert gallery.classes == sorted(gallery.classes)
    assert gallery.num_classes == len(gallery.classes)
    assert [gallery.classes[t] for t in gallery.targets] == [p.parent.name for p in gallery.paths]
    assert np.all(np.diff(gallery.targets) >= 0)
    for index in range(gallery.num_classes):
        names = [p.name for p, t in zip(gallery.paths, gallery.targets) if t == index]
        assert names == sorted(names)


def test_pids_and_camids_parsed_from_names(prepared_market):
    gallery = ReIDFolder(prepared_market / "gallery")
    assert gallery.pids.dtype == np.int64 and gallery.camids.dtype == np.int64
    assert gallery.targets.dtype == np.int64
    for path, pid, camid in zip(gallery.paths, gallery.pids, gallery.camids):
        parsed = parse_market_name(path.name)
        assert (pid, camid) == (parsed.pid, parsed.camid) and int(path.parent.name) == pid
    assert {-1, 0} <= set(gallery.pids.tolist())


def test_getitem_returns_image_target_index(prepared_market):
    train = ReIDFolder(prepared_market / "train")
    image, target, index = train[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 128)
    assert (target, index) == (int(train.targets[3]), 3)
    sized = ReIDFolder(prepared_market / "train", transform=lambda img: img.size)
    assert sized[0] == ((64, 128), 0, 0) and len(sized) == len(train)


def test_load_split_reads_data_dir_slash_folder(prepared_market):
    train = load_split(prepared_market.parent, "market", "train")
    assert train.split_dir == prepared_market / "train" and len(train) > 0
    assert get_dataset_info("market") is DATASETS["market"]


def test_unknown_dataset_or_split_lists_choices(prepared_market):
    with pytest.raises(UserError, match="market"):
        get_dataset_info("viper")
    with pytest.raises(UserError, match="train_all"):
        load_split(prepared_market.parent, "market", "test")


def test_missing_or_empty_split_suggests_prepare(tmp_path):
    with pytest.raises(UserError, match=r"not found: .*nothere.*prepare_market\.py"):
        ReIDFolder(tmp_path / "nothere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no identity folders.*prepare_market\.py"):
        ReIDFolder(tmp_path / "empty")
    (tmp_path / "empty" / "0002").mkdir()
    with pytest.raises(UserError, match=r"0002 holds no images"):
        ReIDFolder(tmp_path / "empty")


def test_corrupt_image_names_the_file(prepared_market, tmp_path):
    split = tmp_path / "query"
    shutil.copytree(prepared_market / "query", split)
    victim = sorted(split.rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    dataset = ReIDFolder(split)
    with pytest.raises(UserError, match=victim.name):
        dataset[0]
    victim.write_bytes(b"not an image")
    with pytest.raises(UserError, match=victim.name):
        load_image(victim)


def test_unexpected_file_name_names_the_file(tmp_path):
    (tmp_path / "split" / "0002").mkdir(parents=True)
    Image.new("RGB", (64, 128)).save(tmp_path / "split" / "0002" / "photo.jpg")
    with pytest.raises(UserError, match="photo.jpg"):
        ReIDFolder(tmp_path / "split")


def test_subset_keeps_classes_and_metadata(prepared_market):
    gallery = ReIDFolder(prepared_market / "gallery")
    keep = np.flatnonzero(gallery.pids != -1)
    without_junk = gallery.subset(keep)
    assert len(without_junk) == len(keep) and -1 not in without_junk.pids
    assert without_junk.classes == gallery.classes
    assert without_junk.paths == [gallery.paths[i] for i in keep]
    assert np.array_equal(without_junk.camids, gallery.camids[keep])
    assert without_junk[0][1] == gallery.targets[keep[0]] and len(gallery) > len(keep)
