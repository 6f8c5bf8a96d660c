"""Dataset files -> data the training code can batch fast.

``load_dataset`` reads a site's ``.pt``/``.pth`` (dict of tensors, ``(x, y)`` pair or a
pickled torch ``Dataset``), ``.npz``/``.npy`` (this app's arrays and every layout FeatureCloud's
apps write, see app.numpy_files) or a folder of class sub-folders of images. Files
become a ``TensorData``: contiguous float32 images ``[N, C, H, W]`` and int64 labels
``[N]``, batched by slicing, never by per-sample Python calls. A folder of images stays
lazy as a ``LazyData`` that loads images on demand. Both normalise images and labels the
same way (``_images_tensor``/``_labels_tensor``), so a folder read lazily yields exactly
what the same images yield in memory. Every user mistake is a ``DataError`` naming the
config key, the file, the problem and the fix.
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from app.errors import DataError, first_line
from app.numpy_files import label_values, pick_arrays, read_arrays, stack_images, unreadable
from app.torch_files import load_tensors, load_trusted, refused_globals

SUPPORTED = ".pt, .pth, .npz, .npy, or a folder with one sub-folder of images per class"
# Channels-last arrays ([N, H, W, C], as CIFAR is usually stored) have one of these
# channel counts in the last dimension.
_CHANNEL_COUNTS = (1, 3, 4)
_GRAYSCALE_MODES = ("1", "L", "LA")
_LABELS_HINT = "Fix the labels array: it must hold whole numbers 0..K-1, one per image."

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TensorData:
    """In-memory dataset: images float32 [N,C,H,W] contiguous, labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __init__(self, images: Any, labels: Any, name: str = "data") -> None:
        self.name = name
        images = _tensor(images, "images", name)
        if images.numel() == 0:
            raise _empty(name)
        self.images = _images_tensor(images, name)
        self.labels = _labels_tensor(_tensor(labels, "labels", name), name)
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{name}: {len(self.images)} images but {len(self.labels)} labels. "
                "Save exactly one label per image."
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes_seen(self) -> int:
        return int(self.labels.max()) + 1

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """(indices, images, labels) per batch; indices are positions in this dataset.

        Unshuffled batches are views of the data. Shuffled batches gather their rows
        with one index_select each: measured faster than gathering the whole epoch
        first, and it needs no second copy of the dataset in memory.
        """
        _check_batch_size(batch_size)
        if shuffle:
            for indices in torch.randperm(len(self), generator=generator).split(batch_size):
                yield indices, self.images[indices], self.labels[indices]
            return
        positions = torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield positions[start:stop], self.images[start:stop], self.labels[start:stop]

    def subset(self, indices: Any) -> TensorData:
        """The samples at ``indices`` (any sequence of positions), as a new TensorData."""
        chosen = torch.as_tensor(indices, dtype=torch.long)
        return TensorData(self.images[chosen], self.labels[chosen], name=self.name)


class LazyData:
    """A torch Dataset that must stay lazy (folder of images). Same interface as TensorData
    (len, sample_shape, num_classes_seen, batches) but loads samples on demand."""

    def __init__(self, dataset: Dataset, name: str = "data") -> None:
        self.dataset = dataset
        self.name = name
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise _empty(name)
        first_image, _ = _item(dataset, 0, name)
        self._raw_shape = first_image.shape
        self._sample_shape = tuple(_images_tensor(first_image.unsqueeze(0), name).shape[1:])
        self._num_classes: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    @property
    def num_classes_seen(self) -> int:
        if self._num_classes is None:
            targets = getattr(self.dataset, "targets", None)
            if targets is None:  # a plain Dataset: its labels are only known by reading every item
                targets = [_item(self.dataset, index, self.name)[1] for index in range(len(self))]
            self._num_classes = int(_labels_tensor(_tensor(targets, "labels", self.name), self.name).max()) + 1
        return self._num_classes

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """(indices, images, labels) per batch, loading each batch's images when it is needed."""
        _check_batch_size(batch_size)
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for indices in order.split(batch_size):
            positions = indices.tolist()
            items = [_item(self.dataset, index, self.name) for index in positions]
            images, labels = _stack_items(items, positions, self._raw_shape, self.dataset, self.name)
            yield indices, images, labels


Data = TensorData | LazyData


class LabelsFile(NamedTuple):
    """A file holding a dataset's labels apart from its images, and its config key."""

    path: Path
    key: str


