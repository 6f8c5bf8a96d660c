"""Per-channel normalization of the images: ``(image - mean) / std``, applied to every batch.

``normalize`` in config.yml picks the statistics: ``imagenet`` (torchvision's, which a
pretrained torchvision teacher expects), ``{mean, std}`` given by the user, or ``federated``:
the mean and standard deviation over every site's training images, pooled from each site's
pixel count, per-channel sum and per-channel sum of squares (``channel_sums``, summed by the
controller's secure sum under use_smpc, ``pooled``). The exported student carries the
normalization inside its graph (``Normalize``), so a deployment feeds it [0, 1] images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from app.data import Data

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUMS_BATCH = 1024
# A channel without variation would be divided by zero; one grey level is the least it may vary.
MIN_STD = 1 / 255


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, dtype=images.dtype).view(shape)
        return (images - mean) / std

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def fixed(setting: Any, channels: int) -> Normalization | None:
    """The normalization config.yml fixes (``none`` → None); ``federated`` is computed during the run.

    ImageNet's statistics for one channel are the averages of its three (torchvision has none)."""
    if setting == "imagenet":
        if channels == 1:
            return Normalization((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
        return Normalization(IMAGENET_MEAN, IMAGENET_STD)
    if isinstance(setting, dict):
        return Normalization(tuple(setting["mean"]), tuple(setting["std"]))
    return None


@torch.inference_mode()
def channel_sums(data: "Data") -> list[float]:
    """``[pixels per channel, sum of channel 1..C, sum of squares of channel 1..C]`` of the [0, 1]
    images (not normalized), in float64: all a site tells the others about its images."""
    sums = squares = None
    pixels = 0
    for _, images, _ in data.batches(SUMS_BATCH, normalized=False):
        wide = images.to(torch.float64)
        batch_sums, batch_squares = wide.sum(dim=(0, 2, 3)), wide.square().sum(dim=(0, 2, 3))
        sums = batch_sums if sums is None else sums + batch_sums
        squares = batch_squares if squares is None else squares + batch_squares
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
    return [float(pixels), *sums.tolist(), *squares.tolist()]


def total(received: Any, summed: bool) -> list[float]:
    """The element-wise total of every site's ``channel_sums``: already summed by the controller
    (secure sum), or a list of every site's own."""
    if summed:
        return [float(value) for value in received]
    return [float(sum(column)) for column in zip(*received)]


def pooled(totals: list[float]) -> Normalization:
    """Mean and (population) standard deviation per channel from the total count, sums and squares."""
    pixels, channels = totals[0], (len(totals) - 1) // 2
    means = [value / pixels for value in totals[1:1 + channels]]
    stds = [max(math.sqrt(max(square / pixels - mean * mean, 0.0)), MIN_STD)
            for square, mean in zip(totals[1 + channels:], means)]
    return Normalization(tuple(means), tuple(stds))


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: the first layer of an exported student."""

    def __init__(self, normalization: Normalization) -> None:
        super().__init__()
        shape = (1, len(normalization.mean), 1, 1)
        self.register_buffer("mean", torch.tensor(normalization.mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(normalization.std, dtype=torch.float32).view(shape))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std
