"""Synthetic Re-ID downloads: procedurally drawn people seen by simulated cameras.

Market-1501, DukeMTMC-reID, CUHK03-NP and MSMT17 cannot be shipped or fetched here, so every
script is tested on these instead. Each is written in its download's exact shape (folders, file
names, image format, list files: ``datasets.synthetic_shapes``); Market-1501's, for instance,
has ``0002_c1s1_000451_03.jpg``, distractors ``0000``, junk ``-1`` and a stray ``Thumbs.db``. So
``prepare_market.py`` and training run on them unchanged. Identity = clothing colours, pattern,
accessories, hair and build; camera = background, colour cast, brightness and blur; each image
adds pose, framing and sensor noise.
Some identities are near-twins of another (one attribute differs), so retrieval on unseen people
stays hard while classifying the training people is learnable in minutes.

Same spec and seed give byte-identical files: every image draws from its own generator seeded by
(seed, its number in the plan), whichever worker process renders it.

    python -m datasets.synthetic --out /tmp/synth --preset demo
    python -m datasets.synthetic --out /tmp/synth --preset tiny --dataset msmt17
    python -m datasets.synthetic --out /tmp/synth --preset tiny --dataset own   # own data
"""
from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import io
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter

from datasets import DATASETS
from datasets import market1501 as m
from datasets.synthetic_shapes import SHAPES, DownloadShape
from core_reid.utils import ArgumentParser, UserError, run_cli

HEIGHT, WIDTH = 128, 64

# Market-1501's bounding_box_test: 2,793 distractors and 3,819 junk beside 13,120 good images.
_OFFICIAL = m.OFFICIAL_COUNTS
_GOOD_GALLERY = (_OFFICIAL["gallery_images"] - _OFFICIAL["gallery_distractor_images"]
                 - _OFFICIAL["gallery_junk_images"])
_DISTRACTOR_SHARE = _OFFICIAL["gallery_distractor_images"] / _GOOD_GALLERY
_JUNK_SHARE = _OFFICIAL["gallery_junk_images"] / _GOOD_GALLERY


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Totals left as None follow from the per-identity numbers.

    ``images_per_id`` is the mean number of training images per training identity and of good
    gallery images per test identity. Each test identity has one query per camera it is seen by
    (2 to ``num_cams`` cameras), as in Market-1501. The knobs below set the difficulty.
    """
    num_train_ids: int
    num_test_ids: int
    images_per_id: float
    num_cams: int = 6
    seed: int = 0
    train_images: int | None = None
    gallery_images: int | None = None      # good ones: no distractors, no junk
    query_images: int | None = None
    distractor_images: int | None = None
    junk_images: int | None = None
    gt_bbox_per_id: int = 2                # hand-drawn boxes per test identity (multi-query)
    similar_fraction: float = 0.3          # identities drawn as a near-twin of another one
    camera_strength: float = 1.0           # scales colour cast, brightness and blur between cameras
    pose_jitter: float = 1.0               # scales per-image shift, scale and walking pose
    noise_std: float = 6.0                 # sensor noise, in 0..255 grey levels
    occlusion_prob: float = 0.15           # chance an image has an occluding object
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UserError(f"synthetic dataset: {what}")

        need(self.num_train_ids >= 1 and self.num_test_ids >= 1,
             "need at least 1 train and 1 test identity")
        need(self.num_train_ids + self.num_test_ids <= 9998,
             "at most 9998 identities (4-digit ids, 0000 is reserved)")
        need(self.num_cams >= 2, f"num_cams must be >= 2, got {self.num_cams}")
        need(self.images_per_id >= 2, f"images_per_id must be >= 2, got {self.images_per_id}")
        for name in ("similar_fraction", "occlusion_prob"):
            value = getattr(self, name)
            need(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
        need(self.camera_strength >= 0 and self.pose_jitter >= 0 and self.noise_std >= 0,
             "camera_strength, pose_jitter and noise_std must be >= 0")
        need(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be 1..100, got {self.jpeg_quality}")
        for name in ("gt_bbox_per_id", "train_images", "gallery_images", "query_images",
                     "distractor_images", "junk_images"):
            value = getattr(self, name)
            need(value is None or value >= 0, f"{name} must be >= 0, got {value}")


PRESETS: dict[str, SyntheticSpec] = {
    # For the test suite: a few hundred KB, well under a second.
    "tiny": SyntheticSpec(num_train_ids=8, num_test_ids=6, images_per_id=5, num_cams=3),
    # The training demo's default: learnable in minutes on 2 CPUs.
    "demo": SyntheticSpec(num_train_ids=40, num_test_ids=60, images_per_id=18),
    # Market-1501's counts (OFFICIAL_COUNTS): 751 train ids / 12,936 images, 750 test ids,
    # 3,368 queries, 19,732 gallery images with 2,793 distractors and 3,819 junk.
    "market": SyntheticSpec(
        num_train_ids=_OFFICIAL["train_ids"],
        num_test_ids=_OFFICIAL["query_ids"],
        images_per_id=_OFFICIAL["train_images"] / _OFFICIAL["train_ids"],
        train_images=_OFFICIAL["train_images"],
        gallery_images=_GOOD_GALLERY,
        query_images=_OFFICIAL["query_images"],
        distractor_images=_OFFICIAL["gallery_distractor_images"],
        junk_images=_OFFICIAL["gallery_junk_images"],
    ),
}


# ---------------------------------------------------------------------------------------------
# Appearance: who a person is, what a camera sees.

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Person:
    """Everything that stays the same across a person's images."""
    skin: Colour
    hair: Colour
    top: Colour
    top_second: Colour      # stripe / check colour
    top_pattern: str        # "plain", "stripes", "checks"
    pattern_period: float   # pixels, for a body 110 pixels tall
    long_sleeves: bool
    bottom: Colour
    bottom_kind: str        # "trousers", "shorts", "skirt"
    shoes: Colour
    long_hair: bool
    hat: Colour | None
    bag: Colour | None
    bag_kind: str           # "shoulder", "backpack"
    build: float            # width factor
    height: float           # height factor


