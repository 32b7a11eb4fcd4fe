"""The network: shapes, the released initialisation, learning-rate groups, weight loading."""
import pytest
import torch
import torchvision

from model import build_model
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
