"""Dataset files -> data the training code can batch fast.

``open_dataset`` reads a site's ``.pt``/``.pth`` (dict of tensors, ``(x, y)`` pair or a
pickled torch ``Dataset``) or ``.npz``/``.npy`` (this app's arrays and every layout FeatureCloud's
apps write, see app.numpy_files) into a ``TensorData``: contiguous images ``[N, C, H, W]``
(uint8 kept as uint8, other numbers as float32) and int64 labels ``[N]``, batched by slicing,
never by per-sample Python calls. A folder of class sub-folders is only listed
(``ImageFolderSource``): its labels depend on the class list the federation agrees on, and its
size and channels on the preprocessing, so ``decode_folders`` decodes it later, once, into a
``TensorData`` of uint8 pixels, or into a ``LazyFiles`` that decodes each batch when the
pixels would exceed the memory bound. Every kind delivers batches the same way
(``_Delivery``): float32, uint8 scaled to [0, 1], grayscale repeated to the agreed channels,
normalized when a normalization is set. Every user mistake is a ``DataError`` naming the
config key, the file, the problem and the fix.
"""
from __future__ import annotations

import math
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from app.errors import DataError, first_line
from app.images import (ClassFolders, Size, check_same_size, decode_files, has_colour, list_class_folders,
                        oriented_size, order_classes)
from app.normalization import Normalization
from app.numpy_files import label_values, pick_arrays, read_arrays, stack_images, unreadable
from app.torch_files import load_tensors, load_trusted, refused_globals

if TYPE_CHECKING:
    from app.augment import EpochViews

SUPPORTED = ".pt, .pth, .npz, .npy, or a folder with one sub-folder of images per class"
# Channels-last arrays ([N, H, W, C], as CIFAR is usually stored) have one of these
# channel counts in the last dimension.
_CHANNEL_COUNTS = (1, 3, 4)
_GRAYSCALE_MODES = ("1", "L", "LA")
PROGRESS_LOG_SECONDS = 10.0   # a long decoding shows in the log too, not only on the status line
_LABELS_HINT = "Fix the labels array: it must hold whole numbers 0..K-1, one per image."

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class _Delivery:
    """How every kind of data hands out its batches: float32 images, uint8 scaled to [0, 1],
    grayscale repeated when the federation agreed on 3 channels, normalized when a
    normalization is set (``normalized=False`` gives the [0, 1] images a deployment sees)."""

    name: str
    channels: int | None = None                 # channels to deliver when the stored images have fewer
    normalization: Normalization | None = None

    def _ready(self, images: torch.Tensor, normalized: bool) -> torch.Tensor:
        images = as_float(images)
        if self.channels is not None and images.shape[1] != self.channels:
            images = images.expand(-1, self.channels, -1, -1)
        if normalized and self.normalization is not None:
            images = self.normalization.apply(images)
        return images

    def _batch(self, indices: torch.Tensor, stored: torch.Tensor, labels: torch.Tensor, normalized: bool,
               views: EpochViews | None) -> Batch:
        """One batch as delivered. With ``views`` (augmentation, app.augment) the views are re-made from
        the stored pixels, uint8 scaled to [0, 1], before the channels are repeated and the
        normalization applied, and the indices become the views' keys."""
        if views is not None:
            indices, stored = views(indices, as_float(stored))
        return indices, self._ready(stored, normalized), labels

    def _delivered_shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        return (self.channels or stored[0], *stored[1:])


