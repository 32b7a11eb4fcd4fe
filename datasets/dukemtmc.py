"""DukeMTMC-reID facts and file-name parsing.

File name ``0001_c2_f0046182.jpg``: person 0001, camera 2 (of 8), frame 0046182. There is no
junk; the gallery's 408 distractor identities are ordinary people nobody queries.
"""
from __future__ import annotations

from datasets.layout import DownloadLayout, ImageFolder, OfficialCounts
from datasets.names import name_parser

NUM_CAMS = 8
TITLE = "DukeMTMC-reID"

parse_duke_name = name_parser(r"^(?P<pid>\d+)_c(?P<cam>\d)_f(?P<frame>\d+)\.jpg$", TITLE,
                              "0001_c2_f0046182.jpg")


def format_duke_name(pid: int, camid: int, frame: int) -> str:
    """The DukeMTMC-reID file name for these fields."""
    return f"{pid:04d}_c{camid}_f{frame:07d}.jpg"


# DukeMTMC-reID.zip unpacks to one top folder holding these image folders.
LAYOUT = DownloadLayout("DukeMTMC-reID", ".jpg", {
    "train_all": (ImageFolder("bounding_box_train"),),
    "gallery": (ImageFolder("bounding_box_test"),),
    "query": (ImageFolder("query"),),
})

OFFICIAL = OfficialCounts(train_ids=702, train_images=16522, query_ids=702, query_images=2228,
                          gallery_ids=1110, gallery_images=17661)
DISTRACTOR_IDS = 408  # gallery identities that are never queried
