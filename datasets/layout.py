"""What a download holds and what preparing it must give: the data a registry entry carries.

A download is described, not coded: which folder or list file each prepared split's images come
from, the image suffix, the top folder its archive unpacks to, and the official counts the
prepared layout is checked against. The one prepare implementation (``datasets.prepare``) reads
any download from this description.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional, Union


class ImageFolder(NamedTuple):
    """Every image directly inside ``folder`` (Market-style downloads); the identity is the file
    name's first field."""
    folder: str


class ListedImages(NamedTuple):
    """The images ``list_file`` names, one ``relative/path label`` per line, the paths relative
    to ``folder`` (MSMT17's ``list_train.txt`` and the others)."""
    list_file: str
    folder: str


ImageOrigin = Union[ImageFolder, ListedImages]


@dataclass(frozen=True)
class DownloadLayout:
    """One known layout of a download.

    ``splits`` maps a prepared split to where its images come from; ``train_all`` also makes
    ``train`` and ``val`` (each training identity's first image by name is held out in val).
    """
    top_folder: str                              # the extracted folder (and the zip's top folder)
    suffix: str                                  # image files end with this; others are ignored
    splits: Mapping[str, tuple[ImageOrigin, ...]]
    optional: tuple[str, ...] = field(default=())  # splits a download may lack

    def required_entries(self) -> list[str]:
        """The folders (``name/``) and list files a download of this layout must hold."""
        entries: list[str] = []
        for split, origins in self.splits.items():
            if split in self.optional:
                continue
            for origin in origins:
                names = ([origin.folder + "/"] if isinstance(origin, ImageFolder)
                         else [origin.list_file, origin.folder + "/"])
                entries += [name for name in names if name not in entries]
        return entries


class OfficialCounts(NamedTuple):
    """A dataset's published numbers: identities and images per part of the download."""
    train_ids: int
    train_images: int
    query_ids: int
    query_images: int
    gallery_ids: int                  # gallery identity folders, junk and distractors too
    gallery_images: int
    multi_query_images: Optional[int] = None

    def per_split(self) -> dict[str, tuple[Optional[int], int]]:
        """(identity folders, images) each prepared split must hold; None where unpublished."""
        counts: dict[str, tuple[Optional[int], int]] = {
            "train_all": (self.train_ids, self.train_images),
            "train": (self.train_ids, self.train_images - self.train_ids),
            "val": (self.train_ids, self.train_ids),
            "query": (self.query_ids, self.query_images),
            "gallery": (self.gallery_ids, self.gallery_images),
        }
        if self.multi_query_images is not None:
            counts["multi-query"] = (None, self.multi_query_images)
        return counts
