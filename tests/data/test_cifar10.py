"""CIFAR10 through torchvision's real loader, from files written in the `cifar-10-batches-py` format."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mlfsnn.data import DataError, build_datasets
from mlfsnn.runner.trainer import train
from runner_utils import compose_cfg


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> dict[str, str]:
    """Write the 7 files of the python CIFAR10 release (5 train batches, test batch, meta).

    Returns each file's md5, which the test hands to torchvision's integrity check.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        entry = {
            "batch_label": f"{name} of 5",
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": labels, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from torchvision.datasets import CIFAR10

    md5 = write_cifar10(tmp_path / "c10")
    # torchvision checks every file against the real release's md5; our files are synthetic, so the
    # test (not the loader) swaps in their checksums.
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return tmp_path / "c10"


def test_cifar10_loads_the_standard_layout(cifar_root: Path) -> None:
    cfg = compose_cfg([f"dataset.root={cifar_root}", "dataset.augment=false"])
    _, test_set, info = build_datasets(cfg.dataset, 4)
    assert (info.train_samples, info.test_samples, info.num_classes, info.in_channels) == (100, 30, 10, 3)
    x, y = test_set[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    # The first test image, normalised with the release's mean and std.
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    img = torch.tensor(raw["data"][0], dtype=torch.float32).view(3, 32, 32) / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)
    torch.testing.assert_close(x, (img - mean) / std)
    assert y == raw["labels"][0]


def test_cifar10_training_run_on_standard_files(cifar_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        [
            f"dataset.root={cifar_root}",
            "dataset.subset=40",
            "model.depth=8",
            "model.widths=[4,8,8]",
            "time_steps=2",
            "trainer.epochs=1",
            "trainer.batch_size=20",
            "trainer.num_workers=0",
            "trainer.progress=false",
            "logger.wandb.enabled=false",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    assert summary["train_samples"] == 40 and summary["test_samples"] == 30
    assert summary["data"]["name"] == "cifar10" and summary["epochs_completed"] == 1


def test_corrupt_cifar10_is_reported_not_downloaded(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c10")  # real md5s stay: these files fail torchvision's integrity check
    cfg = compose_cfg([f"dataset.root={tmp_path / 'c10'}", "dataset.download=false"])
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        build_datasets(cfg.dataset, 4)


def test_cifar10_augmentation_is_the_release_recipe(cifar_root: Path) -> None:
    from torchvision import transforms as tv

    train_set, _, _ = build_datasets(compose_cfg([f"dataset.root={cifar_root}"]).dataset, 4)
    kinds = [type(t) for t in train_set.transform.transforms]
    assert kinds == [tv.RandomHorizontalFlip, tv.RandomCrop, tv.ToTensor, tv.Normalize]
    assert train_set.transform.transforms[1].padding == 4
