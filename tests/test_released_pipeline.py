"""The released pipeline's details, reproduced by default and switchable: the noise seed,
patterned noise's second labels, training without augmentation, --init_from, the released
numerics, the co-refining schedule warning, and the fast CUDA code paths run on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_core
import train_self
from datasets import load_split
from datasets.noise import pattern_noise, second_labels_from_logits
from datasets.pipeline import CachedBatches, LoaderBatches, decoded_split, eval_transform
from core_reid.runs import network_from_checkpoint, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--eval_every", "2", "--lr", "0.05",
        "--milestones"]  # no value: a constant learning rate (tests set theirs)
CPU = torch.device("cpu")
CORE_2 = ["--epochs", "2", "--stage1_epochs", "0"]  # the shortest CORE run: SELF, co-refining


def args(data_dir, out, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *TINY, *extra]


def noisy_labels(result):
    with np.load(Path(result["run_dir"]) / "noisy_labels.npz") as npz:
        return npz["noisy_labels"].copy(), json.loads(str(npz["meta"]))


def run_cli(script, *argv):
    proc = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(code, err, message):
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ---- noise seed ------------------------------------------------------------------------------

def test_noise_seed_is_independent_of_the_network_seed(data_dir, tmp_path):
    common = args(data_dir, tmp_path, "--method", "baseline", "--epochs", "1",
                  "--noise_ratio", "0.5")
    seed1 = train_self.main([*common, "--seed", "1"])
    seed2 = train_self.main([*common, "--seed", "2"])
    other_noise = train_self.main([*common, "--seed", "1", "--noise_seed", "2"])
    (a, meta_a), (b, _), (c, meta_c) = map(noisy_labels, (seed1, seed2, other_noise))
    assert np.array_equal(a, b)      # different --seed, same noisy labels (as released)
    assert not np.array_equal(a, c)  # different --noise_seed, different labels
    assert (meta_a["noise_seed"], meta_a["seed"]) == (1, 1) and meta_c["noise_seed"] == 2
    assert seed1["history"][0]["loss"] != seed2["history"][0]["loss"]  # --seed still matters
    names = [Path(r["run_dir"]).name for r in (seed1, seed2, other_noise)]
    assert names == ["market_baseline_random0.5_noiseseed1_lr0.05_seed1_resnet18",
                     "market_baseline_random0.5_noiseseed1_lr0.05_seed2_resnet18",
                     "market_baseline_random0.5_noiseseed2_lr0.05_seed1_resnet18"]
    assert other_noise["noise_seed"] == 2 and other_noise["seed"] == 1


def test_resume_refuses_another_noise_seed(data_dir, tmp_path):
    common = args(data_dir, tmp_path, "--method", "baseline", "--epochs", "1", "--run_name", "r")
    train_self.main(common)
    code, _, err = run_cli("train_self.py", *common, "--resume", "--noise_seed", "3",
                           "--epochs", "2")
    assert_one_line_error(code, err, "the run used --noise_seed 1, this command says 3")


# ---- patterned noise -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_checkpoint(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    result = train_self.main(args(data_dir, out, "--method", "baseline", "--noise_ratio", "0",
                                  "--epochs", "2"))
    return Path(result["run_dir"]) / "last.pt"


def test_second_labels_come_from_the_test_transform_of_the_flipped_image(
        data_dir, tmp_path, clean_checkpoint):
    result = train_self.main(args(data_dir, tmp_path, "--pattern", "--noise_ratio", "0.5",
                                  "--pattern_model", str(clean_checkpoint), "--epochs", "1",
                                  "--data_path", "cache"))
    # Restated by hand: the released test transform (bicubic resize to 32x16, no crop) through
    # the PIL path, each batch mirrored, eval mode, top-1 if wrong else top-2.
    train = load_split(data_dir, "market", "train")
    model = network_from_checkpoint(read_checkpoint(clean_checkpoint, "test")).eval()
    images = torch.cat([x for x, _ in LoaderBatches(train, eval_transform((32, 16)), 5, False,
                                                    0, CPU).batches()])
    with torch.no_grad():
        flipped_logits = model(images.flip(3))
        plain_logits = model(images)
    assert not torch.equal(flipped_logits, plain_logits)
    second = second_labels_from_logits(flipped_logits, train.targets)
    expected, _ = pattern_noise(train.targets, 0.5, second, seed=1)
    noisy, meta = noisy_labels(result)
    assert np.array_equal(noisy, expected)
    assert meta["pattern_view"] == "flipped" and result["noise_type"] == "pattern"

    plain = train_self.main(args(data_dir, tmp_path, "--pattern", "--noise_ratio", "0.5",
                                 "--pattern_model", str(clean_checkpoint), "--epochs", "1",
                                 "--pattern_view", "plain", "--data_path", "loader"))
    second_plain = second_labels_from_logits(plain_logits, train.targets)
    expected_plain, _ = pattern_noise(train.targets, 0.5, second_plain, seed=1)
    assert np.array_equal(noisy_labels(plain)[0], expected_plain)


# ---- training without augmentation (the released --pattern quirk) -----------------------------

def test_train_transform_test_shuffles_whole_test_images(prepared_market, tmp_path):
    train = load_split(prepared_market.parent, "market", "train")
    images = torch.from_numpy(decoded_split(train, (32, 16), tmp_path, workers=0))
    reference = torch.cat([x for x, _ in LoaderBatches(train, eval_transform((32, 16)), 8, False,
                                                       0, CPU).batches()])
    batches = list(CachedBatches(images, 8, shuffle=True).batches(seed=4))
    order = torch.cat([i for _, i in batches])
    assert sorted(order.tolist()) == list(range(len(train)))
    assert order.tolist() != list(range(len(train)))
    assert torch.equal(torch.cat([x for x, _ in batches]), reference[order])


@pytest.mark.parametrize("data_path", ["cache", "loader"])
def test_training_on_the_test_transform_runs(data_dir, tmp_path, data_path):
    result = train_self.main(args(data_dir, tmp_path, "--epochs", "1", "--train_transform",
                                  "test", "--data_path", data_path))
    assert result["args"]["train_transform"] == "test" and result["history"][0]["loss"] > 0


# ---- --init_from -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def self_checkpoints(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("self")
    return [Path(train_self.main(args(data_dir, out, "--epochs", "1", "--seed", str(s)))
                 ["run_dir"]) / "last.pt" for s in (1, 2)]


def test_init_from_starts_each_peer_from_a_self_run(data_dir, tmp_path, self_checkpoints):
    from core_reid.engine import build_peers
    from methods import METHODS
    from core_reid.numerics import choose_numerics
    from core_reid.runs import init_peers_from
    parsed = train_core.parse_args(train_core.build_parser(), args(data_dir, tmp_path))
    parsed.method = "core"
    method = METHODS["core"](parsed)
    peers = build_peers(parsed, method, 8, CPU, choose_numerics(parsed, CPU))
    notes = init_peers_from([str(p) for p in self_checkpoints], peers, parsed, 8)
    for peer, path in zip(peers, self_checkpoints):
        saved = torch.load(path, weights_only=False)["networks"][0]
        for key, value in peer.net.state_dict().items():
            assert torch.equal(value, saved[key]), key
    assert "network 2 starts from" in notes[1]

    result = train_core.main(args(data_dir, tmp_path, *CORE_2, "--init_from",
                                  *map(str, self_checkpoints)))
    log = (Path(result["run_dir"]) / "train.log").read_text()
    assert f"network 1 starts from {self_checkpoints[0]} (a self run, epoch 0)" in log
    assert result["args"]["init_from"] == [str(p) for p in self_checkpoints]


def test_init_from_bad_input_is_one_clear_line(data_dir, tmp_path, self_checkpoints):
    core = train_core.main(args(data_dir, tmp_path, *CORE_2))
    wrong_classes = tmp_path / "wrong_classes.pt"
    state = torch.load(self_checkpoints[0], weights_only=False)
    torch.save({**state, "num_classes": 5}, wrong_classes)
    first = str(self_checkpoints[0])
    for pair, message in [
        ([first, str(tmp_path / "missing.pt")], "missing.pt: no such file"),
        ([first, str(Path(core["run_dir"]) / "last.pt")], "a core checkpoint; give the last.pt"),
        ([first, str(wrong_classes)], "trained on 5 classes but this training split has 8"),
    ]:
        code, _, err = run_cli("train_core.py", *args(data_dir, tmp_path, *CORE_2,
                                                      "--init_from", *pair))
        assert_one_line_error(code, err, message)


# ---- numerics --------------------------------------------------------------------------------

def test_numerics_released_turns_every_fast_setting_off(data_dir, tmp_path):
    result = train_self.main(args(data_dir, tmp_path, "--epochs", "1", "--numerics",
                                  "released"))
    metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    numerics = metrics["numerics"]
    assert numerics["mode"] == "released" and numerics["dtype"] == "float32"
    assert not any(numerics[k] for k in ("tf32", "channels_last", "fused_sgd", "compile"))
    assert numerics["data_path"] == "loader"
    assert numerics["torch"] == torch.__version__ and numerics["workers"] == 0


@pytest.mark.parametrize("flag", [["--amp", "on"], ["--channels_last", "on"],
                                  ["--data_path", "cache"], ["--compile"]])
def test_numerics_released_refuses_a_fast_flag(data_dir, tmp_path, flag):
    code, _, err = run_cli("train_self.py", *args(data_dir, tmp_path, "--numerics", "released",
                                                  *flag))
    assert_one_line_error(code, err, f"{' '.join(flag)} contradicts --numerics released")


def test_bf16_and_channels_last_train_on_the_cpu(data_dir, tmp_path):
    result = train_core.main(args(data_dir, tmp_path, "--epochs", "2", "--stage1_epochs", "0",
                                  "--amp", "on", "--channels_last", "on"))
    numerics = result["numerics"]
    assert (numerics["dtype"], numerics["channels_last"]) == ("bfloat16", True)
    assert [h["stage"] for h in result["history"]] == ["SELF", "co-refining"]
    assert all(np.isfinite(n["loss"]) for h in result["history"] for n in h["networks"])
    assert result["final"]["mAP"] > 0


def test_torch_compile_trains_on_the_cpu(data_dir, tmp_path):
    result = train_self.main(args(data_dir, tmp_path, "--epochs", "1", "--compile"))
    assert result["numerics"]["compile"] is True
    assert np.isfinite(result["history"][0]["loss"]) and result["final"]["mAP"] > 0


# ---- the co-refining schedule ------------------------------------------------------------------

def test_co_refining_before_the_lr_decay_is_warned_about(data_dir, tmp_path):
    early = train_core.main(args(data_dir, tmp_path, "--epochs", "3", "--stage1_epochs", "0",
                                 "--milestones", "2"))
    log = (Path(early["run_dir"]) / "train.log").read_text()
    assert "warning: co-refining starts at epoch 1, before the first learning-rate decay " \
           "(epoch 2)" in log
    released = train_core.main(args(data_dir, tmp_path, "--epochs", "3", "--stage1_epochs", "1",
                                    "--milestones", "2"))
    assert "warning" not in (Path(released["run_dir"]) / "train.log").read_text()
