"""PurifyNet and Co-teaching: their formulas against literal restatements of the released /
published code, and real training on the tiny synthetic data (both PurifyNet stages in one
run, stage 2 alone, exact resume mid-stage-2 and mid-co-teaching after a real SIGTERM)."""
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.spatial import distance

import losses
import methods
import train_core
import train_self
from core_reid.run_state import RunState
from core_reid.utils import RunInterrupted

TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "4", "--workers", "0", "--lr", "0.02", "--milestones"]


def args(data_dir, out, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *TINY, *extra]


# ---- literal restatements (the released PNet script's utils and the Co-teaching authors' loop) --

def released_sigmoid_rampup(current, rampup_length):
    if rampup_length == 0:
        return 1.0
    current = np.clip(current, 0.0, rampup_length)
    phase = 1.0 - current / rampup_length
    return min(float(np.exp(-2.0 * phase * phase)), 0.5)


def released_get_mfea_thres(features, alpha, beta):
    mean_fea = np.mean(features, 0)
    l2dsts = np.array([distance.euclidean(features[i, :], mean_fea)
                       for i in range(features.shape[0])])
    if l2dsts.max() - l2dsts.min() == 0:
        norm = l2dsts - l2dsts.min()
    else:
        norm = (l2dsts - l2dsts.min()) / (l2dsts.max() - l2dsts.min())
    return stats.beta.pdf(norm, alpha, beta)


def released_gen_weights_dist(features, noisy, num_classes, alpha, beta):
    all_weights, indexs = np.array([]), np.array([])
    for i in range(num_classes):
        f_idxs = np.where(noisy == i)[0]
        all_weights = np.concatenate([all_weights, released_get_mfea_thres(features[f_idxs, :],
                                                                           alpha, beta)])
        indexs = np.concatenate([indexs, f_idxs])
    return indexs, all_weights


def released_weights(features, noisy, num_classes, alpha=2, beta=6):
    """What train_pnet.py trains with: gen_weights_dist, reordered by argsort(indexs)."""
    indexs, weights = released_gen_weights_dist(features, noisy, num_classes, alpha, beta)
    return weights[np.argsort(indexs)].astype(np.float32)


def coteaching_step(y_1, y_2, t, forget_rate):
    """The Co-teaching authors' loss_coteaching, restated."""
    loss_1 = F.cross_entropy(y_1, t, reduction="none")
    ind_1_sorted = np.argsort(loss_1.detach().numpy())
    loss_2 = F.cross_entropy(y_2, t, reduction="none")
    ind_2_sorted = np.argsort(loss_2.detach().numpy())
    num_remember = int((1 - forget_rate) * len(ind_1_sorted))
    ind_1_update, ind_2_update = ind_1_sorted[:num_remember], ind_2_sorted[:num_remember]
    return (F.cross_entropy(y_1[ind_2_update], t[ind_2_update]),
            F.cross_entropy(y_2[ind_1_update], t[ind_1_update]), ind_1_update, ind_2_update)


# ---- formulas ------------------------------------------------------------------------------------

def test_stage1_lambda_ramps_up_and_is_capped_at_one_half():
    values = [losses.ramped_lambda(e, 60) for e in range(0, 90)]
    assert values == [released_sigmoid_rampup(e, 60) for e in range(0, 90)]
    assert values[0] == pytest.approx(math.exp(-2)) and max(values) == 0.5
    assert values.index(0.5) == 25  # the cap from epoch 25 of the ramp on
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert losses.ramped_lambda(-3, 60) == values[0] and losses.ramped_lambda(5, 0) == 0.5