class TensorData(_Delivery):
    """In-memory dataset: images uint8 or float32 [N,C,H,W] contiguous, labels int64 [N]."""

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
        return self._delivered_shape(tuple(self.images.shape[1:]))

    @property
    def num_classes_seen(self) -> int:
        return int(self.labels.max()) + 1

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                normalized: bool = True, views: EpochViews | None = None) -> Iterator[Batch]:
        """(indices, images, labels) per batch; indices are positions in this dataset (with ``views``,
        augmentation, the keys of the views: ``_batch``).

        Unshuffled batches of float images without normalization are views of the data.
        Shuffled batches gather their rows with one index_select each: measured faster than
        gathering the whole epoch first, and it needs no second copy of the dataset in memory.
        """
        _check_batch_size(batch_size)
        if shuffle:
            for indices in torch.randperm(len(self), generator=generator).split(batch_size):
                yield self._batch(indices, self.images[indices], self.labels[indices], normalized, views)
            return
        positions = torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self._batch(positions[start:stop], self.images[start:stop], self.labels[start:stop], normalized,
                              views)

    def float_images(self) -> torch.Tensor:
        """Every image as the model sees it (float32, normalized): a copy of the whole dataset."""
        return self._ready(self.images, normalized=True)

    def subset(self, indices: Any) -> TensorData:
        """The samples at ``indices`` (any sequence of positions), as a new TensorData."""
        chosen = torch.as_tensor(indices, dtype=torch.long)
        part = TensorData(self.images[chosen], self.labels[chosen], name=self.name)
        part.channels, part.normalization = self.channels, self.normalization
        return part


class LazyData(_Delivery):
    """A torch Dataset that must stay lazy (its transforms run every epoch). Same interface as
    TensorData (len, sample_shape, num_classes_seen, batches) but loads samples on demand."""

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
        return self._delivered_shape(self._sample_shape)

    @property
    def num_classes_seen(self) -> int:
        if self._num_classes is None:
            targets = getattr(self.dataset, "targets", None)
            if targets is None:  # a plain Dataset: its labels are only known by reading every item
                targets = [_item(self.dataset, index, self.name)[1] for index in range(len(self))]
            self._num_classes = int(_labels_tensor(_tensor(targets, "labels", self.name), self.name).max()) + 1
        return self._num_classes

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                normalized: bool = True, views: EpochViews | None = None) -> Iterator[Batch]:
        """(indices, images, labels) per batch, loading each batch's images when it is needed."""
        _check_batch_size(batch_size)
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for indices in order.split(batch_size):
            positions = indices.tolist()
            items = [_item(self.dataset, index, self.name) for index in positions]
            images, labels = _stack_items(items, positions, self._raw_shape, self.dataset, self.name)
            yield self._batch(indices, images, labels, normalized, views)


class LazyFiles(_Delivery):
    """Image files decoded batch by batch (the memory bound was exceeded): what TensorData
    would hold for the same files, decoded again every time a batch needs them."""

    def __init__(self, files: list[Path], labels: torch.Tensor, size: Size, stored_channels: int,
                 resize: bool, name: str) -> None:
        self.files, self.labels, self.size, self.name = files, labels, size, name
        self.stored_channels, self.resize = stored_channels, resize

    def __len__(self) -> int:
        return len(self.files)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._delivered_shape((self.stored_channels, *self.size))

    @property
    def num_classes_seen(self) -> int:
        return int(self.labels.max()) + 1

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                normalized: bool = True, views: EpochViews | None = None) -> Iterator[Batch]:
        """(indices, images, labels) per batch, decoding each batch's files when it is needed."""
        _check_batch_size(batch_size)
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for indices in order.split(batch_size):
            pixels = decode_files([self.files[index] for index in indices.tolist()], self.size,
                                  self.stored_channels, resize=self.resize, name=self.name)
            yield self._batch(indices, pixels, self.labels[indices], normalized, views)


Data = TensorData | LazyData | LazyFiles


@dataclass
class ImageFolderSource:
    """A dataset folder listed but not decoded yet (its labels wait for the agreed class list)."""

    name: str
    folders: ClassFolders
    colour: bool | None = None   # whether any image is stored in colour, once asked (``has_colour``)

    @property
    def classes(self) -> list[str]:
        return self.folders.classes

    def __len__(self) -> int:
        return len(self.folders.files)


Source = Data | ImageFolderSource


