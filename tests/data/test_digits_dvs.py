"""digits_dvs: emulated recordings generated on first use (atomic, locked, deterministic), then read
and framed by the CIFAR10-DVS path and `snn-data prepare` unchanged."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from mlfsnn.cli.data import main
from mlfsnn.data import build_datasets, check_dataset_config
from mlfsnn.data.events.aedat import read_aedat2_dvs128
from mlfsnn.data.events.digits_dvs import MANIFEST, ensure_recordings, recordings_folder
from mlfsnn.data.events.emulator import EmulatorParams
from mlfsnn.errors import ConfigError

CONFIG = Path(__file__).parents[2] / "configs" / "dataset" / "digits_dvs.yaml"
SMALL = EmulatorParams(per_class=2)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.aedat"))}


def test_generation_is_complete_and_deterministic_for_a_seed(tmp_path) -> None:
    folder, manifest = ensure_recordings(tmp_path / "a", SMALL, progress=False)
    assert folder == recordings_folder(tmp_path / "a", SMALL) and folder.name.startswith("emulated-")
    got = files_of(folder)
    assert sorted(got) == sorted(f"{d}/digits_dvs_{d}_{k}.aedat" for d in range(10) for k in range(2))
    assert manifest["recordings"] == 20 and manifest["emulator"] == SMALL.key()
    assert all(manifest["files"][rel]["bytes"] == len(blob) for rel, blob in got.items())
    again, _ = ensure_recordings(tmp_path / "b", SMALL, progress=False)
    assert files_of(again) == got  # same seed, same bytes
    other, _ = ensure_recordings(tmp_path / "a", EmulatorParams(per_class=2, seed=1), progress=False)
    assert other != folder and files_of(other) != got
    assert not list((tmp_path / "a").glob(".emulated-*"))  # no temporary folder left


def test_recordings_hold_the_digits_of_their_class_folder(tmp_path) -> None:
    from sklearn.datasets import load_digits

    folder, manifest = ensure_recordings(tmp_path, SMALL, progress=False)
    target = load_digits().target
    for rel, rec in manifest["files"].items():
        assert target[rec["index"]] == rec["label"] == int(rel.split("/")[0])
        ev = read_aedat2_dvs128((folder / rel).read_bytes(), rel)
        assert len(ev) == rec["events"] > 1000


def _generate_into(root: str, out) -> None:
    try:
        out.put(ensure_recordings(Path(root), SMALL, progress=False)[1]["build"])
    except BaseException as exc:  # pragma: no cover - reported by the test
        out.put(f"error: {exc!r}")


def test_a_second_process_waits_and_reuses_the_set(tmp_path) -> None:
    ctx = multiprocessing.get_context("fork")  # the children run numpy only
    out = ctx.Queue()
    procs = [ctx.Process(target=_generate_into, args=(str(tmp_path), out)) for _ in range(3)]
    for p in procs:
        p.start()
    builds = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), builds
    assert len(set(builds)) == 1 and not builds[0].startswith("error")  # generated once, then reused
    assert [p.name for p in tmp_path.iterdir() if p.name != ".locks"] == [
        recordings_folder(tmp_path, SMALL).name
    ]
    assert ensure_recordings(tmp_path, SMALL, progress=False)[1]["build"] == builds[0]


def test_a_damaged_set_or_a_killed_generation_is_replaced(tmp_path, caplog) -> None:
    folder, first = ensure_recordings(tmp_path, SMALL, progress=False)
    stale = tmp_path / f".{folder.name}.tmp-killed"
    stale.mkdir()
    (stale / "half.aedat").write_bytes(b"#!AER")
    victim = folder / "3" / "digits_dvs_3_1.aedat"
    victim.write_bytes(victim.read_bytes()[:100])
    _, second = ensure_recordings(tmp_path, SMALL, progress=False)
    assert second["build"] != first["build"] and "damaged emulated recordings" in caplog.text
    assert victim.stat().st_size == first["files"]["3/digits_dvs_3_1.aedat"]["bytes"]
    assert not stale.exists()
    (folder / "7" / "digits_dvs_7_0.aedat").unlink()
    assert ensure_recordings(tmp_path, SMALL, progress=False)[1]["build"] != second["build"]
    assert json.loads((folder / MANIFEST).read_text())["recordings"] == 20


def test_root_that_is_a_file_is_one_line(tmp_path) -> None:
    from mlfsnn.errors import DataError

    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match=r"dataset.root: .*f is a file"):
        ensure_recordings(tmp_path / "f", SMALL, progress=False)


def small_config(tmp_path: Path, **over) -> object:
    cfg = OmegaConf.load(CONFIG)
    cfg.root, cfg.cache_dir = str(tmp_path / "data"), str(tmp_path / "cache")
    cfg.emulator.per_class = 3
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_build_gives_frames_of_the_documented_shape(tmp_path) -> None:
    cfg = small_config(tmp_path)
    check_dataset_config(cfg)
    train, test, info = build_datasets(cfg, 10)
    assert (len(train), len(test)) == (20, 10)  # per class 3 recordings: the last 0.2 (1) is test
    assert (info.num_classes, info.in_channels, info.size, info.static) == (10, 2, (32, 32), False)
    assert any("EMULATED" in n for n in info.notes)
    x, y = train[0]
    assert tuple(x.shape) == (10, 2, 32, 32) and int(y) == 0
    # the cached counts are the events of the recording, per 30 ms bin from t = 0 and 4 x 4 cell
    folder = recordings_folder(Path(cfg.root), EmulatorParams(per_class=3))
    ev = read_aedat2_dvs128((folder / "0" / "digits_dvs_0_0.aedat").read_bytes(), "r")
    want = np.zeros((10, 2, 32, 32))
    keep = ev["t"] < 300_000
    np.add.at(
        want, (ev["t"][keep] // 30_000, ev["p"][keep].astype(int), ev["y"][keep] // 4, ev["x"][keep] // 4), 1
    )
    assert np.array_equal(x.numpy(), want) and want.sum() > 1000


def test_snn_data_prepare_on_a_generated_set(tmp_path, capsys) -> None:
    args = [
        "+experiment=digits_dvs",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.emulator.per_class=2",
        "dataset.test_fraction=0.5",
    ]
    assert main(["info", *args]) == 0
    assert "found: not generated yet" in capsys.readouterr().out
    assert main(["prepare", *args]) == 0
    out = capsys.readouterr().out
    assert "frames: paper framing, T=10 x 30 ms bins, shape [10, 2, 32, 32], origin=start" in out
    assert "built in" in out and "train: 10 samples; per class 0:1 1:1" in out and "test: 10 samples" in out
    entry = Path(out.split("cache: ")[1].split(" (")[0])
    frames = np.load(entry / "train_frames.npy", mmap_mode="r")
    assert frames.shape == (10, 10, 2, 32, 32)
    assert main(["prepare", *args]) == 0 and "(found)" in capsys.readouterr().out
    assert main(["info", *args]) == 0
    out = capsys.readouterr().out
    assert "found: 20 recordings" in out and "cache: ready, 10 train / 10 test" in out


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "emulator.threshold_off",
            0,
            r"dataset.emulator.threshold_off=0 is invalid: expected a number in \(0, 5\]",
        ),
        ("source", "tonic", r"dataset.source='tonic' is invalid: expected one of emulator"),
        ("split", "random", r"dataset.split='random' is invalid: expected one of sorted, shuffled"),
        ("test_fraction", 1.0, r"dataset.test_fraction=1.0 is invalid: expected a number in \(0, 1\)"),
    ],
)
def test_bad_values_stop_before_any_work(tmp_path, key: str, value, message: str) -> None:
    cfg = small_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=message):
        check_dataset_config(cfg)
    assert not (tmp_path / "data").exists()


def test_the_presets_have_the_event_recipes_shape() -> None:
    from mlfsnn.runner.config import validate
    from runner_utils import compose_cfg

    cfg = compose_cfg(["+experiment=digits_dvs"])
    validate(cfg)
    assert cfg.dataset.name == "digits_dvs" and cfg.time_steps >= 10 and cfg.model.input_norm is True
    assert cfg.time_steps * cfg.dataset.bin_ms == 3 * cfg.dataset.emulator.saccade_ms  # the whole recording
    sweep = compose_cfg(["+experiment=ablation_levels_digits_dvs"], return_hydra_config=True)
    params = dict(sweep.hydra.sweeper.params)
    assert params == {"neuron.levels": "1,2,3,4", "model.block": "ds,plain"}
    for levels in (1, 4):
        for block in ("ds", "plain"):
            job = compose_cfg(
                ["+experiment=ablation_levels_digits_dvs", f"neuron.levels={levels}", f"model.block={block}"]
            )
            validate(job)
            assert (job.neuron.levels, job.model.block, job.dataset.name) == (levels, block, "digits_dvs")
