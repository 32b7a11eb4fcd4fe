"""What a run trains and tests on: the splits as batch pipelines (the image cache on the device
where it fits, else PIL + DataLoader) and the label noise injected into the training labels.

Views of the training split:
- ``train``: what the networks learn on (augmented and shuffled, or, with ``--train_transform
  test``, the test transform, shuffled);
- ``train_plain``: the same images in order, not augmented: what the label diagnostics ask the
  networks about;
- ``train_test_view()``: the test transform (resize to ``--img_size``), in order: what the
  clean model classifies for patterned noise, as in the released code.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from datasets import get_dataset_info, load_split
from datasets.folder import ReIDFolder
from datasets.market1501 import JUNK_PID
from datasets.noise import (NoisyLabels, pattern_noise, random_noise,
                            second_labels_from_logits)
from datasets.pipeline import (CachedBatches, LoaderBatches, cache_fits, centre_transform,
                               decoded_split, default_cache_dir, eval_transform, resize_hw,
                               train_transform)
from datasets.split_labels import read_split_labels
from eval_utils import EvalSet, eval_outputs, pool5_descriptor, scoring_identities
from core_reid.numerics import Fallback, Numerics
from core_reid.runs import network_from_checkpoint, read_checkpoint
from core_reid.utils import UserError

Batches = Union[CachedBatches, LoaderBatches]


@dataclass
class RunData:
    train: Batches
    train_plain: Batches
    train_test_view: Callable[[], Batches]
    true_labels: np.ndarray
    num_classes: int
    train_paths: list[Path]  # the training images in sample order (for pictures)
    query: EvalSet
    gallery: EvalSet
    data_path: str  # "cache" or "loader"
    fallbacks: tuple[Fallback, ...] = ()  # a failed memory query (the cache's fit)


def prepare_synthetic_data(data_dir: Path, workers: int, **spec: Any) -> None:
    """Generate (once) a synthetic download, the demo's or (``spec``: ``SyntheticSpec`` fields)
    another, and prepare it exactly as a real one."""
    from datasets.market1501 import DOWNLOAD_FOLDER
    from datasets.synthetic import make_preset
    from datasets.prepare import prepare
    ready = data_dir / ".synthetic_ready"
    if ready.is_file():
        return
    download = data_dir / DOWNLOAD_FOLDER
    if not download.is_dir():
        print(f"writing a synthetic Market-1501-shaped download to {download} (once)")
        make_preset(data_dir, "demo", workers=max(1, workers), progress=True, **spec)
    prepare(download, data_dir / "market")  # completes an interrupted earlier attempt
    ready.touch()


def _test_splits(args: argparse.Namespace) -> tuple[ReIDFolder, ReIDFolder]:
    """Query and gallery; under the standard protocol junk never counts, so it is dropped before
    extraction."""
    query = load_split(Path(args.data_dir), args.dataset, "query")
    gallery = load_split(Path(args.data_dir), args.dataset, "gallery")
    if args.eval_protocol == "standard":
        gallery = gallery.subset(np.flatnonzero(gallery.pids != JUNK_PID))
    return query, gallery


def _use_cache(numerics: Numerics, device: torch.device, train_images: int,
               train_hw: tuple[int, int], test_images: int, test_hw: tuple[int, int]
               ) -> tuple[bool, tuple[Fallback, ...]]:
    """The image cache, unless ``numerics.data_path`` says otherwise or it does not fit; and
    the fallback, when the memory query itself fails (then the released path: a run that
    cannot ask must not gamble on device memory)."""
    if numerics.data_path != "auto":
        return numerics.data_path == "cache", ()
    test_bytes = test_images * test_hw[0] * test_hw[1] * 3
    try:
        fits = cache_fits(train_images, train_hw, device, test_bytes)
    except Exception as err:  # whatever the driver or the build raises
        query = "torch.cuda.mem_get_info" if device.type == "cuda" else "free host memory"
        fallback = Fallback.of_error(f"the memory query ({query})",
                                     "the PIL/DataLoader path (as --data_path loader)", err)
        print(fallback.line(), flush=True)
        return False, (fallback,)
    if not fits:
        print("note: the image cache does not fit in memory; using the PIL/DataLoader path")
    return fits, ()


class _Views:
    """Batch pipelines of splits under one run's settings: from the image cache on the device,
    or from PIL + DataLoader."""

    def __init__(self, args: argparse.Namespace, device: torch.device, use_cache: bool):
        self.args, self.device, self.use_cache = args, device, use_cache
        self.crop = tuple(args.img_size)

    def cached(self, dataset: ReIDFolder, size: tuple[int, int]) -> torch.Tensor:
        images = decoded_split(dataset, size, default_cache_dir(dataset), self.args.workers)
        return torch.from_numpy(images).to(self.device)

    def test_view(self, dataset: ReIDFolder) -> Batches:
        if self.use_cache:
            return CachedBatches(self.cached(dataset, self.crop), 4 * self.args.batchsize)
        return LoaderBatches(dataset, eval_transform(self.crop), 4 * self.args.batchsize, False,
                             self.args.workers, self.device)

    def plain_view(self, dataset: ReIDFolder, images: Optional[torch.Tensor] = None) -> Batches:
        """A training split in order, not augmented: the centre crop of the resized image (the
        test transform with --train_transform test); ``images``: the split already cached."""
        augment = self.args.train_transform == "augment"
        if not self.use_cache:
            return LoaderBatches(dataset, (centre_transform if augment else eval_transform)(
                self.crop), 4 * self.args.batchsize, False, self.args.workers, self.device)
        if images is None:
            images = self.cached(dataset, resize_hw(self.crop) if augment else self.crop)
        return CachedBatches(images, 4 * self.args.batchsize, self.crop)

    def test_set(self, dataset: ReIDFolder) -> EvalSet:
        pids, camids = scoring_identities(dataset.pids, dataset.camids, dataset.classes,
                                          dataset.targets, [p.name for p in dataset.paths],
                                          self.args.eval_protocol)
        return EvalSet(self.test_view(dataset), pids, camids, list(dataset.paths))


def load_eval_sets(args: argparse.Namespace, device: torch.device,
                   numerics: Numerics) -> tuple[EvalSet, EvalSet]:
    """Query and gallery alone (what testing a saved network needs)."""
    query, gallery = _test_splits(args)
    crop = tuple(args.img_size)
    use_cache, _ = _use_cache(numerics, device, 0, crop, len(query) + len(gallery), crop)
    views = _Views(args, device, use_cache)
    return views.test_set(query), views.test_set(gallery)


def load_data(args: argparse.Namespace, device: torch.device, numerics: Numerics,
              with_train_test_view: bool = False) -> RunData:
    """Read the splits and build their batch pipelines (cached on the device where it fits,
    unless ``numerics.data_path`` says otherwise). ``with_train_test_view``: build the training
    split's test-transform view now, for a method that needs it during training: decoding it
    later would fork worker processes from a training process, which can hang."""
    train = load_split(Path(args.data_dir), args.dataset, args.train_split)
    query, gallery = _test_splits(args)
    crop = tuple(args.img_size)
    augment = args.train_transform == "augment"
    train_hw = resize_hw(crop) if augment else crop
    use_cache, fallbacks = _use_cache(numerics, device, len(train), train_hw,
                                      len(query) + len(gallery), crop)
    views = _Views(args, device, use_cache)
    if views.use_cache:  # one copy of the training images serves both views
        images = views.cached(train, train_hw)
        train_batches = CachedBatches(images, args.batchsize, crop, augment, shuffle=True)
        train_plain = views.plain_view(train, images)
    else:
        train_batches = LoaderBatches(train, (train_transform if augment else eval_transform)(
            crop), args.batchsize, True, args.workers, device)
        train_plain = views.plain_view(train)

    built = views.test_view(train) if augment and with_train_test_view else None

    def train_test_view() -> Batches:  # else built on demand (patterned noise, before training)
        if built is not None:
            return built
        return views.test_view(train) if augment else train_plain

    return RunData(train_batches, train_plain, train_test_view, train.targets.astype(np.int64),
                   train.num_classes, list(train.paths), views.test_set(query),
                   views.test_set(gallery), "cache" if views.use_cache else "loader", fallbacks)


def load_training_view(args: argparse.Namespace, device: torch.device,
                       numerics: Numerics) -> tuple[ReIDFolder, Batches]:
    """The training split alone and its plain view (``RunData.train_plain``): what the audit
    asks a saved run's networks about."""
    train = load_split(Path(args.data_dir), args.dataset, args.train_split)
    crop = tuple(args.img_size)
    train_hw = resize_hw(crop) if args.train_transform == "augment" else crop
    views = _Views(args, device, _use_cache(numerics, device, len(train), train_hw, 0, crop))
    return train, views.plain_view(train)


