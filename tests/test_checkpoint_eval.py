"""test.py on real checkpoints of tiny training runs: it reproduces the numbers the run logged,
scores both CORE peers, re-ranks, and draws pictures whose frames say what the protocol and the
run's label diagnostics say; the run's TensorBoard events hold the same pictures."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import test as test_script
import train_core
import train_self
from datasets import load_split
from eval_utils import EvalSet
from core_reid.pictures import (BLUE, FRAME, GREEN, RED, THUMB, label_correction_picture,
                      ranked_list_picture)
from datasets.noise import NoisyLabels, load_noise

TINY = ["--arch", "resnet18", "--pretrained", "none", "--img_size", "32", "16",
        "--batchsize", "8", "--workers", "0", "--lr", "0.05", "--milestones", "--eval_every", "1"]
TEST_KEYS = ("rank1", "rank5", "rank10", "mAP")


def frames(picture):
    """(colour name, top, left) of every framed image in an RGB array, in reading order:
    solid rings of exactly one frame colour around a thumbnail-sized box."""
    found = []
    ring = 2 * FRAME * (THUMB[0] + THUMB[1] + 2 * FRAME)
    for name, colour in (("blue", BLUE), ("green", GREEN), ("red", RED)):
        mask = (picture == np.array(colour, dtype=np.uint8)).all(axis=2)
        components, count = ndimage.label(mask)
        for k, box in enumerate(ndimage.find_objects(components), start=1):
            size = (box[0].stop - box[0].start, box[1].stop - box[1].start)
            if size == (THUMB[0] + 2 * FRAME, THUMB[1] + 2 * FRAME) and \
                    (components[box] == k).sum() >= ring:
                found.append((name, box[0].start, box[1].start))
    return sorted(found, key=lambda f: (f[1], f[2]))


def rows_of(found):
    """Frames grouped by the row they sit in."""
    rows = {}
    for name, top, _ in found:
        rows.setdefault(top, []).append(name)
    return [rows[top] for top in sorted(rows)]


@pytest.fixture(scope="module")
def core_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("res")
    result = train_core.main(["--data_dir", str(data_dir), "--output_dir", str(out), *TINY,
                              "--epochs", "3", "--stage1_epochs", "1"])
    return Path(result["run_dir"]), result


def logged(result, epoch):
    record = next(h for h in result["history"] if h["epoch"] == epoch)
    return {k: record[k] for k in TEST_KEYS}


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_test_script_reproduces_the_logged_numbers(core_run, name):
    run_dir, result = core_run
    checkpoint = run_dir / name
    epoch = torch.load(checkpoint, weights_only=False)["epoch"]
    payload = test_script.main(["--checkpoint", str(checkpoint), "--network", "both"])
    assert {k: payload[k] for k in TEST_KEYS} == payload["scored"]["both"]
    assert payload["scored"]["net1"] == logged(result, epoch)  # exactly, not approximately
    assert payload["scored"]["net2"] != payload["scored"]["net1"]
    assert all(0 <= v <= 1 for scores in payload["scored"].values() for v in scores.values())
    written = json.loads((run_dir / f"test_{checkpoint.stem}_both.json").read_text())
    assert written == payload and written["epoch"] == epoch


def test_test_script_scores_with_the_arithmetic_the_run_recorded(data_dir, tmp_path, capsys):
    """test.py takes the dtype, TF32 and memory format from the run's metrics.json (what the
    run logged was computed with them), not from what the run's flags would choose on this
    device; without the record, the flags decide."""
    result = train_self.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path), *TINY,
                              "--epochs", "1", "--amp", "on"])
    run_dir = Path(result["run_dir"])
    assert result["numerics"]["dtype"] == "bfloat16"
    capsys.readouterr()
    payload = test_script.main(["--checkpoint", str(run_dir / "last.pt")])
    assert "scoring arithmetic (as the run recorded): bfloat16, TF32 off" in capsys.readouterr().out
    assert payload["numerics"] == {"dtype": "bfloat16", "tf32": False, "channels_last": False,
                                   "matmul_convs": False}
    assert {k: payload[k] for k in TEST_KEYS} == logged(result, 0)  # exactly

    # A record that differs from what the flags choose here (--amp on: bf16) wins; TF32 acts on
    # CUDA only, where apply_tf32 sets it from this record.
    record = json.loads((run_dir / "metrics.json").read_text())
    record["numerics"].update(dtype="float32", tf32=True, channels_last=True)
    (run_dir / "metrics.json").write_text(json.dumps(record))
    payload = test_script.main(["--checkpoint", str(run_dir / "last.pt"), "--out",
                                str(tmp_path / "recorded.json")])
    assert payload["numerics"] == {"dtype": "float32", "tf32": True, "channels_last": True,
                                   "matmul_convs": False}

    (run_dir / "metrics.json").unlink()
    payload = test_script.main(["--checkpoint", str(run_dir / "last.pt"), "--out",
                                str(tmp_path / "flags.json")])
    assert "its metrics.json has no numerics block" in capsys.readouterr().out
    assert payload["numerics"] == {"dtype": "bfloat16", "tf32": False, "channels_last": False,
                                   "matmul_convs": False}


def test_a_run_with_matmul_convs_is_rescored_with_them_exactly(data_dir, tmp_path):
    """--matmul_convs is part of the run's arithmetic: test.py computes as the run did, so the
    scores are the logged ones to the last bit."""
    result = train_self.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path), *TINY,
                              "--epochs", "1", "--matmul_convs"])
    assert result["numerics"]["matmul_convs"] is True
    assert "single-position convolutions as matmuls" in (
        Path(result["run_dir"]) / "train.log").read_text()
    payload = test_script.main(["--checkpoint", str(Path(result["run_dir"]) / "last.pt")])
    assert payload["numerics"]["matmul_convs"] is True
    assert {k: payload[k] for k in TEST_KEYS} == logged(result, 0)


def test_rerank_at_training_time_and_in_the_test_script_agree(data_dir, tmp_path):
    result = train_self.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path), *TINY,
                              "--epochs", "2", "--rerank"])
    out = tmp_path / "scores.json"
    payload = test_script.main(["--checkpoint", str(Path(result["run_dir"]) / "last.pt"),
                                "--rerank", "--out", str(out)])
    assert {k: payload[k] for k in TEST_KEYS} == logged(result, 1)
    plain = test_script.main(["--checkpoint", str(Path(result["run_dir"]) / "last.pt"),
                              "--out", str(tmp_path / "plain.json")])
    assert plain["scored"] != payload["scored"]  # re-ranking changed the distances
    assert json.loads(out.read_text())["rerank"] is True


def test_pictures_show_what_the_protocol_and_the_diagnostics_say(core_run, tmp_path):
    run_dir, result = core_run
    pics = tmp_path / "pics"
    test_script.main(["--checkpoint", str(run_dir / "last.pt"), "--network", "both",
                      "--pictures", str(pics), "--queries", "5", "--top", "7",
                      "--label_examples", "1000", "--out", str(tmp_path / "s.json")])
    assert sorted(p.name for p in pics.iterdir()) == ["labels_net1.png", "labels_net2.png",
                                                      "ranked_both.png"]
    ranked = rows_of(frames(np.asarray(Image.open(pics / "ranked_both.png"))))
    assert len(ranked) == 5
    assert all(row[0] == "blue" and len(row) == 8 and set(row[1:]) <= {"green", "red"}
               for row in ranked)
    last = result["history"][-1]
    noise = load_noise(run_dir / "noisy_labels.npz")
    noisy, clean = int((~noise.is_clean).sum()), int(noise.is_clean.sum())
    for k in (1, 2):
        stats = last["networks"][k - 1]
        corrected = round(stats["noisy_corrected"] * noisy)
        broken = round((1 - stats["label_precision_clean"]) * clean)
        still_wrong = noisy - corrected
        found = [f[0] for f in frames(np.asarray(Image.open(pics / f"labels_net{k}.png")))]
        assert found.count("blue") == corrected + still_wrong + broken
        assert found.count("green") == corrected + broken
        assert found.count("red") == corrected + 2 * still_wrong + broken


def test_ranked_list_follows_the_protocol(prepared_market):
    """A hand-made ranking: the nearest gallery image is the query's identity seen by its own
    camera and the next is junk, both left out; then a match and a non-match."""
    gallery = load_split(prepared_market.parent, "market", "gallery")
    paths = list(gallery.paths[:5])
    query = EvalSet(None, np.array([7]), np.array([1]), paths[:1])
    pids, cams = np.array([7, -1, 7, 3, 7]), np.array([1, 2, 2, 2, 3])
    gal = EvalSet(None, pids, cams, paths)
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    picture = ranked_list_picture(distmat, query, gal, [0], top=3)
    assert rows_of(frames(picture)) == [["blue", "green", "red", "green"]]


def test_label_picture_counts_each_section(prepared_market):
    train = load_split(prepared_market.parent, "market", "train")
    true = train.targets
    noisy = true.copy()
    noisy[[0, 5, 10]] = (true[[0, 5, 10]] + 1) % train.num_classes
    labels = NoisyLabels(true, noisy, noisy == true, {})
    predicted = true.copy()
    predicted[5] = noisy[5]                                    # still wrong: memorised
    predicted[10] = (true[10] + 2) % train.num_classes         # still wrong: a third identity
    predicted[[1, 2]] = (true[[1, 2]] + 1) % train.num_classes  # broken
    found = [f[0] for f in frames(label_correction_picture(train.paths, labels, predicted))]
    # corrected: 1 (red, green); still wrong: 2 (red, red); broken: 2 (green, red)
    assert (found.count("blue"), found.count("green"), found.count("red")) == (5, 3, 7)
    few = [f[0] for f in frames(label_correction_picture(train.paths, labels, predicted,
                                                         per_section=1))]
    assert few.count("blue") == 3


def test_tensorboard_events_hold_the_pictures(core_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir, result = core_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"test/ranked_list", "labels/net1", "labels/net2"} <= set(events.Tags()["images"])
    assert {"test/rank1", "test/mAP", "net1/label_precision"} <= set(events.Tags()["scalars"])
    ranked = events.Images("test/ranked_list")
    assert [e.step for e in ranked] == [h["epoch"] for h in result["history"]]  # every test
    picture = np.asarray(Image.open(io.BytesIO(ranked[-1].encoded_image_string)))
    rows = rows_of(frames(picture))
    assert len(rows) == 4 and all(len(row) == 11 and row[0] == "blue" for row in rows)
    assert [e.step for e in events.Images("labels/net2")] == [2]
