"""Pictures of what a network learned, as RGB arrays (for PNG files and TensorBoard):

- a ranked list: for a few queries, the query and its first gallery images as the protocol ranks
  them, framed green for a correct match and red for a wrong one;
- label corrections: training images whose annotated label was corrupted, next to an image of
  the annotated (wrong) identity and one of the identity the network now predicts, split into
  "corrected", "still wrong" and, among the clean samples, "broken", with counts;
- suspects (the audit's): the training images whose labels the networks doubt most, each next
  to an image of its annotated identity and one of the identity proposed instead.

Every image sits in a solid frame (``FRAME`` pixels): green = right identity, red = wrong,
blue = the image being asked about, grey = an identity's example where the truth is not known,
so a picture can be read, and checked, by its frames.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import eval_lib
from datasets.folder import load_image
from datasets.noise import NoisyLabels
from eval_utils import EvalSet, distances
from core_reid.utils import atomic_write

GREEN = (0, 170, 0)
RED = (220, 0, 0)
BLUE = (30, 80, 220)
GREY = (150, 150, 150)
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
THUMB = (128, 64)  # height, width of every image shown (Market-1501's own size)
FRAME = 4
GAP = 6
LINE = 16  # height of a line of text
PICKS = ("random", "worst")
HEADER_WIDTH = 470  # room for the label picture's first line of text


def pick_queries(distmat: np.ndarray, query: EvalSet, gallery: EvalSet, count: int,
                 how: str = "random", seed: int = 0) -> np.ndarray:
    """``count`` query indices among those the protocol scores: drawn with ``seed`` (the same
    ones at every test of a run) or the ``worst`` by average precision."""
    ap = eval_lib.average_precisions(distmat, query.pids, gallery.pids, query.camids,
                                     gallery.camids)
    scored = np.flatnonzero(~np.isnan(ap))
    if how == "worst":
        return scored[np.argsort(ap[scored], kind="stable")[:count]]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(scored, size=min(count, len(scored)), replace=False))


def ranked_list_picture(distmat: np.ndarray, query: EvalSet, gallery: EvalSet,
                        queries: Sequence[int], top: int = 10) -> np.ndarray:
    """One row per query: the query (blue), then its first ``top`` gallery images (green: same
    identity, red: another), junk and same-camera matches left out as the protocol does."""
    index, is_match = eval_lib.ranked_lists(distmat, query.pids, gallery.pids, query.camids,
                                            gallery.camids, queries, top)
    ap = eval_lib.average_precisions(distmat, query.pids, gallery.pids, query.camids,
                                     gallery.camids)
    cell_w, row_h = THUMB[1] + 2 * FRAME + GAP, LINE + THUMB[0] + 2 * FRAME + GAP
    canvas = _Canvas(width=GAP + cell_w * (top + 1) + GAP, height=GAP + len(queries) * row_h)
    for row, q in enumerate(queries):
        y = GAP + row * row_h
        canvas.text((GAP, y), f"query {q}: id {query.pids[q]}, camera {query.camids[q]}, "
                    f"AP {ap[q]:.2f}; ranks 1-{top}")
        canvas.image((GAP, y + LINE), query.paths[q], BLUE)
        for rank, (g, match) in enumerate(zip(index[row], is_match[row]), start=1):
            if g >= 0:
                canvas.image((GAP + rank * cell_w + GAP, y + LINE), gallery.paths[g],
                             GREEN if match else RED)
    return canvas.array()


def sampled_ranked_list(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                        query: EvalSet, gallery: EvalSet, count: int,
                        seed: int = 0) -> np.ndarray:
    """The ranked-list picture of ``count`` queries drawn with ``seed`` (the same ones at every
    test of a run), from the plain distances of a fixed sample of queries only: a training run
    never holds the whole distance matrix for a picture."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(query), size=min(len(query), 32 * count), replace=False))
    rows = EvalSet(query.batches, query.pids[sample], query.camids[sample],
                   [query.paths[i] for i in sample])
    distmat = distances(query_feats[torch.as_tensor(sample, device=query_feats.device)],
                        gallery_feats)
    return ranked_list_picture(distmat, rows, gallery,
                               pick_queries(distmat, rows, gallery, count, seed=seed))


LABEL_SECTIONS = ("corrected", "still wrong", "broken")


