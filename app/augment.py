"""Augmentation of the training images whose teacher targets are computed once (``augment``, ``teacher_views``).

A view of an image is a few numbers (``Views``): a crop box, a flip bit, a brightness and a
contrast factor. ``Augmentation.make`` re-makes a batch of views from the images as stored (the
decoded uint8 pixels, scaled to [0, 1]; float arrays as they are), with batched tensor operations
only: the crop, resized back to the image's size (bilinear), and the flip are one pair of
batched matrix products (``_resample``), the jitter two multiply-adds. ``Data.batches(views=...)``
makes them before grey images are repeated to the agreed channels and before the normalization,
so the normalization (and a model's exported ``Normalize``) sees views as it sees images.

Distillation needs the teacher's logits on exactly the view the student sees (consistent
teaching, Beyer et al. 2022). ``teacher_views`` picks how:

- K > 0 (4 by default): ``CachedViews`` draws K views of every training image once per run,
  seeded; the teacher runs once on each (``training.compute_view_logits``) and its logits are
  kept, float16, with the view parameters, never the pixels (Fast Knowledge Distillation, Shen &
  Xing). Epoch e of the run trains every image on its view e mod K, re-made from the stored
  image, against the teacher's logits for that view: K epochs cycle through all of them.
- 0: ``FreshViews`` draws a new view of every image in every batch, and the teacher runs on it
  (online teaching): never the same view twice, at the price of a teacher pass per batch.

Either way the views of a batch are keyed: ``CachedViews`` keys view k of image i as i·K + k, the
row of its teacher logits. Test images are never augmented: only ``train_local`` asks for views.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

OPERATIONS = ("flip", "crop", "color")
DEFAULT_TEACHER_VIEWS = 4
CROP_SCALE = (0.35, 1.0)          # share of the image's area a crop covers
CROP_RATIO = (3 / 4, 4 / 3)       # width / height of a crop (torchvision's RandomResizedCrop's default)
JITTER = 0.2                      # brightness and contrast factors are drawn from [1 - JITTER, 1 + JITTER]
# Luminance weights (ITU-R 601, as torchvision's rgb_to_grayscale): the grey level contrast pivots on.
LUMINANCE = (0.299, 0.587, 0.114)

# Re-makes the views of one batch: (indices of the images in the dataset, their pixels) → (keys, views' pixels).
EpochViews = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Views:
    """The parameters of ``n`` views, one row each; an operation not in use keeps its identity
    (the whole image, no flip, factors 1)."""

    boxes: torch.Tensor     # int16 [n, 4]: top, left, height, width of the crop in pixels
    flips: torch.Tensor     # bool [n]: mirrored left to right
    jitter: torch.Tensor    # float16 [n, 2]: brightness and contrast factors

    BYTES_PER_VIEW = 4 * 2 + 1 + 2 * 2

    def __len__(self) -> int:
        return len(self.flips)

    def __getitem__(self, index: torch.Tensor) -> Views:
        return Views(self.boxes[index], self.flips[index], self.jitter[index])

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in (self.boxes, self.flips, self.jitter))

    def to(self, device: torch.device | str) -> Views:
        return Views(self.boxes.to(device), self.flips.to(device), self.jitter.to(device))


@dataclass(frozen=True)
class Augmentation:
    """The operations of ``augment`` (applied as crop, flip, color, whatever their order in the list)."""

    operations: frozenset[str]

    @classmethod
    def of(cls, names: Iterable[str]) -> Augmentation:
        return cls(frozenset(names))

    def draw(self, count: int, size: Sequence[int], generator: torch.Generator) -> Views:
        """``count`` random views of images of ``size`` (height, width)."""
        height, width = size
        boxes = torch.tensor([0, 0, height, width], dtype=torch.int16).repeat(count, 1)
        flips = torch.zeros(count, dtype=torch.bool)
        jitter = torch.ones(count, 2, dtype=torch.float16)
        if "crop" in self.operations:
            boxes = _crop_boxes(count, height, width, generator)
        if "flip" in self.operations:
            flips = torch.rand(count, generator=generator) < 0.5
        if "color" in self.operations:
            jitter = torch.empty(count, 2).uniform_(1 - JITTER, 1 + JITTER, generator=generator).half()
        return Views(boxes, flips, jitter)

    def make(self, views: Views, images: torch.Tensor) -> torch.Tensor:
        """The pixels of ``views`` of ``images`` (float [B, C, H, W], row b seen through view b)."""
        views = views.to(images.device)
        if "crop" in self.operations:
            images = _resample(images, views.boxes, views.flips)
        elif "flip" in self.operations:
            images = torch.where(views.flips[:, None, None, None], images.flip(3), images)
        if "color" in self.operations:
            images = _jitter(images, views.jitter.to(images.dtype))
        return images


class CachedViews:
    """``per_image`` views of each of ``len(views) / per_image`` images, drawn once: view k of image i
    is row i·K + k of ``views`` (and of the teacher's cached logits)."""

    def __init__(self, augmentation: Augmentation, views: Views, per_image: int) -> None:
        self.augmentation = augmentation
        self.views = views
        self.per_image = per_image

    @classmethod
    def draw(cls, augmentation: Augmentation, images: int, per_image: int, size: Sequence[int],
             seed: int) -> CachedViews:
        """K views of each of ``images`` images of ``size``, the same for the same seed."""
        generator = _generator(seed, "cached views")
        return cls(augmentation, augmentation.draw(images * per_image, size, generator), per_image)

    def epoch(self, number: int) -> EpochViews:
        """Epoch ``number`` of the run (counted over all rounds) re-makes view ``number mod K`` of every image."""
        view = number % self.per_image

        def remake(indices: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keys = indices * self.per_image + view
            return keys, self.augmentation.make(self.views[keys], images)
        return remake

    def describe(self, classes: int, logits: torch.Tensor) -> str:
        """What the cache holds and its memory, for the log."""
        images = len(self.views) // self.per_image
        kind = "float16" if logits.dtype == torch.float16 else "float32 (some exceed float16's range)"
        return (f"{images:,} images × {self.per_image} views × {classes} classes × {logits.element_size()} bytes = "
                f"{_size(logits.element_size() * logits.numel())} of {kind} teacher logits, plus "
                f"{_size(self.views.nbytes)} of view parameters ({Views.BYTES_PER_VIEW} bytes per view)")


class FreshViews:
    """A new random view of every image in every batch (online teaching: no cache can hold them)."""

    def __init__(self, augmentation: Augmentation, seed: int) -> None:
        self.augmentation = augmentation
        self.seed = seed

    def epoch(self, number: int) -> EpochViews:
        """Epoch ``number`` of the run draws its views from a generator of its own (seed, number)."""
        generator = _generator(self.seed, "fresh views", number)

        def remake(indices: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            views = self.augmentation.draw(len(indices), images.shape[-2:], generator)
            return indices, self.augmentation.make(views, images)
        return remake


TrainingViews = CachedViews | FreshViews


def training_views(names: Sequence[str], teacher_views: int | None, images: int, size: Sequence[int],
                   seed: int) -> TrainingViews | None:
    """The views the students train on, from ``augment`` and ``teacher_views`` (set whenever augment is);
    None without augmentation. ``size``: the images' (height, width)."""
    if not names:
        return None
    augmentation = Augmentation.of(names)
    if teacher_views == 0:
        return FreshViews(augmentation, seed)
    return CachedViews.draw(augmentation, images, teacher_views or DEFAULT_TEACHER_VIEWS, size, seed)


def _generator(seed: int, *purpose: object) -> torch.Generator:
    """A generator of its own for each purpose, a function of the seed alone (never torch's global one)."""
    digest = hashlib.sha256(repr((seed, *purpose)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _crop_boxes(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops as torchvision's RandomResizedCrop draws them (area share, aspect ratio, place),
    vectorised: a side that would not fit is cut to the image's instead of drawing again."""
    area = torch.empty(count).uniform_(*CROP_SCALE, generator=generator) * (height * width)
    ratio = torch.empty(count).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]),
                                        generator=generator).exp()
    crop_w = (area * ratio).sqrt().round().clamp(1, width)
    crop_h = (area / ratio).sqrt().round().clamp(1, height)
    top = (torch.rand(count, generator=generator) * (height - crop_h + 1)).floor()
    left = (torch.rand(count, generator=generator) * (width - crop_w + 1)).floor()
    return torch.stack([top, left, crop_h, crop_w], dim=1).to(torch.int16)


def _bilinear(start: torch.Tensor, length: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, size, size]: row o holds the weights of the input pixels that output pixel o of a crop
    [start, start + length) resized to ``size`` mixes, as F.interpolate(bilinear, align_corners=False)
    weighs them, the crop's own edge pixels repeated beyond it."""
    start, length = start.to(dtype)[:, None], length.to(dtype)[:, None]
    pixels = torch.arange(size, dtype=dtype, device=start.device)   # output and input pixels alike
    source = ((pixels + 0.5) * (length / size) - 0.5).clamp(min=0).minimum(length - 1) + start
    return (1 - (source[:, :, None] - pixels).abs()).clamp(min=0)


def _resample(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image's crop resized back to the image's size, mirrored where ``flips``: rows · image · columnsᵀ,
    two batched matrix products (measured faster on the CPU than roi_align, grid_sample or one
    F.interpolate per image for batches of 64-256 images of 28-64 px)."""
    count, channels, height, width = images.shape
    boxes = boxes.to(torch.int64)
    rows = _bilinear(boxes[:, 0], boxes[:, 2], height, images.dtype)                   # [B, H, H]
    columns = _bilinear(boxes[:, 1], boxes[:, 3], width, images.dtype)                 # [B, W, W]
    columns = torch.where(flips[:, None, None], columns.flip(1), columns)
    wide = torch.bmm(images.reshape(count, channels * height, width), columns.transpose(1, 2))
    wide = wide.view(count, channels, height, width).transpose(1, 2).reshape(count, height, channels * width)
    return torch.bmm(rows, wide).view(count, height, channels, width).transpose(1, 2).contiguous()


def _jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness (scale every value), then contrast (scale the distance to the image's mean grey
    level), as torchvision's adjust_brightness and adjust_contrast without clipping, so any value
    range (already normalized images too) stays meaningful."""
    brightness, contrast = factors[:, 0, None, None, None], factors[:, 1, None, None, None]
    images = images * brightness
    if images.shape[1] == 3:
        grey = (images * images.new_tensor(LUMINANCE)[None, :, None, None]).sum(dim=1, keepdim=True)
    else:
        grey = images.mean(dim=1, keepdim=True)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    return (images - mean) * contrast + mean


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} bytes"
