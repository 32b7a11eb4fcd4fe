"""The manifest: a user's own annotations as a CSV, one image per line, ``path,pid,camid,split``.

``path`` is relative to the CSV's folder, ``pid`` and ``camid`` are any integers (no value has
a special meaning) and ``split`` is train, query or gallery. The folder layout
``<split>/<pid>/<camid>_<anything>.jpg`` is read into the same rows, so both go through one
set of checks (``datasets.custom``). The same form, written by ``write_manifest``, carries a
training split's labels: the audit's ``refined_labels.csv``, read back by ``--labels``.
Reading checks the form only (every line, before anything is written); whether an image
exists and decodes is the caller's question.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, NamedTuple

from core_reid.utils import UserError, atomic_write_csv

COLUMNS = ("path", "pid", "camid", "split")
SPLITS = ("train", "query", "gallery")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FOLDER_LAYOUT = "<split>/<pid>/<camid>_<name>.jpg"


class ManifestRow(NamedTuple):
    path: str     # as given: relative to the manifest's folder (or to the layout's root)
    pid: int
    camid: int
    split: str
    where: str    # for messages: "manifest.csv line 7" or "train/17/2_a.jpg"


def read_manifest(csv_path: Path) -> list[ManifestRow]:
    """Every row of the manifest; UserError naming the line for a bad header, a row with the
    wrong number of fields, an empty path, a non-integer id, an unknown split or a path listed
    twice. Blank lines are skipped; columns beyond the four are ignored."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{csv_path}: not a UTF-8 text file; save the manifest as UTF-8 "
                        "CSV") from None
    except OSError as err:
        raise UserError(f"cannot read {csv_path} ({err.strerror})") from None
    lines = csv.reader(text.splitlines())
    header = next(lines, None)
    names = [name.strip() for name in header or []]
    if not set(COLUMNS) <= set(names):
        raise UserError(f"{csv_path}: the first line reads {','.join(names)!r}, expected the "
                        f"header {','.join(COLUMNS)}")
    column = {name: names.index(name) for name in COLUMNS}
    rows: list[ManifestRow] = []
    first_line: dict[str, int] = {}
    for number, fields in enumerate(lines, start=2):
        if not any(field.strip() for field in fields):
            continue
        where = f"{csv_path.name} line {number}"
        if len(fields) != len(names):
            raise UserError(f"{where}: {len(fields)} fields, but the header has {len(names)} "
                            f"({','.join(names)})")
        path, pid, camid, split = (fields[column[name]].strip() for name in COLUMNS)
        row = check_row(path, pid, camid, split, where)
        key = os.path.normpath(path)
        if key in first_line:
            raise UserError(f"{where}: {path} is listed again (first on line "
                            f"{first_line[key]}); list each image once")
        first_line[key] = number
        rows.append(row)
    return rows


def check_row(path: str, pid: str, camid: str, split: str, where: str) -> ManifestRow:
    """One row from its text fields; UserError for an empty path, a non-integer id or an
    unknown split."""
    if not path:
        raise UserError(f"{where}: the path is empty")
    numbers = []
    for name, value in (("pid", pid), ("camid", camid)):
        try:
            numbers.append(int(value))
        except ValueError:
            raise UserError(f"{where}: {name} {value!r} is not an integer (ids are integers, "
                            "any sign)") from None
    if split not in SPLITS:
        raise UserError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    return ManifestRow(Path(path).as_posix(), numbers[0], numbers[1], split, where)


def read_folder_layout(root: Path) -> list[ManifestRow]:
    """The rows of a folder laid out as ``<split>/<pid>/<camid>_<anything>.<jpg|jpeg|png>``.
    Other files (a readme, Thumbs.db, hidden files) are ignored; an image anywhere else, a
    folder that is not a split, an identity folder or a file name that is not an integer is a
    UserError."""
    rows = []
    for split_dir in _entries(root):
        if not split_dir.is_dir():
            continue
        if split_dir.name not in SPLITS:
            raise UserError(f"{split_dir}: not a split folder; the folder layout is "
                            f"{FOLDER_LAYOUT} with split {', '.join(SPLITS)} (for a manifest, "
                            "point --src at the .csv file)")
        for pid_dir in _entries(split_dir):
            if not pid_dir.is_dir():
                _refuse_stray_image(pid_dir)
                continue
            for image in _entries(pid_dir):
                if image.is_dir():
                    raise UserError(f"{image}: a folder inside an identity folder; the folder "
                                    f"layout is {FOLDER_LAYOUT}")
                if not image.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                relative = image.relative_to(root).as_posix()
                if "_" not in image.name:
                    raise UserError(f"{relative}: the file name must start with its camera id "
                                    f"and '_' (e.g. 2_{image.name}); the folder layout is "
                                    f"{FOLDER_LAYOUT}")
                rows.append(check_row(relative, pid_dir.name, image.name.split("_", 1)[0],
                                      split_dir.name, relative))
    return rows


def _entries(folder: Path) -> list[Path]:
    """The folder's entries sorted by name, hidden ones left out."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _refuse_stray_image(path: Path) -> None:
    if path.name.lower().endswith(IMAGE_EXTENSIONS):
        raise UserError(f"{path}: an image outside an identity folder; the folder layout is "
                        f"{FOLDER_LAYOUT}")


def write_manifest(csv_path: Path, rows: Iterable[tuple[Path, int, int, str]]) -> None:
    """Write ``(image path, pid, camid, split)`` rows in the manifest's form, each path relative
    to the CSV's folder, atomically."""
    folder = os.path.abspath(csv_path.parent)
    atomic_write_csv(csv_path, COLUMNS, (
        (Path(os.path.relpath(os.path.abspath(path), folder)).as_posix(), pid, camid, split)
        for path, pid, camid, split in rows))
