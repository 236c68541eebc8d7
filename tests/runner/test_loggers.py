"""The logger group: TensorBoard and CSV beside wandb, read back with their own readers.

TensorBoard event files are read with tensorboard's ``EventAccumulator`` (the reader TensorBoard's
own server is built on) and, for a sweep, with the HParams plugin's backend: the tags, steps and
values must be metrics.jsonl's, also after a resume, and a 2-point multirun must show as two
sessions with their swept value and best accuracy in the HParams view.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlfsnn.errors import ConfigError
from mlfsnn.runner.config import validate
from mlfsnn.runner.loggers import chosen_loggers, flat_row
from mlfsnn.runner.schema import check_overrides
from mlfsnn.runner.tensorboard import scalars, tag_of
from mlfsnn.runner.trainer import train
from runner_utils import TINY, compose_cfg, one_line_error, read_metrics, sigterm_at_step

BIN = Path(sys.executable).parent
BASE = [a for a in TINY if a != "logger.wandb.enabled=false"]  # the loggers are chosen per test
LOGGED = [*BASE, "logger=[csv,tensorboard]"]
# 3 epochs, a step schedule: the lr changes each epoch, and a resume may extend the run
RESUMABLE = [*LOGGED, "trainer.epochs=3", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"]


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _assert_scalars_equal_metrics(run_dir: Path) -> None:
    """Every scalar tag holds, for each epoch, the value of metrics.jsonl's row (float32), once."""
    rows = read_metrics(run_dir, drop_timing=False)
    acc = _events(run_dir / "tensorboard")
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in scalars(row).items():
            expected.setdefault(tag, []).append((row["epoch"], value))
    logged = {t for t in acc.Tags()["scalars"] if not t.startswith("hparams/")}
    assert logged == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag  # each epoch once, in order
        for (_, v), (_, want) in zip(got, points, strict=True):
            assert v == pytest.approx(want, rel=1e-6, abs=1e-30), tag


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("logged")
    train(compose_cfg([*BASE, "logger=all", "tags=[baseline,v2]"]), run_dir)
    return run_dir


def test_tags_follow_the_documented_rule() -> None:
    assert tag_of("train_loss") == "train/loss" and tag_of("test_acc") == "test/acc"
    assert tag_of("val_acc") == "val/acc" and tag_of("train_samples_per_s") == "train/samples_per_s"
    assert tag_of("lr") == "train/lr" and tag_of("epoch_time_s") == "train/epoch_time_s"
    assert tag_of("energy_ratio") == "energy/energy_ratio"
    assert tag_of("sops_per_sample") == "energy/sops_per_sample"
    row = {"epoch": 3, "best": True, "test_acc": 50.0, "firing_rate": {"sn1": 0.5}, "x": None}
    assert scalars(row) == {"test/acc": 50.0, "firing_rate/sn1": 0.5}


def test_tensorboard_scalars_are_the_metrics_jsonl_rows(logged_run: Path) -> None:
    _assert_scalars_equal_metrics(logged_run)
    tags = set(_events(logged_run / "tensorboard").Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "test/loss", "test/acc", "train/lr", "train/samples_per_s"):
        assert tag in tags
    assert {"energy/energy_ratio", "energy/energy_pj_per_sample", "firing_rate/sn1"} <= tags
    assert "dormant_ratio/layer3.0.sn2" in tags


