"""Static image datasets: CIFAR10 (torchvision's on-disk layout) and scikit-learn's digits demo.

Images are ``[C, H, W]`` floats; the trainer repeats them over the T time steps (docs/method.md §5).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import DataError
from . import register
from .download import download_dataset
from .info import DataInfo, take_subset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)  # the release's values (not the exact per-pixel std)


def _cifar10_split(root: Path, train: bool, download: bool, transform: Any) -> Dataset:
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    offline_hint = (
        f"put the extracted 'cifar-10-batches-py' folder in {root} (from {CIFAR10_URL}) or set "
        "dataset.root=<folder holding it>; to try mlfsnn offline run: snn-train +experiment=digits"
    )
    try:
        return CIFAR10(str(root), train=train, download=False, transform=transform)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        if not download:
            raise DataError(f"CIFAR10 missing or corrupt at {folder} ({exc}); {offline_hint}") from None
    # ours, not torchvision's download (no time-out, no resume): it leaves the folder extracted
    try:
        download_dataset("cifar10", root, replace_extracted=folder.exists())
    except DataError as exc:
        raise DataError(
            f"CIFAR10 not found at {folder} and the download failed: {exc}; to try mlfsnn offline run: "
            "snn-train +experiment=digits"
        ) from None
    try:
        return CIFAR10(str(root), train=train, download=False, transform=transform)
    except RuntimeError as exc:
        raise DataError(f"CIFAR10 missing or corrupt at {folder} ({exc}); {offline_hint}") from None


@register("cifar10")
def build_cifar10(cfg: Any, time_steps: int) -> tuple[Dataset, Dataset, DataInfo]:
    from torchvision import transforms as tv

    root = Path(os.path.expanduser(str(cfg.root))).resolve()
    if root.exists() and not root.is_dir():  # torchvision would try to download into it
        raise DataError(
            f"dataset.root: {root} is a file, not a directory; set dataset.root to the folder that "
            f"holds cifar-10-batches-py (here perhaps {root.parent})"
        )
    normalize = [tv.ToTensor(), tv.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    # The release flips, then crops: same order, so a seed draws the same augmentation.
    augment = [tv.RandomHorizontalFlip(), tv.RandomCrop(32, padding=4)] if cfg.augment else []
    train = _cifar10_split(root, True, bool(cfg.download), tv.Compose(augment + normalize))
    train.eval_transform = tv.Compose(normalize)  # a validation split is read without augmentation
    test = _cifar10_split(root, False, False, tv.Compose(normalize))
    train, test = take_subset(train, cfg.subset), take_subset(test, cfg.subset)
    info = DataInfo("cifar10", 10, 3, (32, 32), True, len(train), len(test), source=str(root))
    return train, test, info


@register("digits")
def build_digits(cfg: Any, time_steps: int) -> tuple[Dataset, Dataset, DataInfo]:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans), a fixed stratified split.

    Pixel values 0..16 are resized to ``size`` x ``size`` (bilinear) and standardised with the
    training split's mean and std.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    idx = torch.arange(len(labels))
    tr, te = train_test_split(
        idx.numpy(), test_size=cfg.test_fraction, stratify=labels.numpy(), random_state=cfg.split_seed
    )
    size = int(cfg.size)
    if size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
    mean, std = images[tr].mean(), images[tr].std()
    images = (images - mean) / std
    train = TensorDataset(images[tr], labels[tr])
    test = TensorDataset(images[te], labels[te])
    train, test = take_subset(train, cfg.subset), take_subset(test, cfg.subset)
    info = DataInfo("digits", 10, 1, (size, size), True, len(train), len(test), source="sklearn.load_digits")
    return train, test, info