def test_beta_weights_equal_the_released_weights_in_sample_order():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(23, 5))  # float64: the released float32 class mean rounds
    noisy = rng.permutation(np.array([0] * 7 + [1] * 6 + [3] * 6 + [2] + [4, 4] + [5]))
    noisy[noisy == 5] = 1  # class 5 ends up empty (every label corrupted away)
    two = np.flatnonzero(noisy == 4)  # two members: equal distances, max == min
    features[two[1]] = 2 * features[two].mean(axis=0) - features[two[0]]
    expected = released_weights(features, noisy, 5)
    ours = losses.beta_weights(features, noisy, 6).astype(np.float32)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    assert ours[noisy == 2] == 0 and (ours[noisy == 4] == 0).all()  # all-equal distances
    for c in (0, 1, 3):  # the nearest and the farthest of each class weigh 0, the rest > 0
        assert (ours[noisy == c] == 0).sum() == 2 and (ours[noisy == c] > 0).sum() >= 2
    shaped = losses.beta_weights(features, noisy, 6, (3.0, 2.0))
    np.testing.assert_allclose(shaped, released_weights(features, noisy, 5, 3, 2), rtol=1e-6)


def test_instance_weighted_loss_is_the_batch_mean_of_weighted_cross_entropy():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    weights = torch.tensor([0.0, 1.0, 2.5, 0.5, 1.0])
    expected = sum(w * F.cross_entropy(logits[i:i + 1], labels[i:i + 1])
                   for i, w in enumerate(weights)) / 5
    assert torch.allclose(losses.instance_weighted_loss(logits, labels, weights), expected)


def test_co_teaching_selection_equals_the_authors_loop_and_each_trains_the_other():
    torch.manual_seed(0)
    for n, rate in ((32, 0.0), (32, 0.2), (17, 0.5), (8, 0.75)):
        y_1, y_2 = torch.randn(n, 6), torch.randn(n, 6)
        t = torch.randint(0, 6, (n,))
        first, second, mine, theirs = losses.co_teaching_losses(y_1, y_2, t, rate)
        l1, l2, ind_1, ind_2 = coteaching_step(y_1, y_2, t, rate)
        assert sorted(mine.tolist()) == sorted(ind_1.tolist())
        assert sorted(theirs.tolist()) == sorted(ind_2.tolist())
        assert torch.allclose(first, l1) and torch.allclose(second, l2)
        assert len(mine) == int((1 - rate) * n)
    t = torch.zeros(2, dtype=torch.long)  # never an empty selection
    assert len(losses.co_teaching_losses(torch.randn(2, 3), torch.randn(2, 3), t, 0.9)[2]) == 1


def test_forget_schedule_ramps_linearly_from_epoch_0():
    assert [losses.forget_rate(t, 0.5, 10) for t in (0, 1, 5, 10, 11, 40)] == \
        [0.0, 0.05, 0.25, 0.5, 0.5, 0.5]
    assert losses.forget_rate(0, 0.3, 0) == 0.3


# ---- real training -------------------------------------------------------------------------------

def same_networks(a, b):
    for net_a, net_b in zip(a["networks"], b["networks"]):
        for key in net_a:
            assert torch.equal(net_a[key], net_b[key]), key


def stop_at(monkeypatch, cls, epoch, step):
    """SIGTERM during ``step`` (counted from 1) of ``epoch``: a real signal, as a cluster sends."""
    calls = []
    original = cls.batch_losses

    def batch_losses(self, e, *rest):
        calls.append(e)
        if e == epoch and calls.count(e) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, e, *rest)
    monkeypatch.setattr(cls, "batch_losses", batch_losses)


