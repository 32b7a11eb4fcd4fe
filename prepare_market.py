"""Turn a Market-1501 download into the folder layout the training scripts read.

    python prepare_market.py --src Market-1501-v15.09.15.zip --dst ../market

SRC is the .zip, the extracted ``Market-1501-v15.09.15/`` folder or the folder holding it; it is
only read, never changed. DST becomes ``DST/<split>/<pid>/<file>.jpg`` with the splits
train_all (= bounding_box_train), val (each training identity's first image by name), train (the
rest), query, gallery (= bounding_box_test, distractors 0000 and junk -1 included) and
multi-query (= gt_bbox, when the download has it).

The work reads top to bottom: open the source, plan every file, validate (before DST is touched),
execute (each file written under a temporary name, then renamed, so rerunning after an
interruption completes the job), verify, summarise against Market-1501's official counts.
"""
from __future__ import annotations

import os
import shutil
import sys
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

from tqdm import tqdm

from datasets import SPLITS
from datasets import market1501 as m
from utils import ArgumentParser, UserError, run_cli

IMAGE_SUFFIX = ".jpg"  # the download's folders also carry a Thumbs.db, which is left out
PARTIAL_SUFFIX = ".part"  # a file being written is ".<name>.part" until it is complete
SPLIT_OF_FOLDER = {m.QUERY_FOLDER: "query", m.TEST_FOLDER: "gallery",
                   m.GT_BBOX_FOLDER: "multi-query"}  # bounding_box_train makes three splits


# ---------------------------------------------------------------------------------------------
# The source: a folder or a zip, read only.

class FolderSource:
    """An extracted download; ``root`` holds bounding_box_train/ and the other folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders = {entry.name for entry in os.scandir(root) if entry.is_dir()}

    def images(self, folder: str) -> dict[str, int]:
        """File name -> size of the .jpg files in ``folder``."""
        with os.scandir(self.root / folder) as entries:
            return {e.name: e.stat().st_size for e in entries
                    if e.name.endswith(IMAGE_SUFFIX) and e.is_file()}

    def write(self, source: str, target: Path, link: bool) -> None:
        if link:
            os.link(self.root / source, target)
        else:
            shutil.copyfile(self.root / source, target)

    def close(self) -> None:
        pass


class ZipSource:
    """The download's .zip, read in place; ``prefix`` is its top folder ("" if none)."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        self.archive = archive
        self.prefix = prefix
        self.entries: dict[str, dict[str, int]] = defaultdict(dict)  # folder -> name -> size
        self.folders: set[str] = set()
        for info in archive.infolist():
            if not info.filename.startswith(prefix) or "/" not in info.filename[len(prefix):]:
                continue
            folder, _, name = info.filename[len(prefix):].partition("/")
            self.folders.add(folder)
            if name.endswith(IMAGE_SUFFIX) and "/" not in name and not info.is_dir():
                self.entries[folder][name] = info.file_size

    def images(self, folder: str) -> dict[str, int]:
        return dict(self.entries[folder])

    def write(self, source: str, target: Path, link: bool) -> None:
        with self.archive.open(self.prefix + source) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def close(self) -> None:
        self.archive.close()


Source = Union[FolderSource, ZipSource]


def open_source(src: Path) -> Source:
    """Find the download in SRC; UserError for a missing path, a damaged zip or another layout."""
    if not src.exists():
        raise UserError(f"source not found: {src}; point --src at Market-1501-v15.09.15.zip or "
                        "the folder extracted from it")
    if src.is_dir():
        root = src / m.DOWNLOAD_FOLDER if (src / m.DOWNLOAD_FOLDER).is_dir() else src
        source: Source = FolderSource(root)
        where = str(root)
    else:
        source = _open_zip(src)
        where = f"{src}:{source.prefix or '/'}"
    missing = [folder for folder in m.REQUIRED_FOLDERS if folder not in source.folders]
    if missing:
        folders = ", ".join(f + "/" for f in missing)
        raise UserError(f"{src} is not a Market-1501 download: no {folders} in {where}; point "
                        "--src at Market-1501-v15.09.15.zip or the folder extracted from it")
    return source


def _open_zip(src: Path) -> ZipSource:
    hint = "re-download Market-1501-v15.09.15.zip"
    try:
        archive = zipfile.ZipFile(src)
        bad = archive.testzip()  # reads every member once: a damaged archive stops us before DST
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{src} is damaged or not a zip archive ({err}); {hint}") from None
    except OSError as err:
        raise UserError(f"cannot read {src} ({err.strerror}); {hint}") from None
    if bad is not None:
        raise UserError(f"{src} is corrupt: {bad} fails its CRC check; {hint}")
    top = m.DOWNLOAD_FOLDER + "/"
    prefix = top if any(name.startswith(top) for name in archive.namelist()) else ""
    return ZipSource(archive, prefix)


