"""The synthetic pretraining (``--pretrained synthetic``): made once, then reused (fast and
identical), made again when damaged, loaded by a run as its starting backbone, and drawn from
other people and other images than the run's data. A tiny pretraining spec keeps it quick."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import file_digests

from core_reid import engine
from core_reid import pretraining
import train_core
from datasets.market1501 import DOWNLOAD_FOLDER
from datasets.synthetic import PRESETS, _plan
from datasets.synthetic_shapes import SHAPES
from core_reid.options import parse_args
from core_reid.pretraining import DEFAULT_SPEC, PretrainingSpec, cache_path, synthetic_backbone

TINY_SPEC = PretrainingSpec(identities=6, images_per_id=6, test_identities=3, epochs=2,
                            milestones=(1,), batchsize=8)
TINY = ["--arch", "resnet18", "--img_size", "32", "16", "--batchsize", "8", "--workers", "0",
        "--lr", "0.05", "--milestones"]


def tiny_args(data_dir: Path, *extra: str):
    return parse_args(train_core.build_parser(), ["--data_dir", str(data_dir), *TINY,
                                                  "--pretrained", "synthetic", *extra])


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def made(data_dir):
    """The first call: generates the separate download, trains, caches."""
    started = time.time()
    state, record = synthetic_backbone(tiny_args(data_dir), engine.train, TINY_SPEC)
    return state, record, time.time() - started


def test_the_cache_is_made_once_then_reused_fast_and_identical(data_dir, made):
    state, record, first_seconds = made
    path = Path(record["cache"])
    assert not record["reused"] and path.is_file()
    assert path.parent == (data_dir / "synthetic_pretraining").resolve()
    assert not (path.parent / "runs").exists()  # the training run is cleaned up
    assert record["source"] == "synthetic" and record["generator"]["seed"] == 2022
    assert record["epochs"] == 2 and record["train_images"] == 6 * 6
    stamp = path.stat().st_mtime_ns
    started = time.time()
    again, second = synthetic_backbone(tiny_args(data_dir), engine.train, TINY_SPEC)
    assert time.time() - started < first_seconds / 5
    assert second["reused"] and path.stat().st_mtime_ns == stamp
    assert same_tensors(state, again)
    assert {k: v for k, v in second.items() if k not in ("reused", "seconds")} == {
        k: v for k, v in record.items() if k not in ("reused", "seconds")}


def test_the_cache_is_keyed_by_architecture_image_size_and_generator(data_dir, made):
    path = Path(made[1]["cache"])
    assert path.name.startswith("resnet18_32x16_")
    others = [cache_path(data_dir, "resnet34", [32, 16], TINY_SPEC),
              cache_path(data_dir, "resnet18", [64, 32], TINY_SPEC),
              cache_path(data_dir, "resnet18", [32, 16],
                         dataclasses.replace(TINY_SPEC, generator_seed=7)),
              cache_path(data_dir, "resnet18", [32, 16], dataclasses.replace(TINY_SPEC,
                                                                             epochs=3))]
    assert len({p.resolve() for p in others} | {path}) == 5


def test_a_damaged_cache_is_made_again(data_dir, made, tmp_path, capsys):
    state, record, _ = made
    shutil.copytree(data_dir / "synthetic_pretraining", tmp_path / "synthetic_pretraining")
    (tmp_path / "market").symlink_to(data_dir / "market")  # the run's data: only checked
    damaged = tmp_path / "synthetic_pretraining" / Path(record["cache"]).name
    damaged.write_bytes(damaged.read_bytes()[:1000])  # truncated
    remade, again = synthetic_backbone(tiny_args(tmp_path), engine.train, TINY_SPEC)
    assert "is damaged" in capsys.readouterr().out
    assert not again["reused"] and Path(again["cache"]) == damaged.resolve()
    assert same_tensors(state, remade)  # the same seeds train the same backbone on the CPU
    assert same_tensors(state, torch.load(damaged, weights_only=True)["state_dict"])


def test_a_run_from_synthetic_starts_from_the_cached_backbone(data_dir, made, tmp_path,
                                                               monkeypatch):
    state, record, _ = made
    monkeypatch.setattr(pretraining, "DEFAULT_SPEC", TINY_SPEC)
    starts = []
    build_peers = engine.build_peers

    def recording_build_peers(*args, **kwargs):
        peers = build_peers(*args, **kwargs)
        starts.append([{k: v.clone() for k, v in p.net.backbone.state_dict().items()}
                       for p in peers])
        return peers

    monkeypatch.setattr(engine, "build_peers", recording_build_peers)
    result = train_core.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path),
                              *TINY, "--pretrained", "synthetic", "--epochs", "2",
                              "--stage1_epochs", "0"])
    assert len(starts) == 1 and len(starts[0]) == 2
    assert all(same_tensors(state, backbone) for backbone in starts[0])
    metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    pretrained = metrics["pretrained"]
    assert pretrained["source"] == "synthetic" and pretrained["reused"]
    assert pretrained["cache"] == record["cache"] and pretrained["generator"]["seed"] == 2022
    log = (Path(result["run_dir"]) / "train.log").read_text()
    assert f"backbone: synthetic pretraining, {record['cache']} (cached earlier)" in log


def test_the_pretraining_people_and_images_are_not_the_runs(made, synthetic_download):
    record = made[1]
    download = next(Path(record["cache"]).parent.glob("data_*")) / DOWNLOAD_FOLDER

    def images(root: Path) -> set[str]:
        return {digest for name, digest in file_digests(root).items() if name.endswith(".jpg")}

    assert images(download) and not images(download) & images(synthetic_download)
    market = SHAPES["market"]
    pretraining_people = set(_plan(TINY_SPEC.generator(), market)[0]) | set(
        _plan(DEFAULT_SPEC.generator(), market)[0])
    for preset in ("tiny", "demo"):  # the test data and the demo's
        assert PRESETS[preset].seed != DEFAULT_SPEC.generator_seed
        assert not set(_plan(PRESETS[preset], market)[0]) & pretraining_people
