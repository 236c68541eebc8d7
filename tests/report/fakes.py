"""Fake run directories for the snn-report tests, written by hand in the run-directory contract's
layout (what snn-train writes), and the golden-file and CSV helpers the report tests share.

Golden files: after an intended change to the report's layout, regenerate them with
``MLFSNN_UPDATE_GOLDEN=1 python -m pytest tests/report`` and review the diff.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import yaml

GOLDEN = Path(__file__).parent / "golden"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def config(
    dataset: str = "digits",
    levels: int = 3,
    depth: int = 8,
    time_steps: int = 2,
    widths: tuple[int, ...] = (4, 8, 8),
    seed: int = 1,
    lr: float = 0.1,
    block: str = "ds",
    val_fraction: float | None = None,
) -> dict[str, Any]:
    """A resolved config shaped like snn-train's (summary.json's ``config``); ``val_fraction`` None
    leaves the key out, as in runs made before the validation split existed."""
    data = {"name": dataset, "root": f"/data/{dataset}", "subset": None}
    if val_fraction is not None:
        data["val_fraction"] = val_fraction
    return {
        "dataset": data,
        "model": {"depth": depth, "widths": list(widths), "block": block, "shortcut_neuron": True},
        "neuron": {"levels": levels, "threshold": 0.6, "width": 1.0, "decay": 0.25},
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4},
        "trainer": {"epochs": 3, "batch_size": 32, "seed": seed, "resume": None, "num_workers": 0},
        "logger": {"wandb": {"enabled": False, "mode": "offline"}},
        "paths": {"data_dir": "/somewhere/data"},
        "time_steps": time_steps,
        "name": f"{dataset}-{block}{depth}-K{levels}-T{time_steps}",
    }


def layer_names(depth: int, block: str = "ds") -> list[str]:
    """The NeuronMonitor's names in network order; DS downsampling shortcuts carry a neuron of their own."""
    names = ["sn1"]
    for stage in (1, 2, 3):
        for b in range((depth - 2) // 6):
            names += [f"layer{stage}.{b}.sn1", f"layer{stage}.{b}.sn2"]
            if block == "ds" and stage > 1 and b == 0:
                names.append(f"layer{stage}.{b}.shortcut.2")
    return names


def make_run(
    run_dir: Path,
    cfg: dict[str, Any],
    accs: list[float | None],
    complete: bool = True,
    status: str = "ok",
    sops: float | None = None,
    params: int = 1000,
    val_accs: list[float] | None = None,
    dormant: float = 0.1,
    energy_ratio: float | None = None,
) -> None:
    """Write metrics.jsonl (one row per epoch; None = epoch not evaluated), summary.json, .hydra/.

    ``val_accs`` (one per evaluated epoch) adds the validation split's keys, as snn-train does when
    ``dataset.val_fraction`` > 0; ``dormant`` is the first layer's dormant ratio (later ones grow);
    ``energy_ratio`` adds the energy keys of every evaluation (ANN energy = ratio x SNN energy).
    """
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run_dir / ".hydra" / "overrides.yaml").write_text("[]\n")
    layers = layer_names(cfg["model"]["depth"], cfg["model"]["block"])
    vals = iter(val_accs or [])
    rows = []
    for epoch, acc in enumerate(accs, 1):
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": 10 * epoch,
            "train_loss": 1.0 / epoch,
            "train_acc": 50.0,
        }
        if acc is not None:
            row.update(test_loss=2.0 / epoch, test_acc=acc)
            if val_accs is not None:
                row.update(val_loss=1.5 / epoch, val_acc=next(vals))
            row["firing_rate"] = {n: round(0.05 * (i % 4 + 1) * epoch, 4) for i, n in enumerate(layers)}
            row["dormant_ratio"] = {n: round(dormant + 0.02 * i, 4) for i, n in enumerate(layers)}
            if sops is not None:
                row.update(sops_per_sample=sops, ann_macs_per_sample=4 * sops)
            if energy_ratio is not None:
                row.update(
                    energy_pj_per_sample=1e6,
                    ann_energy_pj_per_sample=energy_ratio * 1e6,
                    energy_ratio=energy_ratio,
                )
        row.update(lr=0.1, epoch_time_s=1.5, train_samples_per_s=100.0)
        rows.append(row)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not complete:
        return
    evaluated = [a for a in accs if a is not None]
    summary = {
        "status": status,
        "best_test_acc": max(evaluated),
        "best_epoch": accs.index(max(evaluated)) + 1,
        "final_test_acc": evaluated[-1],
        "num_params": params,
        "epochs_completed": len(accs),
        "wall_time_s": 12.3,
        "firing_rate": rows[-1].get("firing_rate"),
        "dormant_ratio": rows[-1].get("dormant_ratio"),
        "energy_ratio": rows[-1].get("energy_ratio"),
        "world_size": 1,
        "device": "cpu",
        "config": cfg,
    }
    if val_accs is not None:
        best = max((r for r in rows if "val_acc" in r), key=lambda r: r["val_acc"])  # first of ties
        summary.update(
            best_val_acc=best["val_acc"], best_val_epoch=best["epoch"], test_acc_at_best_val=best["test_acc"]
        )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def check_golden(path: Path, name: str) -> None:
    """``path`` (real output) equals golden/``name``; MLFSNN_UPDATE_GOLDEN=1 rewrites the golden file."""
    golden = GOLDEN / name
    if os.environ.get("MLFSNN_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(path.read_text())
    assert path.read_text() == golden.read_text(), f"{name} differs from {golden} (see the module docstring)"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
