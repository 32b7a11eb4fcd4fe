"""Check the fast settings on one real batch before training, and turn off any that fail.

``--numerics fast`` is the default on CUDA: TF32, channels_last, bf16 autocast, fused SGD and
the image cache with its crop and flip on the device. A broken kernel, driver or build would
otherwise end the user's first run (or, worse, train it on garbage). So, before the first
epoch, each setting the run is about to use is tried on the first batch of its own first
epoch, one at a time on top of those already accepted: forward and backward of the run's
network (a copy of its starting weights; dropout off, so that only the arithmetic differs)
against the released arithmetic on the same batch (fp32, TF32 off, default memory format); one
fused SGD step against a plain one; the device-side crops and flips against the same crops cut
on the host. A setting that raises, gives a non-finite loss or gradient, or differs by more
than the tolerances below is turned off for the run: one line says which and why, and
metrics.json's ``numerics.fallbacks`` lists it (the memory query that decides whether the cache
fits is checked where it is asked, when the data is loaded: core_reid/run_data.py). The checks
work on their own network and restore every random generator, so a run whose checks pass
trains exactly as it would without them. They run on CUDA only, where the fast settings are on
by default (``should_check``).
"""
from __future__ import annotations

import argparse
import copy
import math
from dataclasses import replace
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

import losses
from datasets.pipeline import IMAGENET_MEAN, IMAGENET_STD, CachedBatches, epoch_seed
from methods import Method
from model import build_model
from core_reid.numerics import Fallback, Numerics, apply_tf32
from core_reid.run_data import RunData, load_data
from core_reid.runs import restore_rng_states, rng_states

# |fast loss - fp32 loss| <= LOSS_TOLERANCE * max(1, |fp32 loss|): bf16 keeps 8 bits of
# mantissa (a relative rounding of 0.4% per operation); a broken kernel is off by far more.
LOSS_TOLERANCE = 0.05
# Fused against plain SGD after one step: the largest parameter difference, relative to the
# largest update (the two differ by float rounding only).
STEP_TOLERANCE = 1e-3
# The device's crop, flip and normalisation against the host's (float32 rounding only).
CROP_TOLERANCE = 1e-5
# (Numerics field, what the line calls it, what the run uses instead), in the order tried.
ARITHMETIC = (("tf32", "TF32", "full fp32 matmuls and convolutions"),
              ("channels_last", "channels_last", "the default memory format "
               "(as --channels_last off)"),
              ("amp", "bf16 autocast", "fp32 (as --amp off)"))


class CheckFailed(Exception):
    """A fast setting gave a wrong answer; the message says what the check saw."""


def should_check(device: torch.device) -> bool:
    """The checks run where the fast settings are on by default: on CUDA."""
    return device.type == "cuda"


