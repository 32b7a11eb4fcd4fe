"""The catalogue of bad inputs: wrong flags, broken data, broken run folders.

Every case runs a script's real entry point (``run_cli(main)``, as its ``__main__`` does, or the
script itself in a subprocess) and asserts: exit status 2, exactly one line on stderr, no
traceback, and that nothing the user had changed (sha256 of the data and the output folder
before and after). Odd but valid images (alpha, greyscale, CMYK, stray files) must train.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import file_digests
from PIL import Image

import prepare_market
import test as test_script
import train_core
import train_self
from core_reid.utils import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--lr", "0.05", "--milestones"]


@pytest.fixture
def world(prepared_market, tmp_path):
    """A private copy of the prepared data and an output folder with an earlier run in it."""
    data = tmp_path / "data"
    shutil.copytree(prepared_market, data / "market")
    out = tmp_path / "res"
    (out / "earlier").mkdir(parents=True)
    (out / "earlier" / "notes.txt").write_text("the user's own file\n")
    return data, out


def run_script(module, argv, capsys, monkeypatch):
    """(exit status, stderr) of ``module.main`` run as its ``__main__`` runs it."""
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main)
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line(code, err, message):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err, err


def expect_error(module, argv, message, world, capsys, monkeypatch):
    data, out = world
    before = (file_digests(data), file_digests(out))
    code, err = run_script(module, argv, capsys, monkeypatch)
    assert_one_line(code, err, message)
    assert (file_digests(data), file_digests(out)) == before
    return err


def base(world, *extra):
    data, out = world
    return ["--data_dir", str(data), "--output_dir", str(out), *TINY, *extra]


# ---- flags: every numeric range, choices, paths, combinations ----------------------------------

FLAG_CASES = [
    (["--noise_ratio", "1.0"], "--noise_ratio 1.0: must be in [0, 1)"),
    (["--noise_ratio", "-0.1"], "--noise_ratio -0.1: must be in [0, 1)"),
    (["--noise_seed", "-1"], "--noise_seed -1: must be an integer >= 0"),
    (["--seed", "-3"], "--seed -3: must be an integer >= 0"),
    (["--lr", "-1"], "--lr -1.0: must be > 0"),
    (["--lr", "0"], "--lr 0.0: must be > 0"),
    (["--lr", "nan"], "--lr nan: must be > 0"),
    (["--momentum", "0"], "--momentum 0.0: must be in (0, 1)"),
    (["--momentum", "1"], "--momentum 1.0: must be in (0, 1)"),
    (["--weight_decay", "-0.001"], "--weight_decay -0.001: must be >= 0"),
    (["--dropout", "1"], "--dropout 1.0: must be in [0, 1)"),
    (["--batchsize", "1"], "--batchsize 1: must be >= 2"),
    (["--epochs", "0"], "--epochs 0: must be >= 1"),
    (["--eval_every", "0"], "--eval_every 0: must be >= 1"),
    (["--diagnostics_every", "0"], "--diagnostics_every 0: must be >= 1"),
    (["--workers", "-1"], "--workers -1: must be >= 0"),
    (["--threads", "0"], "--threads 0: must be >= 1"),
    (["--kl_weight", "-1"], "--kl_weight -1.0: must be >= 0"),
    (["--stage1_epochs", "-1"], "--stage1_epochs -1: must be in 0..59 with --epochs 61"),
    (["--epochs", "10", "--stage1_epochs", "20"],
     "--stage1_epochs 20: must be in 0..8 with --epochs 10, so that co-refining starts"),
    (["--img_size", "0", "0"], "--img_size 0 0: height and width must each be >= 16"),
    (["--milestones", "5", "2"], "--milestones 5 2: must be strictly ascending"),
    (["--epochs", "30", "--milestones", "20", "50"],
     "--milestones 20 50: must lie in 1..29, within the run's --epochs 30"),
    (["--milestones", "0", "5"], "--milestones 0 5: must lie in 1..60"),
    (["--gpu", "-1"], "--gpu -1: must be a CUDA device index >= 0"),
    (["--gpu", "0", "--device", "cpu"], "--gpu 0: contradicts --device cpu"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--arch", "resnet99"], "argument --arch: invalid choice: 'resnet99'"),
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--dataset", "nowhere"],
     "unknown dataset 'nowhere'; choose one of: cuhk03, cuhk03_labeled, duke, market, msmt17"),
    (["--pattern"], "--pattern needs --pattern_model"),
    (["--pattern", "--pattern_model", "missing.pt"], "(got: missing.pt: no such file)"),
    (["--pattern_model", "x.pt"], "--pattern_model x.pt without --pattern"),
    (["--pattern", "--noise_ratio", "0"], "--pattern with --noise_ratio 0"),
    (["--pretrained", "missing.pth"], "--pretrained missing.pth: no such file"),
    (["--init_from", "a.pt", "b.pt"], "--init_from a.pt: no such file"),
    (["--run_name", "a/b"], "--run_name 'a/b': must be a folder name"),
    (["--resume", "missing/last.pt"], "--resume missing/last.pt: no such checkpoint"),
    (["--numerics", "released", "--amp", "on"], "--amp on contradicts --numerics released"),
    (["--numerics", "released", "--matmul_convs"],
     "--matmul_convs contradicts --numerics released"),
]


@pytest.mark.parametrize("extra, message", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag_is_one_line(world, capsys, monkeypatch, extra, message):
    expect_error(train_core, base(world, "--stage1_epochs", "0", "--epochs", "61", *extra),
                 message, world, capsys, monkeypatch)


# A method's own flags given to another method, and PurifyNet's / Co-teaching's ranges.
METHOD_FLAG_CASES = [
    (train_core, ["--method", "coteaching", "--stage1_epochs", "5"],
     "--stage1_epochs is a core flag; --method coteaching does not read it"),
    (train_core, ["--method", "coteaching", "--selective"], "--selective is a core flag"),
    (train_core, ["--forget_rate", "0.2"],
     "--forget_rate is a coteaching flag; --method core does not read it"),
    (train_core, ["--method", "coteaching", "--forget_rate", "1"],
     "--forget_rate 1.0: must be in [0, 1)"),
    (train_core, ["--method", "coteaching", "--forget_epochs", "-1"],
     "--forget_epochs -1: must be >= 0"),
    (train_core, ["--method", "coteaching", "--forget_rate", "most"],
     "argument --forget_rate: invalid rate_or_auto value: 'most'"),
    (train_core, ["--method", "coteaching", "--forget_rate", "auto", "--forget_epochs", "0"],
     "--forget_rate auto with --forget_epochs 0: the rate is estimated after epoch 0"),
    (train_core, ["--method", "purifynet"], "argument --method: invalid choice: 'purifynet'"),
    (train_self, ["--method", "self", "--stage2_from", "best"],
     "--stage2_from is a purifynet flag; --method self does not read it"),
    (train_self, ["--method", "baseline", "--ramp_epochs", "10"],
     "--ramp_epochs is a purifynet flag"),
    (train_self, ["--method", "purifynet", "--kl_weight", "2"],
     "unrecognized arguments: --kl_weight 2"),
    (train_self, ["--method", "purifynet", "--purify_stage", "2"],
     "--purify_stage 2 needs --stage1_checkpoint, the last.pt or best.pt of a --purify_stage 1 "
     "run (got: none: no such file)"),
    (train_self, ["--method", "purifynet", "--purify_stage", "2", "--stage1_checkpoint",
                  "missing.pt"], "(got: missing.pt: no such file)"),
    (train_self, ["--method", "purifynet", "--stage1_checkpoint", "x.pt"],
     "--stage1_checkpoint x.pt is read by --purify_stage 2 only"),
    (train_self, ["--method", "purifynet", "--purify_stage", "1", "--stage2_from", "best"],
     "--stage2_from best with --purify_stage 1: there is no stage 2 in this run"),
    (train_self, ["--method", "purifynet", "--purify_stage", "1", "--stage2_view", "plain"],
     "--stage2_view plain with --purify_stage 1: there is no stage 2 in this run"),
    (train_self, ["--method", "self", "--stage2_view", "plain"],
     "--stage2_view is a purifynet flag; --method self does not read it"),
    (train_self, ["--method", "purifynet", "--ramp_epochs", "-1"],
     "--ramp_epochs -1: must be >= 0"),
    (train_self, ["--method", "purifynet", "--beta_shape", "0", "6"],
     "--beta_shape 0.0: must be two numbers > 0"),
    (train_self, ["--method", "purifynet", "--milestones", "45"],
     "--milestones 45: must lie in 1..40, within the run's --epochs 41"),
]


@pytest.mark.parametrize("module, extra, message", METHOD_FLAG_CASES,
                         ids=[" ".join(c[1]) for c in METHOD_FLAG_CASES])
def test_method_flags_are_one_line(world, capsys, monkeypatch, module, extra, message):
    expect_error(module, base(world, *extra), message, world, capsys, monkeypatch)


def test_bad_paths_are_one_line(world, tmp_path, capsys, monkeypatch):
    data, out = world
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("x")
    expect_error(train_self, base(world, "--data_dir", str(tmp_path / "nowhere")),
                 "no " + str(tmp_path / "nowhere" / "market") + " folder; prepare the dataset",
                 world, capsys, monkeypatch)
    expect_error(train_self, base(world, "--output_dir", str(not_a_folder / "res")),
                 f"--output_dir {not_a_folder / 'res'}: {not_a_folder} is a file, not a folder",
                 world, capsys, monkeypatch)
    ckpt = out / "earlier" / "last.pt"
    ckpt.write_bytes(b"")  # the name is all this check looks at
    expect_error(train_self, base(world, "--resume", str(ckpt), "--run_name", "other"),
                 f"--run_name other contradicts --resume {ckpt}", world, capsys, monkeypatch)


def test_read_only_output_folder_is_one_line(world, capsys, monkeypatch):
    read_only = Path("/sys/core_reid_runs")
    try:
        (read_only.parent / ".probe").write_text("")
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    expect_error(train_self, base(world, "--output_dir", str(read_only)),
                 f"--output_dir {read_only}: cannot write in /sys", world, capsys, monkeypatch)


def test_pretrained_file_that_is_not_a_state_dict(world, tmp_path, capsys, monkeypatch):
    text = tmp_path / "weights.pth"
    text.write_text("not weights")
    err = expect_error(train_self, base(world, "--pretrained", str(text), "--epochs", "1"),
                       f"--pretrained {text}: not a PyTorch state dict of tensors", world, capsys,
                       monkeypatch)
    assert "docs" not in err and "weights_only" not in err  # not torch's ten-line lecture
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    expect_error(train_self, base(world, "--pretrained", str(a_list), "--epochs", "1"),
                 "holds a list, not a state dict", world, capsys, monkeypatch)


def test_argparse_errors_are_one_line_from_the_shell(tmp_path):
    for script, argv, message in [
        ("train_self.py", ["--batchsize", "x"], "argument --batchsize: invalid int value"),
        ("prepare_market.py", ["--dst", str(tmp_path)], "the following arguments are required"),
        ("benchmarks/bench_eval.py", ["--queries", "0"], "must be >= 1"),
        ("benchmarks/bench_train.py", ["--steps", "-1"], "--steps -1: must be >= 0"),
        ("benchmarks/compare_protocols.py", ["--checkpoint", "missing.pt"],
         "--checkpoint missing.pt: no such file"),
        ("test.py", ["--checkpoint", "missing.pt"], "--checkpoint missing.pt: no such file"),
        ("test.py", ["--checkpoint", "x.pt", "--top", "many"],
         "argument --top: invalid int value: 'many'"),
    ]:
        proc = subprocess.run([sys.executable, script, *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert_one_line(proc.returncode, proc.stderr, message)


def test_device_cuda_without_a_cuda_device_is_one_line_not_a_cpu_run(tmp_path):
    """--device cuda where PyTorch sees no GPU (none visible here, whatever the machine): one
    line naming the build, before any data is made."""
    proc = subprocess.run([sys.executable, "train_self.py", "--demo", "--device", "cuda",
                           "--data_dir", str(tmp_path / "demo"), "--output_dir",
                           str(tmp_path / "res")], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert_one_line(proc.returncode, proc.stderr, f"--device cuda: PyTorch {torch.__version__} "
                    "sees no CUDA device")
    assert "install the build that matches the NVIDIA driver" in proc.stderr
    assert not (tmp_path / "demo").exists() and not (tmp_path / "res").exists()


@pytest.mark.parametrize("extra, message", [
    (["--time", "0"], "--time 0: must be >= 1 (minutes)"),
    (["--launcher", "slurm", "--time", "2"], "--time 2: must be >= 3 (minutes) with --launcher "
     "slurm"),
    (["--max_timeouts", "-1"], "--max_timeouts -1: must be >= 0"),
    (["--gpus_per_job", "-1"], "--gpus_per_job -1: must be >= 0"),
    (["--cpus_per_job", "0"], "--cpus_per_job 0: must be >= 1"),
    (["--noise", "random:1.5"], "--noise random:1.5: ratio '1.5' must be a number in (0, 1)"),
    (["--seeds", "-1"], "--seed -1: must be an integer >= 0"),
    (["--seed", "3"], "--seed is set by the grid for each run"),
    (["--lr", "-1"], "--lr -1.0: must be > 0"),
])
def test_reproduce_bad_input_is_one_line(world, capsys, monkeypatch, extra, message):
    import reproduce
    data, out = world
    expect_error(reproduce, ["--datasets", "market", "--noise", "random:0.2", "--data_dir",
                             str(data), "--output_dir", str(out / "grid"), *extra], message,
                 world, capsys, monkeypatch)


def test_prepare_market_bad_source_is_one_line(world, tmp_path, capsys, monkeypatch):
    expect_error(prepare_market, ["--src", str(tmp_path / "none.zip"), "--dst",
                                  str(tmp_path / "out")], "source not found", world, capsys,
                 monkeypatch)


# ---- wrong or mixed-up downloads ---------------------------------------------------------------

def expect_prepare_error(argv, message, src, capsys, monkeypatch):
    """prepare_market.py fails with one line naming ``message``; SRC is unchanged and no DST
    was written."""
    before = file_digests(src) if src.is_dir() else src.read_bytes()
    dst = Path(argv[argv.index("--dst") + 1])
    code, err = run_script(prepare_market, argv, capsys, monkeypatch)
    assert_one_line(code, err, message)
    assert (file_digests(src) if src.is_dir() else src.read_bytes()) == before
    assert not dst.exists()


def own_copy(download: Path, tmp_path: Path) -> Path:
    """A copy of a synthetic download the test may break."""
    return Path(shutil.copytree(download, tmp_path / "src" / download.name))


def test_download_of_another_dataset_names_it(synthetic_download, synthetic_downloads, tmp_path,
                                              capsys, monkeypatch):
    duke = synthetic_downloads("duke")
    expect_prepare_error(["--src", str(duke), "--dst", str(tmp_path / "market")],
                         "not a Market-1501 image name", duke, capsys, monkeypatch)
    expect_prepare_error(["--src", str(duke), "--dst", str(tmp_path / "market")],
                         "it looks like DukeMTMC-reID: use --dataset duke", duke, capsys,
                         monkeypatch)
    expect_prepare_error(["--dataset", "duke", "--src", str(synthetic_download), "--dst",
                          str(tmp_path / "duke")],
                         "it looks like Market-1501: use --dataset market",
                         synthetic_download, capsys, monkeypatch)
    msmt = synthetic_downloads("msmt17")
    expect_prepare_error(["--dataset", "cuhk03", "--src", str(msmt.parent), "--dst",
                          str(tmp_path / "cuhk03")],
                         "it looks like MSMT17: use --dataset msmt17", msmt.parent, capsys,
                         monkeypatch)


def test_cuhk03_without_detected_folder(synthetic_downloads, tmp_path, capsys, monkeypatch):
    src = own_copy(synthetic_downloads("cuhk03"), tmp_path)
    shutil.rmtree(src / "detected")
    expect_prepare_error(["--dataset", "cuhk03", "--src", str(src), "--dst",
                          str(tmp_path / "cuhk03")],
                         "no detected/bounding_box_train/, detected/bounding_box_test/, "
                         "detected/query/ in", src, capsys, monkeypatch)
    expect_prepare_error(["--dataset", "cuhk03", "--src", str(src), "--dst",
                          str(tmp_path / "cuhk03")],
                         "use --dataset cuhk03_labeled", src, capsys, monkeypatch)


def test_msmt17_without_or_with_wrong_list_files(synthetic_downloads, tmp_path, capsys,
                                                  monkeypatch):
    src = own_copy(synthetic_downloads("msmt17"), tmp_path)
    argv = ["--dataset", "msmt17", "--src", str(src), "--dst", str(tmp_path / "msmt17")]
    lists = {name: (src / name).read_text() for name in
             ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")}
    for name in lists:
        (src / name).unlink()
    expect_prepare_error(argv, "no list_train.txt, list_val.txt, list_query.txt, "
                         "list_gallery.txt in", src, capsys, monkeypatch)
    for name, text in lists.items():
        (src / name).write_text(text)
    gallery = lists["list_gallery.txt"].splitlines()
    (src / "list_gallery.txt").write_text("\n".join(gallery + ["0000/0000_999_01_x_0001_0.jpg 0"]))
    expect_prepare_error(argv, f"list_gallery.txt line {len(gallery) + 1} names "
                         "test/0000/0000_999_01_x_0001_0.jpg, which is not in the download",
                         src, capsys, monkeypatch)
    path, label = gallery[0].split(" ")
    (src / "list_gallery.txt").write_text("\n".join([f"{path} {int(label) + 1}", *gallery[1:]]))
    expect_prepare_error(argv, f"test/{path}: listed with label {int(label) + 1} but its name "
                         f"says person {int(label)}", src, capsys, monkeypatch)
    (src / "list_gallery.txt").write_text("\n".join(["just-a-path", *gallery[1:]]))
    expect_prepare_error(argv, "list_gallery.txt line 1 reads 'just-a-path', expected",
                         src, capsys, monkeypatch)


def test_camera_outside_the_dataset_and_tar_archives(synthetic_downloads, tmp_path, capsys,
                                                     monkeypatch):
    src = own_copy(synthetic_downloads("duke"), tmp_path)
    stray = src / "query" / "0001_c9_f0000001.jpg"
    shutil.copyfile(next((src / "query").iterdir()), stray)
    expect_prepare_error(["--dataset", "duke", "--src", str(src), "--dst", str(tmp_path / "d")],
                         "query/0001_c9_f0000001.jpg in the download: camera 9, but "
                         "DukeMTMC-reID has cameras 1..8", src, capsys, monkeypatch)
    tar = tmp_path / "MSMT17_V1.tar.gz"
    tar.write_bytes(b"not read")
    expect_prepare_error(["--dataset", "msmt17", "--src", str(tar), "--dst",
                          str(tmp_path / "m")], f"extract it first (tar xf {tar})", tar, capsys,
                         monkeypatch)


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "duke"], "prepare the dataset with: python prepare_market.py --dataset duke"),
    (["--dataset", "msmt17", "--demo"], "--demo trains on synthetic Market-1501 data"),
    (["--eval_protocol", "released", "--dataset", "cuhk03"],
     "it has no meaning for --dataset cuhk03"),
], ids=["not-prepared", "demo", "released-protocol"])
def test_dataset_flags_are_one_line(world, capsys, monkeypatch, extra, message):
    data, _ = world
    if "--eval_protocol" in extra:
        (data / "cuhk03").mkdir()  # past the missing-folder check, to the protocol
    expect_error(train_self, base(world, *extra), message, world, capsys, monkeypatch)


# ---- broken data -------------------------------------------------------------------------------

def first_train_image(data: Path) -> Path:
    folder = sorted((data / "market" / "train").iterdir())[0]
    return sorted(folder.iterdir())[0]


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\xff\xd8\xff\xe0" + b"0" * 64],
                         ids=["zero-byte", "not-an-image", "truncated-jpeg"])
@pytest.mark.parametrize("data_path, workers", [("cache", "0"), ("loader", "1")])
def test_broken_image_is_one_line_naming_it(world, capsys, monkeypatch, content, data_path,
                                            workers):
    data, out = world
    broken = first_train_image(data)
    broken.write_bytes(content)
    expect_error(train_self, base(world, "--epochs", "1", "--data_path", data_path,
                                  "--workers", workers),
                 f"cannot read image {broken}", world, capsys, monkeypatch)
    cache = data / "market" / ".cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if "train" in p.name]


def test_empty_identity_folder_is_one_line(world, capsys, monkeypatch):
    data, _ = world
    empty = data / "market" / "train" / "9999"
    empty.mkdir()
    expect_error(train_self, base(world, "--epochs", "1"),
                 f"identity folder {empty} holds no images", world, capsys, monkeypatch)


def rewrite(path: Path, mode: str, fmt: str) -> None:
    """Re-encode an image in another mode and format, keeping its (.jpg) name."""
    with Image.open(path) as img:
        converted = img.convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("data_path", ["cache", "loader"])
def test_odd_images_and_stray_files_train(world, data_path):
    data, out = world
    folders = sorted((data / "market" / "train").iterdir())
    images = [sorted(f.iterdir())[0] for f in folders[:3]]
    rewrite(images[0], "RGBA", "PNG")   # a PNG with alpha behind a .jpg name
    rewrite(images[1], "L", "JPEG")     # greyscale
    rewrite(images[2], "CMYK", "JPEG")  # CMYK
    (folders[0] / "Thumbs.db").write_bytes(b"\x00" * 16)  # stray non-image files
    (data / "market" / "train" / "README.txt").write_text("notes")
    result = train_self.main(base(world, "--epochs", "1", "--data_path", data_path))
    with np.load(Path(result["run_dir"]) / "noisy_labels.npz") as npz:
        assert len(npz["clean_labels"]) == 32  # the stray files are not samples
    assert np.isfinite(result["history"][0]["loss"])


# ---- broken run folders ----------------------------------------------------------------------

@pytest.fixture
def finished_run(world):
    result = train_self.main(base(world, "--method", "baseline", "--epochs", "2",
                                  "--eval_every", "1", "--run_name", "run"))
    return Path(result["run_dir"])


def test_truncated_last_checkpoint_names_best(world, finished_run, capsys, monkeypatch):
    last = finished_run / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    best_epoch = torch.load(finished_run / "best.pt", weights_only=False)["epoch"]
    expect_error(train_self, base(world, "--method", "baseline", "--epochs", "3",
                                  "--run_name", "run", "--resume"),
                 f"{last}: cannot read it, the file is damaged or truncated", world, capsys,
                 monkeypatch)
    _, err = run_script(train_self, base(world, "--method", "baseline", "--epochs", "3",
                                         "--run_name", "run", "--resume"), capsys, monkeypatch)
    assert f"{finished_run / 'best.pt'} (epoch {best_epoch}) is readable" in err
    (finished_run / "best.pt").write_bytes(b"garbage")
    expect_error(train_self, base(world, "--method", "baseline", "--epochs", "3",
                                  "--run_name", "run", "--resume"),
                 "no other checkpoint of this run is readable", world, capsys, monkeypatch)


@pytest.mark.parametrize("edit", ["value", "not-json"])
def test_hand_edited_metrics_is_not_overwritten(world, finished_run, capsys, monkeypatch, edit):
    metrics = finished_run / "metrics.json"
    if edit == "value":
        content = json.loads(metrics.read_text())
        content["history"][0]["rank1"] = 0.99
        metrics.write_text(json.dumps(content))
    else:
        metrics.write_text("{ truncated")
    expect_error(train_self, base(world, "--method", "baseline", "--epochs", "3",
                                  "--run_name", "run", "--resume"),
                 f"{metrics}: ", world, capsys, monkeypatch)


def test_resume_from_an_earlier_checkpoint_refuses_to_drop_later_epochs(
        world, finished_run, capsys, monkeypatch):
    early = finished_run / "epoch1.pt"
    shutil.copyfile(finished_run / "last.pt", early)  # after epoch 1
    train_self.main(base(world, "--method", "baseline", "--epochs", "4", "--eval_every", "1",
                         "--run_name", "run", "--resume"))  # the run goes on to epoch 3
    expect_error(train_self, base(world, "--method", "baseline", "--epochs", "4",
                                  "--run_name", "run", "--resume", str(early)),
                 "holds epochs up to 3 beyond the checkpoint's epoch 1, which resuming would "
                 "drop", world, capsys, monkeypatch)


# ---- test.py -------------------------------------------------------------------------------

def test_test_script_bad_input_is_one_line(world, finished_run, tmp_path, capsys, monkeypatch):
    data, out = world
    ckpt = finished_run / "last.pt"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    damaged = out / "earlier" / "damaged.pt"
    damaged.write_bytes(ckpt.read_bytes()[:1000])
    not_a_checkpoint = out / "earlier" / "list.pt"
    torch.save([torch.zeros(1)], not_a_checkpoint)
    moved = out / "earlier" / "moved.pt"  # without the run's noisy_labels.npz beside it
    shutil.copyfile(ckpt, moved)
    one_network = f"{ckpt} is a baseline checkpoint with one network; use --network 1"
    given = ["--checkpoint", str(ckpt)]
    for argv, message in [
        (["--checkpoint", str(damaged)], f"--checkpoint {damaged}: cannot read it, the file is "
         "damaged or truncated"),
        (["--checkpoint", str(not_a_checkpoint)], "not a checkpoint of train_self.py"),
        ([*given, "--network", "2"], f"--network 2: {one_network}"),
        ([*given, "--network", "both"], f"--network both: {one_network}"),
        ([*given, "--network", "3"], "argument --network: invalid choice: '3'"),
        ([*given, "--pictures", str(a_file)], f"--pictures {a_file}: {a_file} is a file"),
        (["--checkpoint", str(moved), "--pictures", str(tmp_path / "p")],
         f"--pictures needs the run's noisy_labels.npz beside the checkpoint, and "
         f"{moved.parent / 'noisy_labels.npz'} is missing"),
        ([*given, "--out", str(out)], f"--out {out}: is a folder; give a file name"),
        ([*given, "--out", str(a_file / "s.json")], f"--out {a_file / 's.json'}: {a_file} is "
         "a file"),
        ([*given, "--queries", "0"], "--queries 0: must be >= 1"),
        ([*given, "--top", "-1"], "--top -1: must be >= 1"),
        ([*given, "--label_examples", "0"], "--label_examples 0: must be >= 1"),
        ([*given, "--seed", "-1"], "--seed -1: must be an integer >= 0"),
        ([*given, "--workers", "-2"], "--workers -2: must be >= 0"),
        ([*given, "--img_size", "8", "8"], "--img_size 8 8: height and width must each be >= 16"),
        ([*given, "--gpu", "0", "--device", "cpu"], "--gpu 0: contradicts --device cpu"),
        ([*given, "--data_dir", str(tmp_path / "nowhere")],
         f"--data_dir {tmp_path / 'nowhere'}: no {tmp_path / 'nowhere' / 'market'} folder"),
        ([*given, "--dataset", "nowhere"], "unknown dataset 'nowhere'"),
        ([*given, "--eval_protocol", "best"], "argument --eval_protocol: invalid choice"),
    ]:
        expect_error(test_script, argv, message, world, capsys, monkeypatch)
