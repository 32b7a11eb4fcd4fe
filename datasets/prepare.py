"""Turn any registered dataset's download into the prepared layout the training scripts read.

DST becomes ``DST/<split>/<pid>/<file>`` with the splits train_all (the download's training
images), val (each training identity's first image by name), train (the rest), query, gallery
and, where the download has it, multi-query. The work reads top to bottom: find the download's
layout in SRC, plan every file, validate (before DST is touched), execute (each file written
under a temporary name, then renamed, so rerunning after an interruption completes the job),
verify, summarise against the dataset's official counts. The download is only read.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from tqdm import tqdm

from datasets import DATASETS, SPLITS, DatasetInfo, get_dataset_info
from datasets.download import Download, FolderSource, Source, ZipSource, download_hint
from datasets.layout import DownloadLayout, ImageFolder, ImageOrigin
from core_reid.utils import UserError

PARTIAL_SUFFIX = ".part"  # a file being written is ".<name>.part" until it is complete


# ---------------------------------------------------------------------------------------------
# The plan: every file DST will hold, and where it comes from.

class PlannedFile(NamedTuple):
    source: str  # relative to the download, e.g. bounding_box_train/0002_c1s1_000451_03.jpg
    dest: str    # relative to DST, e.g. train_all/0002/0002_c1s1_000451_03.jpg
    size: int


class _Image(NamedTuple):
    source: str
    name: str
    size: int
    label: Optional[int] = None  # the identity a list file gives it


def plan(source: Source, layout: DownloadLayout, info: DatasetInfo,
         download: Optional[Download] = None) -> list[PlannedFile]:
    """All files of all splits, in a fixed order (split, then file name); UserError for an
    image name, camera or list line that does not belong to ``info``'s dataset (naming the
    dataset the download looks like, when ``download`` is given and another one fits)."""
    planned: list[PlannedFile] = []

    def add(split: str, images: list[_Image]) -> None:
        planned.extend(PlannedFile(image.source, f"{split}/{_pid_folder(image.name)}/"
                                   f"{image.name}", image.size) for image in images)

    for split in SPLITS:
        origins = layout.splits.get(split, ())
        if not origins or not all(_present(source, origin) for origin in origins):
            continue  # train and val come from train_all; an optional split may be missing
        images = sorted((image for origin in origins
                         for image in _images(source, origin, layout.suffix)),
                        key=lambda image: image.name)
        _check_images(images, info, download)
        if split == "train_all":
            val = held_out_for_val([image.name for image in images])
            add("train_all", images)
            add("train", [image for image in images if image.name not in val])
            add("val", [image for image in images if image.name in val])
        else:
            add(split, images)
    return planned


def _pid_folder(name: str) -> str:
    """The identity folder: the name's first field as written ("0002", "0000", "-1")."""
    return name.split("_", 1)[0]


def held_out_for_val(names: list[str]) -> set[str]:
    """The training images that make ``val``: each identity's first image by file name (the
    identity being the name's first field); ``train`` is the rest."""
    first_of_pid: dict[str, str] = {}
    for name in sorted(names):
        first_of_pid.setdefault(_pid_folder(name), name)
    return set(first_of_pid.values())


def _present(source: Source, origin: ImageOrigin) -> bool:
    if isinstance(origin, ImageFolder):
        return source.has(origin.folder + "/")
    return source.has(origin.list_file) and source.has(origin.folder + "/")


def _images(source: Source, origin: ImageOrigin, suffix: str) -> list[_Image]:
    """The images of one folder, or those one list file names, with their labels (each listed
    file must be in the list's folder)."""
    files = source.files(origin.folder, suffix)
    if isinstance(origin, ImageFolder):  # the folder's own images; subfolders are not the split's
        return [_Image(f"{origin.folder}/{name}", name, size) for name, size in files.items()
                if "/" not in name]
    images = []
    for number, line in enumerate(source.read_text(origin.list_file).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{origin.list_file} line {number} reads {line.strip()!r}, expected "
                            "'<folder>/<file> <label>'; re-download the dataset")
        path, label = fields
        if path not in files:
            raise UserError(f"{origin.list_file} line {number} names {origin.folder}/{path}, "
                            "which is not in the download; re-download the dataset")
        images.append(_Image(f"{origin.folder}/{path}", path.rsplit("/", 1)[-1], files[path],
                             int(label)))
    return images


