"""A user's own dataset: a manifest (``datasets.manifest``) or a folder layout, prepared into the
same layout as the built-in datasets, and found again by its folder's name.

``--dst DATA_DIR/NAME`` names the dataset: training, the grid and ``test.py`` read it with
``--data_dir DATA_DIR --dataset NAME``. The prepared folder holds ``dataset.json`` (its
registry entry: the annotated identities and cameras, and which manifest path each prepared file
came from), written last, so a folder without it is not (yet) a dataset.

Annotated ids are any integers, with no special value (no junk, no distractor): the prepared
identity folder is the position of the id among the dataset's sorted ids (``0000``, ``0001``,
...), the prepared camera the position of the camid among its sorted camids, plus one, and the
file ``<folder>_c<camera>_<k><ext>``, k = the image's position among the manifest's paths
sorted. So the folders sort as the ids do, every id is scored as a person, and
``DatasetInfo.annotated_pid`` / ``annotated_camid`` give the annotated ids back.

Every check runs before DST is touched: the manifest's form, empty splits, image types,
missing files, queries that can never be matched, a DST holding another dataset, and images
that do not decode (only those DST does not already hold, so a rerun is quick).
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from PIL import Image
from tqdm import tqdm

from datasets import DATASETS, DatasetInfo
from datasets.download import FolderSource
from datasets.manifest import (COLUMNS, FOLDER_LAYOUT, IMAGE_EXTENSIONS, SPLITS, ManifestRow,
                               read_folder_layout, read_manifest)
from datasets.names import name_parser
from datasets.prepare import (PlannedFile, PrepareSummary, execute_plan, held_out_for_val,
                              scan_destination)
from core_reid.utils import UserError, atomic_write_text, first_line

CUSTOM = "custom"           # prepare_market.py's --dataset for an own dataset
INFO_FILE = "dataset.json"  # the prepared folder's registry entry
FORMAT = "core-reid own dataset, version 1"

parse_custom_name = name_parser(r"^(?P<pid>\d+)_c(?P<cam>\d+)_\d+\.(jpg|jpeg|png)$",
                                "prepared own-dataset", "0003_c1_000017.jpg")


def read_rows(src: Path) -> tuple[list[ManifestRow], Path]:
    """The rows of a manifest ``.csv`` or of a folder layout, and the folder their paths are
    relative to."""
    if not src.exists():
        raise UserError(f"source not found: {src}; point --src at a manifest .csv "
                        f"({','.join(COLUMNS)}) or a folder laid out as {FOLDER_LAYOUT}")
    if src.is_dir():
        return read_folder_layout(src), src
    if src.suffix.lower() != ".csv":
        raise UserError(f"--src {src}: not a .csv manifest or a folder; give a manifest "
                        f"({','.join(COLUMNS)}) or a folder laid out as {FOLDER_LAYOUT}")
    return read_manifest(src), src.parent


def check_rows(rows: list[ManifestRow], root: Path, src: Path) -> list[int]:
    """The size of each row's image; UserError for an empty split, an image type the scripts do
    not read, a missing file, or a query that has no gallery image of its identity from
    another camera (the protocol could never match it)."""
    for split in SPLITS:
        if not any(row.split == split for row in rows):
            raise UserError(f"{src}: no {split} images; each split ({', '.join(SPLITS)}) needs "
                            "at least one")
    sizes = []
    for row in rows:
        if not row.path.lower().endswith(IMAGE_EXTENSIONS):
            raise UserError(f"{row.where}: {row.path} is not a {'/'.join(IMAGE_EXTENSIONS)} "
                            "image; convert it to JPEG or PNG")
        path = root / row.path
        if not path.is_file():
            raise UserError(f"{row.where}: {path}: no such file" if not path.exists() else
                            f"{row.where}: {path} is not a file")
        sizes.append(path.stat().st_size)
    gallery_cams: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        if row.split == "gallery":
            gallery_cams[row.pid].add(row.camid)
    for row in rows:
        if row.split == "query" and not gallery_cams[row.pid] - {row.camid}:
            raise UserError(f"{row.where}: query {row.path} (pid {row.pid}, camid {row.camid}) "
                            f"has no gallery image of pid {row.pid} from another camera, so it "
                            "can never be matched (same-camera matches do not count); add one "
                            "to the gallery or drop the query")
    return sizes


def plan_custom(rows: list[ManifestRow], sizes: list[int], name: str,
                src: Path) -> tuple[list[PlannedFile], dict[str, Any]]:
    """Every file DST will hold (split by split, names sorted, as ``prepare.plan``) and the
    ``dataset.json`` record."""
    ids = sorted({row.pid for row in rows})
    cams = sorted({row.camid for row in rows})
    pid_index = {pid: i for i, pid in enumerate(ids)}
    cam_index = {cam: i + 1 for i, cam in enumerate(cams)}
    pid_width = max(4, len(str(len(ids) - 1)))
    k_width = max(6, len(str(len(rows) - 1)))
    order = sorted(range(len(rows)), key=lambda i: os.path.normpath(rows[i].path))
    names: dict[int, str] = {}
    for k, i in enumerate(order):
        row = rows[i]
        names[i] = (f"{pid_index[row.pid]:0{pid_width}d}_c{cam_index[row.camid]}_"
                    f"{k:0{k_width}d}{Path(row.path).suffix.lower()}")

    by_split: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_split["train_all" if row.split == "train" else row.split].append(i)
    val = held_out_for_val([names[i] for i in by_split["train_all"]])
    by_split["train"] = [i for i in by_split["train_all"] if names[i] not in val]
    by_split["val"] = [i for i in by_split["train_all"] if names[i] in val]
    planned = [PlannedFile(rows[i].path, f"{split}/{names[i].split('_', 1)[0]}/{names[i]}",
                           sizes[i])
               for split in ("train_all", "train", "val", "query", "gallery")
               for i in sorted(by_split[split], key=names.__getitem__)]
    record = {"format": FORMAT, "name": name, "source": str(src.resolve()),
              "identities": ids, "cameras": cams,
              "images": {names[i]: rows[i].path for i in order}}
    return planned, record


def prepare_custom(src: str | Path, dst: str | Path, link: bool = False,
                   progress: bool = True) -> PrepareSummary:
    """Check the manifest (or folder layout) in SRC, then build, complete or verify DST, and
    write its ``dataset.json`` last. Nothing is written unless every check passes."""
    src, dst = Path(src), Path(dst)
    name = dst.name
    if name in DATASETS:
        raise UserError(f"--dst {dst}: {name!r} is a built-in dataset's name, and --dataset "
                        f"{name} would read that one; give the folder another name")
    rows, root = read_rows(src)
    sizes = check_rows(rows, root, src)
    planned, record = plan_custom(rows, sizes, name, src)
    existing = _read_record(dst / INFO_FILE) if (dst / INFO_FILE).is_file() else None
    if existing is not None and _without_source(existing) != _without_source(record):
        raise UserError(f"--dst {dst} holds another dataset (its {INFO_FILE} was written from "
                        f"{existing.get('source')}, with other images or ids); choose another "
                        "--dst, or delete it to prepare this one there")
    present = scan_destination(dst) if dst.is_dir() else {}
    where = {row.path: row.where for row in rows}
    for item in tqdm([p for p in planned if p.dest not in present], desc="checking images",
                     unit="image", disable=None if progress else True, file=sys.stderr):
        _check_image(root / item.source, where[item.source])
    info = _info(name, record)
    summary = execute_plan(FolderSource(root), planned, info, dst, link, progress)
    if existing is None:
        atomic_write_text(dst / INFO_FILE, json.dumps(record, indent=1))
    return summary


def _check_image(path: Path, where: str) -> None:
    """UserError unless the image decodes (the whole of it: a truncated file fails here)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"{where}: {path} cannot be read as an image ({first_line(err)}); "
                        "replace it or drop its line") from None


