"""Dataset registry: the training scripts name a dataset, this says where and how to read it.

Adding DukeMTMC-reID, CUHK03 or MSMT17 means one more ``DATASETS`` entry (and its name parser);
the scripts stay as they are. Importing this package does not import torch, so
``prepare_market.py`` starts fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from datasets import market1501
from utils import UserError

if TYPE_CHECKING:
    from datasets.folder import ReIDFolder

SPLITS = ("train_all", "train", "val", "query", "gallery", "multi-query")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's prepared folder name (under ``--data_dir``), name parser and official counts."""
    name: str
    folder: str
    parse_name: Callable[[str], Any]
    official_counts: Mapping[str, int]


DATASETS: dict[str, DatasetInfo] = {
    "market": DatasetInfo("market", "market", market1501.parse_market_name,
                          market1501.OFFICIAL_COUNTS),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``; UserError listing the choices if there is none."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of: "
                        f"{', '.join(sorted(DATASETS))}") from None


def load_split(data_dir: str | Path, dataset_name: str, split: str,
               transform: Callable | None = None) -> ReIDFolder:
    """Read ``data_dir/<folder>/<split>``: the released code's ``--data_dir ../ --dataset market``
    means the data lies in ``../market``."""
    from datasets.folder import ReIDFolder  # here, not at the top: it imports torch

    info = get_dataset_info(dataset_name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return ReIDFolder(Path(data_dir) / info.folder / split, transform, info.parse_name)
