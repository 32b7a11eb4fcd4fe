"""One split of the prepared layout (``<split>/<pid>/<file>.jpg``) as a PyTorch dataset."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from datasets.manifest import IMAGE_EXTENSIONS
from datasets.market1501 import parse_market_name
from core_reid.utils import UserError


def load_image(path: str | Path) -> Image.Image:
    """Decode an image as RGB; a damaged file becomes a UserError that names it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises SyntaxError for some headers
        raise UserError(f"cannot read image {path} ({err}); re-run prepare_market.py or "
                        "re-download the dataset") from None


def _sorted_names(folder: Path, keep: Callable[[os.DirEntry], bool]) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(entry.name for entry in entries if keep(entry))


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)


class ReIDFolder(Dataset):
    """Images of one split, in torchvision ImageFolder's order (and so the released code's).

    Classes are the identity folder names sorted as strings ("-1" < "0000" < "0002"), the class
    index is the position in that list, and samples go class by class with file names sorted.
    The label-noise indices depend on this order, so it must not change.
    ``parse_name(file_name)`` returns an object with ``.pid`` and ``.camid``.
    """

    def __init__(self, split_dir: str | Path, transform: Callable | None = None,
                 parse_name: Callable[[str], Any] = parse_market_name) -> None:
        split_dir = Path(split_dir)
        hint = ("run prepare_market.py --dataset <name> --src <download> --dst "
                "<data_dir>/<name> to build it")
        if not split_dir.is_dir():
            raise UserError(f"split folder not found: {split_dir}; {hint}")
        self.classes: list[str] = _sorted_names(split_dir, lambda entry: entry.is_dir())
        if not self.classes:
            raise UserError(f"split folder {split_dir} holds no identity folders; {hint}")
        self.paths: list[Path] = []
        targets = []
        for index, name in enumerate(self.classes):
            files = _sorted_names(split_dir / name, _is_image)
            if not files:
                raise UserError(f"identity folder {split_dir / name} holds no images; {hint}")
            self.paths += [split_dir / name / file for file in files]
            targets += [index] * len(files)
        self.targets = np.array(targets, dtype=np.int64)
        parsed = []
        for path in self.paths:
            try:
                parsed.append(parse_name(path.name))
            except ValueError as err:
                raise UserError(f"{path}: {err}") from None
        self.pids = np.array([name.pid for name in parsed], dtype=np.int64)
        self.camids = np.array([name.camid for name in parsed], dtype=np.int64)
        self.split_dir = split_dir
        self.transform = transform

    def subset(self, indices: Sequence[int] | np.ndarray) -> ReIDFolder:
        """The samples at ``indices`` (e.g. the gallery without junk); class indices unchanged."""
        indices = np.asarray(indices, dtype=np.int64)
        part = copy.copy(self)
        part.paths = [self.paths[i] for i in indices]
        part.targets, part.pids, part.camids = (self.targets[indices], self.pids[indices],
                                                self.camids[indices])
        return part

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        """``(image, class index, sample index)``: the index finds per-sample state (labels)."""
        image = load_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index]), index
