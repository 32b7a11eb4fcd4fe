"""JoCoR: its joint loss and small-loss selection against a literal restatement of the authors'
``loss_jocor`` (github hongxin001/JoCoR, algorithm/loss.py), real training through
train_core.py with Co-teaching's diagnostics, exact resume after a real SIGTERM mid-epoch, its
flags and defaults, and its place in the grid and the report."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import stopped_and_resumed_like

import losses
import reproduce
import train_core
from core_reid.reproduction.plan import expand
from core_reid.utils import UserError
from methods import METHODS
from methods.jocor import JoCoR, jocor_losses

TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "4", "--workers", "0", "--lr", "0.02", "--milestones"]


def args(data_dir, out, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *TINY, *extra]


# ---- the authors' loss, restated literally (their reductions, their numpy sort) -----------------

def kl_loss_compute(pred, soft_targets, reduce=True):
    kl = F.kl_div(F.log_softmax(pred, dim=1), F.softmax(soft_targets, dim=1), reduce=False)
    if reduce:
        return torch.mean(torch.sum(kl, dim=1))
    else:
        return torch.sum(kl, 1)


def loss_jocor(y_1, y_2, t, forget_rate, ind, noise_or_not, co_lambda=0.1):
    loss_pick_1 = F.cross_entropy(y_1, t, reduce=False) * (1 - co_lambda)
    loss_pick_2 = F.cross_entropy(y_2, t, reduce=False) * (1 - co_lambda)
    loss_pick = (loss_pick_1 + loss_pick_2 + co_lambda * kl_loss_compute(y_1, y_2, reduce=False)
                 + co_lambda * kl_loss_compute(y_2, y_1, reduce=False)).cpu()
    ind_sorted = np.argsort(loss_pick.data)
    loss_sorted = loss_pick[ind_sorted]
    remember_rate = 1 - forget_rate
    num_remember = int(remember_rate * len(loss_sorted))
    pure_ratio = np.sum(noise_or_not[ind[ind_sorted[:num_remember]]]) / float(num_remember)
    ind_update = ind_sorted[:num_remember]
    loss = torch.mean(loss_pick[ind_update])
    return loss, loss, pure_ratio, pure_ratio


def authors_step(y_1, y_2, t, rate, co_lambda, noise_or_not):
    """Their loss, its pure ratio, and its gradients with respect to both networks' logits (their
    one optimiser over both networks follows these)."""
    y_1, y_2 = y_1.clone().requires_grad_(), y_2.clone().requires_grad_()
    loss, _, pure_ratio, _ = loss_jocor(y_1, y_2, t, rate, np.arange(len(t)), noise_or_not,
                                        co_lambda)
    loss.backward()
    return loss.detach(), pure_ratio, y_1.grad, y_2.grad


def authors_selection(y_1, y_2, t, rate, co_lambda):
    """The samples their loss keeps, read from its pure ratio with one sample marked at a
    time."""
    n = len(t)
    return [j for j in range(n)
            if loss_jocor(y_1, y_2, t, rate, np.arange(n), np.arange(n) == j, co_lambda)[2] > 0]


# ---- the loss ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:size_average and reduce args")  # their reduce=False
@pytest.mark.filterwarnings("ignore:__array_wrap__")  # their np.argsort of a tensor
@pytest.mark.parametrize("n, rate, co_lambda", [(32, 0.0, 0.9), (32, 0.2, 0.9), (17, 0.5, 0.1),
                                                (8, 0.75, 0.65), (12, 0.3, 0.0), (12, 0.3, 1.0)])
def test_joint_loss_and_selection_equal_the_authors(n, rate, co_lambda):
    torch.manual_seed(n)
    y_1, y_2 = 3 * torch.randn(n, 6), 3 * torch.randn(n, 6)
    t = torch.randint(0, 6, (n,))
    noise_or_not = np.random.default_rng(n).random(n) < 0.7  # their "clean" mask

    a, b = y_1.clone().requires_grad_(), y_2.clone().requires_grad_()
    first, second, chosen = jocor_losses(a, b, t, co_lambda, rate)
    (first + second).backward()
    theirs, pure_ratio, grad_1, grad_2 = authors_step(y_1, y_2, t, rate, co_lambda,
                                                      noise_or_not)
    # the same samples: their int((1 - r) n) smallest joint losses
    assert len(chosen) == int((1 - rate) * n)
    assert sorted(chosen.tolist()) == authors_selection(y_1, y_2, t, rate, co_lambda)
    # one loss: the two networks' parts add up to theirs, with the same gradient into both
    assert torch.allclose(first + second, theirs, rtol=1e-6, atol=1e-7)
    assert torch.allclose(a.grad, grad_1, rtol=1e-5, atol=1e-7)
    assert torch.allclose(b.grad, grad_2, rtol=1e-5, atol=1e-7)
    assert (a.grad.abs().sum() > 0) and (b.grad.abs().sum() > 0)  # both networks learn
    # Co-teaching's diagnostic of the selection is their pure ratio
    assert np.mean(noise_or_not[chosen.numpy()]) == pytest.approx(pure_ratio)
    if 0 < co_lambda:  # the co-regularization couples them: network 1's gradient depends on 2
        c = y_1.clone().requires_grad_()
        f, s, _ = jocor_losses(c, torch.zeros_like(y_2), t, co_lambda, rate)
        (f + s).backward()
        assert not torch.allclose(c.grad, a.grad)


@pytest.mark.filterwarnings("ignore:size_average and reduce args")
@pytest.mark.filterwarnings("ignore:__array_wrap__")
def test_a_probability_that_underflows_leaves_the_gradient_finite():
    """Confident logits (a gap of 200) underflow a softmax probability to 0 in float32: the
    authors' KL of a softmax target then has a NaN gradient, ours (log-probabilities) not."""
    y_1 = torch.tensor([[0.0, 200.0, 0.0], [1.0, 0.0, 0.0]])
    y_2 = torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    t = torch.tensor([1, 0])
    _, _, grad_1, _ = authors_step(y_1, y_2, t, 0.0, 0.9, np.ones(2, bool))
    assert torch.isnan(grad_1).any()
    a, b = y_1.clone().requires_grad_(), y_2.clone().requires_grad_()
    first, second, _ = jocor_losses(a, b, t, 0.9, 0.0)
    (first + second).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_the_selection_never_empties():
    t = torch.zeros(2, dtype=torch.long)
    assert len(jocor_losses(torch.randn(2, 3), torch.randn(2, 3), t, 0.9, 0.9)[2]) == 1


