"""How each synthetic download files and names what the generator draws.

The generator (``datasets.synthetic``) decides who is seen by which camera in which role
(training, query, gallery, a distractor, junk, a hand-drawn box); a shape turns each such image
into the path the real download would give it, and writes the download's other files (list
files, readme, stray ``Thumbs.db``). One shape per download: Market-1501, DukeMTMC-reID,
CUHK03-NP (``detected/`` and ``labeled/``, ``.png``) and MSMT17 (V1 and V2 folder names); and an
own dataset's folder of images with its manifest, for docs/own_data.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from datasets import DATASETS, cuhk03, dukemtmc, msmt17
from datasets import market1501 as m

_MSMT17_TIMES = ("0113morning", "0113noon", "0114afternoon", "0302morning", "0303noon",
                 "0303afternoon")


class DownloadShape:
    """A download's folders and file names.

    ``folders`` maps each role the download has (``train``, ``query``, ``gallery``,
    ``distractor``, ``junk``, ``gt_bbox``) to its folder; roles it lacks are not generated.
    ``path`` draws from the plan's generator, so a shape's names are part of the same seeded
    stream as the plan.
    """
    dataset: str      # the registry entry it imitates
    top_folder: str   # what the download unpacks to
    image_format = "JPEG"
    folders: dict[str, str]
    copies: tuple[tuple[str, str], ...] = ()  # (prefix, prefix of a second rendering of it)
    spec_overrides: dict[str, int] = {}  # what the download's shape fixes in every preset

    def __init__(self, rng: np.random.Generator, train_pids: np.ndarray,
                 test_pids: np.ndarray) -> None:
        self.rng = rng
        self.train_pids, self.test_pids = train_pids, test_pids
        self.last_frame: dict[tuple[int, int], int] = {}

    def frame(self, pid: int, camera: int) -> int:
        """Frames count up per (person, camera), so names are unique within a folder."""
        frame = self.last_frame.get((pid, camera), int(self.rng.integers(0, 5000)))
        frame += int(self.rng.integers(1, 150))
        self.last_frame[(pid, camera)] = frame
        return frame

    def path(self, role: str, pid: int, camera: int, box: Optional[int]) -> str:
        """Where the download keeps this image, relative to its top folder."""
        raise NotImplementedError

    def image_folders(self) -> list[str]:
        """The folders images go in, in the order the readme counts them."""
        return list(dict.fromkeys(self.folders.values()))

    def title(self) -> str:
        return DATASETS[self.dataset].title

    def readme_intro(self) -> list[str]:
        title = self.title()
        return [f"Synthetic {title}-shaped data, drawn by datasets/synthetic.py of the "
                "CORE/SELF",
                f"reference implementation. Not {title}: procedurally drawn people, for "
                "testing only."]

    def write_extras(self, root: Path, seed: int, images: list[tuple[str, str]]) -> None:
        """The download's files besides its images, given each image's (role, path); none by
        default."""


class MarketShape(DownloadShape):
    """Market-1501-v15.09.15: distractors 0000, junk -1, gt_bbox, empty gt_query, Thumbs.db."""
    dataset = "market"
    top_folder = m.DOWNLOAD_FOLDER
    folders = {"train": m.TRAIN_FOLDER, "gallery": m.TEST_FOLDER, "query": m.QUERY_FOLDER,
               "distractor": m.TEST_FOLDER, "junk": m.TEST_FOLDER, "gt_bbox": m.GT_BBOX_FOLDER}

    def path(self, role: str, pid: int, camera: int, box: Optional[int]) -> str:
        frame = self.frame(pid, camera)
        box = int(self.rng.integers(1, 6)) if box is None else box
        name = m.format_market_name(pid, camera, int(self.rng.integers(1, 7)), frame, box)
        return f"{self.folders[role]}/{name}"

    def readme_intro(self) -> list[str]:
        return super().readme_intro() + [
            "", "File names follow Market-1501: PPPP_cCsS_FFFFFF_BB.jpg (person, camera, "
            "sequence, frame,", "box); person 0000 = distractor, -1 = junk."]

    def write_extras(self, root: Path, seed: int, images: list[tuple[str, str]]) -> None:
        (root / m.GT_QUERY_FOLDER).mkdir()
        for index, folder in enumerate(self.image_folders()):  # the real download has these
            thumbs = np.random.default_rng([seed, 5, index]).bytes(1024)
            (root / folder / "Thumbs.db").write_bytes(thumbs)


class DukeShape(DownloadShape):
    """DukeMTMC-reID: no junk; distractors are people of their own, three images each, who are
    never queried."""
    dataset = "duke"
    top_folder = dukemtmc.LAYOUT.top_folder
    folders = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query",
               "distractor": "bounding_box_test"}

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.distractors = 0

    def path(self, role: str, pid: int, camera: int, box: Optional[int]) -> str:
        if role == "distractor":
            pid = len(self.train_pids) + len(self.test_pids) + 1 + self.distractors // 3
            self.distractors += 1
        name = dukemtmc.format_duke_name(pid, camera, self.frame(pid, camera))
        return f"{self.folders[role]}/{name}"


class Cuhk03Shape(DownloadShape):
    """cuhk03-np: the same people under ``detected/`` and ``labeled/`` (two renderings), PNG
    files, two cameras, images numbered per person."""
    dataset = "cuhk03"
    top_folder = cuhk03.TOP_FOLDER
    image_format = "PNG"
    folders = {"train": "detected/bounding_box_train", "gallery": "detected/bounding_box_test",
               "query": "detected/query"}
    copies = (("detected/", "labeled/"),)
    spec_overrides = {"num_cams": cuhk03.NUM_CAMS}  # every person is seen by both cameras

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.images: dict[int, int] = {}

    def title(self) -> str:
        return "CUHK03-NP"

    def path(self, role: str, pid: int, camera: int, box: Optional[int]) -> str:
        self.images[pid] = self.images.get(pid, 0) + 1
        return f"{self.folders[role]}/{cuhk03.format_cuhk03_name(pid, camera, self.images[pid])}"

    def image_folders(self) -> list[str]:
        detected = super().image_folders()
        return detected + [folder.replace("detected/", "labeled/") for folder in detected]


class Msmt17Shape(DownloadShape):
    """MSMT17_V1 (V2: other folder names): ``train/<pid>/`` and ``test/<pid>/``, persons
    counted from 0000 within each folder, and the four list files."""
    dataset = "msmt17"
    top_folder = "MSMT17_V1"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.train_folder, self.test_folder = msmt17.VERSIONS[self.top_folder]
        self.folders = {"train": self.train_folder, "query": self.test_folder,
                        "gallery": self.test_folder}
        self.local = {**{int(p): i for i, p in enumerate(self.train_pids)},
                      **{int(p): i for i, p in enumerate(self.test_pids)}}
        self.images: dict[tuple[str, int], int] = {}

    def path(self, role: str, pid: int, camera: int, box: Optional[int]) -> str:
        folder, local = self.folders[role], self.local[pid]
        image = self.images.get((folder, local), 0)
        self.images[(folder, local)] = image + 1
        when = _MSMT17_TIMES[int(self.rng.integers(len(_MSMT17_TIMES)))]
        name = msmt17.format_msmt17_name(local, image, camera, when,
                                         self.frame(pid, camera) % 10000,
                                         int(self.rng.integers(0, 3)))
        return f"{folder}/{local:04d}/{name}"

    def write_extras(self, root: Path, seed: int, images: list[tuple[str, str]]) -> None:
        """list_train.txt and list_val.txt (every 12th training image) list the training
        folder, list_query.txt and list_gallery.txt the test folder; ``<pid>/<file> <pid>``."""
        train_list, val_list, query_list, gallery_list = msmt17.LIST_FILES
        lines: dict[str, list[str]] = {name: [] for name in msmt17.LIST_FILES}
        for role, path in sorted(images, key=lambda image: image[1]):
            if role == "train":
                seen = len(lines[train_list]) + len(lines[val_list])
                lines[val_list if seen % 12 == 11 else train_list].append(path)
            else:
                lines[query_list if role == "query" else gallery_list].append(path)
        for list_file, paths in lines.items():
            (root / list_file).write_text("".join(
                f"{path.split('/', 1)[1]} {int(path.split('/')[1])}\n" for path in paths))


class Msmt17V2Shape(Msmt17Shape):
    top_folder = "MSMT17_V2"


class OwnDataShape(DownloadShape):
    """An own dataset as a user brings one (``prepare_market.py --dataset custom``): images filed
    by camera under names that say nothing (``images/cam<camid>/<n>.jpg``), who is who only in
    ``manifest.csv`` (``path,pid,camid,split``), with ids of its own (person p is 1000 + p,
    each distractor a person of its own from 9000, camera c is 10 c). A tenth of the training
    rows name a wrong person on purpose, as real annotations do; ``wrong_labels.csv`` says
    which (``path,annotated_pid,true_pid``), so an audit can be checked against it."""
    dataset = "market"  # its camera limit
    top_folder = "own_data_example"
    folders = {"train": "images", "query": "images", "gallery": "images",
               "distractor": "images"}
    WRONG_FRACTION = 0.1

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.rows: list[tuple[str, int, int, str]] = []  # path, true pid, camid, role
        self.distractors = 0

    def title(self) -> str:
        return "own-dataset example"

    def readme_intro(self) -> list[str]:
        return ["Synthetic own-dataset example, drawn by datasets/synthetic.py of the CORE/SELF",
                "reference implementation: procedurally drawn people, for trying "
                "docs/own_data.md.", "",
                "manifest.csv: path,pid,camid,split (a tenth of the train rows are wrong on "
                "purpose);", "wrong_labels.csv: path,annotated_pid,true_pid of those rows."]

    def path(self, role: str, pid: int, camera: int, box: Optional[int]) -> str:
        person = 1000 + pid
        if role == "distractor":
            person, self.distractors = 9000 + self.distractors, self.distractors + 1
        path = f"images/cam{10 * camera}/{len(self.rows):05d}.jpg"
        self.rows.append((path, person, 10 * camera, role))
        return path

    def write_extras(self, root: Path, seed: int, images: list[tuple[str, str]]) -> None:
        rng = np.random.default_rng([seed, 6])
        train = [i for i, row in enumerate(self.rows) if row[3] == "train"]
        people = sorted({self.rows[i][1] for i in train})
        wrong = set(rng.choice(train, round(self.WRONG_FRACTION * len(train)),
                               replace=False).tolist())
        manifest, mistakes = ["path,pid,camid,split"], ["path,annotated_pid,true_pid"]
        for i, (path, pid, camid, role) in enumerate(self.rows):
            annotated = pid
            if i in wrong:
                annotated = int(rng.choice([p for p in people if p != pid]))
                mistakes.append(f"{path},{annotated},{pid}")
            split = "gallery" if role == "distractor" else role
            manifest.append(f"{path},{annotated},{camid},{split}")
        (root / "manifest.csv").write_text("\n".join(manifest) + "\n")
        (root / "wrong_labels.csv").write_text("\n".join(mistakes) + "\n")


SHAPES: dict[str, type[DownloadShape]] = {"market": MarketShape, "duke": DukeShape,
                                          "cuhk03": Cuhk03Shape, "msmt17": Msmt17Shape,
                                          "msmt17_v2": Msmt17V2Shape, "own": OwnDataShape}