@dataclass(frozen=True)
class Decoding:
    """How image folders become pixels: the agreed class list and channels, the size (None: every
    image keeps its own, which must be the same), the memory bound of the decoded pixels, the
    decoding threads (None: one per core), and where to report progress and what happened."""

    classes: list[str]
    channels: int
    size: Size | None = None
    memory_bytes: int = 4096 * 2 ** 20
    workers: int | None = None
    status: Callable[[str], None] | None = None
    log: Callable[[str], None] | None = None


class LabelsFile(NamedTuple):
    """A file holding a dataset's labels apart from its images, and its config key."""

    path: Path
    key: str


def open_dataset(path: Path, key: str, labels: LabelsFile | None = None,
                 image_shape: Sequence[int] | None = None, root: Path | None = None) -> Source:
    """The dataset at ``path``: arrays read, a folder of class folders listed; ``key`` is its config
    key, named in every error message with the file's path from ``root`` (its name alone by default).

    ``labels``: the labels of a ``.npy``/``.npz`` of images alone. ``image_shape``: the shape flat
    image vectors are reshaped to, in the order they were flattened ([C, H, W], [H, W, C], [H, W]).
    Object arrays in ``.npy``/``.npz`` files are unpickled: pass only the site's own files.
    """
    path = Path(path)
    name = f"{key} '{_shown(path, root)}'"
    if path.is_dir():
        _refuse_labels_file(labels, name, "a folder of images (its sub-folders are the labels)")
        return ImageFolderSource(name, list_class_folders(path, name))
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


def load_dataset(path: Path, key: str, labels: LabelsFile | None = None,
                 image_shape: Sequence[int] | None = None, root: Path | None = None) -> Data:
    """The dataset at ``path`` on its own (``open_dataset``'s arguments): a folder's classes are its
    own folders (numeric order when all are integers, else alphabetical), decoded to 3 channels
    when any image has colour, else 1."""
    return load_datasets({key: open_dataset(path, key, labels, image_shape, root)})[key]


def load_datasets(sources: dict[str, Source]) -> dict[str, Data]:
    """Datasets that belong together (train and test of one site, outside a federation): their
    folders share one class list, the union of their class folders."""
    folders = [source for source in sources.values() if isinstance(source, ImageFolderSource)]
    if not folders:
        return sources   # type: ignore[return-value]
    classes = order_classes({name for source in folders for name in source.classes})
    channels = 3 if any(has_colour(source.folders.files, source.name) for source in folders) else 1
    return decode_folders(sources, Decoding(classes, channels))


def decode_folders(sources: dict[str, Source], decoding: Decoding) -> dict[str, Data]:
    """Every source as Data: arrays as they are, folders decoded once with ``decoding``'s classes,
    channels and size, each in memory while the pixels of all fit ``memory_bytes``, else lazily."""
    log = decoding.log or (lambda message: None)
    folders = {key: source for key, source in sources.items() if isinstance(source, ImageFolderSource)}
    total = sum(len(source) for source in folders.values())
    done, budget, started = 0, decoding.memory_bytes, time.perf_counter()
    result: dict[str, Data] = {}
    for key, source in sources.items():
        if not isinstance(source, ImageFolderSource):
            result[key] = source
            continue
        labels = _folder_labels(source, decoding.classes)
        stored = decoding.channels if source.colour is not False else 1   # gray images: repeated per batch
        size = decoding.size or oriented_size(source.folders.files[0], source.name)
        needed = len(source) * stored * size[0] * size[1]
        if needed > budget:
            log(f"{source.name}: {len(source):,} images of {stored}×{size[0]}×{size[1]} need "
                f"{needed / 2 ** 20:,.0f} MB, more than the {budget / 2 ** 20:,.0f} MB left of image_memory_mb: "
                "they are decoded again for every batch (lazily), which is slower; raise image_memory_mb to keep "
                "them in memory")
            data: Data = LazyFiles(source.folders.files, labels, size, stored, decoding.size is not None, source.name)
            if decoding.size is None:   # every file must have the first one's size: find out now, not mid-training
                check_same_size(source.folders.files, size, source.name, decoding.workers)
        else:
            budget -= needed
            pixels = decode_files(source.folders.files, decoding.size, stored, workers=decoding.workers,
                                  name=source.name, progress=_progress(decoding, done, total))
            data = TensorData(pixels, labels, name=source.name)
        data.channels = decoding.channels
        done += len(source)
        result[key] = data
    if folders:
        seconds = time.perf_counter() - started
        log(f"decoded {total:,} images in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f} images/s)")
    return result