@dataclass(frozen=True)
class Camera:
    """A camera's scene and how it renders colour; the same for every image it takes."""
    wall: Colour
    floor: Colour
    horizon: float          # fraction of the image height
    pillars: tuple[tuple[float, float, Colour], ...]   # (x, width, colour) on a 3x-wide strip
    gain: Colour            # per-channel colour cast
    brightness: float
    blur: float             # Gaussian radius in pixels
    texture_seed: int


_PATTERNS = ("plain", "stripes", "checks")
_BOTTOMS = ("trousers", "trousers", "shorts", "skirt")
_SKIN_TONES = ((255, 219, 180), (234, 192, 150), (198, 145, 105), (141, 95, 65), (95, 62, 42))
_HAIR_TONES = ((20, 17, 15), (60, 40, 28), (110, 75, 45), (200, 165, 100), (150, 150, 150))


def _jitter(rng: np.random.Generator, colour: tuple, spread: float) -> Colour:
    return tuple(float(np.clip(c + rng.normal(0, spread), 0, 255)) for c in colour)


def _clothing_colour(rng: np.random.Generator) -> Colour:
    """Mostly muted colours, as people wear; a third are near-neutral (black, grey, white, navy)."""
    hue = rng.random()
    if rng.random() < 0.35:
        saturation, value = rng.uniform(0, 0.25), rng.uniform(0.08, 0.95)
    else:
        saturation, value = rng.uniform(0.3, 0.95), rng.uniform(0.25, 0.95)
    return tuple(255 * c for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _random_person(rng: np.random.Generator) -> Person:
    return Person(
        skin=_jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 8),
        hair=_jitter(rng, _HAIR_TONES[rng.integers(len(_HAIR_TONES))], 8),
        top=_clothing_colour(rng),
        top_second=_clothing_colour(rng),
        top_pattern=_PATTERNS[rng.choice(3, p=(0.55, 0.3, 0.15))],
        pattern_period=float(rng.uniform(5, 12)),
        long_sleeves=bool(rng.random() < 0.6),
        bottom=_clothing_colour(rng),
        bottom_kind=_BOTTOMS[rng.integers(len(_BOTTOMS))],
        shoes=_clothing_colour(rng),
        long_hair=bool(rng.random() < 0.35),
        hat=_clothing_colour(rng) if rng.random() < 0.2 else None,
        bag=_clothing_colour(rng) if rng.random() < 0.45 else None,
        bag_kind=("shoulder", "backpack")[rng.integers(2)],
        build=float(rng.uniform(0.85, 1.2)),
        height=float(rng.uniform(0.9, 1.05)),
    )


