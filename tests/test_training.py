"""Real training runs on a tiny synthetic dataset: baseline, SELF and CORE end to end, what a
run leaves behind, the SELF -> co-refining switch, exact resume, patterned noise, bad input."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_core
import train_self

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--eval_every", "2", "--lr", "0.05",
        "--milestones"]  # no value: a constant learning rate (tests set theirs)
HISTORY_KEYS = {"epoch", "lr", "loss", "train_acc", "label_precision", "rank1", "rank5",
                "rank10", "mAP", "epoch_time_s"}
SCORE_KEYS = {"epoch", "rank1", "rank5", "rank10", "mAP"}
NUMERICS_KEYS = {"mode", "dtype", "tf32", "channels_last", "fused_sgd", "compile", "data_path",
                 "torch", "torchvision", "cuda", "cudnn", "device_name", "workers", "threads"}


def args(data_dir, out, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *TINY, *extra]


def check_run_folder(result, method, networks):
    run = Path(result["run_dir"])
    for name in ("metrics.json", "curves.png", "train.log", "last.pt", "best.pt",
                 "noisy_labels.npz"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["dataset"] == "market"
    assert {"noise_type", "noise_ratio", "noise_seed", "seed", "args"} <= metrics.keys()
    assert NUMERICS_KEYS <= metrics["numerics"].keys()
    log_head = (run / "train.log").read_text().splitlines()[:4]
    assert any(line.startswith(f"numerics {metrics['numerics']['mode']}: ")
               for line in log_head)
    assert any(f"torch {torch.__version__}" in line for line in log_head)
    for entry in metrics["history"]:
        assert HISTORY_KEYS <= entry.keys()
        assert len(entry["networks"]) == networks
        assert 0 <= entry["label_precision"] <= 1 and 0 <= entry["train_acc"] <= 1
    tested = [h for h in metrics["history"] if h["rank1"] is not None]
    assert [h["epoch"] for h in tested] == [0, 2]  # every 2 epochs and the last
    for key in ("best", "final"):
        assert metrics[key].keys() == SCORE_KEYS
        assert all(0 <= metrics[key][k] <= 1 for k in SCORE_KEYS - {"epoch"})
    assert metrics["final"]["epoch"] == 2
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and len(ckpt["networks"]) == len(ckpt["optimizers"]) == networks
    assert {"method_state", "rng", "noisy_labels", "is_clean"} <= ckpt.keys()
    if method in ("self", "core"):  # lambda is the method's state: the next epoch's, per net
        assert ckpt["method_state"]["lambdas"] == [
            1 / (1 + n["loss"]) for n in metrics["history"][-1]["networks"]]
    return metrics


@pytest.mark.parametrize("method", ["baseline", "self"])
def test_single_network_runs_leave_every_output(data_dir, tmp_path, method):
    result = train_self.main(args(data_dir, tmp_path, "--method", method, "--epochs", "3"))
    metrics = check_run_folder(result, method, 1)
    assert (Path(result["run_dir"]).name ==
            f"market_{method}_random0.2_noiseseed1_lr0.05_seed1_resnet18")
    assert abs(metrics["realised_noise_rate"] - 0.2) < 0.1
    if method == "baseline":  # no lambda to speak of
        assert all("lambda" not in h for h in metrics["history"])
        return
    lambdas = [h["lambda"] for h in metrics["history"]]
    assert lambdas[0] == 0.0
    assert lambdas[1] == pytest.approx(1 / (1 + metrics["history"][0]["loss"]))


def test_core_switches_from_self_to_co_refining_at_stage1_epochs(data_dir, tmp_path):
    result = train_core.main(args(data_dir, tmp_path, "--epochs", "3", "--stage1_epochs", "1"))
    metrics = check_run_folder(result, "core", 2)
    assert [h["stage"] for h in metrics["history"]] == ["SELF", "SELF", "co-refining"]
    assert ["lambda" in h for h in metrics["history"]] == [True, True, False]  # SELF's only
    first = metrics["history"][0]["networks"]
    assert first[0]["loss"] != first[1]["loss"]  # two different peers


def test_resume_is_bit_identical_to_an_uninterrupted_run(data_dir, tmp_path):
    common = args(data_dir, tmp_path, "--epochs", "4", "--stage1_epochs", "0",
                  "--milestones", "3")
    whole = train_core.main([*common, "--run_name", "whole"])
    # "stopped" after epoch 1 (the lr is the same up to there: the decay comes at 3)
    train_core.main([*common, "--run_name", "split", "--epochs", "2", "--milestones"])
    resumed = train_core.main([*common, "--run_name", "split", "--resume", "auto"])
    a = torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=False)
    b = torch.load(Path(resumed["run_dir"]) / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for net_a, net_b in zip(a["networks"], b["networks"]):
        for key in net_a:
            assert torch.equal(net_a[key], net_b[key]), key
    assert [h["loss"] for h in whole["history"]] == [h["loss"] for h in resumed["history"]]
    assert whole["final"] == resumed["final"]


DIAGNOSTICS = ("label_precision", "label_precision_clean", "noisy_corrected", "noisy_memorized")


def test_label_diagnostics_every_n_epochs_change_nothing_the_training_does(data_dir, tmp_path):
    """--diagnostics_every 2 skips the diagnostics' forward pass at epoch 1 (no test there):
    the weights, the scores and every other statistic are those of the run that diagnoses
    every epoch; the skipped values are null, the log says '-'."""
    common = args(data_dir, tmp_path, "--epochs", "3", "--stage1_epochs", "1", "--eval_every",
                  "3", "--noise_ratio", "0.5")
    every = train_core.main([*common, "--run_name", "every"])
    sparse = train_core.main([*common, "--run_name", "sparse", "--diagnostics_every", "2"])
    a = torch.load(Path(every["run_dir"]) / "last.pt", weights_only=False)
    b = torch.load(Path(sparse["run_dir"]) / "last.pt", weights_only=False)
    for net_a, net_b in zip(a["networks"], b["networks"]):
        assert all(torch.equal(net_a[key], net_b[key]) for key in net_a)
    assert every["final"] == sparse["final"] and every["best"] == sparse["best"]
    timing = ("epoch_time_s", "images_per_s")
    for whole, skipped in zip(every["history"], sparse["history"]):
        diagnosed = whole["epoch"] != 1  # tests at 0 and 2 (the last); every 2: 0 and 2
        for net_whole, net_skipped in zip(whole["networks"], skipped["networks"]):
            assert all(net_whole[k] is not None for k in DIAGNOSTICS)
            assert {k: net_skipped[k] for k in DIAGNOSTICS} == (
                {k: net_whole[k] for k in DIAGNOSTICS} if diagnosed else dict.fromkeys(DIAGNOSTICS))
            rest = set(net_whole) - set(DIAGNOSTICS)
            assert {k: net_whole[k] for k in rest} == {k: net_skipped[k] for k in rest}
        assert {k: v for k, v in whole.items() if k not in (*timing, *DIAGNOSTICS, "networks")} \
            == {k: v for k, v in skipped.items() if k not in (*timing, *DIAGNOSTICS, "networks")}
    log = (Path(sparse["run_dir"]) / "train.log").read_text()
    assert "epoch 1/2 [SELF]" in log and "label-prec -  net2" in log
    assert (Path(sparse["run_dir"]) / "curves.png").stat().st_size > 0


def test_a_new_run_never_overwrites_an_earlier_one(data_dir, tmp_path):
    first = train_self.main(args(data_dir, tmp_path, "--epochs", "1"))
    second = train_self.main(args(data_dir, tmp_path, "--epochs", "1"))
    assert Path(second["run_dir"]) == Path(first["run_dir"] + "-2")
    assert (Path(first["run_dir"]) / "last.pt").is_file()


def test_threads_are_set_before_any_work_and_recorded(data_dir, tmp_path, monkeypatch):
    from core_reid import engine
    default = torch.get_num_threads()
    plain = train_self.main(args(data_dir, tmp_path, "--epochs", "1"))
    assert plain["numerics"]["threads"] == default and plain["args"]["threads"] is None
    n = 1 if default > 1 else 2  # not the default, so that setting it shows
    seen = []
    original = engine.load_data
    monkeypatch.setattr(engine, "load_data", lambda *a, **k: seen.append(
        torch.get_num_threads()) or original(*a, **k))  # the data is read after they are set
    try:
        result = train_self.main(args(data_dir, tmp_path, "--epochs", "1", "--threads", str(n)))
    finally:
        torch.set_num_threads(default)  # the process's, for the tests that follow
    assert seen == [n] and result["numerics"]["threads"] == n
    metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    assert metrics["numerics"]["threads"] == n and metrics["args"]["threads"] == n
    assert f", {n} CPU threads, 0 workers" in (Path(result["run_dir"]) / "train.log").read_text()


def test_loader_path_trains_too(data_dir, tmp_path):
    result = train_self.main(args(data_dir, tmp_path, "--epochs", "1", "--data_path", "loader"))
    assert result["history"][0]["loss"] > 0


def test_pattern_noise_uses_the_clean_models_confusions(data_dir, tmp_path):
    clean = train_self.main(args(data_dir, tmp_path, "--method", "baseline", "--noise_ratio",
                                 "0", "--epochs", "1"))
    assert Path(clean["run_dir"]).name.startswith("market_baseline_clean")
    result = train_core.main(args(data_dir, tmp_path, "--pattern", "--noise_ratio", "0.5",
                                  "--pattern_model", str(Path(clean["run_dir"]) / "last.pt"),
                                  "--epochs", "2", "--stage1_epochs", "0"))
    noise = np.load(Path(result["run_dir"]) / "noisy_labels.npz")
    assert result["noise_type"] == "pattern"
    assert 0.3 < result["realised_noise_rate"] < 0.7
    assert noise["is_clean"].sum() < len(noise["is_clean"])


def run_cli(script, *argv):
    proc = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("extra, message", [
    (["--noise_ratio", "1.0"], "--noise_ratio 1.0: must be in [0, 1)"),
    (["--pattern"], "python train_self.py --method baseline --noise_ratio 0"),
])
def test_bad_input_is_one_clear_line(data_dir, tmp_path, extra, message):
    code, err = run_cli("train_core.py", *args(data_dir, tmp_path, *extra))
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_data_is_one_clear_line(tmp_path):
    code, err = run_cli("train_core.py", *args(str(tmp_path / "nowhere"), tmp_path))
    assert code == 2 and "prepare_market.py" in err and "Traceback" not in err


def train_offline_from_imagenet(data_dir, tmp_path) -> subprocess.CompletedProcess:
    """One epoch with --pretrained imagenet, TORCH_HOME in tmp_path/th, no way to download."""
    env_args = args(data_dir, tmp_path, "--epochs", "1")
    env_args[env_args.index("--pretrained") + 1] = "imagenet"
    return subprocess.run([sys.executable, "train_self.py", *env_args], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "TORCH_HOME": str(tmp_path / "th"),
                               "HTTPS_PROXY": "http://127.0.0.1:9"})


def test_offline_imagenet_weights_name_the_way_out(data_dir, tmp_path):
    proc = train_offline_from_imagenet(data_dir, tmp_path)
    assert proc.returncode == 2 and "--pretrained none" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_imagenet_weights_put_in_torch_home_are_used_offline(data_dir, tmp_path):
    """What README tells a compute node without internet: torchvision's IMAGENET1K_V1 file, under
    its own name in $TORCH_HOME/hub/checkpoints/, is loaded with no download."""
    import torchvision
    names = {arch: Path(getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1.url
                        ).name for arch, depth in (("resnet50", 50), ("resnet18", 18))}
    assert names == {"resnet50": "resnet50-0676ba61.pth", "resnet18": "resnet18-f37072fd.pth"}
    checkpoints = tmp_path / "th" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(),
               checkpoints / names["resnet18"])
    proc = train_offline_from_imagenet(data_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "backbone: ImageNet weights (torchvision)" in proc.stdout  # no download possible


def test_label_diagnostics_split_clean_and_noisy_samples():
    from core_reid.engine import label_diagnostics
    true = np.array([0, 0, 1, 1, 2, 2])
    noisy = np.array([0, 1, 1, 0, 2, 2])       # samples 1 and 3 are noisy
    is_clean = noisy == true
    refined = np.array([0, 0, 1, 0, 2, 1])     # 1 corrected, 3 memorised, 5 newly wrong
    d = label_diagnostics(refined, true, noisy, is_clean)
    assert d == {"label_precision": pytest.approx(4 / 6), "label_precision_clean": 0.75,
                 "noisy_corrected": 0.5, "noisy_memorized": 0.5}
    clean = label_diagnostics(true, true, true, np.ones(6, bool))
    assert clean["noisy_corrected"] is None and clean["label_precision"] == 1.0


def test_demo_flag_sets_the_demo_defaults_and_explicit_flags_win():
    args = train_core.parse_args(train_core.build_parser(), ["--demo", "--epochs", "3",
                                                              "--milestones", "2",
                                                              "--stage1_epochs", "1"])
    assert (args.arch, args.pretrained, args.img_size, args.noise_ratio) == (
        "resnet18", "none", [64, 32], 0.2)
    assert (args.epochs, args.milestones, args.stage1_epochs) == (3, [2], 1)
    plain = train_core.build_parser().parse_args([])  # the defaults, unchecked
    assert (plain.arch, plain.pretrained, plain.epochs, plain.lr) == ("resnet50", "imagenet",
                                                                      61, 0.01)
    assert (plain.milestones, plain.stage1_epochs, plain.batchsize) == ([20, 50], 20, 32)


def test_sigterm_mid_epoch_saves_a_checkpoint_that_resumes_bit_identically(data_dir, tmp_path,
                                                                            monkeypatch):
    """SIGTERM arrives during epoch 1's third step: the step finishes, last.pt records the
    progress, and the resumed run ends exactly as an uninterrupted one."""
    import methods
    from core_reid.utils import RunInterrupted
    common = args(data_dir, tmp_path, "--epochs", "3", "--stage1_epochs", "0",
                  "--batchsize", "4")
    whole = train_core.main([*common, "--run_name", "whole"])

    calls = []
    original = methods.CoRefining.batch_losses

    def signal_on_the_third_step_of_epoch_1(self, epoch, *rest):
        calls.append(epoch)
        if calls.count(1) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, epoch, *rest)

    monkeypatch.setattr(methods.CoRefining, "batch_losses", signal_on_the_third_step_of_epoch_1)
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM"):
        train_core.main([*common, "--run_name", "split"])
    monkeypatch.undo()
    run = tmp_path / "split"
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 0 and state["partial"]["step"] == 3
    assert "stopped by SIGTERM at epoch 1, step 3" in (run / "train.log").read_text()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone again

    resumed = train_core.main([*common, "--run_name", "split", "--resume"])
    a = torch.load(Path(whole["run_dir"]) / "last.pt", weights_only=False)
    b = torch.load(run / "last.pt", weights_only=False)
    for net_a, net_b in zip(a["networks"], b["networks"]):
        for key in net_a:
            assert torch.equal(net_a[key], net_b[key]), key
    assert [h["loss"] for h in whole["history"]] == [h["loss"] for h in resumed["history"]]
    assert whole["final"] == resumed["final"] and b["partial"] is None


def test_the_multi_tensor_sgd_update_is_the_single_tensor_loop_bit_for_bit():
    """make_optimizer's foreach SGD (the CPU's fast update) against torch's plain loop, on the
    real network with its head at 10x the lr, through momentum, Nesterov and weight decay."""
    from core_reid.numerics import Numerics
    from core_reid.run_state import make_optimizer
    from core_reid.options import build_parser, parse_args
    from model import build_model
    args = parse_args(build_parser("train_core.py"), ["--demo"], check=False)
    numerics = Numerics("released", "float32", False, False, False, False, "loader")
    torch.manual_seed(0)
    nets = [build_model("resnet18", 7, "none") for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fast = make_optimizer(args, nets[0], numerics)
    plain = torch.optim.SGD(nets[1].param_groups(args.lr), lr=args.lr, momentum=args.momentum,
                            nesterov=True, weight_decay=args.weight_decay, foreach=False)
    assert fast.defaults["foreach"] is True
    for step in range(3):
        images = torch.randn(6, 3, 32, 16, generator=torch.Generator().manual_seed(step))
        labels = torch.arange(6) % 7
        for net, optimizer in zip(nets, (fast, plain)):
            torch.manual_seed(step)  # the same dropout
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(images), labels).backward()
            optimizer.step()
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        assert torch.equal(a, b)