def test_purifynet_runs_both_stages_in_one_run_and_resumes_mid_stage_2(data_dir, tmp_path,
                                                                       monkeypatch):
    common = args(data_dir, tmp_path, "--method", "purifynet", "--epochs", "2",
                  "--eval_every", "3", "--ramp_epochs", "4", "--stage2_from", "best")
    seen = {}  # what stage 2 was given and trained on, spied on the uninterrupted run
    original_outputs = RunState.train_outputs

    def train_outputs(self, net):
        seen["outputs"], seen["noisy"] = original_outputs(self, net), self.labels.noisy_labels
        return seen["outputs"]

    batches = []
    original_loss = losses.instance_weighted_loss
    monkeypatch.setattr(RunState, "train_outputs", train_outputs)
    monkeypatch.setattr(losses, "instance_weighted_loss",
                        lambda out, y, w: batches.append((y, w)) or original_loss(out, y, w))
    whole = train_self.main([*common, "--run_name", "whole"])
    monkeypatch.undo()

    history = whole["history"]
    assert [(h["epoch"], h["stage"]) for h in history] == [
        (0, "stage 1"), (1, "stage 1"), (2, "stage 2"), (3, "stage 2")]
    assert [h.get("lambda") for h in history] == [losses.ramped_lambda(0, 4),
                                                  losses.ramped_lambda(1, 4), None, None]
    assert [h["rank1"] is not None for h in history] == [True, True, False, True]  # stage ends
    assert whole["epochs"] == 4 and whole["final"]["epoch"] == 3
    log = (Path(whole["run_dir"]) / "train.log").read_text()
    assert "the networks go back to" in log and "stage 2 starts at epoch 2" in log

    # stage 2: the network's predicted classes as labels, the released Beta weights
    features, predicted = seen["outputs"]
    assert features.shape[1] == 512 and np.allclose(np.linalg.norm(features, axis=1), 1)
    state = torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=False)
    kept = state["method_state"]
    np.testing.assert_array_equal(kept["targets"], predicted)
    # in float64, as ours (the released float32 class mean differs by up to ~1e-3 relative
    # when a class's descriptors nearly coincide: min-max normalisation magnifies its rounding)
    expected = released_weights(features.astype(np.float64), seen["noisy"], 8)
    np.testing.assert_allclose(kept["weights"], expected, rtol=1e-6, atol=1e-7)
    assert len(batches) == 2 * 8  # two epochs of 32 images in batches of 4
    for y, w in batches:  # every batch's labels and weights are those of the same samples
        rows = [np.flatnonzero((kept["targets"] == a) & np.isclose(kept["weights"], b))
                for a, b in zip(y.tolist(), w.tolist())]
        assert all(len(r) for r in rows)
    is_clean = state["is_clean"]
    stage2 = history[2]["networks"][0]
    assert stage2["train_label_precision"] == pytest.approx(
        (predicted == state["true_labels"]).mean())
    assert stage2["mean_weight_clean"] == pytest.approx(expected[is_clean].mean(), rel=1e-6)
    assert stage2["mean_weight_noisy"] == pytest.approx(expected[~is_clean].mean(), rel=1e-6)

    # SIGTERM in the first epoch of stage 2: the resumed run ends exactly as the whole one
    stop_at(monkeypatch, methods.PurifyNet, epoch=2, step=3)
    with pytest.raises(RunInterrupted):
        train_self.main([*common, "--run_name", "split"])
    monkeypatch.undo()
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=False)["partial"]["step"] == 3
    resumed = train_self.main([*common, "--run_name", "split", "--resume"])
    same_networks(state, torch.load(tmp_path / "split" / "last.pt", weights_only=False))
    assert [h["networks"] for h in resumed["history"]] == [h["networks"] for h in history]
    assert resumed["final"] == whole["final"]


def test_purifynet_stage_2_alone_starts_from_a_stage_1_checkpoint(data_dir, tmp_path):
    first = train_self.main(args(data_dir, tmp_path, "--method", "purifynet", "--epochs", "1",
                                 "--purify_stage", "1"))
    assert [h["stage"] for h in first["history"]] == ["stage 1"]
    ckpt = Path(first["run_dir"]) / "last.pt"
    second = train_self.main(args(data_dir, tmp_path, "--method", "purifynet", "--epochs", "1",
                                  "--purify_stage", "2", "--stage1_checkpoint", str(ckpt)))
    assert [(h["epoch"], h["stage"]) for h in second["history"]] == [(0, "stage 2")]
    assert "train_label_precision" in second["history"][0]
    log = (Path(second["run_dir"]) / "train.log").read_text()
    assert f"network 1 starts from {ckpt} (a purifynet run, epoch 0)" in log


