"""CUHK03-NP facts and file-name parsing: CUHK03 under the 767/700 "new protocol".

The download (``cuhk03-np/``) holds the same split twice: ``detected/`` (boxes from a person
detector: the paper's setting, ``--dataset cuhk03``) and ``labeled/`` (hand-drawn boxes,
``--dataset cuhk03_labeled``). File name ``0001_c1_1.png``: person 0001, camera 1 or 2, image 1.
CUHK03 was filmed by five camera pairs and every person by one pair, so the name keeps only the
camera within the pair; for the protocol (drop the query's own person seen by its own camera)
that is exact. Scored like Market-1501, as the new protocol prescribes (not single-shot).
"""
from __future__ import annotations

from datasets.layout import DownloadLayout, ImageFolder, OfficialCounts
from datasets.names import name_parser

NUM_CAMS = 2
TOP_FOLDER = "cuhk03-np"
MODES = ("detected", "labeled")

parse_cuhk03_name = name_parser(r"^(?P<pid>\d+)_c(?P<cam>\d)_(?P<image>\d+)\.png$", "CUHK03-NP",
                                "0001_c1_1.png")


def format_cuhk03_name(pid: int, camid: int, image: int) -> str:
    """The CUHK03-NP file name for these fields."""
    return f"{pid:04d}_c{camid}_{image}.png"


def layout(mode: str) -> DownloadLayout:
    """The images of one mode (``detected`` or ``labeled``) inside ``cuhk03-np/``."""
    return DownloadLayout(TOP_FOLDER, ".png", {
        "train_all": (ImageFolder(f"{mode}/bounding_box_train"),),
        "gallery": (ImageFolder(f"{mode}/bounding_box_test"),),
        "query": (ImageFolder(f"{mode}/query"),),
    })


OFFICIAL = {
    "detected": OfficialCounts(train_ids=767, train_images=7365, query_ids=700,
                               query_images=1400, gallery_ids=700, gallery_images=5332),
    "labeled": OfficialCounts(train_ids=767, train_images=7368, query_ids=700,
                              query_images=1400, gallery_ids=700, gallery_images=5328),
}