def _near_twin(base: Person, rng: np.random.Generator) -> Person:
    """``base`` with one attribute changed: the identities annotators (and networks) confuse."""
    fresh = _random_person(rng)
    changes = ("top", "bottom", "top_pattern", "bag", "hat", "hair", "shoes", "long_sleeves")
    change = changes[rng.integers(len(changes))]
    if change == "top":  # the same garment in a neighbouring hue
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in base.top))
        hue = (h + rng.choice((-1, 1)) * rng.uniform(0.08, 0.2)) % 1.0
        top = tuple(255 * c for c in colorsys.hsv_to_rgb(hue, max(s, 0.4), v))
        return dataclasses.replace(base, top=top)
    if change == "top_pattern":
        other = [p for p in _PATTERNS if p != base.top_pattern]
        return dataclasses.replace(base, top_pattern=other[rng.integers(2)],
                                   top_second=fresh.top_second)
    if change == "bag":
        return dataclasses.replace(base, bag=None if base.bag is not None else fresh.top,
                                   bag_kind=fresh.bag_kind)
    if change == "hat":
        return dataclasses.replace(base, hat=None if base.hat is not None else fresh.top)
    if change == "long_sleeves":
        return dataclasses.replace(base, long_sleeves=not base.long_sleeves)
    return dataclasses.replace(base, **{change: getattr(fresh, change)})


def _random_camera(rng: np.random.Generator, strength: float) -> Camera:
    pillars = tuple((float(rng.uniform(0, 3 * WIDTH)), float(rng.uniform(4, 20)),
                     _clothing_colour(rng)) for _ in range(rng.integers(1, 5)))
    return Camera(
        wall=_clothing_colour(rng), floor=_clothing_colour(rng),
        horizon=float(rng.uniform(0.55, 0.85)), pillars=pillars,
        gain=tuple(float(1 + strength * rng.uniform(-0.18, 0.18)) for _ in range(3)),
        brightness=float(1 + strength * rng.uniform(-0.3, 0.2)),
        blur=float(strength * rng.uniform(0, 1.0)),
        texture_seed=int(rng.integers(2**31)),
    )


# ---------------------------------------------------------------------------------------------
# Drawing: numpy masks over one 128x64 canvas.

_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((_YY - cy) / ry) ** 2 + ((_XX - cx) / rx) ** 2 <= 1


def _quad(y0: float, y1: float, top: tuple[float, float],
          bottom: tuple[float, float]) -> np.ndarray:
    """Rows y0..y1 between a left and a right edge that move linearly from ``top`` to ``bottom``."""
    t = np.clip((_YY - y0) / max(y1 - y0, 1e-3), 0, 1)
    left = top[0] + (bottom[0] - top[0]) * t
    right = top[1] + (bottom[1] - top[1]) * t
    return (_YY >= y0) & (_YY <= y1) & (_XX >= left) & (_XX <= right)


def _limb(y0: float, y1: float, x0: float, x1: float, half_width: float) -> np.ndarray:
    return _quad(y0, y1, (x0 - half_width, x0 + half_width), (x1 - half_width, x1 + half_width))


_BACKGROUNDS: dict[Camera, np.ndarray] = {}


