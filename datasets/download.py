"""Reading a download, never changing it: an extracted folder or its zip, and which of a
dataset's layouts it has.

``--src`` may be the download's top folder (``Market-1501-v15.09.15/``, ``DukeMTMC-reID/``,
``cuhk03-np/``, ``MSMT17_V1/``, ...), the folder holding it, or its zip (with or without the top
folder). ``find_download`` tries each of the dataset's layouts at each of those places and
returns the first that has every required folder and list file.
"""
from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, Optional, Union

from datasets.layout import DownloadLayout
from core_reid.utils import UserError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class FolderSource:
    """An extracted download; paths are relative to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def has(self, entry: str) -> bool:
        """``entry`` exists: a folder when it ends with "/", else a file."""
        path = self.root / entry
        return path.is_dir() if entry.endswith("/") else path.is_file()

    def files(self, folder: str, suffix: str) -> dict[str, int]:
        """Path relative to ``folder`` -> size of every ``suffix`` file in it, at any depth."""
        found: dict[str, int] = {}
        base = self.root / folder
        for parent, _, names in os.walk(base):
            relative = Path(parent).relative_to(base).as_posix()
            prefix = "" if relative == "." else relative + "/"
            for name in names:
                if name.endswith(suffix):
                    found[prefix + name] = (Path(parent) / name).stat().st_size
        return found

    def read_text(self, entry: str) -> str:
        return (self.root / entry).read_text()

    def write(self, source: str, target: Path, link: bool) -> None:
        if link:
            os.link(self.root / source, target)
        else:
            shutil.copyfile(self.root / source, target)


class ZipIndex:
    """The members of a zip archive, read once: file sizes and every folder they imply."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.sizes: dict[str, int] = {}
        self.folders: set[str] = set()
        for info in archive.infolist():
            name = info.filename
            if not info.is_dir():
                self.sizes[name] = info.file_size
            parts = name.rstrip("/").split("/")
            self.folders.update("/".join(parts[:i]) + "/" for i in range(1, len(parts)))
            if info.is_dir():
                self.folders.add(name)


class ZipSource:
    """The download inside a zip, read in place; ``prefix`` is its top folder ("" if none)."""

    def __init__(self, index: ZipIndex, prefix: str, zip_path: Path) -> None:
        self.index = index
        self.prefix = prefix
        self.where = f"{zip_path}:{prefix or '/'}"

    def has(self, entry: str) -> bool:
        name = self.prefix + entry
        return name in self.index.folders if entry.endswith("/") else name in self.index.sizes

    def files(self, folder: str, suffix: str) -> dict[str, int]:
        start = f"{self.prefix}{folder}/"
        return {name[len(start):]: size for name, size in self.index.sizes.items()
                if name.startswith(start) and name.endswith(suffix)}

    def read_text(self, entry: str) -> str:
        return self.index.archive.read(self.prefix + entry).decode()

    def write(self, source: str, target: Path, link: bool) -> None:
        with self.index.archive.open(self.prefix + source) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


Source = Union[FolderSource, ZipSource]


class Download:
    """The user's ``--src``, opened once: candidate places of a download in it."""

    def __init__(self, src: Path, hint: str) -> None:
        if not src.exists():
            raise UserError(f"source not found: {src}; point --src at {hint}")
        self.src = src
        self.index: Optional[ZipIndex] = None
        if src.is_file():
            if src.name.lower().endswith(TAR_SUFFIXES):
                raise UserError(f"{src} is a tar archive; extract it first (tar xf {src}) and "
                                "point --src at the extracted folder")
            self.index = ZipIndex(_open_zip(src, hint))

    def candidates(self, layout: DownloadLayout) -> Iterator[Source]:
        """The layout's top folder inside ``--src``, then ``--src`` itself."""
        top = layout.top_folder
        if self.index is None:
            for root in (self.src / top, self.src):
                if root.is_dir():
                    yield FolderSource(root)
        else:
            for prefix in (top + "/", ""):
                if not prefix or prefix in self.index.folders:
                    yield ZipSource(self.index, prefix, self.src)

    def find(self, layouts: tuple[DownloadLayout, ...]) -> tuple[Source, DownloadLayout,
                                                                list[str]]:
        """The first (source, layout) holding every required entry, with no missing entries;
        else the candidate that comes closest, with the entries it lacks."""
        best: Optional[tuple[Source, DownloadLayout, list[str]]] = None
        for layout in layouts:
            for source in self.candidates(layout):
                required = layout.required_entries()
                missing = [entry for entry in required if not source.has(entry)]
                if not missing:
                    return source, layout, []
                if best is None or len(missing) < len(best[2]):
                    best = source, layout, missing
        assert best is not None  # --src itself is always a candidate
        return best

    def close(self) -> None:
        if self.index is not None:
            self.index.archive.close()


def _open_zip(src: Path, hint: str) -> zipfile.ZipFile:
    fix = f"re-download it, or point --src at {hint}"
    try:
        archive = zipfile.ZipFile(src)
        bad = archive.testzip()  # reads every member once: a damaged archive stops us before DST
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{src} is damaged or not a zip archive ({err}); {fix}") from None
    except OSError as err:
        raise UserError(f"cannot read {src} ({err.strerror}); {fix}") from None
    if bad is not None:
        archive.close()
        raise UserError(f"{src} is corrupt: {bad} fails its CRC check; {fix}")
    return archive


def download_hint(layouts: tuple[DownloadLayout, ...]) -> str:
    """What ``--src`` should be, in words: e.g. 'DukeMTMC-reID/ (the extracted folder), the
    folder holding it, or its .zip'."""
    tops = " or ".join(f"{layout.top_folder}/" for layout in layouts)
    return f"{tops} (the extracted folder), the folder holding it, or its .zip"
