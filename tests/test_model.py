"""The network: shapes, the released initialisation, learning-rate groups, weight loading,
single-position convolutions as matrix products."""
import copy

import pytest
import torch
import torchvision

from model import SinglePositionConv2d, build_model, matmul_single_position_convs
from core_reid.utils import UserError


def test_shapes_and_pool5():
    net = build_model("resnet18", 7, "none").eval()
    x = torch.randn(3, 3, 64, 32)
    assert net(x).shape == (3, 7)
    assert net.pool5(x).shape == (3, 512)


def test_resnet50_head_matches_released_design():
    net = build_model("resnet50", 751, "none")
    fc, bn, act, drop = net.head
    assert (fc.in_features, fc.out_features) == (2048, 512)
    assert isinstance(bn, torch.nn.BatchNorm1d) and isinstance(act, torch.nn.LeakyReLU)
    assert act.negative_slope == 0.1 and drop.p == 0.5
    assert net.classifier.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert fc.bias.abs().sum() == 0 and net.classifier.bias.abs().sum() == 0


def released_class_block(seed: int, arch: str, num_classes: int) -> dict[str, torch.Tensor]:
    """A literal restatement of the released ft_net + ClassBlock construction's random draws:
    the torchvision backbone, then Linear(2048, 512) default init -> its kaiming-normal init ->
    BatchNorm1d weight ~ N(1, 0.02) -> Linear(512, C) default init -> its N(0, 0.001) init."""
    torch.manual_seed(seed)
    backbone = getattr(torchvision.models, arch)(weights=None)
    backbone.fc = torch.nn.Sequential()
    fc = torch.nn.Linear(backbone.inplanes, 512)
    bn = torch.nn.BatchNorm1d(512)
    torch.nn.init.kaiming_normal_(fc.weight.data, a=0, mode="fan_out")
    torch.nn.init.constant_(fc.bias.data, 0.0)
    torch.nn.init.normal_(bn.weight.data, 1.0, 0.02)
    torch.nn.init.constant_(bn.bias.data, 0.0)
    classifier = torch.nn.Linear(512, num_classes)
    torch.nn.init.normal_(classifier.weight.data, std=0.001)
    torch.nn.init.constant_(classifier.bias.data, 0.0)
    return {"head.0.weight": fc.weight, "head.1.weight": bn.weight,
            "classifier.weight": classifier.weight,
            "backbone.conv1.weight": backbone.conv1.weight}


def test_head_draws_its_random_numbers_in_the_released_order():
    released = released_class_block(7, "resnet18", 11)
    torch.manual_seed(7)
    ours = dict(build_model("resnet18", 11, "none").named_parameters())
    for name, value in released.items():
        assert torch.equal(ours[name], value), name


def test_paper_relu_head_option():
    net = build_model("resnet18", 5, "none", activation="relu")
    assert isinstance(net.head[2], torch.nn.ReLU)


def test_head_gets_ten_times_the_learning_rate():
    net = build_model("resnet18", 5, "none")
    backbone, head = net.param_groups(0.01)
    assert backbone["lr"] == 0.01 and head["lr"] == pytest.approx(0.1)
    n_params = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for g in (backbone, head) for p in g["params"]) == n_params


def test_local_state_dict_is_loaded(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    net = build_model("resnet18", 5, str(path))
    assert torch.equal(net.backbone.conv1.weight, reference.conv1.weight)


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(UserError, match="not a resnet18 backbone"):
        build_model("resnet18", 5, str(path))
    with pytest.raises(UserError, match="no such file"):
        build_model("resnet18", 5, str(tmp_path / "missing.pth"))


def test_offline_imagenet_names_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    for var in ("HTTPS_PROXY", "https_proxy"):  # an unreachable proxy: fails at once, offline
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(UserError, match="--pretrained none") as err:
        build_model("resnet18", 5, "imagenet")
    assert "--pretrained PATH" in str(err.value)


def test_single_position_convolutions_are_the_same_function_and_gradients_as_one_matmul():
    torch.manual_seed(0)
    plain = build_model("resnet18", 7, "none")
    fast = copy.deepcopy(plain)
    # at 32x16 images ResNet-18's last stage sees 2x1 and outputs 1x1: its five convolutions
    assert matmul_single_position_convs(fast, (32, 16)) == 5
    assert [name for name, m in fast.named_modules() if isinstance(m, SinglePositionConv2d)] == [
        "backbone.layer4.0.conv1", "backbone.layer4.0.conv2", "backbone.layer4.0.downsample.0",
        "backbone.layer4.1.conv1", "backbone.layer4.1.conv2"]
    assert fast.training and fast.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(),
                                                 plain.state_dict().values()))  # BN untouched
    # another image size takes the convolution itself; at 64x32 no output is a single position
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 32)
        assert torch.equal(fast.eval()(x), plain.eval()(x))
    plain.train(), fast.train()
    assert matmul_single_position_convs(copy.deepcopy(plain), (64, 32)) == 0

    x, y = torch.randn(6, 3, 32, 16), torch.randint(0, 7, (6,))
    outputs = []
    for net in (plain, fast):
        torch.manual_seed(1)  # the same dropout mask
        out = net(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        outputs.append(out)
    assert not torch.equal(*outputs)  # another summation order ...
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)  # ... same values
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the taps that only ever see padding: zero gradient in both
    for net in (plain, fast):
        grad = net.backbone.layer4[1].conv1.weight.grad
        assert grad[:, :, 0].abs().sum() == 0 and grad[:, :, :, 2].abs().sum() == 0
        assert grad[:, :, 1, 1].abs().sum() > 0
