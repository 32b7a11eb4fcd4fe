"""File-name parsing for the datasets whose names give a person and a camera (DukeMTMC-reID,
CUHK03-NP, MSMT17): one regular expression per dataset, one parser shape for all."""
from __future__ import annotations

import re
from typing import Callable, NamedTuple


class ReIDName(NamedTuple):
    pid: int
    camid: int


def name_parser(pattern: str, title: str, example: str) -> Callable[[str], ReIDName]:
    """A parser of base names matching ``pattern`` (groups ``pid`` and ``cam``) that raises
    ValueError, naming the dataset and an example, for any other name."""
    regex = re.compile(pattern)

    def parse(filename: str) -> ReIDName:
        match = regex.match(filename)
        if match is None:
            raise ValueError(f"not a {title} image name: {filename!r} (expected e.g. {example})")
        return ReIDName(int(match["pid"]), int(match["cam"]))

    parse.__doc__ = f"Person and camera of a {title} image file name such as {example}."
    return parse