def load_dataset(path: Path, key: str, labels: LabelsFile | None = None,
                 image_shape: Sequence[int] | None = None, root: Path | None = None) -> Data:
    """The dataset at ``path``; ``key`` is its config key, named in every error message with the file's
    path from ``root`` (its name alone by default).

    ``labels``: the labels of a ``.npy``/``.npz`` of images alone. ``image_shape``: the shape flat
    image vectors are reshaped to, in the order they were flattened ([C, H, W], [H, W, C], [H, W]).
    Object arrays in ``.npy``/``.npz`` files are unpickled: pass only the site's own files.
    """
    path = Path(path)
    name = f"{key} '{_shown(path, root)}'"
    if path.is_dir():
        _refuse_labels_file(labels, name, "a folder of images (its sub-folders are the labels)")
        return _load_image_folder(path, name)
    if not path.exists():
        raise DataError(f"{name}: no such file or folder, looked for {path}.{_folder_listing(path.parent)} "
                        f"Put the dataset there or set {key} to the right name.")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        _refuse_labels_file(labels, name, "a .pt/.pth file")
        return _from_object(_torch_load(path, name), name, image_shape)
    if suffix in (".npz", ".npy"):
        labels_path, labels_name = (labels.path, f"{labels.key} '{_shown(labels.path, root)}'") if labels \
            else (None, "")
        arrays = read_arrays(path, name, labels_path, labels_name)
        return _from_arrays(arrays.images, arrays.labels, name, image_shape)
    raise DataError(f"{name}: unsupported file type '{path.suffix}'. Supported: {SUPPORTED}. "
                    "Convert the dataset to one of these.")


def check_compatible(train: Data, test: Data) -> None:
    """DataError unless train and test samples have the same shape (channels, height, width)."""
    if train.sample_shape != test.sample_shape:
        raise DataError(
            f"{train.name} has images of shape {train.sample_shape} (C, H, W) but {test.name} has "
            f"{test.sample_shape}. Both datasets must hold images of the same size and number of channels."
        )


def as_data(obj: Any, name: str = "data") -> Data:
    """Data from what a Python API user has at hand.

    Accepts TensorData/LazyData (returned as is), an ``(images, labels)`` pair of tensors
    or arrays (or a dict of them, as in a file), a torch Dataset (a ``TensorDataset`` of
    two tensors goes in memory, any other stays lazy so its transforms keep running every
    epoch) or a path (``load_dataset`` with ``key=name``).
    """
    if isinstance(obj, (TensorData, LazyData)):
        return obj
    if isinstance(obj, (str, Path)):
        return load_dataset(Path(obj), name)
    if isinstance(obj, Dataset) and not isinstance(obj, TensorDataset):
        return LazyData(obj, name=name)
    return _from_object(obj, name)


def _empty(name: str) -> DataError:
    return DataError(f"{name}: the dataset is empty (0 images). Provide at least one image and label.")


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _folder_listing(folder: Path) -> str:
    if not folder.is_dir():
        return f" The folder {folder} does not exist either."
    entries = sorted(entry.name for entry in folder.iterdir())
    shown = ", ".join(entries[:10]) + (", ..." if len(entries) > 10 else "")
    return f" That folder contains: {shown or 'nothing'}."


def _torch_load(path: Path, name: str) -> Any:
    not_torch = "not a file written by torch.save"
    try:
        return load_tensors(path)
    except Exception as error:
        if not refused_globals(error):
            raise unreadable(name, not_torch if isinstance(error, pickle.UnpicklingError)
                             else first_line(error)) from error
    # Only a pickled object (e.g. a torchvision Dataset, as the original app accepted)
    # needs the full unpickler; the file comes from the site's own input dir.
    try:
        return load_trusted(path)
    except pickle.UnpicklingError as error:
        raise unreadable(name, not_torch) from error
    except Exception as error:
        raise unreadable(name, first_line(error)) from error


def _shown(path: Path, root: Path | None) -> str:
    """``path`` as messages show it: from ``root`` (e.g. a fold's ``data/0/train.npy``), else its name."""
    if root is not None and path.is_relative_to(root.resolve()):
        return str(path.relative_to(root.resolve()))
    return path.name


def _refuse_labels_file(labels: LabelsFile | None, name: str, what: str) -> None:
    if labels is not None:
        raise DataError(f"{labels.key}: '{labels.path.name}' is set, but {name} is {what}, which holds its own "
                        f"labels. Remove {labels.key} from config.yml; it is for .npy/.npz files of images alone.")


def _from_arrays(images: Any, labels: Any, name: str, image_shape: Sequence[int] | None) -> TensorData:
    """A TensorData from arrays as files hold them: per-sample entries stacked, labels written as
    text read as numbers, flat image vectors reshaped to ``image_shape``."""
    if not isinstance(images, torch.Tensor):
        images = stack_images(images, name)
    if not isinstance(labels, torch.Tensor):
        labels = label_values(labels, name)
    return TensorData(_shaped(images, image_shape, name), labels, name=name)


