"""Market-1501 facts and file-name parsing.

File name ``0002_c1s1_000451_03.jpg``: person 0002, camera 1, sequence 1, frame 000451, box 03.
Person ``0000`` is a distractor (a gallery negative); ``-1`` is junk (never counts in scoring).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from datasets.layout import DownloadLayout, ImageFolder, OfficialCounts

JUNK_PID = -1
DISTRACTOR_PID = 0

# Official counts of the Market-1501-v15.09.15 download (bounding_box_test includes junk and
# distractors).
OFFICIAL_COUNTS = {
    "train_ids": 751,
    "train_images": 12936,
    "query_ids": 750,
    "query_images": 3368,
    "gallery_images": 19732,
    "gallery_distractor_images": 2793,
    "gallery_junk_images": 3819,
    "gt_bbox_images": 25259,
}

_NAME = re.compile(r"^(-1|\d+)_c(\d)s(\d)_(\d+)_(\d+)\.jpg$")


class MarketName(NamedTuple):
    pid: int
    camid: int
    seq: int
    frame: int
    box: int


def parse_market_name(filename: str) -> MarketName:
    """Parse a Market-1501 image file name (base name only); ValueError if it is not one."""
    m = _NAME.match(filename)
    if m is None:
        raise ValueError(f"not a Market-1501 image name: {filename!r} "
                         "(expected e.g. 0002_c1s1_000451_03.jpg)")
    pid, cam, seq, frame, box = m.groups()
    return MarketName(int(pid), int(cam), int(seq), int(frame), int(box))


def released_code_camid(filename: str) -> int:
    """The camera id the released CORE evaluation computes for a Market-1501 file.

    Its Market parser fails on the first junk file and it falls back to a CUHK03 parser that
    reads ``2 * (first field - 1) + third field`` of the ``_``-split name, i.e. a number made from
    the person id and the frame number, not the camera. Only for the comparison option that
    explains the released code's optimistic scores.
    """
    fields = filename.split("_")
    return 2 * (int(fields[0]) - 1) + int(fields[2])


def format_market_name(pid: int, camid: int, seq: int, frame: int, box: int) -> str:
    """The Market-1501 file name for these fields (junk keeps its bare ``-1``)."""
    person = str(pid) if pid == JUNK_PID else f"{pid:04d}"
    return f"{person}_c{camid}s{seq}_{frame:06d}_{box:02d}.jpg"


# The download: one top folder holding these image folders.
DOWNLOAD_FOLDER = "Market-1501-v15.09.15"
TRAIN_FOLDER = "bounding_box_train"
TEST_FOLDER = "bounding_box_test"
QUERY_FOLDER = "query"
GT_BBOX_FOLDER = "gt_bbox"
GT_QUERY_FOLDER = "gt_query"
NUM_CAMS = 6

# bounding_box_train makes train_all, train and val; gt_bbox (multi-query) may be missing.
LAYOUT = DownloadLayout(DOWNLOAD_FOLDER, ".jpg", {
    "train_all": (ImageFolder(TRAIN_FOLDER),),
    "gallery": (ImageFolder(TEST_FOLDER),),
    "query": (ImageFolder(QUERY_FOLDER),),
    "multi-query": (ImageFolder(GT_BBOX_FOLDER),),
}, optional=("multi-query",))

# The gallery's identity folders include 0000 (distractors) and -1 (junk).
OFFICIAL = OfficialCounts(
    train_ids=OFFICIAL_COUNTS["train_ids"], train_images=OFFICIAL_COUNTS["train_images"],
    query_ids=OFFICIAL_COUNTS["query_ids"], query_images=OFFICIAL_COUNTS["query_images"],
    gallery_ids=OFFICIAL_COUNTS["query_ids"] + 2, gallery_images=OFFICIAL_COUNTS["gallery_images"],
    multi_query_images=OFFICIAL_COUNTS["gt_bbox_images"])