# ---------------------------------------------------------------------------------------------
# The plan: every file DST will hold, and where it comes from.

class PlannedFile(NamedTuple):
    source: str  # relative to the download, e.g. bounding_box_train/0002_c1s1_000451_03.jpg
    dest: str    # relative to DST, e.g. train_all/0002/0002_c1s1_000451_03.jpg
    size: int


def plan(source: Source) -> list[PlannedFile]:
    """All files of all splits, in a fixed order (split, then file name)."""
    planned: list[PlannedFile] = []

    def add(folder: str, split: str, names: list[str], sizes: dict[str, int]) -> None:
        planned.extend(PlannedFile(f"{folder}/{name}",
                                   f"{split}/{_pid_folder(folder, name)}/{name}", sizes[name])
                       for name in names)

    train = source.images(m.TRAIN_FOLDER)
    first_of_pid: dict[str, str] = {}
    for name in sorted(train):
        first_of_pid.setdefault(_pid_folder(m.TRAIN_FOLDER, name), name)
    val = set(first_of_pid.values())
    add(m.TRAIN_FOLDER, "train_all", sorted(train), train)
    add(m.TRAIN_FOLDER, "train", sorted(set(train) - val), train)
    add(m.TRAIN_FOLDER, "val", sorted(val), train)
    for folder, split in SPLIT_OF_FOLDER.items():
        if folder in source.folders:
            images = source.images(folder)
            add(folder, split, sorted(images), images)
    return planned


def _pid_folder(folder: str, name: str) -> str:
    """The identity folder: the name's first field as written ("0002", "0000", "-1")."""
    try:
        m.parse_market_name(name)
    except ValueError:
        raise UserError(f"unexpected image name {folder}/{name} in the download (expected e.g. "
                        "0002_c1s1_000451_03.jpg); is --src really Market-1501?") from None
    return name.split("_", 1)[0]


def split_counts(planned: list[PlannedFile]) -> dict[str, tuple[int, int]]:
    """(identity folders, images) per split, in SPLITS order."""
    pids: dict[str, set[str]] = defaultdict(set)
    images: dict[str, int] = defaultdict(int)
    for item in planned:
        split, pid, _ = item.dest.split("/")
        pids[split].add(pid)
        images[split] += 1
    return {split: (len(pids[split]), images[split]) for split in SPLITS if split in images}


# ---------------------------------------------------------------------------------------------
# Validate: everything that can be checked before DST is touched.

def check_destination(dst: Path, source: Source, link: bool) -> None:
    """UserError, with DST left as it is (or absent), if DST cannot take the plan."""
    if dst.exists() and not dst.is_dir():
        raise UserError(f"--dst {dst} is a file; give a folder path")
    existing = dst
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create --dst {dst}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --dst {dst}: {existing} is not writable; choose "
                        "another folder")
    if isinstance(source, FolderSource):
        root = source.root.resolve()
        if dst.resolve() == root or root in dst.resolve().parents:
            raise UserError(f"--dst {dst} lies inside the download {source.root}, which must "
                            "stay unchanged; choose a folder outside it")
    if link and isinstance(source, ZipSource):
        raise UserError("--link needs an extracted folder, not a zip: drop --link to copy")
    if link and existing.stat().st_dev != source.root.stat().st_dev:
        raise UserError(f"--link cannot hard-link across filesystems ({source.root} and {dst}): "
                        "drop --link to copy, or choose a --dst on the same filesystem")


def scan_destination(dst: Path) -> dict[str, int]:
    """Relative path -> size of every file under DST's split folders (partial files included)."""
    found: dict[str, int] = {}
    for split in SPLITS:
        for folder, _, files in os.walk(dst / split):
            for name in files:
                path = Path(folder) / name
                found[path.relative_to(dst).as_posix()] = path.stat().st_size
    return found