def _shaped(images: Any, image_shape: Sequence[int] | None, name: str) -> Any:
    """Flat image vectors ([N, D]) reshaped to [N, *image_shape]; other images must already have that shape."""
    if images.ndim < 2 or not len(images):
        return images
    sample = tuple(images.shape[1:])
    if image_shape is None:
        if len(sample) == 1:
            raise DataError(f"{name}: the images are flat vectors of {sample[0]} values. Set image_shape in "
                            f"config.yml to the shape they were flattened from{_shape_guess(sample[0])} "
                            "(or reshape the images array).")
        return images
    wanted = tuple(image_shape)
    if len(sample) > 1:
        if sample != wanted:
            raise DataError(f"{name}: the images have shape {list(sample)}, not image_shape {list(wanted)}. "
                            "image_shape describes flat image vectors: remove it, or set it to the images' shape.")
        return images
    if sample[0] != math.prod(wanted):
        raise DataError(f"{name}: the images are flat vectors of {sample[0]} values, which do not fit image_shape "
                        f"{list(wanted)} ({math.prod(wanted)} values). Set image_shape to the shape they were "
                        f"flattened from{_shape_guess(sample[0])}; in FeatureCloud's same-last layout the last "
                        "value of each row is its label, not a pixel.")
    return images.reshape(len(images), *wanted)


def _shape_guess(size: int) -> str:
    """Likely shapes of a flat image of ``size`` values, for the message: square, grey or colour."""
    guesses = []
    for channels in (1, 3):
        side = math.isqrt(size // channels)
        if side * side * channels == size and side > 1:
            guesses.append(f"[{side}, {side}]" if channels == 1 else f"[3, {side}, {side}] or [{side}, {side}, 3]")
    return f", e.g. {' or '.join(guesses)}" if guesses else " ([C, H, W], [H, W, C] or [H, W])"


def _from_object(obj: Any, name: str, image_shape: Sequence[int] | None = None) -> TensorData:
    if isinstance(obj, dict):
        return _from_mapping(obj, name, image_shape)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return _from_arrays(obj[0], obj[1], name, image_shape)
    if isinstance(obj, TensorDataset) and len(obj.tensors) == 2:
        return TensorData(*obj.tensors, name=name)
    if isinstance(obj, Dataset):
        return _materialise(obj, name)
    raise DataError(f"{name}: got a {type(obj).__name__}; expected a dict with 'images' (or 'x') and "
                    "'labels' (or 'y'), an (images, labels) tuple, or a torch Dataset. Save one of these.")


def _from_mapping(mapping: dict, name: str, image_shape: Sequence[int] | None = None) -> TensorData:
    arrays = pick_arrays(mapping, name)
    return _from_arrays(arrays.images, arrays.labels, name, image_shape)


def _materialise(dataset: Dataset, name: str) -> TensorData:
    try:
        count = len(dataset)  # type: ignore[arg-type]
    except TypeError as error:
        raise DataError(f"{name}: the pickled {type(dataset).__name__} has no length. "
                        "Save a map-style Dataset or an (images, labels) tuple of tensors.") from error
    if count == 0:
        raise _empty(name)
    items = [_item(dataset, index, name) for index in range(count)]
    images, labels = _stack_items(items, range(count), items[0][0].shape, dataset, name)
    return TensorData(images, labels, name=name)


def _item(dataset: Dataset, index: int, name: str) -> tuple[torch.Tensor, Any]:
    """Item ``index`` as (image tensor as stored, label as stored)."""
    try:
        item = dataset[index]
    except OSError as error:  # an unreadable image file in a folder dataset
        raise DataError(f"{name}: cannot read {_describe_item(dataset, index)} ({error}). "
                        "Replace or delete that file.") from error
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{name}: item {index} is a {type(item).__name__}, expected an (image, label) pair. "
                        "Make the Dataset return (image, label).")
    image, label = item
    if isinstance(image, Image.Image):
        return _pil_tensor(_standard_mode(image)), label
    return _tensor(image, "images", name), label