def _without_source(record: dict[str, Any]) -> dict[str, Any]:
    """What makes two preparations the same dataset (the source may have moved)."""
    return {key: value for key, value in record.items() if key != "source"}


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({first_line(err)}); prepare the dataset again "
                        "with prepare_market.py --dataset custom") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{path}: not written by prepare_market.py --dataset custom; prepare "
                        "the dataset again")
    return record


def _info(name: str, record: dict[str, Any]) -> DatasetInfo:
    return DatasetInfo(name, f"{name} (own dataset)", name, parse_custom_name,
                       len(record["cameras"]), (), None,
                       identities=tuple(record["identities"]), cameras=tuple(record["cameras"]))


def read_custom_info(folder: Path) -> Optional[DatasetInfo]:
    """The registry entry of the own dataset prepared in ``folder``; None if there is no such
    folder; UserError if it is not a complete own dataset."""
    if not folder.is_dir():
        return None
    if not (folder / INFO_FILE).is_file():
        raise UserError(f"{folder} has no {INFO_FILE}, so it is not a prepared own dataset (nor "
                        f"a built-in one: {', '.join(DATASETS)}); prepare it, or complete an "
                        "interrupted preparation, with: python prepare_market.py --dataset "
                        f"custom --src <manifest.csv or folder> --dst {folder}")
    return _info(folder.name, _read_record(folder / INFO_FILE))


def manifest_paths(folder: Path) -> dict[str, str]:
    """Prepared file name -> the image's path as the manifest gives it (relative to the
    manifest's folder) of the own dataset in ``folder``."""
    return _read_record(folder / INFO_FILE)["images"]
