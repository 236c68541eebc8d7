"""``snn-data prepare / info / bench`` on synthetic archives (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_fixtures import gesture_trial, write_cifar10_dvs, write_gesture
from mlfsnn.cli._common import EXIT_USER_ERROR
from mlfsnn.cli.data import main

ROWS = [(1, 10_000, 30_000), (5, 40_000, 60_000), (11, 70_000, 90_000)]


@pytest.fixture
def gesture_args(tmp_path: Path) -> list[str]:
    trials = {f"user{u:02d}_led": (gesture_trial(ROWS, u), ROWS) for u in (1, 2, 25)}
    write_gesture(tmp_path / "g", trials, archive=True)
    return [
        "dataset=dvs_gesture",
        f"dataset.root={tmp_path / 'g'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "time_steps=4",
        "dataset.bin_ms=1",
    ]


def test_prepare_reports_splits_classes_and_statistics(gesture_args, capsys) -> None:
    assert main(["prepare", *gesture_args]) == 0
    out = capsys.readouterr().out
    assert "built in" in out and "dtype uint8" in out
    assert "train: 6 samples; per class 0:2 4:2 10:2" in out
    assert "test: 3 samples; per class 0:1 4:1 10:1" in out
    assert "mean " in out and "events per frame" in out and "maximum count" in out
    assert "the paper uses T=40: add +experiment=dvs_gesture" in out
    assert main(["prepare", *gesture_args]) == 0
    assert "(found)" in capsys.readouterr().out


def test_info_compares_found_with_expected(gesture_args, capsys) -> None:
    assert main(["info", *gesture_args]) == 0
    out = capsys.readouterr().out
    assert "found: tar" in out
    assert "2 train + 1 test recordings, label rows 6 / 3 (the paper: 1176 / 288)" in out
    assert "research.ibm.com/interactive/dvsgesture" in out and "cache: not built yet" in out
    main(["prepare", *gesture_args])
    capsys.readouterr()
    main(["info", *gesture_args])
    assert "cache: ready, 6 train / 3 test" in capsys.readouterr().out


def test_info_and_prepare_on_missing_data(tmp_path, capsys) -> None:
    args = [
        "+experiment=cifar10_dvs",
        f"dataset.root={tmp_path / 'none'}",
        f"paths.cache_dir={tmp_path / 'c'}",
    ]
    assert main(["info", *args]) == 1
    out = capsys.readouterr().out
    assert "airplane: MISSING" in out and "figshare.com/articles/dataset/CIFAR10-DVS_New/4724671" in out
    user_error(["prepare", *args])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CIFAR10-DVS (original release) incomplete") and "\n" not in err
    assert str(tmp_path / "none") in err and "figshare.com" in err
    assert main(["info", "dataset=dvs_gesture", "dataset.source=tonic", f"dataset.root={tmp_path}"]) == 1
    assert "api.figshare.com/v2/file/download/38022171" in capsys.readouterr().out


def test_cifar_prepare_and_bench(tmp_path, capsys) -> None:
    root = write_cifar10_dvs(tmp_path / "c", per_class=10, zipped=True)
    args = [
        "+experiment=cifar10_dvs",
        f"dataset.root={root}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.num_workers=0",
        "trainer.batch_size=8",
    ]
    user_error(["bench", *args])
    assert "no prepared cache" in capsys.readouterr().err
    assert main(["prepare", *args]) == 0
    out = capsys.readouterr().out
    assert "train: 90 samples" in out and "test: 10 samples" in out and "transposed [p, x, y]" in out
    assert main(["bench", *args]) == 0
    assert "samples of [10, 2, 42, 42]" in capsys.readouterr().out


def user_error(argv: list[str]) -> None:
    """``main(argv)`` must stop with the user-error exit code."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USER_ERROR == 2


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"]])
def test_help_lists_the_commands(argv, capsys) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: snn-data {download,prepare,info,bench}")
    assert all(f"  {c} " in out for c in ("download", "prepare", "info", "bench"))


@pytest.mark.parametrize("command", ["download", "prepare", "info", "bench"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help_exits_0_before_hydra_sees_it(command, flag, capsys) -> None:
    assert main([command, "dataset=dvs_gesture", flag]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: snn-data {command} [hydra overrides ...]")
    assert "configs/train.yaml" in captured.out and captured.err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "error: no command given"),
        (["frobnicate"], "error: unknown command 'frobnicate'"),
        (["info", "dataset=digits"], "error: snn-data handles the event datasets"),
        (["info", "dataset=nope"], "error: dataset=nope is not an option; dataset options: cifar10,"),
        (["info", "+experiment=digitz"], "error: experiment=digitz is not an option (did you mean digits"),
        (["prepare", "dataset=dvs_gesture", "dataset.rot=/d"], "error: dataset.rot is not a config key; did"),
        (["prepare", "dataset.no_such_key=1"], "error: dataset.no_such_key is not a config key"),
        (["prepare", "not-an-override"], "error: override 'not-an-override' cannot be parsed"),
        (["prepare", "-m", "time_steps=4,8"], "error: -m: snn-data takes one configuration"),
        (
            ["prepare", "time_steps=4,8"],
            "error: time_steps=4,8 is a sweep (one run per value): snn-data takes",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys) -> None:
    user_error(argv)
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1 and captured.out == ""