def _check_images(images: list[_Image], info: DatasetInfo,
                  download: Optional[Download]) -> None:
    """Every name parses, every camera is one of the dataset's, every list label is the person
    the name gives, no name is there twice."""
    for image in images:
        try:
            name = info.parse_name(image.name)
        except ValueError as err:
            raise UserError(f"{image.source} in the download: {err}; "
                            f"{_suggestion(download, info)}") from None
        if not 1 <= name.camid <= info.num_cams:
            raise UserError(f"{image.source} in the download: camera {name.camid}, but "
                            f"{info.title} has cameras 1..{info.num_cams}; "
                            f"{_suggestion(download, info)}")
        if image.label is not None and image.label != name.pid:
            raise UserError(f"{image.source}: listed with label {image.label} but its name "
                            f"says person {name.pid}; re-download the dataset")
    for earlier, image in zip(images, images[1:]):
        if earlier.name == image.name:
            raise UserError(f"{image.name} is in the download twice ({earlier.source} and "
                            f"{image.source}); re-download the dataset")


def _suggestion(download: Optional[Download], info: DatasetInfo,
                fallback: str = "") -> str:
    """'it looks like X: use --dataset x' for the first other dataset the download fits, else
    ``fallback`` (by default: a question whether SRC is really this dataset)."""
    for other in DATASETS.values():
        if other is info or download is None:
            continue
        source, layout, missing = download.find(other.layouts)
        if missing:
            continue
        try:
            first = sorted(_images(source, layout.splits["train_all"][0], layout.suffix))[:20]
            if first and all(1 <= other.parse_name(image.name).camid <= other.num_cams
                             for image in first):
                return f"it looks like {other.title}: use --dataset {other.name}"
        except (ValueError, UserError):
            continue
    return fallback or f"is --src really {info.title}?"


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
    info: DatasetInfo
    counts: dict[str, tuple[int, int]]     # split -> (identity folders, images)
    written: int                           # files copied or linked by this run
    already_present: int                   # planned files DST already held (names and sizes match)
    link: bool
    removed_partials: list[str]            # leftovers of an interrupted run, deleted
    extra_files: list[str]                 # in DST but not in the plan: warned about, left alone

    @property
    def count_differences(self) -> list[str]:
        """Where the counts differ from the dataset's official ones (none for an own one)."""
        if self.info.official is None:
            return []
        official = self.info.official.per_split()
        differences = []
        for split, (ids, images) in self.counts.items():
            official_ids, official_images = official[split]
            if official_ids is not None and ids != official_ids:
                differences.append(f"{split} identities {ids} (official {official_ids})")
            if images != official_images:
                differences.append(f"{split} images {images} (official {official_images})")
        return differences


def prepare(src: str | Path, dst: str | Path, link: bool = False, progress: bool = True,
            dataset: str = "market") -> PrepareSummary:
    """Build (or complete, or verify) the prepared layout in DST from ``dataset``'s download in
    SRC."""
    info = get_dataset_info(dataset)
    download = Download(Path(src), download_hint(info.layouts))
    try:
        source, layout, missing = download.find(info.layouts)
        if missing:
            raise UserError(f"{src} does not look like {info.title}: no {', '.join(missing)} "
                            f"in {source.where}; " + _suggestion(
                                download, info, f"point --src at {download_hint(info.layouts)}"))
        planned = plan(source, layout, info, download)
        return execute_plan(source, planned, info, Path(dst), link, progress)
    finally:
        download.close()


def execute_plan(source: Source, planned: list[PlannedFile], info: DatasetInfo, dst: Path,
                 link: bool, progress: bool) -> PrepareSummary:
    """Check DST, then write what it lacks of the plan (each file atomically), verify it all."""
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
    return PrepareSummary(dst, info, split_counts(planned), len(todo), len(planned) - len(todo),
                          link, partials, extra)


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
    """The table of identities and images per split beside the dataset's official counts; a
    count that differs from the official one is marked with *."""
    def cell(value: int, official: int | None) -> str:
        return f"{value}{'*' if official is not None and value != official else ' '}"

    row = "{:<12} {:>6} {:>8}   {:>12}  {:>15}"
    lines = [row.format("split", "ids", "images", "official ids", "official images")]
    if summary.info.official is None:  # an own dataset: nothing to compare with
        lines = [f"{split:<12} {ids:>6} {images:>8}"
                 for split, (ids, images) in {"split": ("ids", "images"),
                                              **summary.counts}.items()]
    else:
        official = summary.info.official.per_split()
        for split, (ids, images) in summary.counts.items():
            official_ids, official_images = official[split]
            lines.append(row.format(split, cell(ids, official_ids),
                                    cell(images, official_images),
                                    "-" if official_ids is None else official_ids,
                                    official_images))
    if summary.info.gallery_note:
        lines.append(f"({summary.info.gallery_note})")
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
    if summary.info.official is None:
        lines.append(f"train on it with --dataset {summary.info.name} --data_dir "
                     f"{summary.dst.parent}")
    if summary.count_differences:
        lines.append(f"WARNING: {len(summary.count_differences)} counts differ from "
                     f"{summary.info.title}'s official ones (marked *): expected for synthetic "
                     "data; for the real dataset, re-download it")
    return "\n".join(lines)
