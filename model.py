"""The CORE/SELF network: a torchvision ResNet backbone and the 512-FC-BN-activation head.

Train mode returns class logits; ``pool5`` gives the backbone's globally pooled feature, which is
what retrieval uses at test time (2048-d for ResNet-50).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from core_reid.utils import UserError, first_line

# arch -> (torchvision constructor, pool5 dimension, ImageNet weights enum name)
ARCHS = {
    "resnet50": (torchvision.models.resnet50, 2048, "ResNet50_Weights"),
    "resnet34": (torchvision.models.resnet34, 512, "ResNet34_Weights"),
    "resnet18": (torchvision.models.resnet18, 512, "ResNet18_Weights"),
}


class ReIDNet(nn.Module):
    """Backbone -> pool5 -> Linear(512) -> BN -> activation -> Dropout -> Linear(num_classes).

    The released code uses LeakyReLU(0.1) and Dropout(0.5) in the head; the paper says ReLU.
    Initialisation follows the released code, in its order: kaiming-normal (fan_out) for the
    512 layer, BN weight ~ N(1, 0.02), classifier weight ~ N(0, 0.001), all biases 0.
    """

    def __init__(self, arch: str, num_classes: int, bottleneck: int = 512,
                 activation: str = "leaky_relu", dropout: float = 0.5):
        super().__init__()
        constructor, feat_dim, _ = ARCHS[arch]
        self.backbone = constructor(weights=None)
        self.backbone.fc = nn.Identity()  # the backbone now returns pool5
        self.feat_dim = feat_dim
        act = nn.LeakyReLU(0.1) if activation == "leaky_relu" else nn.ReLU()
        # Random numbers are drawn in the released ClassBlock's order (so one --seed gives the
        # released head): the 512 layer's default init, its kaiming init, BN's normal init,
        # then the classifier's default init and its normal init.
        self.head = nn.Sequential(nn.Linear(feat_dim, bottleneck), nn.BatchNorm1d(bottleneck),
                                  act, nn.Dropout(dropout))
        nn.init.kaiming_normal_(self.head[0].weight, a=0, mode="fan_out")
        nn.init.zeros_(self.head[0].bias)
        nn.init.normal_(self.head[1].weight, 1.0, 0.02)
        nn.init.zeros_(self.head[1].bias)
        self.classifier = nn.Linear(bottleneck, num_classes)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        nn.init.zeros_(self.classifier.bias)

    def pool5(self, x: torch.Tensor) -> torch.Tensor:
        """The globally average-pooled backbone feature (the test-time descriptor)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.pool5(x)))

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Backbone at ``lr``; the new head and classifier at ``head_lr_mult * lr`` (released)."""
        new = list(self.head.parameters()) + list(self.classifier.parameters())
        return [{"params": list(self.backbone.parameters()), "lr": lr, "lr_mult": 1.0},
                {"params": new, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult}]


def _imagenet_state_dict(arch: str) -> dict:
    weights = getattr(torchvision.models, ARCHS[arch][2]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except Exception as err:  # offline, proxy, corrupt cache: all mean "no weights"
        raise UserError(
            f"could not download the ImageNet weights for {arch} ({type(err).__name__}: {err}); "
            f"train from scratch with --pretrained none, or fetch {weights.url} elsewhere and "
            "pass it as --pretrained PATH") from None


def _local_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"--pretrained {path}: no such file; give 'imagenet', 'none', "
                        "'synthetic' or the path of a torchvision ResNet state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's message for a non-tensor file is a ten-line lecture
        why = "it holds more than tensors" if isinstance(err, pickle.UnpicklingError) else (
            first_line(err))
        raise UserError(f"--pretrained {path}: not a PyTorch state dict of tensors ({why}); "
                        "give a torchvision ResNet state dict") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"--pretrained {path}: holds a {type(state).__name__}, not a state dict; "
                        "give a torchvision ResNet state dict")
    return state


def backbone_weights(arch: str, pretrained: str) -> Optional[dict]:
    """The backbone state dict ``pretrained`` names ('imagenet', 'none' or a local file),
    checked to fit ``arch`` (so a wrong file fails before any data is read); None for 'none'."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch}: unknown; choose one of {', '.join(ARCHS)}")
    if pretrained is None or pretrained == "none":
        return None
    state = (_imagenet_state_dict(arch) if pretrained == "imagenet"
             else _local_state_dict(Path(pretrained)))
    return fit_backbone(arch, state, f"--pretrained {pretrained}")


