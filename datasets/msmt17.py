"""MSMT17 facts and file-name parsing (V1 and V2).

The download holds ``train/<pid>/`` and ``test/<pid>/`` (V2: ``mask_train_v2/`` and
``mask_test_v2/``) and four list files, one ``<pid>/<file> <label>`` per line, that say which
image is in which part: the training set is ``list_train.txt`` + ``list_val.txt`` (as is
conventional), the query ``list_query.txt`` and the gallery ``list_gallery.txt``, both from the
test folder. File name ``0000_000_01_0303morning_0015_0.jpg``: person 0000 (counted within its
folder, so train and test both start at 0000), image 000 of that person, camera 01 (of 15),
date and time of day, frame, track. No junk and no distractors.
"""
from __future__ import annotations

from datasets.layout import DownloadLayout, ListedImages, OfficialCounts
from datasets.names import name_parser

NUM_CAMS = 15
LIST_FILES = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")

parse_msmt17_name = name_parser(
    r"^(?P<pid>\d+)_(?P<image>\d+)_(?P<cam>\d+)_(?P<when>[0-9a-z]+)_(?P<frame>\d+)_(?P<track>\d+)"
    r"\.jpg$", "MSMT17", "0000_000_01_0303morning_0015_0.jpg")


def format_msmt17_name(pid: int, image: int, camid: int, when: str, frame: int,
                       track: int) -> str:
    """The MSMT17 file name for these fields (``when`` e.g. ``0303morning``)."""
    return f"{pid:04d}_{image:03d}_{camid:02d}_{when}_{frame:04d}_{track}.jpg"


def layout(top_folder: str, train_folder: str, test_folder: str) -> DownloadLayout:
    """A version's layout: its top folder and the names of its two image folders."""
    train, val, query, gallery = LIST_FILES
    return DownloadLayout(top_folder, ".jpg", {
        "train_all": (ListedImages(train, train_folder), ListedImages(val, train_folder)),
        "query": (ListedImages(query, test_folder),),
        "gallery": (ListedImages(gallery, test_folder),),
    })


# Each version's top folder and its training and test image folders.
VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LAYOUTS = tuple(layout(top, *folders) for top, folders in VERSIONS.items())

OFFICIAL = OfficialCounts(train_ids=1041, train_images=32621, query_ids=3060,
                          query_images=11659, gallery_ids=3060, gallery_images=82161)