def _is_partial(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


# ---------------------------------------------------------------------------------------------
# Execute, verify, summarise.

@dataclass(frozen=True)
class PrepareSummary:
    """What ``prepare`` found and did."""
    dst: Path
    counts: dict[str, tuple[int, int]]     # split -> (identity folders, images)
    written: int                           # files copied or linked by this run
    already_present: int                   # planned files DST already held (names and sizes match)
    link: bool
    removed_partials: list[str]            # leftovers of an interrupted run, deleted
    extra_files: list[str]                 # in DST but not in the plan: warned about, left alone

    @property
    def count_differences(self) -> list[str]:
        """Where the counts differ from Market-1501's official ones."""
        differences = []
        for split, (ids, images) in self.counts.items():
            official_ids, official_images = m.PREPARED_COUNTS[split]
            if official_ids is not None and ids != official_ids:
                differences.append(f"{split} identities {ids} (official {official_ids})")
            if images != official_images:
                differences.append(f"{split} images {images} (official {official_images})")
        return differences


def prepare(src: str | Path, dst: str | Path, link: bool = False,
            progress: bool = True) -> PrepareSummary:
    """Build (or complete, or verify) the prepared layout in DST from the download in SRC."""
    src, dst = Path(src), Path(dst)
    source = open_source(src)
    try:
        return _prepare(source, dst, link, progress)
    finally:
        source.close()


def _prepare(source: Source, dst: Path, link: bool, progress: bool) -> PrepareSummary:
    planned = plan(source)
    check_destination(dst, source, link)

    present = scan_destination(dst)
    differing = [p.dest for p in planned if p.dest in present and present[p.dest] != p.size]
    if differing:
        raise UserError(f"{len(differing)} files in {dst} differ in size from the download, e.g. "
                        f"{differing[0]}; delete them (or all of {dst}) and rerun")
    planned_dests = {p.dest for p in planned}
    partials = sorted(path for path in present if _is_partial(path))
    extra = sorted(path for path in present if path not in planned_dests and not _is_partial(path))
    todo = [p for p in planned if p.dest not in present]

    for path in partials:
        (dst / path).unlink()
    for item in tqdm(todo, desc=f"{'linking' if link else 'copying'} into {dst}", unit="file",
                     disable=None if progress else True, file=sys.stderr):
        _write_file(source, item, dst, link)

    final = scan_destination(dst)
    missing = [p.dest for p in planned if final.get(p.dest) != p.size]
    if missing:
        raise UserError(f"{len(missing)} files did not arrive in {dst}, e.g. {missing[0]}; rerun "
                        "to complete it")
    return PrepareSummary(dst, split_counts(planned), len(todo), len(planned) - len(todo), link,
                          partials, extra)


def _write_file(source: Source, item: PlannedFile, dst: Path, link: bool) -> None:
    """Write one planned file under a temporary name, then rename it: never a half file."""
    target = dst / item.dest
    partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        source.write(item.source, partial, link)
        os.replace(partial, target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        fix = "drop --link to copy" if link else "free some space or fix the permissions"
        raise UserError(f"cannot write {target} ({err.strerror}); {fix}, then rerun to complete "
                        f"{dst}") from None


def format_summary(summary: PrepareSummary) -> str:
    """The table of identities and images per split beside Market-1501's official counts; a
    count that differs from the official one is marked with *."""
    def cell(value: int, official: int | None) -> str:
        return f"{value}{'*' if official is not None and value != official else ' '}"

    row = "{:<12} {:>6} {:>8}   {:>12}  {:>15}"
    lines = [row.format("split", "ids", "images", "official ids", "official images")]
    for split, (ids, images) in summary.counts.items():
        official_ids, official_images = m.PREPARED_COUNTS[split]
        lines.append(row.format(split, cell(ids, official_ids), cell(images, official_images),
                                "-" if official_ids is None else official_ids, official_images))
    lines.append("(gallery identities include 0000 = distractors and -1 = junk)")
    total = summary.written + summary.already_present
    if summary.written == 0:
        lines.append(f"{summary.dst} was already complete: verified {total} files (names and "
                     "sizes); nothing changed")
    else:
        verb = "linked" if summary.link else "copied"
        lines.append(f"{verb} {summary.written} files into {summary.dst} "
                     f"({summary.already_present} were already there); verified all {total}")
    if summary.removed_partials:
        lines.append(f"removed {len(summary.removed_partials)} partial files left by an "
                     "interrupted run")
    if summary.extra_files:
        lines.append(f"WARNING: {len(summary.extra_files)} files in {summary.dst} are not from "
                     f"this download (left in place), e.g. {summary.extra_files[0]}")
    if summary.count_differences:
        lines.append(f"WARNING: {len(summary.count_differences)} counts differ from Market-1501's "
                     "official ones (marked *): expected for synthetic data; for the real dataset, "
                     "re-download it")
    return "\n".join(lines)


def main() -> None:
    parser = ArgumentParser(
        description="Prepare Market-1501 for training: DST/{train_all,train,val,query,gallery,"
                    "multi-query}/<pid>/<file>.jpg. Safe to rerun: it completes an interrupted "
                    "run and only verifies a complete one.")
    parser.add_argument("--src", type=Path, required=True,
                        help="Market-1501-v15.09.15.zip, the folder extracted from it, or the "
                             "folder holding that")
    parser.add_argument("--dst", type=Path, required=True,
                        help="output folder, e.g. ../market (then train with --data_dir ..)")
    parser.add_argument("--link", action="store_true",
                        help="hard-link instead of copying (needs the extracted folder, on the "
                             "same filesystem as DST)")
    args = parser.parse_args()
    print(format_summary(prepare(args.src, args.dst, link=args.link)))


if __name__ == "__main__":
    run_cli(main)