def fit_backbone(arch: str, state: dict, name: str) -> dict:
    """``state`` without a classifier (``fc.*``), checked to load into ``arch``'s backbone; a
    UserError that starts with ``name`` otherwise."""
    state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    backbone = ARCHS[arch][0](weights=None)
    backbone.fc = nn.Identity()
    try:
        backbone.load_state_dict(state)
    except (RuntimeError, TypeError) as err:  # missing/unexpected keys or shape mismatches
        lines = str(err).splitlines()
        raise UserError(f"{name}: not a {arch} backbone state dict "
                        f"({(lines[1] if len(lines) > 1 else lines[0]).strip()})") from None
    return state


def build_model(arch: str, num_classes: int, pretrained: Union[str, dict, None] = "imagenet",
                activation: str = "leaky_relu", dropout: float = 0.5) -> ReIDNet:
    """Make a ReIDNet; ``pretrained`` is 'imagenet', 'none', a local state-dict path, or the
    backbone state dict itself (``backbone_weights``; None = from scratch)."""
    weights = backbone_weights(arch, pretrained) if isinstance(pretrained, str) else pretrained
    model = ReIDNet(arch, num_classes, activation=activation, dropout=dropout)
    if weights is not None:
        model.backbone.load_state_dict(weights)
    return model


class SinglePositionConv2d(nn.Conv2d):
    """A convolution whose output, at one known input size, is a single position (ResNet's last
    stage at the demo's 32x16 images): one matrix product of the input window it sees with the
    kernel taps that see it. The same function and gradients as the convolution (the taps that
    only ever see zero padding get zero gradient in both), other float rounding; on a CPU the
    convolution's backward pass wastes most of its time on that padding. Other input sizes
    take the convolution."""
    input_size: tuple[int, int]
    window: tuple[tuple[int, int], tuple[int, int]]  # (first tap, taps) per dimension

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            return super().forward(x)
        (row, rows), (col, cols) = self.window
        taps = self.weight[:, :, row:row + rows, col:col + cols]
        out = F.linear(x[:, :, :rows, :cols].reshape(len(x), -1),
                       taps.reshape(len(taps), -1), self.bias)
        return out[:, :, None, None]


def single_position_window(conv: nn.Conv2d, size: tuple[int, int]
                           ) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
    """The kernel taps (first, count) per dimension that see an input of ``size`` when
    ``conv``'s output there is a single position; None otherwise."""
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or \
            isinstance(conv.padding, str):
        return None
    window = []
    for length, kernel, stride, pad in zip(size, conv.kernel_size, conv.stride, conv.padding):
        if (length + 2 * pad - kernel) // stride + 1 != 1:
            return None
        window.append((pad, min(kernel, pad + length) - pad))
    return tuple(window)


def matmul_single_position_convs(net: nn.Module, img_size: tuple[int, int]) -> int:
    """Turn every convolution of ``net`` whose output is a single position at ``img_size``
    images into a SinglePositionConv2d (``--matmul_convs``; parameters and state dict
    unchanged). Returns how many."""
    sizes: dict[nn.Conv2d, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(
        lambda m, inputs: sizes.__setitem__(m, tuple(inputs[0].shape[-2:])))
        for m in net.modules() if type(m) is nn.Conv2d]
    training = net.training
    try:
        net.eval()
        with torch.no_grad():  # eval mode: no running statistics change
            net(torch.zeros(1, 3, *img_size, device=next(net.parameters()).device))
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    turned = 0
    for conv, size in sizes.items():
        window = single_position_window(conv, size)
        if window is not None:
            conv.__class__ = SinglePositionConv2d
            conv.input_size, conv.window = size, window
            turned += 1
    return turned