def test_purifynet_defaults_are_the_released_stage_schedule():
    parsed = train_self.parse_args(train_self.build_parser(), ["--method", "purifynet"],
                                   check=False)
    assert (parsed.epochs, parsed.milestones, parsed.ramp_epochs, parsed.beta_shape) == (
        41, [19, 39], 60, [2.0, 6.0])
    assert (parsed.purify_stage, parsed.stage2_from) == ("both", "last")
    schedule = methods.METHODS["purifynet"](parsed).lr_schedule(parsed)
    assert len(schedule) == 82  # two stages of 41, each its own decay before 19 and 39
    assert [schedule[e] for e in (0, 18, 19, 38, 39, 40, 41, 60, 80, 81)] == [
        0.01, 0.01, 0.01 * 0.1, 0.01 * 0.1, 0.01 * 0.1 ** 2, 0.01 * 0.1 ** 2, 0.01, 0.01 * 0.1,
        0.01 * 0.1 ** 2, 0.01 * 0.1 ** 2]
    explicit = train_self.parse_args(train_self.build_parser(), [
        "--method", "purifynet", "--epochs", "10", "--milestones", "5"], check=False)
    assert (explicit.epochs, explicit.milestones) == (10, [5])


def test_coteaching_trains_each_network_on_the_others_selection_and_resumes(
        data_dir, tmp_path, monkeypatch):
    common = args(data_dir, tmp_path, "--method", "coteaching", "--epochs", "3",
                  "--noise_ratio", "0.5", "--forget_epochs", "2", "--eval_every", "2")
    calls = []
    original = losses.co_teaching_losses

    def spy(y_1, y_2, t, rate):
        out = original(y_1, y_2, t, rate)
        calls.append((rate, out[2], out[3]))
        return out
    monkeypatch.setattr(losses, "co_teaching_losses", spy)
    whole = train_core.main([*common, "--run_name", "whole"])
    monkeypatch.undo()
    assert whole["args"]["forget_rate"] == 0.5  # the noise ratio
    history = whole["history"]
    assert [h["networks"][0]["forget_rate"] for h in history] == [0.0, 0.25, 0.5]
    assert sorted({rate for rate, _, _ in calls}) == [0.0, 0.25, 0.5]
    assert [len(mine) for _, mine, _ in calls[:8]] == [4] * 8  # epoch 0 keeps every sample
    assert [len(mine) for _, mine, _ in calls[16:]] == [2] * 8  # epoch 2 drops half
    for h in history:
        a, b = h["networks"]
        assert a["train_label_precision"] == pytest.approx(1 - b["selected_noisy_fraction"])
        assert b["train_label_precision"] == pytest.approx(1 - a["selected_noisy_fraction"])
    assert history[0]["networks"][0]["selected_noisy_fraction"] == pytest.approx(
        1 - whole["injected_label_precision"])  # epoch 0: everything is selected

    stopped_and_resumed_like(whole, train_core.main, common, methods.CoTeaching, monkeypatch)


def stopped_and_resumed_like(whole, main, common, cls, monkeypatch, epoch=1, step=3):
    """A run of ``common`` stopped by SIGTERM in ``step`` of ``epoch`` and resumed ends with the
    networks, history and scores of the uninterrupted run ``whole``."""
    stop_at(monkeypatch, cls, epoch, step)
    with pytest.raises(RunInterrupted):
        main([*common, "--run_name", "split"])
    monkeypatch.undo()
    resumed = main([*common, "--run_name", "split", "--resume"])
    split = Path(resumed["run_dir"]) / "last.pt"
    same_networks(torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=False),
                  torch.load(split, weights_only=False))
    assert [h["networks"] for h in resumed["history"]] == \
        [h["networks"] for h in whole["history"]]
    assert resumed["final"] == whole["final"]