def test_csv_rows_are_the_metrics_jsonl_rows(logged_run: Path) -> None:
    with (logged_run / "csv" / "metrics.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    rows = read_metrics(logged_run, drop_timing=False)
    assert len(table) == len(rows) == 2
    for line, row in zip(table, rows, strict=True):
        flat = flat_row(row)
        assert set(line) >= set(flat)
        for key, value in flat.items():
            cell = line[key]
            expected = str(value) if isinstance(value, bool) else value
            assert (cell if isinstance(value, bool) else float(cell)) == expected, key
        assert all(line[k] == "" for k in set(line) - set(flat))  # columns this row has no value for


def test_tags_reach_every_logger(logged_run: Path) -> None:
    acc = _events(logged_run / "tensorboard")
    text = acc.Tensors("tags/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "baseline, v2"
    from tensorboard.plugins.hparams import metadata

    start = metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["tags"].string_value == "baseline,v2"
    hparams = (logged_run / "csv" / "hparams.yaml").read_text()
    assert "tags:\n- baseline\n- v2" in hparams
    # wandb (disabled in tests) was started with the preset tags and then these; checkpoints carry them
    state = torch.load(logged_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["wandb_run"]["tags"] == ["baseline", "v2"]
    assert json.loads((logged_run / "summary.json").read_text())["config"]["tags"] == ["baseline", "v2"]


def test_snn_eval_plots_become_tensorboard_images(logged_run: Path, capsys: pytest.CaptureFixture) -> None:
    from mlfsnn.cli.eval import main

    assert main([f"checkpoint={logged_run}", "plots=true"]) == 0
    assert "image(s) to" in capsys.readouterr().out
    acc = _events(logged_run / "tensorboard")
    assert set(acc.Tags()["images"]) == {"eval/spike_raster", "eval/firing_rate_per_step"}
    (image,) = acc.Images("eval/spike_raster")
    assert image.encoded_image_string == (logged_run / "eval_spike_raster.png").read_bytes()
    assert image.step == json.loads((logged_run / "eval.json").read_text())["epoch"]
    assert "tensorboard_run" not in json.loads((logged_run / "eval.json").read_text())
    _assert_scalars_equal_metrics(logged_run)  # the training run's curves are untouched


def test_resume_after_sigterm_continues_the_event_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sigterm_at_step(monkeypatch, 5)  # in epoch 2 (3 steps per epoch)
    assert train(compose_cfg(RESUMABLE), tmp_path)["status"] == "preempted"
    monkeypatch.undo()
    train(compose_cfg([*RESUMABLE, "trainer.resume=auto"]), tmp_path)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [e.step for e in _events(tmp_path / "tensorboard").Scalars("train/loss")] == [1, 2, 3]
    _assert_scalars_equal_metrics(tmp_path)


def test_epochs_logged_after_the_checkpoint_are_not_duplicated(tmp_path: Path) -> None:
    """A process that logged epoch 2 and lost its checkpoint (here: a torn last.pt) resumes from
    epoch 1 and logs epoch 2 again: readers keep the new one only (the writer's purge_step)."""
    train(compose_cfg([*RESUMABLE, "trainer.epochs=2"]), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    train(compose_cfg([*RESUMABLE, "trainer.resume=auto"]), tmp_path)  # from last.prev.pt (epoch 1)
    acc = _events(tmp_path / "tensorboard")
    assert [e.step for e in acc.Scalars("test/acc")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("hparams/best_test_acc")] == [3]  # the first run's view is gone
    _assert_scalars_equal_metrics(tmp_path)
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


def _session_groups(logdir: Path, metric: str, hparam: str) -> dict[str, tuple[float, dict[str, float]]]:
    """``{session: (hparam value, {metric tag: value})}`` as TensorBoard's HParams tab lists them."""
    from tensorboard import context
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=MultiplexerDataProvider(mux, str(logdir))
    )
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100)
    request.allowed_statuses.extend([api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_UNKNOWN])
    request.col_params.add(metric=api_pb2.MetricName(tag=metric))
    request.col_params.add(hparam=hparam)
    handler = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb), "", request)
    out: dict[str, Any] = {}
    for group in handler.run().session_groups:
        values = {m.name.tag: m.value for m in group.metric_values}
        out[group.name] = (group.hparams[hparam].number_value, values)
    return out


def test_a_sweep_lines_up_in_the_hparams_view(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [str(BIN / "snn-train"), "-m", *BASE, "trainer.epochs=1", "logger=tensorboard"]
    cmd += ["neuron.levels=1,3", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    groups = _session_groups(sweep, "hparams/best_test_acc", "neuron.levels")
    assert set(groups) == {"0/tensorboard", "1/tensorboard"}
    for num, levels in ((0, 1.0), (1, 3.0)):
        value, metrics = groups[f"{num}/tensorboard"]
        best = json.loads((sweep / str(num) / "summary.json").read_text())["best_test_acc"]
        assert value == levels and metrics["hparams/best_test_acc"] == pytest.approx(best, rel=1e-6)
        assert set(metrics) == {"hparams/best_test_acc", "hparams/final_test_acc"}  # no validation split


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ([], {"wandb"}),
        (["logger=tensorboard"], {"tensorboard"}),
        (["logger=[tensorboard,wandb]"], {"tensorboard", "wandb"}),
        (["logger=all"], {"csv", "tensorboard", "wandb"}),
        (["logger=none"], set()),
        (["logger=[]"], set()),
        (["logger.wandb.enabled=false"], set()),  # the spelling of every earlier release
        (["logger=all", "logger.csv.enabled=false"], {"tensorboard", "wandb"}),
    ],
)
def test_logger_choices(overrides: list[str], names: set[str]) -> None:
    check_overrides(overrides)
    cfg = compose_cfg(overrides)
    validate(cfg)
    assert set(chosen_loggers(cfg)) == names