def label_sections(labels: NoisyLabels, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Sample indices per section: corrupted labels the network now gets right ("corrected")
    or not ("still wrong"), and clean labels it gets wrong ("broken")."""
    right = predicted == labels.clean_labels
    noisy = ~labels.is_clean
    return {"corrected": np.flatnonzero(noisy & right),
            "still wrong": np.flatnonzero(noisy & ~right),
            "broken": np.flatnonzero(labels.is_clean & ~right)}


def label_correction_picture(train_paths: Sequence[Path], labels: NoisyLabels,
                             predicted: np.ndarray, per_section: int = 6, seed: int = 0,
                             per_line: int = 3) -> np.ndarray:
    """For up to ``per_section`` samples of each section (drawn with ``seed``): the training
    image (blue), an image of its annotated identity and one of the identity ``predicted``
    now (each green if that is the image's true identity, red if not); with counts."""
    sections = label_sections(labels, predicted)
    noisy, clean = int((~labels.is_clean).sum()), int(labels.is_clean.sum())
    wrong = sections["still wrong"]
    memorised = int((predicted[wrong] == labels.noisy_labels[wrong]).sum())
    titles = {"corrected": f"corrected: {len(sections['corrected'])} of {noisy} corrupted "
                           "labels now predicted right",
              "still wrong": f"still wrong: {len(wrong)} of {noisy} corrupted labels "
                             f"({memorised} memorised)",
              "broken": f"broken: {len(sections['broken'])} of {clean} clean labels now "
                        "predicted wrong"}
    rng = np.random.default_rng(seed)
    shown = {name: np.sort(rng.choice(members, size=min(per_section, len(members)),
                                      replace=False)) for name, members in sections.items()}
    cell_w, triple_h = THUMB[1] + 2 * FRAME, THUMB[0] + 2 * FRAME + GAP
    triple_w = 3 * cell_w + 2 * FRAME + 3 * GAP
    lines = {name: -(-len(samples) // per_line) for name, samples in shown.items()}
    canvas = _Canvas(width=max(GAP + per_line * triple_w, HEADER_WIDTH),
                     height=GAP + LINE + sum(LINE + GAP + n * triple_h for n in lines.values()))
    canvas.text((GAP, GAP), "each: training image | its annotated identity | the identity the "
                "network predicts")
    y = GAP + LINE
    examples = _Examples(labels.clean_labels)
    for name in LABEL_SECTIONS:
        canvas.text((GAP, y + GAP), titles[name])
        y += LINE + GAP
        for k, i in enumerate(shown[name]):
            x = GAP + (k % per_line) * triple_w
            top = y + (k // per_line) * triple_h
            true = labels.clean_labels[i]
            canvas.image((x, top), train_paths[i], BLUE)
            for slot, identity in enumerate((labels.noisy_labels[i], predicted[i]), start=1):
                canvas.image((x + slot * (cell_w + FRAME), top),
                             train_paths[examples.of(identity, i)],
                             GREEN if identity == true else RED)
        y += lines[name] * triple_h
    return canvas.array()


def suspects_picture(entries: Sequence[tuple[Path, Optional[Path], Optional[Path], str]],
                     title: str, per_line: int = 3) -> np.ndarray:
    """One triple per suspected label error, its caption above it: the training image (blue),
    an image of its annotated identity and one of the identity proposed instead (grey: which
    one is right is the question the picture asks; an empty grey box where the identity has no
    other image)."""
    cell_w = THUMB[1] + 2 * FRAME
    triple_w, triple_h = 3 * cell_w + 2 * FRAME + 3 * GAP, LINE + THUMB[0] + 2 * FRAME + GAP
    lines = -(-len(entries) // per_line)
    canvas = _Canvas(width=max(GAP + per_line * triple_w, HEADER_WIDTH),
                     height=2 * GAP + LINE + lines * triple_h)
    canvas.text((GAP, GAP), title)
    for k, (image, annotated, proposed, caption) in enumerate(entries):
        x = GAP + (k % per_line) * triple_w
        top = 2 * GAP + LINE + (k // per_line) * triple_h
        canvas.text((x, top), caption)
        canvas.image((x, top + LINE), image, BLUE)
        for slot, example in enumerate((annotated, proposed), start=1):
            xy = (x + slot * (cell_w + FRAME), top + LINE)
            if example is None:
                canvas.frame(xy, GREY)
            else:
                canvas.image(xy, example, GREY)
    return canvas.array()


def save_png(path: Path, picture: np.ndarray) -> None:
    """Write an RGB array as a PNG, atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG",
                                                                 optimize=True))


class _Examples:
    """An image of each identity: its first training image (by true label) that is not the
    sample being shown, when the identity has another."""

    def __init__(self, true_labels: np.ndarray):
        self.members = {c: np.flatnonzero(true_labels == c) for c in np.unique(true_labels)}

    def of(self, identity: int, besides: int) -> int:
        members = self.members[identity]
        others = members[members != besides]
        return int(others[0] if len(others) else members[0])


class _Canvas:
    """A white RGB picture to paste framed thumbnails and lines of text on."""

    def __init__(self, width: int, height: int):
        self.picture = Image.new("RGB", (width, height), BACKGROUND)
        self.draw = ImageDraw.Draw(self.picture)
        self.font = ImageFont.load_default()

    def text(self, xy: tuple[int, int], text: str) -> None:
        self.draw.text(xy, text, fill=TEXT, font=self.font)

    def frame(self, xy: tuple[int, int], colour: tuple[int, int, int]) -> None:
        """A ``THUMB``-sized box filled with ``colour``: a frame without its image."""
        x, y = xy
        self.draw.rectangle([x, y, x + THUMB[1] + 2 * FRAME - 1, y + THUMB[0] + 2 * FRAME - 1],
                            fill=colour)

    def image(self, xy: tuple[int, int], path: Path, colour: tuple[int, int, int]) -> None:
        """The image at ``path``, resized to ``THUMB``, inside a ``FRAME``-pixel frame."""
        self.frame(xy, colour)
        thumb = load_image(path).resize((THUMB[1], THUMB[0]), Image.BICUBIC)
        self.picture.paste(thumb, (xy[0] + FRAME, xy[1] + FRAME))

    def array(self) -> np.ndarray:
        return np.asarray(self.picture).copy()
