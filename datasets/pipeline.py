"""From a split on disk to normalised image batches on the device.

Two interchangeable paths yield ``(images, indices)`` batches:

* ``LoaderBatches`` — the released code's path: PIL decode, bicubic resize and augmentation in
  DataLoader workers, every epoch.
* ``CachedBatches`` — the fast path: each image is decoded and resized once (uint8, cached on
  disk), the whole split lives in device memory, and crop, flip and normalisation run on the
  device per batch. The resize is the same PIL call, so the pixels are the same.

All randomness of an epoch (order, crops, flips) comes from one seed, so a run resumed at any
epoch sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import copy
import hashlib
import os
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.folder import ReIDFolder, load_image
from core_reid.utils import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Batch = tuple[torch.Tensor, torch.Tensor]


def resize_hw(crop_hw: Sequence[int]) -> tuple[int, int]:
    """Training images are resized to 9/8 of the crop first (288x144 for a 256x128 crop)."""
    return crop_hw[0] * 9 // 8, crop_hw[1] * 9 // 8


def train_transform(crop_hw: Sequence[int]) -> T.Compose:
    """The released training augmentation: bicubic resize, random crop, random flip."""
    return T.Compose([T.Resize(resize_hw(crop_hw), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomCrop(tuple(crop_hw)), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(crop_hw: Sequence[int]) -> T.Compose:
    """Test images are resized straight to the crop size."""
    return T.Compose([T.Resize(tuple(crop_hw), interpolation=T.InterpolationMode.BICUBIC),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def centre_transform(crop_hw: Sequence[int]) -> T.Compose:
    """Training images without augmentation (the centre crop of the training resize): what
    the label diagnostics and patterned noise ask the network about."""
    return T.Compose([T.Resize(resize_hw(crop_hw), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(tuple(crop_hw)), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one epoch of one run."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class LoaderBatches:
    """Batches from a DataLoader over PIL images (the released pipeline)."""

    def __init__(self, dataset: ReIDFolder, transform: T.Compose, batch_size: int, train: bool,
                 workers: int, device: torch.device):
        dataset = copy.copy(dataset)  # its own transform; the caller's dataset is unchanged
        dataset.transform = transform
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.workers, self.device = workers, device

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def batches(self, seed: int = 0) -> Iterator[Batch]:
        # With workers, each worker's transforms are seeded from ``generator``; without, they
        # draw from the global RNG, which the training loop seeds per epoch.
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=self.train,
                            num_workers=self.workers, generator=generator,
                            pin_memory=self.device.type == "cuda")
        try:
            for images, _, index in loader:
                yield (images.to(self.device, non_blocking=True),
                       index.to(self.device, non_blocking=True))
        except UserError as err:  # from a worker: the message carries the worker's traceback
            raise UserError(str(err).strip().splitlines()[-1].split("UserError: ", 1)[-1]
                            ) from None


class CachedBatches:
    """Batches cut from a uint8 NHWC tensor that holds the whole split on the device."""

    def __init__(self, images: torch.Tensor, batch_size: int,
                 crop_hw: Optional[Sequence[int]] = None, augment: bool = False,
                 shuffle: Optional[bool] = None):
        """``augment``: random ``crop_hw`` crops and random flips (training). Otherwise
        centre-cropped to ``crop_hw`` (or whole when it is None). ``shuffle`` (default: as
        ``augment``): a new order every epoch, else the split's order."""
        self.images, self.batch_size, self.augment = images, batch_size, augment
        self.shuffle = augment if shuffle is None else shuffle
        self.crop_hw = tuple(crop_hw) if crop_hw is not None else tuple(images.shape[1:3])
        device = images.device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def normalise(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float NCHW (channels_last strides), as ToTensor + Normalize compute it."""
        x = images_nhwc.permute(0, 3, 1, 2).float().div(255)
        return (x - self.mean) / self.std

    def batches(self, seed: int = 0) -> Iterator[Batch]:
        n, device = len(self.images), self.images.device
        full_h, full_w = self.images.shape[1:3]
        h, w = self.crop_hw
        if not self.augment:
            top, left = round((full_h - h) / 2), round((full_w - w) / 2)  # as CenterCrop
            g = torch.Generator(device=device).manual_seed(seed)
            order = (torch.randperm(n, generator=g, device=device) if self.shuffle
                     else torch.arange(n, device=device))
            for start in range(0, n, self.batch_size):
                index = order[start:start + self.batch_size]
                yield self.normalise(self.images[index, top:top + h, left:left + w]), index
            return
        # One draw per epoch for order, crop offsets and flips: no host sync inside the loop.
        g = torch.Generator(device=device).manual_seed(seed)
        order = torch.randperm(n, generator=g, device=device)
        top = torch.randint(0, full_h - h + 1, (n,), generator=g, device=device)
        left = torch.randint(0, full_w - w + 1, (n,), generator=g, device=device)
        flip = torch.rand(n, generator=g, device=device) < 0.5
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.augmented(index, top[index], left[index], flip[index]), index

    def augmented(self, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  flip: torch.Tensor) -> torch.Tensor:
        """Images ``index`` cropped at (``top``, ``left``), mirrored where ``flip``, normalised:
        one gather on the device."""
        h, w = self.crop_hw
        rows_base = torch.arange(h, device=index.device)
        cols_base = torch.arange(w, device=index.device)
        rows = top[:, None] + rows_base  # B x h
        cols = left[:, None] + torch.where(flip[:, None], w - 1 - cols_base, cols_base)
        return self.normalise(self.images[index[:, None, None], rows[:, :, None],
                                          cols[:, None, :]])


def _decode_resized(args: tuple[str, int, int]) -> np.ndarray:
    path, h, w = args
    image = TF.resize(load_image(Path(path)), [h, w], interpolation=T.InterpolationMode.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _cache_key(dataset: ReIDFolder, size_hw: Sequence[int]) -> str:
    digest = hashlib.sha1(f"{size_hw[0]}x{size_hw[1]}\n".encode())
    for path in dataset.paths:
        digest.update(f"{path.parent.name}/{path.name}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def default_cache_dir(dataset: ReIDFolder) -> Path:
    """``<prepared dataset>/.cache``, or ``~/.cache/core-reid`` where that is not writable."""
    root = Path(dataset.paths[0]).parent.parent.parent
    if os.access(root, os.W_OK):
        return root / ".cache"
    return Path.home() / ".cache" / "core-reid"


def decoded_split(dataset: ReIDFolder, size_hw: Sequence[int], cache_dir: Path,
                  workers: int) -> np.ndarray:
    """All images of ``dataset`` as one uint8 (N, H, W, 3) array, decoded once and cached.

    The cache file's name hashes the file list, the file sizes and the size, so a changed
    dataset is decoded again instead of silently reusing stale pixels.
    """
    h, w = size_hw
    split = Path(dataset.paths[0]).parent.parent.name
    cache = cache_dir / f"{split}_{h}x{w}_{_cache_key(dataset, size_hw)}.npy"
    if cache.is_file():
        return np.load(cache)
    jobs = [(str(p), h, w) for p in dataset.paths]
    out = np.empty((len(jobs), h, w, 3), dtype=np.uint8)
    progress = tqdm(total=len(jobs), desc=f"decoding {split} once ({h}x{w})", unit="img",
                    leave=False, disable=None)
    if workers > 0:
        with Pool(workers) as pool:
            for i, image in enumerate(pool.imap(_decode_resized, jobs, chunksize=64)):
                out[i] = image
                progress.update()
    else:
        for i, job in enumerate(jobs):
            out[i] = _decode_resized(job)
            progress.update()
    progress.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, out)
    os.replace(tmp, cache)
    return out


def free_memory_bytes(device: torch.device) -> int:
    """Free memory where the cached split would live (GPU memory, or host RAM on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cache_fits(num_images: int, size_hw: Sequence[int], device: torch.device,
               already_planned: int = 0, fraction: float = 0.5) -> bool:
    """True when the uint8 split (plus what is already planned) takes at most ``fraction`` of
    the free memory, leaving the rest for training."""
    need = num_images * size_hw[0] * size_hw[1] * 3 + already_planned
    return need <= fraction * free_memory_bytes(device)
