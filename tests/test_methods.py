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
from core_reid.numerics import choose_numerics
from core_reid.run_data import load_data, train_descriptors_and_classes
from core_reid.runs import network_from_checkpoint, read_checkpoint
from core_reid.run_state import RunState
from core_reid.utils import RunInterrupted
from datasets import load_split
from datasets.pipeline import eval_transform
from eval_utils import eval_outputs
from model import build_model

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


def released_fliplr(img):
    inv_idx = torch.arange(img.size(3) - 1, -1, -1).long()  # N x C x H x W
    img_flip = img.index_select(3, inv_idx)
    return img_flip


class ReleasedEvalNet(torch.nn.Module):
    """The released ``ft_net.forward`` in eval mode, around one of our networks: (logits, the
    L2-normalised pool5 feature)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def l2norm(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()
        out = torch.div(x, norm)
        return out

    def forward(self, x):
        y = self.net.pool5(x)  # conv1 .. layer4, avgpool, squeeze
        x = self.net.classifier(self.net.head(y))
        if self.training:
            return x
        else:
            return x, self.l2norm(y)


def released_extract_feature_v1(model, dataloaders, dim):
    """eval_utils.extract_feature_v1, on the CPU (``dim``: the released 2048, pool5's size)."""
    features = torch.FloatTensor()
    count = 0
    new_label = []
    for data in dataloaders:
        img, label, _ = data
        n, c, h, w = img.size()
        count += n
        ff = torch.FloatTensor(n, dim).zero_()
        # add original and flipped features
        for i in range(2):
            if (i == 1):
                img = released_fliplr(img)
            input_img = img
            logits, outputs = model(input_img)
            f = outputs.data.cpu()
            ff = ff + f
        # norm feature
        fnorm = torch.norm(ff, p=2, dim=1, keepdim=True)
        ff = ff.div(fnorm.expand_as(ff))
        features = torch.cat((features, ff), 0)
        _, tmp_label = logits.max(1)
        new_label = np.append(new_label, tmp_label)
    return features, new_label


# Loss functions
def loss_coteaching(y_1, y_2, t, forget_rate, ind, noise_or_not):
    """The Co-teaching authors' loss.py, as published (``reduce = False``: today's
    ``reduction="none"``)."""
    loss_1 = F.cross_entropy(y_1, t, reduce = False)  # noqa: E251
    ind_1_sorted = np.argsort(loss_1.data.cpu())
    loss_1_sorted = loss_1[ind_1_sorted]

    loss_2 = F.cross_entropy(y_2, t, reduce = False)  # noqa: E251
    ind_2_sorted = np.argsort(loss_2.data.cpu())
    loss_2_sorted = loss_2[ind_2_sorted]  # noqa: F841

    remember_rate = 1 - forget_rate
    num_remember = int(remember_rate * len(loss_1_sorted))

    pure_ratio_1 = np.sum(noise_or_not[ind[ind_1_sorted[:num_remember]]])/float(num_remember)
    pure_ratio_2 = np.sum(noise_or_not[ind[ind_2_sorted[:num_remember]]])/float(num_remember)

    ind_1_update=ind_1_sorted[:num_remember]
    ind_2_update=ind_2_sorted[:num_remember]
    # exchange
    loss_1_update = F.cross_entropy(y_1[ind_2_update], t[ind_2_update])
    loss_2_update = F.cross_entropy(y_2[ind_1_update], t[ind_1_update])

    return torch.sum(loss_1_update)/num_remember, torch.sum(loss_2_update)/num_remember, \
        pure_ratio_1, pure_ratio_2


def coteaching_rates(forget_rate, n_epoch, num_gradual, exponent):
    """The authors' main.py: its drop-rate schedule, and the rate each trained epoch uses
    (``for epoch in range(1, args.n_epoch)``: epoch 0 only tests the untrained networks)."""
    rate_schedule = np.ones(n_epoch)*forget_rate
    rate_schedule[:num_gradual] = np.linspace(0, forget_rate**exponent, num_gradual)
    return [rate_schedule[epoch] for epoch in range(1, n_epoch)]


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


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_co_teaching_selection_equals_the_authors_loss_but_for_its_scale():
    """Each network trains on the peer's small-loss selection, as the authors' loss_coteaching;
    theirs returns that selection's mean cross-entropy divided again by num_remember, ours the
    mean itself (docs/methods.md: why)."""
    torch.manual_seed(0)
    for n, rate in ((32, 0.0), (32, 0.2), (17, 0.5), (8, 0.75), (128, 0.5)):
        y_1, y_2 = torch.randn(n, 6), torch.randn(n, 6)
        t = torch.randint(0, 6, (n,))
        noise_or_not = np.random.default_rng(n).random(n) < 0.6  # True: a clean label
        ind = np.arange(n)  # the batch's sample numbers
        first, second, mine, theirs = losses.co_teaching_losses(y_1, y_2, t, rate)
        l1, l2, pure_1, pure_2 = loss_coteaching(y_1, y_2, t, rate, ind, noise_or_not)
        num_remember = int((1 - rate) * n)
        assert len(mine) == len(theirs) == num_remember
        assert torch.allclose(first, l1 * num_remember) and torch.allclose(
            second, l2 * num_remember)
        assert noise_or_not[mine.numpy()].mean() == pytest.approx(pure_1)
        assert noise_or_not[theirs.numpy()].mean() == pytest.approx(pure_2)
    t = torch.zeros(2, dtype=torch.long)  # never an empty selection
    assert len(losses.co_teaching_losses(torch.randn(2, 3), torch.randn(2, 3), t, 0.9)[2]) == 1


def test_forget_schedule_ramps_linearly_from_epoch_0_and_the_authors_lead_by_one_step():
    assert [losses.forget_rate(t, 0.5, 10) for t in (0, 1, 5, 10, 11, 40)] == \
        [0.0, 0.05, 0.25, 0.5, 0.5, 0.5]
    assert losses.forget_rate(0, 0.3, 0) == 0.3
    tau = 0.5
    theirs = coteaching_rates(tau, 200, 10, 1)  # their k-th trained epoch, k from 0
    ours = [losses.forget_rate(k, tau, 10) for k in range(199)]
    assert theirs[0] == pytest.approx(tau / 9) and ours[0] == 0  # the first trained epoch
    # their epoch 9 (the 9th trained) forgets tau; our 9th (t = 8) 0.8 tau, tau from t = 10
    assert theirs[8] == tau and theirs.index(tau) == 8
    assert ours[8] == pytest.approx(0.8 * tau) and ours.index(tau) == 10
    assert all(a >= b for a, b in zip(theirs, ours))
    squared = coteaching_rates(tau, 200, 10, 2)  # --exponent 2 ramps to tau**2, then jumps
    assert squared[8] == tau ** 2 and squared[9] == tau


def test_purifynet_stage_2_outputs_are_the_released_extractors(data_dir, tmp_path):
    """Stage 2's descriptor and class of every training image against extract_feature_v1 run
    literally on a real network and the real images through the test transform."""
    parsed = train_self.parse_args(train_self.build_parser(), args(data_dir, tmp_path))
    torch.manual_seed(0)
    net = build_model("resnet18", 8, "none")
    cpu = torch.device("cpu")
    numerics = choose_numerics(parsed, cpu)
    data = load_data(parsed, cpu, numerics, with_train_test_view=True)
    ours, classes = train_descriptors_and_classes(net, data, cpu, numerics)

    train = load_split(data_dir, "market", "train", eval_transform(parsed.img_size))
    loader = torch.utils.data.DataLoader(train, batch_size=parsed.batchsize, shuffle=False)
    model = ReleasedEvalNet(net)
    model.eval()
    features, new_label = released_extract_feature_v1(model, loader, net.feat_dim)
    np.testing.assert_array_equal(classes, new_label.astype(np.int64))
    np.testing.assert_allclose(ours, features.numpy(), atol=1e-5)

    _, plain = train_descriptors_and_classes(net, data, cpu, numerics, "plain")
    with torch.no_grad():
        own = torch.cat([model(img)[0] for img, _, _ in loader]).argmax(1).numpy()
    np.testing.assert_array_equal(plain, own)
    assert (plain != classes).any()  # the two views differ here, so the test tells them apart


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

    def train_outputs(self, net, view):
        seen["view"], seen["noisy"] = view, self.labels.noisy_labels
        seen["outputs"] = original_outputs(self, net, view)
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
    assert seen["view"] == "flipped"  # the released extractor's labels, by default
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


def test_coteaching_auto_estimates_tau_in_the_ramp_and_resumes_bit_identically(
        data_dir, tmp_path, monkeypatch):
    common = args(data_dir, tmp_path, "--method", "coteaching", "--epochs", "3",
                  "--noise_ratio", "0.5", "--forget_rate", "auto", "--forget_epochs", "2",
                  "--eval_every", "2")
    given = []
    original = losses.estimate_noise_rate
    monkeypatch.setattr(losses, "estimate_noise_rate",
                        lambda per_sample: given.append(per_sample) or original(per_sample))
    whole = train_core.main([*common, "--run_name", "whole"])
    assert whole["args"]["forget_rate"] == "auto" and len(given) == 2  # epochs 1 and 2
    history = whole["history"]
    taus = [original(x)["forget_rate_estimate"] for x in given]
    assert all(0 <= tau < 1 for tau in taus)
    for h, tau in zip(history, [None, *taus]):
        for net in h["networks"]:
            assert net["forget_rate_estimate"] == tau
    assert [h["networks"][0]["forget_rate"] for h in history] == [0.0, taus[0] / 2, taus[1]]
    log = (Path(whole["run_dir"]) / "train.log").read_text()
    for epoch, tau in enumerate(taus, start=1):
        assert f"forget rate estimated at epoch {epoch} from the training losses: tau = " \
               f"{tau:.3f}" in log

    # what it was given: both networks' losses on the annotated labels after epoch 0, averaged
    first = train_core.main([*common, "--run_name", "split", "--epochs", "1"])
    state = read_checkpoint(Path(first["run_dir"]) / "last.pt", "x")
    parsed = train_core.parse_args(train_core.build_parser(), [*common, "--epochs", "1"])
    cpu = torch.device("cpu")
    data = load_data(parsed, cpu, choose_numerics(parsed, cpu))
    noisy = torch.as_tensor(state["noisy_labels"])
    per_sample = torch.stack([F.cross_entropy(eval_outputs(
        network_from_checkpoint(state, k), data.train_plain, lambda m, x: m(x), cpu), noisy,
        reduction="none") for k in range(2)]).mean(dim=0)
    np.testing.assert_allclose(given[0], per_sample.numpy(), rtol=1e-5, atol=1e-6)

    # resumed after epoch 0 (estimated then), and stopped in epoch 1 (kept in the checkpoint)
    resumed = train_core.main([*common, "--run_name", "split", "--resume"])
    stop_at(monkeypatch, methods.CoTeaching, epoch=1, step=3)
    with pytest.raises(RunInterrupted):
        train_core.main([*common, "--run_name", "stopped"])
    monkeypatch.undo()
    stopped = torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)
    assert stopped["method_state"]["tau"] == taus[0]
    again = train_core.main([*common, "--run_name", "stopped", "--resume"])
    final = torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=False)
    for run in (resumed, again):
        same_networks(final, torch.load(Path(run["run_dir"]) / "last.pt", weights_only=False))
        assert [h["networks"] for h in run["history"]] == [h["networks"] for h in history]
        assert run["final"] == whole["final"]
