"""Image files -> pixels: one class folder per class, each file decoded once into a uint8 tensor.

``list_class_folders`` lists a dataset folder (hidden and system files skipped, empty class
folders reported); ``has_colour`` reads only headers, to decide the federation's ``channels``
default; ``decode_files`` decodes, orients (EXIF), converts and resizes files in parallel
threads into one uint8 tensor ``[N, C, H, W]``. Pillow releases the GIL while it decodes
and resizes, so threads use every core without copying pixels between processes.

Conversions: grayscale becomes RGB by repetition, RGB becomes grayscale by luminance
(ITU-R 601-2, as Pillow), transparent images are composited on white, palette, CMYK and
other colour modes become RGB, 16-bit images are scaled into 0..255. With a target size
the image is resized (antialiased bilinear) so that it covers the target while keeping its
aspect ratio, then centre-cropped; both happen in one resampling step.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from app.errors import DataError, first_line

Size = tuple[int, int]   # (height, width)
Progress = Callable[[int, int], None]   # (files done, files in all)

SYSTEM_FILES = {"thumbs.db", "desktop.ini", "icon\r"}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
WHITE = (255, 255, 255, 255)
CHUNK = 32   # files per task: large enough to keep the pool's overhead small, small enough to balance
_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}   # EXIF orientations that turn the stored image by 90 degrees


@dataclass
class ClassFolders:
    """What a dataset folder holds: every image file and the name of the class folder it is in."""

    root: Path
    files: list[Path] = field(default_factory=list)
    class_of_file: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)        # class folders without any file (skipped)
    loose_files: list[str] = field(default_factory=list)  # files next to the class folders (ignored)

    @property
    def classes(self) -> list[str]:
        return order_classes(set(self.class_of_file))


def is_hidden(name: str) -> bool:
    """Hidden and system files (.DS_Store, ._resource forks, Thumbs.db, desktop.ini) are no images."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def order_classes(names: set[str] | Sequence[str]) -> list[str]:
    """Class names in their agreed order: numeric when every name is an integer, else alphabetical."""
    names = sorted(set(names))
    if all(_is_integer(name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return names


def _is_integer(name: str) -> bool:
    try:
        int(name)
    except ValueError:
        return False
    return True


def list_class_folders(root: Path, name: str) -> ClassFolders:
    """The image files under each class sub-folder of ``root`` (recursively, in name order).

    ``name`` starts every error message ("train_dataset 'train'"). A folder without any
    class folder holding a file is an error; an empty class folder is only reported."""
    found = ClassFolders(root)
    example = f"{root.name}/cat/img1.jpg, {root.name}/dog/img2.jpg"
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if is_hidden(entry.name):
            continue
        if not entry.is_dir():
            found.loose_files.append(entry.name)
            continue
        files = _files_under(Path(entry.path))
        if not files:
            found.empty.append(entry.name)
        found.files += files
        found.class_of_file += [entry.name] * len(files)
    if not found.files:
        what = (f"only empty class folders ({', '.join(found.empty)})" if found.empty
                else "no class folders" + (f", only the files {', '.join(found.loose_files[:5])}"
                                           if found.loose_files else ""))
        raise DataError(f"{name}: no images found in {root}: {what}. Put each class's images in its own "
                        f"sub-folder, e.g. {example}.")
    return found


def _files_under(folder: Path) -> list[Path]:
    files = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not is_hidden(d))
        files += [Path(directory) / file for file in sorted(names) if not is_hidden(file)]
    return files


def has_colour(paths: Sequence[Path], name: str, workers: int | None = None) -> bool:
    """Whether any of the files is stored in a colour mode (headers only; stops at the first)."""
    with ThreadPoolExecutor(worker_count(workers)) as pool:
        futures = [pool.submit(lambda chunk: any(_is_colour(path, name) for path in chunk), chunk)
                   for chunk in _chunks(paths)]
        try:
            return any(future.result() for future in futures)
        finally:
            for future in futures:   # the chunks not started yet, once the answer is known
                future.cancel()


def _is_colour(path: Path, name: str) -> bool:
    with _opened(path, name) as image:
        if image.mode in ("P", "PA"):
            palette = image.getpalette() or []
            return any(len(set(palette[i:i + 3])) > 1 for i in range(0, len(palette) - 2, 3))
        return image.mode not in GRAY_MODES


def worker_count(workers: int | None = None) -> int:
    """The decoding threads: ``workers`` if given, else one per core this process may use."""
    if workers is not None:
        return max(1, workers)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_files(paths: Sequence[Path], size: Size | None, channels: int, *, resize: bool = True,
                 workers: int | None = None, progress: Progress | None = None, name: str = "images") -> torch.Tensor:
    """Decode ``paths`` into one uint8 tensor ``[N, channels, H, W]``, in parallel threads.

    ``size`` (height, width): resize each image to cover it (aspect ratio kept) and centre-crop
    it, or with ``resize=False`` require that size; None: every image must already have the
    first image's size (after EXIF orientation).
    ``channels``: 1 (grayscale) or 3 (RGB). ``progress(done, total)`` is called in the calling
    thread as files finish. A file that cannot be used raises a DataError that starts with
    ``name`` and names the file and the fix."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not paths:
        raise DataError(f"{name}: no image files to decode.")
    resize = resize and size is not None
    target = size if size is not None else oriented_size(paths[0], name)
    out = torch.empty((len(paths), channels, *target), dtype=torch.uint8)
    rows = out.numpy()   # every thread writes its own rows of the same memory

    def decode_chunk(start: int) -> int:
        chunk = paths[start:start + CHUNK]
        for offset, path in enumerate(chunk):
            array = decode_file(path, target, channels, name, resize=resize, first=paths[0])
            rows[start + offset] = array[None] if channels == 1 else array.transpose(2, 0, 1)
        return len(chunk)

    done = 0
    with ThreadPoolExecutor(worker_count(workers)) as pool:
        futures = [pool.submit(decode_chunk, start) for start in range(0, len(paths), CHUNK)]
        try:
            for future in futures:
                done += future.result()
                if progress is not None:
                    progress(done, len(paths))
        finally:
            for future in futures:
                future.cancel()
    return out


def decode_file(path: Path, size: Size, channels: int, name: str = "images", *, resize: bool = True,
                first: Path | None = None) -> np.ndarray:
    """One file as uint8 ``[H, W]`` (channels 1) or ``[H, W, 3]``: oriented, converted, resized.

    Without ``resize`` the oriented image must have ``size`` already (``first`` names the file
    that size came from, for the message)."""
    with _opened(path, name) as image:
        orientation = image.getexif().get(_ORIENTATION, 1)
        if resize and image.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, far faster than decoding it all;
            # the draft stays at least as large as the resized image, which resize then reaches.
            height, width = _oriented(image.size[::-1], orientation)
            scale = max(size[0] / height, size[1] / width)
            if scale < 1:
                image.draft(None, (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{name}: cannot decode '{shown(path)}' ({first_line(error)}): the file is "
                            "truncated or corrupt. Replace it with a good copy or delete it.") from error
        image = _converted(image, channels)
        if orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[orientation])
        if resize:
            image = _cover_and_crop(image, size)
        elif image.size[::-1] != tuple(size):
            raise _size_error(path, (image.height, image.width), first or path, size, name)
        return np.asarray(image)


def check_same_size(paths: Sequence[Path], size: Size, name: str = "images", workers: int | None = None) -> None:
    """A DataError unless every image is ``size`` (height, width) as displayed; headers only."""
    def check(chunk: Sequence[Path]) -> None:
        for path in chunk:
            found = oriented_size(path, name)
            if found != tuple(size):
                raise _size_error(path, found, paths[0], size, name)
    with ThreadPoolExecutor(worker_count(workers)) as pool:
        for _ in pool.map(check, _chunks(paths)):
            pass


def _size_error(path: Path, found: Size, first: Path, size: Size, name: str) -> DataError:
    return DataError(f"{name}: '{shown(path)}' is {found[0]}×{found[1]} pixels (height×width) but '{shown(first)}' "
                     f"is {size[0]}×{size[1]}. Set image_size in config.yml (e.g. image_size: {min(size)}) to resize "
                     "every image, or give all images the same size.")


def oriented_size(path: Path, name: str = "images") -> Size:
    """(height, width) of the image at ``path`` as displayed (EXIF orientation applied); header only."""
    with _opened(path, name) as image:
        return _oriented(image.size[::-1], image.getexif().get(_ORIENTATION, 1))


def shown(path: Path) -> str:
    """The file as a user finds it: dataset folder, class folder, file name."""
    return "/".join(path.parts[-3:])


def _oriented(size: Size, orientation: int) -> Size:
    return (size[1], size[0]) if orientation in _SWAPS_SIDES else size


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}   # as PIL's ImageOps.exif_transpose


def _converted(image: Image.Image, channels: int) -> Image.Image:
    """``image`` as 8-bit L (channels 1) or RGB (channels 3)."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif image.mode == "F":   # floating-point TIFF: values in [0, 1]
        image = Image.fromarray((np.asarray(image).clip(0, 1) * 255 + 0.5).astype(np.uint8), "L")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ALPHA_MODES:
        image = Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA"))
    if image.mode not in ("L", "RGB"):   # CMYK, YCbCr, LAB, HSV, RGBA (composited)
        image = image.convert("RGB")
    wanted = "L" if channels == 1 else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def _cover_and_crop(image: Image.Image, size: Size) -> Image.Image:
    """Resize so the image covers ``size`` (aspect ratio kept), centre-cropped: one resampling."""
    height, width = size
    scale = max(height / image.height, width / image.width)
    crop_width, crop_height = width / scale, height / scale
    left, top = max(0.0, (image.width - crop_width) / 2), max(0.0, (image.height - crop_height) / 2)
    box = (left, top, min(float(image.width), left + crop_width), min(float(image.height), top + crop_height))
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=None)


class _opened:
    """``with _opened(path, name) as image``: the file opened by Pillow (header read), or a DataError
    naming it: not an image, over PIL's decompression-bomb limit, unreadable."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name

    def __enter__(self) -> Image.Image:
        where = f"{self.name}: '{shown(self.path)}'"
        try:
            with warnings.catch_warnings():   # PIL warns between its limit and twice it, then refuses
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.image = Image.open(self.path)
        except Image.DecompressionBombError as error:
            raise DataError(f"{where} is a decompression bomb by PIL's limit ({first_line(error)}). Replace it "
                            "with a smaller image or delete it.") from error
        except UnidentifiedImageError as error:
            raise DataError(f"{where} is not an image file Pillow can read (JPEG, PNG, BMP, TIFF, WebP, ...). "
                            "Delete it or move it out of the class folder.") from error
        except OSError as error:
            raise DataError(f"{where} cannot be read ({first_line(error)}). Check the file and its "
                            "permissions, or delete it.") from error
        return self.image

    def __exit__(self, *exc: object) -> None:
        self.image.close()


def _chunks(paths: Sequence[Path]) -> list[Sequence[Path]]:
    return [paths[start:start + CHUNK] for start in range(0, len(paths), CHUNK)]