def _progress(decoding: Decoding, before: int, total: int) -> Callable[[int, int], None]:
    """``decoding n/N`` on the status line as files finish, and in the log every PROGRESS_LOG_SECONDS."""
    logged = time.monotonic()

    def progress(done: int, _: int) -> None:
        nonlocal logged
        message = f"decoding {before + done:,}/{total:,}"
        if decoding.status is not None:
            decoding.status(message)
        if decoding.log is not None and time.monotonic() - logged >= PROGRESS_LOG_SECONDS:
            logged = time.monotonic()
            decoding.log(message)
    return progress


def _folder_labels(source: ImageFolderSource, classes: list[str]) -> torch.Tensor:
    index = {name: position for position, name in enumerate(classes)}
    unknown = sorted(set(source.classes) - set(index))
    if unknown:
        raise unknown_folder_error(source, unknown[0], classes)
    return torch.tensor([index[name] for name in source.folders.class_of_file], dtype=torch.int64)


def unknown_folder_error(source: ImageFolderSource, folder: str, classes: list[str]) -> DataError:
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    return DataError(f"{source.name}: class folder '{folder}' is not in classes ({shown}). Add '{folder}' to "
                     f"classes in config.yml, or move that folder out of {source.folders.root.name}/.")


def check_compatible(train: Data, test: Data, image_files: bool = False) -> None:
    """DataError unless train and test samples have the same shape (channels, height, width).

    ``image_files``: either was decoded from image files, which image_size resizes to one size."""
    if train.sample_shape != test.sample_shape:
        fix = ("Set image_size in config.yml (e.g. image_size: "
               f"{min(*train.sample_shape[1:], *test.sample_shape[1:])}) to resize every image file to one size"
               if image_files and train.sample_shape[1:] != test.sample_shape[1:]
               else "Both datasets must hold images of the same size and number of channels")
        raise DataError(f"{train.name} has images of shape {train.sample_shape} (C, H, W) but {test.name} has "
                        f"{test.sample_shape}. {fix}.")


def as_train_and_test(train: Any, test: Any = None) -> tuple[Data, Data | None]:
    """``as_data`` of both; two paths are opened together, so their folders share one class list."""
    if isinstance(train, (str, Path)) and isinstance(test, (str, Path)):
        data = load_datasets({"train": open_dataset(Path(train), "train"), "test": open_dataset(Path(test), "test")})
        return data["train"], data["test"]
    return as_data(train, "train"), as_data(test, "test") if test is not None else None


def as_data(obj: Any, name: str = "data") -> Data:
    """Data from what a Python API user has at hand.

    Accepts TensorData/LazyData/LazyFiles (returned as is), an ``(images, labels)`` pair of tensors
    or arrays (or a dict of them, as in a file), a torch Dataset (a ``TensorDataset`` of
    two tensors goes in memory, any other stays lazy so its transforms keep running every
    epoch) or a path (``load_dataset`` with ``key=name``).
    """
    if isinstance(obj, (TensorData, LazyData, LazyFiles)):
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


def as_float(images: torch.Tensor) -> torch.Tensor:
    """float32 images: uint8 scaled to [0, 1] (a new tensor), float32 as they are."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255)
    return images


def _images_tensor(images: torch.Tensor, name: str) -> torch.Tensor:
    """Images as contiguous [N, C, H, W]: uint8 kept (scaled per batch), other numbers float32."""
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
        return images.contiguous()
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
