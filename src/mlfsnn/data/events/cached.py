"""Reading a frame-cache entry: one split as a dataset, and the load-time transforms.

Nothing here changes the cached frames: clipping, binarising and augmentation are applied to each
sample as it is loaded, so they leave the entry (and its cache key) as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import DataError

__all__ = ["CachedFrames", "FrameTransform", "transform_from_cfg"]


class FrameTransform:
    """Load-time changes that leave the cache valid: clipping, binarising, training augmentation.

    The augmentation acts on the frames. For DVS-Gesture's 4x4 pooling a horizontal flip and a
    shift by ``k`` frame pixels equal the event-domain flip and a shift by ``4k`` sensor pixels.
    """

    def __init__(
        self, clip: int | None = None, binarize: bool = False, flip: float = 0.0, max_shift: int = 0
    ) -> None:
        self.clip, self.binarize, self.flip, self.max_shift = clip, binarize, flip, max_shift

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip > 0 and torch.rand(()) < self.flip:
            x = x.flip(-1)
        if self.max_shift > 0:
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            x = _shift(x, dy, dx)
        if self.binarize:
            x = (x > 0).to(x.dtype)
        elif self.clip is not None:
            x = x.clamp(max=float(self.clip))
        return x


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the last two dims by (dy, dx), filling with zeros (events leaving the sensor)."""
    if dy == 0 and dx == 0:
        return x
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    src_y, dst_y = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


class CachedFrames(Dataset):
    """One split of a cache entry: ``(float32 [T, 2, H, W], label)``, memory-mapped lazily so that
    DataLoader workers each open their own map."""

    def __init__(
        self, entry: Path, split: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.path = entry / f"{split}_frames.npy"
        self.labels = np.load(entry / f"{split}_labels.npy")
        self.transform = transform
        self._frames: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._frames is None:
            self._frames = np.load(self.path, mmap_mode="r")
        x = torch.from_numpy(self._frames[i].astype(np.float32))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_frames": None}


def transform_from_cfg(cfg: Any, train: bool) -> FrameTransform | None:
    clip = cfg.get("clip")
    binarize = bool(cfg.get("binarize", False))
    augment = train and bool(cfg.get("augment", False))
    flip = float(cfg.get("flip_prob", 0.5)) if augment else 0.0
    shift = int(cfg.get("max_shift", 0)) if augment else 0
    if clip is None and not binarize and flip == 0 and shift == 0:
        return None
    if clip is not None and int(clip) < 1:
        raise DataError(f"dataset.clip must be >= 1 or null, got {clip}")
    return FrameTransform(None if clip is None else int(clip), binarize, flip, shift)
