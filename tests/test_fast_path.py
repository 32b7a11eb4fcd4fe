"""The fast path's checks (core_reid/fast_path.py) on real tiny runs: each fast piece is made
to raise, to give NaN or to give a wrong answer, and the run must still finish, with the
released setting for that piece, one line naming it and its entry in metrics.json's
``numerics.fallbacks``; a run whose pieces work lists none and trains exactly as without the
checks. The checks run on CUDA only, so here they are forced on (``should_check``); the CPU
runs bf16 autocast, channels_last and the image cache when asked (``--amp on --channels_last on
--data_path cache``), and fused SGD when forced on. On a GPU the same tests run the real CUDA
pieces."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

import train_self
from core_reid import engine, fast_path
from core_reid.numerics import choose_numerics
from datasets import pipeline
from datasets.pipeline import CachedBatches
from model import ReIDNet

TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--eval_every", "1", "--epochs", "1",
        "--milestones"]
FAST = ["--amp", "on", "--channels_last", "on", "--data_path", "cache"]


@pytest.fixture
def checked(monkeypatch):
    """The checks forced on, and fused SGD with them (on by default on CUDA only)."""
    monkeypatch.setattr(fast_path, "should_check", lambda device: True)
    monkeypatch.setattr(engine, "choose_numerics", lambda args, device: dataclasses.replace(
        choose_numerics(args, device), fused_sgd=True))


def train(data_dir: Path, out: Path, *extra: str) -> dict:
    result = train_self.main(["--data_dir", str(data_dir), "--output_dir", str(out), *TINY,
                              *extra])
    assert len(result["history"]) == 1  # finished
    saved = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    assert saved["numerics"] == json.loads(json.dumps(result["numerics"]))
    return saved["numerics"]


def fallbacks_were(numerics: dict, expected: list[tuple[str, str]], capsys) -> None:
    """The run fell back from exactly the ``expected`` (setting, part of the reason), in order,
    and printed one line for each."""
    fallbacks = numerics["fallbacks"]
    assert [f["setting"] for f in fallbacks] == [setting for setting, _ in expected], fallbacks
    for fallback, (_, reason) in zip(fallbacks, expected):
        assert reason in fallback["reason"], fallback
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("fallback: ")]
    assert lines == [f"fallback: {f['setting']} failed ({f['reason']}); using {f['instead']}"
                     for f in fallbacks]


def test_a_run_whose_fast_pieces_work_lists_no_fallback(checked, data_dir, tmp_path, capsys):
    numerics = train(data_dir, tmp_path, *FAST)
    assert numerics["fallbacks"] == []
    assert (numerics["dtype"], numerics["channels_last"], numerics["fused_sgd"],
            numerics["data_path"]) == ("bfloat16", True, True, "cache")
    assert "fallback: " not in capsys.readouterr().out


def test_the_checks_leave_no_trace_on_training(data_dir, tmp_path, monkeypatch):
    """The same run with and without the checks: the same history, bit for bit (on the CPU,
    where training is deterministic)."""
    def history(name: str) -> list[dict]:
        result = train_self.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path),
                                  *TINY, *FAST, "--device", "cpu", "--run_name", name])
        return [{k: v for k, v in h.items() if k not in ("epoch_time_s", "images_per_s")}
                for h in result["history"]]

    without = history("without")
    monkeypatch.setattr(fast_path, "should_check", lambda device: True)
    calls = []
    real = fast_path._run_checks
    monkeypatch.setattr(fast_path, "_run_checks", lambda *a: calls.append(1) or real(*a))
    assert history("with") == without and calls == [1]


def test_fast_pieces_that_raise_or_give_nan_fall_back_and_the_run_finishes(
        checked, data_dir, tmp_path, capsys, monkeypatch):
    """The image cache gives NaN, channels_last and fused SGD raise, bf16 gives NaN: with any
    of them still on, training would raise or diverge; the run finishes with the released
    setting of each."""
    normalise, forward = CachedBatches.normalise, ReIDNet.forward
    monkeypatch.setattr(CachedBatches, "normalise",
                        lambda self, images: normalise(self, images) * float("nan"))

    def broken_forward(self, x):
        if not self.backbone.conv1.weight.is_contiguous():  # the network in channels_last
            raise RuntimeError("no kernel for channels_last here")
        return forward(self, x) * (float("nan") if torch.is_autocast_enabled(x.device.type)
                                   else 1.0)

    def broken_fused_step(*args, **kwargs):
        raise RuntimeError("fused kernel missing")

    monkeypatch.setattr(ReIDNet, "forward", broken_forward)
    monkeypatch.setattr(sys.modules["torch.optim.sgd"], "_fused_sgd", broken_fused_step)
    numerics = train(data_dir, tmp_path, *FAST)
    fallbacks_were(numerics, [
        ("the image cache (crop and flip on the device)", "non-finite pixels"),
        ("fused SGD", "RuntimeError: fused kernel missing"),
        ("channels_last", "RuntimeError: no kernel for channels_last here"),
        ("bf16 autocast", "loss nan on one training batch")], capsys)
    assert (numerics["data_path"], numerics["fused_sgd"], numerics["channels_last"],
            numerics["dtype"]) == ("loader", False, False, "float32")


def test_fast_pieces_that_give_wrong_answers_fall_back(checked, data_dir, tmp_path, capsys,
                                                      monkeypatch):
    """Finite but wrong: crops mirrored where they should not be, a bf16 loss far from fp32's.
    The other pieces stay on."""
    augmented, forward = CachedBatches.augmented, ReIDNet.forward
    monkeypatch.setattr(CachedBatches, "augmented",
                        lambda self, index, top, left, flip: augmented(self, index, top,
                                                                       left, ~flip))

    def far(self, x):  # finite, but the last class far ahead of the others under bf16
        out = forward(self, x)
        if not torch.is_autocast_enabled(x.device.type):
            return out
        return out + torch.linspace(0, 20, out.shape[1], device=out.device)

    monkeypatch.setattr(ReIDNet, "forward", far)
    numerics = train(data_dir, tmp_path, *FAST)
    fallbacks_were(numerics, [
        ("the image cache (crop and flip on the device)", "crops differ from the host's"),
        ("bf16 autocast", "more than 5% apart")], capsys)
    assert (numerics["data_path"], numerics["dtype"]) == ("loader", "float32")
    assert numerics["channels_last"] and numerics["fused_sgd"]


def test_a_memory_query_that_fails_means_the_loader(checked, data_dir, tmp_path, capsys,
                                                   monkeypatch):
    def broken(device):
        raise RuntimeError("CUDA error: out of memory (from the memory query)")

    monkeypatch.setattr(pipeline, "free_memory_bytes", broken)
    numerics = train(data_dir, tmp_path)  # --data_path auto: the cache if it fits
    setting = numerics["fallbacks"][0]["setting"]
    assert setting.startswith("the memory query (")
    fallbacks_were(numerics, [(setting, "RuntimeError: CUDA error: out of memory")], capsys)
    assert numerics["data_path"] == "loader"


def test_the_check_leaves_generators_data_and_settings_as_they_were(data_dir, tmp_path,
                                                                   monkeypatch):
    """Called directly: every random generator is where it was, the data is the same object
    and the numerics only gain an empty ``fallbacks``."""
    from core_reid.options import build_parser, parse_args
    from core_reid.run_data import load_data
    from methods import METHODS
    monkeypatch.setattr(fast_path, "should_check", lambda device: True)
    args = parse_args(build_parser("train_self.py"),
                      ["--data_dir", str(data_dir), "--output_dir", str(tmp_path), *TINY,
                       *FAST])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    numerics = choose_numerics(args, device)
    data = load_data(args, device, numerics)
    numerics = dataclasses.replace(numerics, data_path=data.data_path)
    torch.manual_seed(5)
    before = fast_path.rng_states()
    checked_numerics, same = fast_path.check_fast_path(args, METHODS["self"](args), data,
                                                       numerics, device, None)
    after = fast_path.rng_states()
    assert same is data and checked_numerics == numerics
    assert torch.equal(before["torch"], after["torch"])
    assert before["python"] == after["python"]
    assert all(torch.equal(a, b) for a, b in zip(before.get("cuda", []),
                                                 after.get("cuda", [])))
