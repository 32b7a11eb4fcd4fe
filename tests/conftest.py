"""Shared fixtures: a tiny synthetic Market-1501 download and its prepared layout.

Both are built once per test session (well under a second) and shared, so treat them as
read-only; a test that changes files works on its own copy (``shutil.copytree``).

- ``synthetic_download``: the ``Market-1501-v15.09.15/`` folder of the "tiny" preset
  (8 train identities, 6 test identities, 3 cameras, about 110 images of 128x64).
- ``prepared_market``: the folder named ``market`` that ``prepare_market.prepare`` built from it,
  i.e. ``<tmp>/market/{train_all,train,val,query,gallery,multi-query}/<pid>/<file>.jpg``;
  training scripts read it with ``--data_dir <its parent> --dataset market``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from datasets.synthetic import make_preset
from datasets.prepare import prepare


def file_digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``: equal dicts mean identical trees."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="session")
def synthetic_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_preset(tmp_path_factory.mktemp("download"), "tiny", workers=1)


@pytest.fixture(scope="session")
def prepared_market(tmp_path_factory: pytest.TempPathFactory, synthetic_download: Path) -> Path:
    dst = tmp_path_factory.mktemp("data") / "market"
    prepare(synthetic_download, dst, progress=False)
    return dst