# ---- real training -------------------------------------------------------------------------------

def test_jocor_trains_both_networks_on_one_selection_and_resumes_exactly(
        data_dir, tmp_path, monkeypatch):
    common = args(data_dir, tmp_path, "--method", "jocor", "--epochs", "3", "--noise_ratio",
                  "0.5", "--forget_epochs", "2", "--eval_every", "2", "--co_lambda", "0.5")
    selections = []
    original = jocor_losses

    def spy(y_1, y_2, t, co_lambda, rate):
        out = original(y_1, y_2, t, co_lambda, rate)
        selections.append((rate, co_lambda, len(out[2])))
        return out
    monkeypatch.setattr("methods.jocor.jocor_losses", spy)
    whole = train_core.main([*common, "--run_name", "whole"])
    monkeypatch.undo()
    assert whole["method"] == "jocor" and whole["args"]["forget_rate"] == 0.5  # noise ratio
    history = whole["history"]
    assert [h["stage"] for h in history] == ["jocor"] * 3
    assert [h["networks"][0]["forget_rate"] for h in history] == [0.0, 0.25, 0.5]
    assert {co for _, co, _ in selections} == {0.5}
    assert [kept for _, _, kept in selections[:8]] == [4] * 8  # epoch 0 keeps every sample
    assert [kept for _, _, kept in selections[16:]] == [2] * 8  # epoch 2 drops half
    for h in history:  # one selection for both: the same diagnostics
        a, b = h["networks"]
        assert a["selected_noisy_fraction"] == b["selected_noisy_fraction"]
        assert a["train_label_precision"] == pytest.approx(1 - a["selected_noisy_fraction"])
        assert a["loss"] != b["loss"]  # each network's part of the joint loss
    assert history[0]["networks"][0]["selected_noisy_fraction"] == pytest.approx(
        1 - whole["injected_label_precision"])  # epoch 0: everything is selected

    stopped_and_resumed_like(whole, train_core.main, common, JoCoR, monkeypatch)


def test_jocor_flags_defaults_and_checks(data_dir, tmp_path):
    parsed = train_core.parse_args(train_core.build_parser(), ["--method", "jocor"], check=False)
    assert (parsed.co_lambda, parsed.forget_epochs, parsed.forget_rate) == (0.9, 10, 0.2)
    assert METHODS["jocor"](parsed).lr_schedule(parsed).tolist() == [
        0.01 * 0.1 ** sum(e >= m for m in (20, 50)) for e in range(61)]
    for bad, message in [
            (["--method", "jocor", "--co_lambda", "1.5"], "--co_lambda 1.5: must be in [0, 1]"),
            (["--method", "jocor", "--forget_rate", "1"], "--forget_rate 1.0: must be in [0, 1)"),
            (["--method", "coteaching", "--co_lambda", "0.5"],
             "--co_lambda is a jocor flag; --method coteaching does not read it"),
            (["--method", "jocor", "--stage1_epochs", "3"],
             "--stage1_epochs is a core flag; --method jocor does not read it")]:
        with pytest.raises(UserError, match=re.escape(message)):
            train_core.main(args(data_dir, tmp_path, *bad))


def test_jocor_in_the_grid_and_the_report(data_dir, tmp_path, capsys):
    grid = ["--datasets", "market", "--noise", "random:0.5", "--methods", "coteaching", "jocor",
            "--seeds", "1", "--output_dir", str(tmp_path), "--data_dir", str(data_dir), *TINY,
            "--epochs", "2", "--co_lambda", "0.7", "--forget_epochs", "5"]
    reproduce.main([*grid, "--dry_run"])
    commands = [line for line in capsys.readouterr().out.splitlines() if "train_" in line]
    assert len(commands) == 2 and "train_core.py --method jocor" in commands[1]
    assert "--co_lambda 0.7" in commands[1] and "--co_lambda" not in commands[0]
    assert all("--forget_epochs 5" in command for command in commands)  # both read it
    assert "| JoCoR | 1 missing |" in (tmp_path / "results.md").read_text()
    runs = expand(["market"], reproduce.parse(grid)[0].noise, ["jocor"], [1], [
        "--data_dir", str(data_dir), *TINY, "--epochs", "2", "--co_lambda", "0.7"], tmp_path)
    assert runs[0].epochs == 2 and runs[0].script == "train_core.py"
    assert runs[0].args.co_lambda == 0.7 and runs[0].args.forget_rate == 0.5


def test_jocor_shares_co_teachings_small_loss_schedule():
    parsed = train_core.parse_args(train_core.build_parser(), [
        "--method", "jocor", "--forget_rate", "0.4", "--forget_epochs", "4"], check=False)
    method = METHODS["jocor"](parsed)
    assert [method.drop_rate(e) for e in range(6)] == [losses.forget_rate(e, 0.4, 4)
                                                       for e in range(6)]