def test_default_loggers_are_wandb_offline() -> None:
    cfg = compose_cfg([], return_hydra_config=True)
    assert set(chosen_loggers(cfg)) == {"wandb"}
    assert cfg.hydra.runtime.choices.logger == "default"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["logger=tensorboard", "logger.wandb.enabled=false"], "choose it with logger=[tensorboard,wandb]"),
        (["logger.csv.enabled=true"], "csv is not among the loggers"),
        (["logger=tensorbord"], "did you mean tensorboard"),
        (["dataset=[digits,cifar10]"], "dataset takes one option"),
        (["+logger.mlflow.enabled=true"], "logger.mlflow.enabled is not a config key"),
    ],
)
def test_logger_mistakes_are_one_line(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=r"^[^\n]*$") as err:
        check_overrides(overrides)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (
            "logger.tensorboard.hparams=[model.dept]",
            "model.dept is not a config key; did you mean model.depth",
        ),
        ("tags=solo", "tags='solo' is invalid: expected a list"),
        ("logger.tensorboard.enabled=maybe", "logger.tensorboard.enabled='maybe' is invalid"),
        ("print_config=sometimes", "print_config='sometimes' is invalid"),
    ],
)
def test_invalid_logger_values_name_the_key(override: str, key: str) -> None:
    cfg = compose_cfg(["logger=tensorboard", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_an_unchosen_logger_key_in_one_line(tmp_path: Path) -> None:
    cmd = [str(BIN / "snn-train"), *BASE, "logger=tensorboard", "logger.wandb.enabled=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    one_line_error(proc, "logger.wandb.enabled=false", "logger=[tensorboard,wandb]")
    assert not (tmp_path / "outputs").exists()


def test_config_tree_shows_every_group_resolved() -> None:
    from rich.console import Console

    from mlfsnn.cli.console import config_tree, wants_tree

    cfg = compose_cfg(["+experiment=digits", "print_config=true"])
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(config_tree(cfg, {"experiment": "digits", "hydra/launcher": "basic"}))
    text = console.export_text()
    assert "chosen: experiment=digits" in text and "hydra/launcher" not in text
    for line in ("├── dataset", "widths: [16, 32, 64]", "name: digits-ds8-K3-T4", "tags: []"):
        assert line in text, line
    assert wants_tree(cfg) and not wants_tree(compose_cfg(["print_config=false"]))


def test_summary_line_lists_what_the_run_directory_holds(logged_run: Path) -> None:
    from mlfsnn.cli.console import summary_line
    from mlfsnn.runner.rundir import RUN_FILES

    summary = json.loads((logged_run / "summary.json").read_text())
    line = summary_line(logged_run, summary, RUN_FILES)
    assert line.startswith(f"run directory: {logged_run} (best test acc {summary['best_test_acc']:.2f}%")
    assert "2 epoch(s)" in line and "checkpoints/, " in line and "tensorboard/, csv/" in line


def _without(package: str, module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``module``'s CLI in a Python that cannot import ``package``, as after a ``--no-deps`` install:
    ``sys.modules[name] = None`` is Python's own mark for a module that must fail to import."""
    code = (
        f"import sys; sys.modules[{package!r}] = None; sys.argv = ['cli', *sys.argv[1:]]; "
        f"from {module} import main; sys.exit(main())"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
@pytest.mark.parametrize("multirun", [False, True])
def test_a_logger_whose_package_is_missing_is_one_line_before_any_run(
    tmp_path: Path, package: str, multirun: bool
) -> None:
    sweep = ["-m", "trainer.seed=1,2"] if multirun else []
    proc = _without(package, "mlfsnn.cli.train", [*sweep, *BASE, f"logger={package}"], tmp_path)
    one_line_error(proc, f"logger={package} needs the {package} package", f"logger.{package}.enabled=false")
    assert list(tmp_path.iterdir()) == []  # no run or sweep directory


def test_snn_eval_without_wandb_says_so_and_snn_export_needs_no_logger(
    logged_run: Path, tmp_path: Path
) -> None:
    args = [f"checkpoint={logged_run}", f"out={tmp_path / 'eval.json'}"]
    one_line_error(
        _without("wandb", "mlfsnn.cli.eval", args, tmp_path), "logger=wandb needs the wandb package"
    )
    assert not (tmp_path / "eval.json").exists()
    proc = _without("wandb", "mlfsnn.cli.eval", [*args, "logger.wandb.enabled=false"], tmp_path)
    assert proc.returncode == 0 and json.loads((tmp_path / "eval.json").read_text())["test_acc"] >= 0, (
        proc.stderr
    )
    export = [f"checkpoint={logged_run}", f"out={tmp_path / 'model.nir'}"]
    proc = _without("wandb", "mlfsnn.cli.export", export, tmp_path)
    assert proc.returncode == 0 and (tmp_path / "model.nir").is_file(), proc.stderr[-2000:]
