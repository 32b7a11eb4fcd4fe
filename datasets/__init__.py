"""Dataset registry: the scripts name a dataset, this says what its download looks like, how to
read its file names and where its prepared folder lies.

Each dataset is data: one ``DATASETS`` entry (its download layouts, file-name parser, camera
count and official counts, from its facts module); preparing, training and scoring are the same
code for all. Every dataset is scored under the Market-1501 protocol (``eval_lib``'s
``market1501``: same person and camera dropped, junk ignored), which is also CUHK03-NP's.
A user's own dataset is not in the registry: ``prepare_market.py --dataset custom`` writes its
entry as ``dataset.json`` into the prepared folder, and ``get_dataset_info`` finds it there by
the folder's name (``datasets.custom``).
Importing this package does not import torch, so ``prepare_market.py`` starts fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from datasets import cuhk03, dukemtmc, market1501, msmt17
from datasets.layout import DownloadLayout, OfficialCounts
from core_reid.utils import UserError

if TYPE_CHECKING:
    from datasets.folder import ReIDFolder

SPLITS = ("train_all", "train", "val", "query", "gallery", "multi-query")


@dataclass(frozen=True)
class DatasetInfo:
    """What the code needs to know about one dataset."""
    name: str                            # the --dataset value
    title: str                           # how people write it
    folder: str                          # prepared folder under --data_dir
    parse_name: Callable[[str], Any]     # file name -> object with .pid and .camid
    num_cams: int                        # camera ids run 1..num_cams
    layouts: tuple[DownloadLayout, ...]  # the download's known layouts, tried in order
    official: Optional[OfficialCounts]   # None: an own dataset
    gallery_note: str = ""               # what the prepare summary says about the gallery
    # An own dataset's annotated ids: identities[p] is the pid of the prepared identity folder
    # p, cameras[c - 1] the camid of prepared camera c (None: the prepared ids are the ids)
    identities: Optional[tuple[int, ...]] = None
    cameras: Optional[tuple[int, ...]] = None

    def annotated_pid(self, folder: str) -> int:
        """The identity as annotated, of a prepared identity folder name."""
        return int(folder) if self.identities is None else self.identities[int(folder)]

    def annotated_camid(self, camid: int) -> int:
        """The camera as annotated, of a prepared (parsed) camera id."""
        return camid if self.cameras is None else self.cameras[camid - 1]


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("market", "Market-1501", "market", market1501.parse_market_name,
                market1501.NUM_CAMS, (market1501.LAYOUT,), market1501.OFFICIAL,
                "gallery identities include 0000 = distractors and -1 = junk"),
    DatasetInfo("duke", dukemtmc.TITLE, "duke", dukemtmc.parse_duke_name, dukemtmc.NUM_CAMS,
                (dukemtmc.LAYOUT,), dukemtmc.OFFICIAL,
                f"gallery identities include {dukemtmc.DISTRACTOR_IDS} distractors, never "
                "queried"),
    DatasetInfo("cuhk03", "CUHK03-NP (detected)", "cuhk03", cuhk03.parse_cuhk03_name,
                cuhk03.NUM_CAMS, (cuhk03.layout("detected"),), cuhk03.OFFICIAL["detected"]),
    DatasetInfo("cuhk03_labeled", "CUHK03-NP (labeled)", "cuhk03_labeled",
                cuhk03.parse_cuhk03_name, cuhk03.NUM_CAMS, (cuhk03.layout("labeled"),),
                cuhk03.OFFICIAL["labeled"]),
    DatasetInfo("msmt17", "MSMT17", "msmt17", msmt17.parse_msmt17_name, msmt17.NUM_CAMS,
                msmt17.LAYOUTS, msmt17.OFFICIAL),
)}


def get_dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """The registry entry for ``name``, else the own dataset prepared as ``data_dir/name``;
    UserError listing the choices if there is neither."""
    if name in DATASETS:
        return DATASETS[name]
    if data_dir is not None:
        from datasets.custom import read_custom_info  # here: it imports this package
        info = read_custom_info(Path(data_dir) / name)
        if info is not None:
            return info
    dst = Path(data_dir if data_dir is not None else "<data_dir>") / name
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}, "
                    f"or your own, prepared with: python prepare_market.py --dataset custom "
                    f"--src <manifest.csv or folder> --dst {dst}")


def load_split(data_dir: str | Path, dataset_name: str, split: str,
               transform: Callable | None = None) -> ReIDFolder:
    """Read ``data_dir/<folder>/<split>``: the released code's ``--data_dir ../ --dataset market``
    means the data lies in ``../market``."""
    from datasets.folder import ReIDFolder  # here, not at the top: it imports torch

    info = get_dataset_info(dataset_name, data_dir)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return ReIDFolder(Path(data_dir) / info.folder / split, transform, info.parse_name)