def _background_strip(camera: Camera) -> np.ndarray:
    """A camera's scene, three image widths wide; each image sees a window of it."""
    if camera not in _BACKGROUNDS:
        rng = np.random.default_rng(camera.texture_seed)
        yy, xx = np.mgrid[0:HEIGHT, 0:3 * WIDTH].astype(np.float32)
        strip = np.where((yy < camera.horizon * HEIGHT)[..., None],
                         np.array(camera.wall, np.float32), np.array(camera.floor, np.float32))
        for x, width, colour in camera.pillars:
            strip[(np.abs(xx - x) < width / 2) & (yy < camera.horizon * HEIGHT)] = colour
        # Low-frequency blotches: a coarse random grid, smoothly upsampled.
        coarse = rng.normal(128, 18, size=(HEIGHT // 16, 3 * WIDTH // 16))
        blotches = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
        blotches = blotches.resize((3 * WIDTH, HEIGHT), Image.BILINEAR)
        strip += np.asarray(blotches, np.float32)[..., None] - 128
        _BACKGROUNDS[camera] = strip
    return _BACKGROUNDS[camera]


def _draw_person(canvas: np.ndarray, person: Person, rng: np.random.Generator, jitter: float,
                 cx: float, top: float, height: float) -> None:
    """Paint ``person`` onto ``canvas`` (H, W, 3 float), back to front, in a random pose and view.

    Rows and widths below are fractions of the body height, measured from the top of the head
    and from the body's centre line ``cx``.
    """
    h, w = height, person.build
    facing_back = rng.random() < 0.5
    stride = jitter * rng.uniform(-1, 1)  # walking phase: legs and arms swing opposite ways
    colour_of = np.zeros(canvas.shape, np.float32)
    body = np.zeros(canvas.shape[:2], bool)

    def row(fraction: float) -> float:
        return top + fraction * h

    def band(y0: float, y1: float, x0: float, x1: float, half0: float, half1: float) -> np.ndarray:
        """Rows y0..y1; the centre moves from x0 to x1, the half-width from half0 to half1."""
        return _quad(row(y0), row(y1), (cx + (x0 - half0) * h, cx + (x0 + half0) * h),
                     (cx + (x1 - half1) * h, cx + (x1 + half1) * h))

    def blob(y: float, x: float, ry: float, rx: float) -> np.ndarray:
        return _ellipse(row(y), cx + x * h, ry * h, rx * h)

    def paint(mask: np.ndarray, colour: Colour) -> None:
        colour_of[mask] = colour
        body[mask] = True

    if person.long_hair and not facing_back:
        paint(band(0.06, 0.24, 0, 0, 0.07, 0.08), person.hair)
    # Legs and shoes, then what covers the legs.
    for side in (-1, 1):
        hip_x, foot_x = side * 0.05 * w, side * (0.05 * w + 0.02 + 0.06 * stride)
        legs_colour = person.bottom if person.bottom_kind == "trousers" else person.skin
        paint(band(0.5, 0.95, hip_x, foot_x, 0.05 * w, 0.05 * w), legs_colour)
        paint(blob(0.95, foot_x, 0.025, 0.04), person.shoes)
        if person.bottom_kind == "shorts":
            knee_x = side * (0.05 * w + 0.01 + 0.02 * stride)
            paint(band(0.49, 0.68, hip_x, knee_x, 0.06 * w, 0.06 * w), person.bottom)
    if person.bottom_kind == "skirt":
        paint(band(0.49, 0.7, 0, 0, 0.1 * w, 0.15 * w), person.bottom)
    # Torso with its pattern, then the arms and sleeves.
    torso = band(0.15, 0.51, 0, 0, 0.12 * w, 0.1 * w)
    if person.top_pattern == "plain":
        paint(torso, person.top)
    else:
        half_period = person.pattern_period * h / 220
        phase = rng.uniform(0, 2 * half_period)
        stripes = ((_YY - row(0.15) + phase) // half_period) % 2 == 0
        if person.top_pattern == "checks":
            stripes ^= ((_XX - cx + phase) // half_period) % 2 == 0
        paint(torso & ~stripes, person.top)
        paint(torso & stripes, person.top_second)
    sleeve_end = 0.45 if person.long_sleeves else 0.31
    for side in (-1, 1):
        shoulder_x = side * 0.13 * w
        hand_x = shoulder_x + side * 0.02 - 0.05 * side * stride
        sleeve_x = shoulder_x + (hand_x - shoulder_x) * (sleeve_end - 0.15) / (0.46 - 0.15)
        paint(band(0.16, 0.46, shoulder_x, hand_x, 0.035, 0.035), person.skin)
        paint(band(0.15, sleeve_end, shoulder_x, sleeve_x, 0.04, 0.04), person.top)
    # Bag: a backpack shows as a block from behind and as straps from the front.
    if person.bag is not None and person.bag_kind == "backpack":
        if facing_back:
            paint(band(0.18, 0.45, 0, 0, 0.09 * w, 0.1 * w), person.bag)
        else:
            for side in (-1, 1):
                paint(band(0.15, 0.35, side * 0.07 * w, side * 0.08 * w, 0.015, 0.015), person.bag)
    elif person.bag is not None:
        side = 1 if facing_back else -1
        paint(band(0.15, 0.42, -side * 0.08 * w, side * 0.1 * w, 0.012, 0.012), person.bag)  # strap
        paint(band(0.4, 0.55, side * 0.14 * w, side * 0.14 * w, 0.06, 0.065), person.bag)
    # Head: hair on top, all hair from behind; long hair falls over the back.
    paint(blob(0.13, 0, 0.03, 0.025), person.skin)  # neck
    paint(blob(0.075, 0, 0.065, 0.05), person.hair if facing_back else person.skin)
    if not facing_back:
        paint(blob(0.055, 0, 0.049, 0.053) & (_YY < row(0.062)), person.hair)
    elif person.long_hair:
        paint(band(0.075, 0.27, 0, 0, 0.06, 0.075), person.hair)
    if person.hat is not None:
        paint(blob(0.039, 0, 0.036, 0.058) & (_YY < row(0.055)), person.hat)
    # Round the body with horizontal shading, then composite.
    shade = 1.0 - 0.3 * np.clip(np.abs(_XX - cx) / (0.16 * h * w), 0, 1) ** 2
    canvas[body] = (colour_of * shade[..., None])[body]


class _Job(NamedTuple):
    """One image to render: where it goes and what it shows."""
    path: str            # relative to the download root
    role: str            # train, query, gallery, distractor, junk or gt_bbox
    person: int          # index into the identity list; -1 for a stranger (distractor)
    camera: int
    framing: str         # "normal", "junk" (badly cut box) or "distractor"
    key: tuple[int, ...]  # seeds this image's generator


def _render(job: _Job, people: list[Person], cameras: list[Camera], spec: SyntheticSpec,
            image_format: str) -> bytes:
    """Draw one image and return it as JPEG or PNG bytes."""
    rng = np.random.default_rng(job.key)
    camera = cameras[job.camera]
    jitter = spec.pose_jitter
    x0 = int(rng.integers(0, 2 * WIDTH))
    canvas = _background_strip(camera)[:, x0:x0 + WIDTH].copy()
    person_height = people[job.person].height if job.person >= 0 else 1.0
    height = 112 * person_height * (1 + 0.06 * jitter * rng.normal())
    top = (HEIGHT - height) / 2 + 3 * jitter * rng.normal()
    cx = WIDTH / 2 + 2.5 * jitter * rng.normal()
    if job.framing != "normal":
        # A detector's bad box: the person far off-centre, too large or cut off.
        cx += rng.choice((-1, 1)) * rng.uniform(14, 30)
        height *= rng.uniform(1.0, 1.8)
        top -= rng.uniform(0, 0.5) * height
    if job.framing == "distractor" and rng.random() < 0.4:
        for _ in range(rng.integers(2, 6)):  # clutter, no person at all
            y, x = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
            canvas[_ellipse(y, x, rng.uniform(5, 30), rng.uniform(4, 20))] = _clothing_colour(rng)
    else:
        person = people[job.person] if job.person >= 0 else _random_person(rng)
        _draw_person(canvas, person, rng, jitter, cx, top, height)
    if rng.random() < spec.occlusion_prob:  # something in front: a pole, a passer-by, a bike
        y0 = rng.uniform(0.3, 0.9) * HEIGHT
        x_left = rng.uniform(-WIDTH / 2, WIDTH)
        x_right = x_left + rng.uniform(8, 30)
        canvas[(_YY >= y0) & (_XX >= x_left) & (_XX <= x_right)] = _clothing_colour(rng)
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    light = camera.brightness * (1 + 0.08 * rng.normal())
    canvas = canvas * (np.array(camera.gain, np.float32) * light)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    radius = camera.blur + rng.uniform(0, 0.4)
    if radius > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    noise = spec.noise_std * rng.standard_normal((HEIGHT, WIDTH, 3), np.float32)
    noisy = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        Image.fromarray(noisy).save(buffer, "JPEG", quality=spec.jpeg_quality)
    else:
        Image.fromarray(noisy).save(buffer, image_format)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Planning the download: who is seen where, and under which file name.

def _spread(total: int, minimum: np.ndarray, maximum: float,
            rng: np.random.Generator) -> np.ndarray:
    """Integer counts, one per identity, summing to ``total``, each within [minimum, maximum];
    some identities are popular (walk past the cameras often)."""
    counts = minimum.astype(np.int64).copy()
    remaining = total - int(counts.sum())
    if remaining < 0 or remaining > len(counts) * maximum - counts.sum():
        most = "" if maximum == np.inf else f" to {len(counts) * maximum}"
        raise UserError(f"synthetic dataset: {total} images do not fit {len(counts)} identities "
                        f"(room for {counts.sum()}{most}); change the totals or identity counts")
    popularity = rng.gamma(2.0, size=len(counts))
    while remaining > 0:
        open_parts = np.flatnonzero(counts < maximum)
        take = min(remaining, len(open_parts))
        weights = popularity[open_parts] / popularity[open_parts].sum()
        counts[rng.choice(open_parts, size=take, replace=False, p=weights)] += 1
        remaining -= take
    return counts


def _or_default(total: int | None, default: float) -> int:
    return total if total is not None else round(default)


def _plan(spec: SyntheticSpec, shape_type: type[DownloadShape]
          ) -> tuple[list[Person], list[Camera], list[_Job], DownloadShape]:
    """Identities, cameras and the full list of images, all drawn in the main process; the
    shape names each image (roles the download lacks are not drawn)."""
    rng = np.random.default_rng([spec.seed, 0])
    num_ids = spec.num_train_ids + spec.num_test_ids
    pids = rng.permutation(np.arange(1, num_ids + 1))  # train and test ids interleave, as in Market
    train_pids = np.sort(pids[:spec.num_train_ids])
    test_pids = np.sort(pids[spec.num_train_ids:])
    people = [_random_person(np.random.default_rng([spec.seed, 1, i])) for i in range(num_ids + 1)]
    for split_pids in (train_pids, test_pids):  # near-twins of someone in the same split
        for k in range(1, len(split_pids)):
            if rng.random() < spec.similar_fraction:
                base = split_pids[rng.integers(k)]
                twin_rng = np.random.default_rng([spec.seed, 2, split_pids[k]])
                people[split_pids[k]] = _near_twin(people[base], twin_rng)
    cameras = [_random_camera(np.random.default_rng([spec.seed, 3, c]), spec.camera_strength)
               for c in range(spec.num_cams)]
    shape = shape_type(rng, train_pids, test_pids)
    jobs: list[_Job] = []

    def add(role: str, pid: int, camera: int, framing: str = "normal", person: int | None = None,
            box: int | None = None) -> None:
        path = shape.path(role, pid, camera + 1, box)
        key = (spec.seed, 4, len(jobs))
        jobs.append(_Job(path, role, pid if person is None else person, camera, framing, key))

    def spread_over(cams: np.ndarray, count: int) -> np.ndarray:
        """A camera for each of ``count`` images: every one of ``cams`` at least once."""
        return np.concatenate([cams, rng.choice(cams, count - len(cams))])

    train_total = _or_default(spec.train_images, spec.num_train_ids * spec.images_per_id)
    train_counts = _spread(train_total, np.full(len(train_pids), 2), np.inf, rng)
    for pid, count in zip(train_pids, train_counts):
        cams = rng.permutation(spec.num_cams)[:min(count, rng.integers(2, spec.num_cams + 1))]
        for camera in spread_over(cams, count):
            add("train", pid, camera)

    # Test identities: one query per camera they are seen by, a gallery image in each of those.
    if spec.query_images is None:
        query_cams = rng.integers(2, spec.num_cams + 1, size=len(test_pids))
    else:
        query_cams = _spread(spec.query_images, np.full(len(test_pids), 2), spec.num_cams, rng)
    gallery_total = _or_default(spec.gallery_images, spec.num_test_ids * spec.images_per_id)
    gallery_counts = _spread(gallery_total, query_cams, np.inf, rng)
    for pid, num_query_cams, count in zip(test_pids, query_cams, gallery_counts):
        cams = rng.permutation(spec.num_cams)[:num_query_cams]
        for camera in cams:
            add("query", pid, camera)
        for camera in spread_over(cams, count):
            add("gallery", pid, camera)
        if "gt_bbox" in shape.folders:
            for camera in rng.choice(cams, spec.gt_bbox_per_id):
                add("gt_bbox", pid, camera, box=0)
    if "distractor" in shape.folders:
        for _ in range(_or_default(spec.distractor_images, gallery_total * _DISTRACTOR_SHARE)):
            add("distractor", m.DISTRACTOR_PID, int(rng.integers(spec.num_cams)), "distractor",
                person=-1)
    if "junk" in shape.folders:
        for _ in range(_or_default(spec.junk_images, gallery_total * _JUNK_SHARE)):
            # Junk shows a test person in a bad box.
            add("junk", m.JUNK_PID, int(rng.integers(spec.num_cams)), "junk",
                person=int(rng.choice(test_pids)))
    for prefix, copy in shape.copies:  # a second rendering (CUHK03-NP's labeled boxes)
        jobs += [job._replace(path=copy + job.path[len(prefix):], key=(*job.key, 1))
                 for job in jobs if job.path.startswith(prefix)]
    return people, cameras, jobs, shape


# ---------------------------------------------------------------------------------------------
# Writing it out.

_WORKER: dict = {}


def _init_worker(people: list[Person], cameras: list[Camera], spec: SyntheticSpec,
                 root: str, image_format: str) -> None:
    _WORKER.update(people=people, cameras=cameras, spec=spec, root=root,
                   image_format=image_format)


def _write_job(job: _Job) -> None:
    data = _render(job, _WORKER["people"], _WORKER["cameras"], _WORKER["spec"],
                   _WORKER["image_format"])
    with open(os.path.join(_WORKER["root"], job.path), "wb") as f:
        f.write(data)


def _readme(spec: SyntheticSpec, shape: DownloadShape, counts: dict[str, int]) -> str:
    lines = [
        *shape.readme_intro(),
        "",
        "Images per folder: " + ", ".join(f"{folder} {n}" for folder, n in counts.items()),
        "Spec: " + ", ".join(f"{f.name}={getattr(spec, f.name)}" for f in dataclasses.fields(spec)),
    ]
    return "\n".join(lines) + "\n"


def generate(out_dir: str | Path, spec: SyntheticSpec, workers: int = 2,
             progress: bool = False, shape: str = "market") -> Path:
    """Write ``shape``'s download for ``spec`` under ``out_dir`` (e.g.
    ``out_dir/Market-1501-v15.09.15``) and return its top folder.

    It is built under a temporary name and renamed when complete, so an interrupted run leaves
    no half download behind (the next run starts over).
    """
    shape_type = _shape_type(shape)
    info = DATASETS[shape_type.dataset]
    if spec.num_cams > info.num_cams:
        raise UserError(f"synthetic dataset: num_cams must be 2..{info.num_cams} for "
                        f"{info.title}, got {spec.num_cams}")
    root = Path(out_dir) / shape_type.top_folder
    if root.exists():
        raise UserError(f"{root} already exists; delete it or choose another output folder")
    people, cameras, jobs, layout = _plan(spec, shape_type)
    partial = root.with_name(f".{root.name}.partial")
    folders = layout.image_folders() + sorted({job.path.rsplit("/", 1)[0] for job in jobs})
    try:
        if partial.exists():
            shutil.rmtree(partial)
        for folder in folders:
            (partial / folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to {out_dir} ({err.strerror}); choose a writable "
                        "folder") from None
    layout.write_extras(partial, spec.seed, [(job.role, job.path) for job in jobs])
    counts = {folder: sum(job.path.startswith(folder + "/") for job in jobs)
              for folder in layout.image_folders()}
    (partial / "readme.txt").write_text(_readme(spec, layout, counts))

    args = (people, cameras, spec, str(partial), layout.image_format)
    started = time.time()
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers, _init_worker, args))
            chunk = max(1, min(256, len(jobs) // (8 * workers)))
            written = pool.imap_unordered(_write_job, jobs, chunksize=chunk)
        else:
            _init_worker(*args)
            written = map(_write_job, jobs)
        for done, _ in enumerate(written, 1):
            if progress and (done % 2000 == 0 or done == len(jobs)):
                print(f"  {done}/{len(jobs)} images, {time.time() - started:.0f}s", file=sys.stderr)
    partial.rename(root)
    return root


def _shape_type(shape: str) -> type[DownloadShape]:
    if shape not in SHAPES:
        raise UserError(f"unknown synthetic download {shape!r}; choose one of: "
                        f"{', '.join(SHAPES)}")
    return SHAPES[shape]


def make_synthetic_market(out_dir: str | Path, num_train_ids: int, num_test_ids: int,
                          images_per_id: float, num_cams: int = 6, seed: int = 0,
                          workers: int = 2, progress: bool = False, **options) -> Path:
    """Write a synthetic Market-1501-v15.09.15 download under ``out_dir``; returns its path.

    ``options`` are the other ``SyntheticSpec`` fields (totals and difficulty knobs).
    """
    spec = SyntheticSpec(num_train_ids, num_test_ids, images_per_id, num_cams, seed, **options)
    return generate(out_dir, spec, workers, progress)


def make_preset(out_dir: str | Path, preset: str = "demo", workers: int = 2, progress: bool = False,
                shape: str = "market", **overrides) -> Path:
    """Write one of ``PRESETS`` (tiny, demo, market) in the shape of one of ``SHAPES`` (market,
    duke, cuhk03, msmt17, msmt17_v2), any ``SyntheticSpec`` field overridden."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    fixed = _shape_type(shape).spec_overrides
    spec = dataclasses.replace(PRESETS[preset], **{**fixed, **overrides})
    return generate(out_dir, spec, workers, progress, shape)


def main() -> None:
    parser = ArgumentParser(
        description="Write a synthetic download in a real one's shape (Market-1501-v15.09.15/, "
                    "DukeMTMC-reID/, cuhk03-np/, MSMT17_V1/ or MSMT17_V2/) to test "
                    "prepare_market.py and training without the real dataset.")
    a = parser.add_argument
    a("--out", type=Path, required=True, help="folder to write the download's top folder into")
    a("--dataset", choices=list(SHAPES), default="market",
      help="whose download to imitate (default market; cuhk03 writes detected/ and labeled/; "
      "msmt17_v2 is MSMT17 with V2's folder names; own: a folder of images with a "
      "manifest.csv, some labels wrong on purpose, for docs/own_data.md)")
    a("--preset", choices=list(PRESETS), default="demo",
      help="tiny (tests), demo (the training demo; default), market (Market-1501's counts)")
    a("--ids", type=int, help="identities in train and in test each (overrides the preset)")
    a("--images-per-id", type=float, help="mean images per identity (overrides the preset)")
    a("--cams", type=int, help="number of cameras (overrides the preset)")
    a("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    a("--similar-fraction", type=float, help="share of identities drawn as near-twins")
    a("--noise-std", type=float, help="sensor noise in grey levels")
    a("--workers", type=int, default=2, help="processes drawing images (default 2)")
    args = parser.parse_args()
    overrides = {name: value for name, value in (
        ("num_train_ids", args.ids), ("num_test_ids", args.ids),
        ("images_per_id", args.images_per_id), ("num_cams", args.cams),
        ("similar_fraction", args.similar_fraction), ("noise_std", args.noise_std),
    ) if value is not None}
    if args.ids is not None and args.preset == "market":
        # The market preset's fixed totals belong to 751/750 identities.
        overrides.update(train_images=None, gallery_images=None, query_images=None,
                         distractor_images=None, junk_images=None)
    started = time.time()
    root = make_preset(args.out, args.preset, workers=args.workers, progress=True,
                       shape=args.dataset, seed=args.seed, **overrides)
    print(f"wrote {root} in {time.time() - started:.1f}s")


if __name__ == "__main__":
    run_cli(main)
