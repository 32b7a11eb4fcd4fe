"""Shared fixtures: tiny synthetic downloads (Market-1501 and the other datasets) and Market's
prepared layout.

Both are built once per test session (well under a second) and shared, so treat them as
read-only; a test that changes files works on its own copy (``shutil.copytree``).

- ``synthetic_download``: the ``Market-1501-v15.09.15/`` folder of the "tiny" preset
  (8 train identities, 6 test identities, 3 cameras, about 110 images of 128x64).
- ``prepared_market``: the folder named ``market`` that ``prepare_market.prepare`` built from it,
  i.e. ``<tmp>/market/{train_all,train,val,query,gallery,multi-query}/<pid>/<file>.jpg``;
  training scripts read it with ``--data_dir <its parent> --dataset market``.
- ``data_dir``: a private copy of ``prepared_market`` for each test module that trains, as
  ``<tmp>/market/...``; pass ``--data_dir data_dir``. Runs write their image cache
  (``market/.cache/``) and the synthetic pretraining beside the data, which must not reach the
  shared fixture that other tests copy or read.
- ``synthetic_downloads(shape)``: the top folder of the "tiny" preset in the shape of another
  download (``duke``, ``cuhk03``, ``msmt17``, ``msmt17_v2``: see ``datasets.synthetic_shapes``),
  each written once per session.
"""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from datasets.synthetic import make_preset
from datasets.prepare import prepare


def file_digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``: equal dicts mean identical trees."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def zip_download(download: Path, archive: Path, top_folder: bool = True,
                 compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Zip a download folder as the official archive is laid out (or without its top folder)."""
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for path in sorted(download.rglob("*")):
            relative = path.relative_to(download.parent if top_folder else download).as_posix()
            zf.write(path, relative + "/" if path.is_dir() else relative)
    return archive


def file_states(root: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (inode, size, mtime in ns)."""
    states = {}
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            relative = path.relative_to(root).as_posix()
            states[relative] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return states


@pytest.fixture(scope="session")
def synthetic_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_preset(tmp_path_factory.mktemp("download"), "tiny", workers=1)


@pytest.fixture(scope="session")
def prepared_market(tmp_path_factory: pytest.TempPathFactory, synthetic_download: Path) -> Path:
    dst = tmp_path_factory.mktemp("data") / "market"
    prepare(synthetic_download, dst, progress=False)
    return dst


@pytest.fixture(scope="session")
def synthetic_downloads(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def download(shape: str) -> Path:
        if shape not in made:
            made[shape] = make_preset(tmp_path_factory.mktemp(shape), "tiny", workers=1,
                                      shape=shape)
        return made[shape]
    return download


@pytest.fixture(scope="module")
def data_dir(prepared_market: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(prepared_market, root / "market")
    return root
