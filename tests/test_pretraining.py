"""The synthetic pretraining (``--pretrained synthetic``): made once, then reused (fast and
identical), made again when damaged, loaded by a run as its starting backbone, and drawn from
other people and other images than the run's data. A tiny pretraining spec keeps it quick."""
from __future__ import annotations

import dataclasses
import hashlib
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
from core_reid.pretraining import (DEFAULT_SPEC, PretrainingSpec, cache_path, computation,
                                   file_sha256, synthetic_backbone)

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
    by = computation(tiny_args(data_dir))
    assert cache_path(data_dir, "resnet18", [32, 16], TINY_SPEC, by).resolve() == path
    others = [cache_path(data_dir, "resnet34", [32, 16], TINY_SPEC, by),
              cache_path(data_dir, "resnet18", [64, 32], TINY_SPEC, by),
              cache_path(data_dir, "resnet18", [32, 16],
                         dataclasses.replace(TINY_SPEC, generator_seed=7), by),
              cache_path(data_dir, "resnet18", [32, 16], dataclasses.replace(TINY_SPEC,
                                                                             epochs=3), by)]
    assert len({p.resolve() for p in others} | {path}) == 5


def test_the_cache_is_keyed_by_the_code_torch_and_threads(data_dir, tmp_path, monkeypatch):
    """Whatever changes the pretraining's bits changes the cache's name: the code it runs (a
    source file's code, not its comments or docstrings), the torch version, the threads."""
    def key(*extra):
        return cache_path(data_dir, "resnet18", [32, 16], TINY_SPEC,
                          computation(tiny_args(data_dir, *extra)))

    source = tmp_path / "step.py"
    source.write_text('"""Says why."""\n\ndef step(x):\n    return x + 1  # one more\n')
    monkeypatch.setattr(pretraining, "PRETRAINING_SOURCES",
                        (*pretraining.PRETRAINING_SOURCES, str(source)))
    before = key()
    source.write_text('"""Says why, in other words."""\n\ndef step(x):\n\n'
                      '    return x + 1  # a comment\n')
    assert key() == before  # words and layout alone
    source.write_text('"""Says why."""\n\ndef step(x):\n    return x + 2  # one more\n')
    assert key() != before
    changed = key()
    threads = torch.get_num_threads()
    assert key("--threads", str(threads)) == changed  # the default, given
    assert key("--threads", str(threads + 1)) != changed
    assert key("--data_path", "loader") != changed  # the arithmetic's path
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert key() != changed
    with pytest.raises(FileNotFoundError):  # a listed source that moved fails loudly
        monkeypatch.setattr(pretraining, "PRETRAINING_SOURCES", ("no_such_module.py",))
        key()


def test_the_cache_checksum_is_recorded_and_a_new_key_says_what_changed(
        data_dir, made, tmp_path, monkeypatch, capsys):
    state, record, _ = made
    path = Path(record["cache"])
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["computation"] == json.loads(json.dumps(computation(tiny_args(data_dir))))
    again = synthetic_backbone(tiny_args(data_dir), engine.train, TINY_SPEC)[1]
    assert again["reused"] and again["sha256"] == record["sha256"]

    shutil.copytree(data_dir / "synthetic_pretraining", tmp_path / "synthetic_pretraining")
    (tmp_path / "market").symlink_to(data_dir / "market")
    source = tmp_path / "step.py"
    source.write_text("def step(x):\n    return x + 1\n")
    monkeypatch.setattr(pretraining, "PRETRAINING_SOURCES",
                        (*pretraining.PRETRAINING_SOURCES, str(source)))
    capsys.readouterr()
    remade, other = synthetic_backbone(tiny_args(tmp_path), engine.train, TINY_SPEC)
    code = record["computation"]["code"]
    assert (f"note: not reusing {path.name}: it was made with computation.code {code} (now "
            f"{other['computation']['code']})") in capsys.readouterr().out
    assert not other["reused"] and Path(other["cache"]).name != path.name
    assert same_tensors(state, remade)  # the same computation: the same bits
    assert other["sha256"] == file_sha256(Path(other["cache"])) != record["sha256"]


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
    assert pretrained["sha256"] == record["sha256"]
    assert pretrained["computation"]["threads"] == metrics["numerics"]["threads"]
    log = (Path(result["run_dir"]) / "train.log").read_text()
    assert (f"backbone: synthetic pretraining, {record['cache']} (cached earlier), sha256 "
            f"{record['sha256'][:16]}") in log
    # a resumed run keeps the block it started with
    resumed = train_core.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path),
                               *TINY, "--pretrained", "synthetic", "--epochs", "3",
                               "--stage1_epochs", "0", "--resume"])
    assert resumed["pretrained"] == pretrained


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