def call_model(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class logits of the images."""
    return model(images)


def call_model_on_flipped(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class logits of the mirrored images: what the released second-label pass keeps, because
    its flip loop overwrites the logits of the image with those of its flip."""
    return model(images.flip(3))


def view_forward(view: str) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """The logits the released extractors keep ('flipped': the mirrored image's) or the
    image's own ('plain')."""
    return call_model_on_flipped if view == "flipped" else call_model


def second_labels(model: torch.nn.Module, data: RunData, view: str,
                  device: torch.device) -> np.ndarray:
    """Patterned noise's second label of every training image, from a clean model: its top-1
    class if wrong, else its top-2; ``view`` 'flipped' (released) or 'plain'."""
    logits = eval_outputs(model.to(device), data.train_test_view(), view_forward(view), device,
                          desc="clean model's predictions")
    return second_labels_from_logits(logits.cpu().numpy(), data.true_labels)


def train_logits(net: torch.nn.Module, data: RunData, device: torch.device,
                 numerics: Numerics) -> torch.Tensor:
    """The network's class logits of every training image, in sample order (eval mode, no
    augmentation; float32, on the device)."""
    return eval_outputs(net, data.train_plain, call_model, device, numerics.amp,
                        numerics.channels_last)


def predicted_labels(net: torch.nn.Module, data: RunData, device: torch.device,
                     numerics: Numerics) -> np.ndarray:
    """The network's class for every training image (eval mode, no augmentation): its refined
    labels."""
    return train_logits(net, data, device, numerics).argmax(dim=1).cpu().numpy()


def train_descriptors_and_classes(net: torch.nn.Module, data: RunData, device: torch.device,
                                  numerics: Numerics, view: str = "flipped"
                                  ) -> tuple[np.ndarray, np.ndarray]:
    """The test descriptor and the predicted class of every training image, in sample order,
    both with the test transform in eval mode: what PurifyNet's stage 2 weighs and relabels
    with. The released ``extr_fea_train`` (``eval_utils.extract_feature_v1``) sums the
    L2-normalised pool5 features of the image and its mirror and normalises the sum (our test
    descriptor); its class is the argmax of the mirror's logits, because its flip loop
    overwrites the image's: ``view`` 'flipped' (released) or 'plain' (the image's own)."""
    batches = data.train_test_view()
    descriptors = eval_outputs(net, batches, pool5_descriptor, device, numerics.amp,
                               numerics.channels_last, desc="training descriptors")
    classes = eval_outputs(net, batches, view_forward(view), device, numerics.amp,
                           numerics.channels_last).argmax(dim=1)
    return descriptors.cpu().numpy(), classes.cpu().numpy()


def noise_meta(args: argparse.Namespace) -> dict:
    """What noisy_labels.npz and metrics.json say about the noise (and ``--labels``)."""
    meta = {"noise_type": "pattern" if args.pattern else "random",
            "noise_ratio": args.noise_ratio, "noise_seed": args.noise_seed, "seed": args.seed}
    if args.labels:
        meta["labels"] = args.labels
    return {**meta, "pattern_view": args.pattern_view} if args.pattern else meta


def describe_annotations(labels: NoisyLabels) -> str:
    """The log line of a run without injected noise: what it trains on, and what it reports
    instead of label precision."""
    given = labels.meta.get("labels")
    source = f"the labels of --labels {given}" if given else "the dataset's annotations"
    return (f"no injected noise: training on {source} as given; with no truth to score them "
            "against, each epoch reports the fraction each network's predictions disagree with "
            "them (disagree_with_annotation) and the fraction the method changed "
            "(labels_changed): docs/audit.md")


def inject_noise(args: argparse.Namespace, data: RunData, device: torch.device) -> NoisyLabels:
    """Random noise, or patterned from a clean model's confusions, seeded by --noise_seed; or,
    with --labels, the labels that file gives (validated against the training split)."""
    meta = noise_meta(args)
    if args.labels:
        split = load_split(Path(args.data_dir), args.dataset, args.train_split)
        given = read_split_labels(Path(args.labels), split,
                                  get_dataset_info(args.dataset, args.data_dir))
        return NoisyLabels(given, given.copy(), np.ones(len(given), dtype=bool), meta)
    if not args.pattern:
        noisy, is_clean = random_noise(data.true_labels, args.noise_ratio, data.num_classes,
                                       args.noise_seed)
        return NoisyLabels(data.true_labels, noisy, is_clean, meta)
    state = read_checkpoint(Path(args.pattern_model), "--pattern_model")
    if state["num_classes"] != data.num_classes:
        raise UserError(f"--pattern_model {args.pattern_model}: trained on "
                        f"{state['num_classes']} classes but this training split has "
                        f"{data.num_classes}; train it on the same dataset and split")
    second = second_labels(network_from_checkpoint(state), data, args.pattern_view, device)
    noisy, is_clean = pattern_noise(data.true_labels, args.noise_ratio, second, args.noise_seed)
    return NoisyLabels(data.true_labels, noisy, is_clean, meta)
