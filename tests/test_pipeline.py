"""The fast data path (decode once, augment on the device) against the PIL/DataLoader path."""
import numpy as np
import torch

from datasets import load_split
from datasets.pipeline import (CachedBatches, LoaderBatches, centre_transform, decoded_split,
                               eval_transform, resize_hw)

CROP = (32, 16)
CPU = torch.device("cpu")


def test_cached_test_batches_equal_the_pil_path_bit_for_bit(prepared_market, tmp_path):
    query = load_split(prepared_market.parent, "market", "query")
    images = decoded_split(query, CROP, tmp_path / "cache", workers=0)
    cached = torch.cat([x for x, _ in CachedBatches(torch.from_numpy(images), 7).batches()])
    loader = LoaderBatches(query, eval_transform(CROP), 7, False, 0, CPU)
    reference = torch.cat([x for x, _ in loader.batches()])
    assert cached.shape == reference.shape == (len(query), 3, *CROP)
    assert torch.equal(cached, reference)


def test_decoded_split_is_cached_on_disk_and_reused(prepared_market, tmp_path):
    train = load_split(prepared_market.parent, "market", "train")
    first = decoded_split(train, resize_hw(CROP), tmp_path, workers=2)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and first.shape == (len(train), 36, 18, 3)
    mtime = files[0].stat().st_mtime_ns
    assert np.array_equal(decoded_split(train, resize_hw(CROP), tmp_path, workers=0), first)
    assert files[0].stat().st_mtime_ns == mtime


def test_training_crops_are_crops_or_mirrored_crops_of_the_cached_image(prepared_market,
                                                                         tmp_path):
    train = load_split(prepared_market.parent, "market", "train")
    full = decoded_split(train, resize_hw(CROP), tmp_path, workers=0)
    batches = CachedBatches(torch.from_numpy(full), 8, CROP, augment=True)
    mean = batches.mean.view(3)
    std = batches.std.view(3)
    seen, flipped = [], 0
    for x, index in batches.batches(seed=3):
        pixels = ((x.permute(0, 2, 3, 1) * std + mean) * 255).round().to(torch.uint8).numpy()
        for crop, i in zip(pixels, index.tolist()):
            source = full[i]
            offsets = [(top, left, flip)
                       for top in range(source.shape[0] - CROP[0] + 1)
                       for left in range(source.shape[1] - CROP[1] + 1)
                       for flip in (False, True)
                       if np.array_equal(crop, (lambda c: c[:, ::-1] if flip else c)(
                           source[top:top + CROP[0], left:left + CROP[1]]))]
            assert offsets, f"batch image {i} is not a crop of its source"
            flipped += any(f for _, _, f in offsets) and not any(not f for _, _, f in offsets)
            seen.append(i)
    assert sorted(seen) == list(range(len(train)))  # every image once per epoch
    assert 0 < flipped < len(train)  # some flipped, some not


def test_same_seed_same_batches_different_seed_different(prepared_market, tmp_path):
    train = load_split(prepared_market.parent, "market", "train")
    images = torch.from_numpy(decoded_split(train, resize_hw(CROP), tmp_path, workers=0))
    batches = CachedBatches(images, 8, CROP, augment=True)
    a = [(x.clone(), i.clone()) for x, i in batches.batches(seed=5)]
    b = [(x.clone(), i.clone()) for x, i in batches.batches(seed=5)]
    c = [(x.clone(), i.clone()) for x, i in batches.batches(seed=6)]
    assert all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in zip(a, b))
    assert not all(torch.equal(i, j) for (_, i), (_, j) in zip(a, c))


def test_unaugmented_training_view_equals_the_pil_centre_crop(prepared_market, tmp_path):
    train = load_split(prepared_market.parent, "market", "train")
    images = torch.from_numpy(decoded_split(train, resize_hw(CROP), tmp_path, workers=0))
    cached = torch.cat([x for x, _ in CachedBatches(images, 5, CROP).batches()])
    loader = LoaderBatches(train, centre_transform(CROP), 5, False, 0, CPU)
    assert torch.equal(cached, torch.cat([x for x, _ in loader.batches()]))
    assert train.transform is None  # the pipeline did not change the caller's dataset