def check_fast_path(args: argparse.Namespace, method: Method, data: RunData,
                    numerics: Numerics, device: torch.device, weights: Optional[dict]
                    ) -> tuple[Numerics, RunData]:
    """The numerics and data the run trains with: ``numerics`` and ``data`` less every fast
    setting that failed its check, with ``fallbacks`` listing them (and the failed memory query
    of the data loading, if any). ``weights``: the backbone the run starts from (None: from
    scratch, or a resumed run: the check then uses a freshly initialised network)."""
    fallbacks = list(data.fallbacks)
    fast = (numerics.tf32 or numerics.channels_last or numerics.amp or numerics.fused_sgd
            or data.data_path == "cache")
    if should_check(device) and fast:
        saved = rng_states()
        try:
            numerics, data = _run_checks(args, method, data, numerics, device, weights,
                                         fallbacks)
        finally:
            restore_rng_states(saved)
            apply_tf32(numerics, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return replace(numerics, data_path=data.data_path, fallbacks=tuple(fallbacks)), data


def _fall_back(fallbacks: list[Fallback], setting: str, instead: str,
               err: Exception) -> None:
    fallbacks.append(Fallback(setting, instead, str(err)) if isinstance(err, CheckFailed)
                     else Fallback.of_error(setting, instead, err))
    print(fallbacks[-1].line(), flush=True)


def _run_checks(args: argparse.Namespace, method: Method, data: RunData, numerics: Numerics,
                device: torch.device, weights: Optional[dict], fallbacks: list[Fallback]
                ) -> tuple[Numerics, RunData]:
    seed = epoch_seed(args.seed, 0)
    batch = None
    if data.data_path == "cache":
        try:
            batch = _cached_batch(data.train, seed)
        except Exception as err:  # whatever the device raises: the released path instead
            _fall_back(fallbacks, "the image cache (crop and flip on the device)",
                       "the PIL/DataLoader path (as --data_path loader)", err)
            data = load_data(args, device, replace(numerics, data_path="loader"),
                             method.uses_train_test_view)
    images, index = batch or next(iter(data.train.batches(seed)))
    labels = torch.as_tensor(data.true_labels, device=device)[index.to(device)]
    net = build_model(args.arch, data.num_classes, weights, args.head_act, args.dropout)
    net = net.to(device).train()
    for module in net.modules():  # the same forward every time: only the arithmetic differs
        if isinstance(module, nn.Dropout):
            module.eval()

    apply_tf32(replace(numerics, tf32=False), device)
    reference = _loss(net, images, labels, device, amp=False, channels_last=False)
    if numerics.fused_sgd:
        try:
            _check_fused_step(net, args)
        except Exception as err:  # whatever the fused kernel raises: plain SGD instead
            _fall_back(fallbacks, "fused SGD", "plain SGD", err)
            numerics = replace(numerics, fused_sgd=False)
    kept = {"tf32": False, "channels_last": False, "amp": False}
    for field, setting, instead in ARITHMETIC:
        if not getattr(numerics, field):
            continue
        trial = {**kept, field: True}
        try:
            apply_tf32(replace(numerics, tf32=trial["tf32"]), device)
            loss = _loss(net, images, labels, device, trial["amp"], trial["channels_last"])
            if not abs(loss - reference) <= LOSS_TOLERANCE * max(1.0, abs(reference)):
                raise CheckFailed(f"loss {loss:.4f} on one training batch against "
                                  f"{reference:.4f} in fp32, more than {LOSS_TOLERANCE:.0%} "
                                  "apart")
            kept = trial
        except Exception as err:  # whatever the kernels raise: the released setting instead
            _fall_back(fallbacks, setting, instead, err)
    return replace(numerics, tf32=kept["tf32"], channels_last=kept["channels_last"],
                   dtype="bfloat16" if kept["amp"] else "float32"), data


def _loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
          amp: bool, channels_last: bool) -> float:
    """One forward and backward as the training loop runs them; CheckFailed for a non-finite
    loss or gradient."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)
    net.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(images.contiguous(memory_format=memory_format))
    loss = losses.cross_entropy_loss(logits, labels)
    loss.backward()
    value = loss.item()
    if not math.isfinite(value):
        raise CheckFailed(f"loss {value} on one training batch")
    for name, param in net.named_parameters():
        if param.grad is not None and not torch.isfinite(param.grad).all():
            raise CheckFailed(f"non-finite gradient of {name}")
    return value


def _check_fused_step(net: nn.Module, args: argparse.Namespace) -> None:
    """One fused SGD step against one plain step from the same gradients (``net``'s), with the
    run's momentum, Nesterov and weight decay."""
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    after = []
    for fused in (True, False):
        twin = copy.deepcopy(net)
        for param, source in zip(twin.parameters(), net.parameters()):
            param.grad = None if source.grad is None else source.grad.clone()
        torch.optim.SGD(twin.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                        weight_decay=args.weight_decay, **({"fused": True} if fused else {})
                        ).step()
        after.append(torch.cat([p.detach().flatten() for p in twin.parameters()]))
    fused_step, plain_step = after
    if not torch.isfinite(fused_step).all():
        raise CheckFailed("non-finite parameters after one step")
    gap = (fused_step - plain_step).abs().max().item()
    update = (plain_step - before).abs().max().item()
    if not gap <= STEP_TOLERANCE * update:
        raise CheckFailed(f"one step moves a parameter {gap:.3g} away from plain SGD's, more "
                          f"than {STEP_TOLERANCE:g} of the largest update ({update:.3g})")


def _cached_batch(train: CachedBatches, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch of the image cache; its crops, flips and normalisation checked against
    the same ones cut on the host (CheckFailed if they differ or are not finite)."""
    images, index = next(iter(train.batches(seed)))
    if not torch.isfinite(images).all():
        raise CheckFailed("non-finite pixels in the first batch")
    if not train.augment:
        return images, index
    full_h, full_w = train.images.shape[1:3]
    h, w = train.crop_hw
    draw = torch.Generator().manual_seed(seed)
    top = torch.randint(0, full_h - h + 1, (len(index),), generator=draw)
    left = torch.randint(0, full_w - w + 1, (len(index),), generator=draw)
    flip = torch.rand(len(index), generator=draw) < 0.5
    device = train.images.device
    on_device = train.augmented(index, top.to(device), left.to(device), flip.to(device))
    source = train.images[index].cpu().numpy()
    expected = np.stack([
        (crop[:, ::-1] if f else crop) for crop, f in
        ((source[b, t:t + h, l:l + w], f) for b, (t, l, f) in
         enumerate(zip(top.tolist(), left.tolist(), flip.tolist())))])
    expected = (expected.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / \
        np.float32(IMAGENET_STD)
    gap = np.abs(on_device.permute(0, 2, 3, 1).cpu().numpy() - expected).max()
    if not gap <= CROP_TOLERANCE:
        raise CheckFailed(f"crops differ from the host's by {gap:.3g}")
    return images, index