def _stack_items(items: list[tuple[torch.Tensor, Any]], indices: Sequence[int], shape: torch.Size,
                 dataset: Dataset, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``items``, normalised like a TensorData's."""
    for (image, _), index in zip(items, indices):
        if image.shape != shape:
            raise DataError(f"{name}: {_describe_item(dataset, index)} has shape {tuple(image.shape)} but the "
                            f"first image has {tuple(shape)}. Make all images the same size and colour mode.")
    images = torch.stack([image for image, _ in items])
    labels = _tensor([label for _, label in items], "labels", name)
    return _images_tensor(images, name), _labels_tensor(labels, name)


def _describe_item(dataset: Dataset, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return f"image '{samples[index][0]}'" if samples is not None else f"item {index}"


def _standard_mode(image: Image.Image) -> Image.Image:
    # Grayscale stays one channel; everything else (palette, RGBA, CMYK...) becomes RGB.
    mode = "L" if image.mode in _GRAYSCALE_MODES else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _pil_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 [C, H, W], like torchvision's pil_to_tensor, without importing torchvision."""
    array = np.array(image)   # a writable copy
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _open_image(path: str) -> Image.Image:
    with open(path, "rb") as handle:
        return _standard_mode(Image.open(handle)).copy()


def _load_image_folder(path: Path, name: str) -> LazyData:
    from torchvision.datasets import ImageFolder   # 1.5 s to import: only when a folder is used

    try:
        folder = ImageFolder(str(path), loader=_open_image)
    except FileNotFoundError as error:
        raise DataError(f"{name}: no images found in {path} ({error}). Put each class's images in its own "
                        f"sub-folder, e.g. {path.name}/0/img1.png, {path.name}/1/img2.png.") from error
    return LazyData(folder, name=name)


def _tensor(value: Any, what: str, name: str) -> torch.Tensor:
    """``value`` (tensor, array or nested list) as a CPU tensor, numeric or bool."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    else:
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value)
            except (ValueError, TypeError) as error:  # ragged nested lists
                raise DataError(f"{name}: {what} cannot be read as one array ({error}). "
                                f"Save {what} as a single tensor or array.") from error
        tensor = _numpy_tensor(value, what, name)
    if tensor.is_complex():
        raise DataError(f"{name}: {what} have dtype {tensor.dtype}, expected real numbers. Save real values.")
    return tensor


def _numpy_tensor(array: np.ndarray, what: str, name: str) -> torch.Tensor:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{name}: {what} have dtype {array.dtype}, which is not numeric. "
                        f"Save {what} as a numeric array (uint8 or float images, integer labels).")
    if array.dtype.kind == "u" and array.dtype.itemsize > 1:
        array = array.astype(np.int64)  # torch has few operations for uint16..uint64
    array = np.require(array, dtype=array.dtype.newbyteorder("="), requirements=["C", "W"])
    return torch.from_numpy(array)


def _images_tensor(images: torch.Tensor, name: str) -> torch.Tensor:
    """Images as contiguous float32 [N, C, H, W]; uint8 scaled to [0, 1]."""
    if images.dtype == torch.bool:
        raise DataError(f"{name}: images have dtype bool, which is not numeric. "
                        "Save images as uint8 (0..255) or float values.")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() == 4:
        if images.shape[-1] in _CHANNEL_COUNTS and images.shape[1] not in _CHANNEL_COUNTS:
            images = images.permute(0, 3, 1, 2)
    else:
        raise DataError(f"{name}: images have shape {tuple(images.shape)}; expected [N, H, W] or "
                        "[N, C, H, W] (or channels-last [N, H, W, C]). Reshape the images array.")
    if images.dtype == torch.uint8:
        images = images.to(torch.float32).div_(255)
    else:
        images = images.to(torch.float32)
    not_finite = ~torch.isfinite(images)
    bad = int(not_finite.sum())
    if bad:
        first = int(not_finite.flatten(1).any(dim=1).nonzero()[0])
        raise DataError(f"{name}: images contain {bad} NaN or infinite values, the first in image {first}. "
                        "Replace them with finite numbers or drop those images.")
    return images.contiguous()


def _labels_tensor(labels: torch.Tensor, name: str) -> torch.Tensor:
    """Labels as contiguous int64 [N] of whole numbers ≥ 0."""
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels.flatten()
    if labels.dim() != 1:
        raise DataError(f"{name}: labels have shape {tuple(labels.shape)}; expected [N] (or [N, 1]), "
                        f"one class index per image. {_LABELS_HINT}")
    if labels.dtype == torch.bool:
        raise DataError(f"{name}: labels have dtype bool; expected integers 0..K-1. {_LABELS_HINT}")
    if labels.is_floating_point():
        not_whole = ~torch.isfinite(labels) | (labels != labels.trunc())
        if not_whole.any():
            index = int(not_whole.nonzero()[0])
            raise DataError(f"{name}: labels must be integers 0..K-1, found {labels[index].item()} "
                            f"at index {index}. {_LABELS_HINT}")
    labels = labels.to(torch.int64)
    negative = labels < 0
    if negative.any():
        index = int(negative.nonzero()[0])
        raise DataError(f"{name}: labels must be integers 0..K-1, found {labels[index].item()} "
                        f"at index {index}. {_LABELS_HINT}")
    return labels.contiguous()
