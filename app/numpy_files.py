"""Every ``np.load`` of the app, and the array layouts FeatureCloud's apps write.

``read_arrays`` turns a ``.npy``/``.npz`` dataset (plus, optionally, a separate labels file) into
one images array and one labels array, recognising, without any renaming:

- this app's ``.npz``: ``images``/``labels`` (or ``x``/``y``);
- FeatureCloud's ``.npz`` (Cross-Validation, Data Distributor, Image Normalization, read by
  fc-deep-learning): ``data``/``targets``, where ``data`` is often an object array holding one
  image array per sample;
- ``same-sep`` ``.npy``: an object array ``[samples, labels]`` of shape (2, N) (Cross-Validation,
  Data Distributor and Image Normalization's ``np.array([features, labels])``; Image Loader's
  ``dataset.npy``, whose labels are its folder names);
- ``same-last`` ``.npy``: one row per sample ending in its label. Cross-Validation and Data
  Distributor write numeric rows ``np.append(image, label)`` (the image flattened, see
  ``image_shape`` in app.data); their README draws ``[image, label]`` pairs, read as well;
- images alone (``.npy``, or a ``.npz`` with one array such as ``arr_0``) with the labels in a
  separate ``.npy``/``.npz`` file.

Object arrays are pickled Python objects: they are unpickled only when a file holds one, and
the callers read datasets only from the site's own input folder, which the site trusts as it
trusts the model files it imports. Numeric arrays never go through the unpickler.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import DataError, first_line

IMAGE_KEYS = ("images", "x", "data")
LABEL_KEYS = ("labels", "y", "targets")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")   # a zip archive with files, an empty one
_NPY_MAGIC = b"\x93NUMPY"
_OBJECTS_REFUSED = "Object arrays cannot be loaded when allow_pickle=False"
LAYOUTS_HINT = ("Save the images and labels as .npz arrays 'images' and 'labels' (FeatureCloud's 'data' and "
                "'targets' work too), or as .npy in FeatureCloud's same-sep ([images, labels]) or same-last "
                "(one [image, label] row per sample) layout")


@dataclass
class Arrays:
    """What a dataset file holds: images (an array, or one array per sample), labels, and the layout
    they were found in (for the site's log)."""

    images: Any
    labels: Any
    layout: str


def unreadable(name: str, reason: str) -> DataError:
    return DataError(f"{name}: cannot read the file, it is corrupt, truncated or not in the format its "
                     f"extension says ({reason}). Write it again, e.g. with torch.save or numpy.savez.")


def read_arrays(path: Path, name: str, labels: Path | None = None, labels_name: str = "") -> Arrays:
    """The images and labels of the ``.npy``/``.npz`` file at ``path`` (``name`` = its config key and
    file, as every message names it); ``labels``: a separate labels file, ``labels_name`` its key and file."""
    content = _load(path, name)
    if labels is not None:
        return Arrays(_images_only(content, name, labels_name), _labels_only(_load(labels, labels_name),
                                                                             labels_name), "images, separate labels")
    if isinstance(content, dict):
        return pick_arrays(content, name)
    return _from_npy(content, name)


def stack_images(images: Any, name: str) -> np.ndarray:
    """``images`` as one numeric array [N, ...]: an object array (or list) of per-sample arrays or
    nested lists is stacked; every sample must be numbers and have the first sample's shape."""
    if isinstance(images, np.ndarray) and images.dtype != object:
        return images
    samples = []
    for index, entry in enumerate(images):
        sample = _numeric(entry)
        if sample is None or sample.ndim == 0:
            raise DataError(f"{name}: image {index} is {_describe(entry)}, not an array of pixel values. "
                            f"{LAYOUTS_HINT}.")
        if samples and sample.shape != samples[0].shape:
            raise DataError(f"{name}: image {index} has shape {sample.shape} but image 0 has {samples[0].shape}. "
                            "Make all images the same size and number of channels (e.g. resize them in "
                            "FeatureCloud's Image Loader).")
        samples.append(sample)
    if not samples:
        return np.zeros((0,), dtype=np.float32)
    return np.stack(samples)


def label_values(labels: Any, name: str) -> np.ndarray:
    """``labels`` as a numeric array. Labels written as text (Image Loader labels images by their
    folder names) are accepted when every one is a whole number ('0', '7')."""
    array = labels if isinstance(labels, np.ndarray) and labels.dtype != object else _label_list(labels, name)
    if array.dtype.kind not in "US":
        return array
    texts = [str(value).strip() for value in array.ravel()]
    if all(_is_whole_number(text) for text in texts):
        return np.array([int(text) for text in texts], dtype=np.int64).reshape(array.shape)
    names = sorted(set(texts))
    shown = ", ".join(repr(text) for text in names[:5]) + (", ..." if len(names) > 5 else "")
    raise DataError(f"{name}: the labels are class names ({shown}), not class numbers. Name the folders "
                    "(or label values) 0, 1, 2, ... before loading the images, or save the labels as whole "
                    "numbers 0..K-1, the same number for the same class at every site.")


# --------------------------------------------------------------------------- loading

def _load(path: Path, name: str) -> Any:
    """An .npy file's array or an .npz file's arrays (as a dict); unpickles object arrays only."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{name}: no such file, looked for {path}. Put the file there or fix its name in "
                        "config.yml.")
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(_NPY_MAGIC))
        if suffix == ".npz" and start[:4] not in _ZIP_MAGIC:   # np.load would take it for a pickle
            raise ValueError("it is not a zip archive, which every .npz file is")
        if suffix == ".npy" and start != _NPY_MAGIC:
            raise ValueError("it does not start like a file written by numpy.save")
        try:
            return _np_load(path, allow_pickle=False)
        except ValueError as error:
            if _OBJECTS_REFUSED not in str(error):
                raise
        return _np_load(path, allow_pickle=True)   # an object array, from the site's own input folder
    except DataError:
        raise
    except Exception as error:  # np.load fails in many ways (BadZipFile, zlib.error, ValueError, EOFError...)
        raise unreadable(name, first_line(error)) from error


def _np_load(path: Path, allow_pickle: bool) -> Any:
    loaded = np.load(path, allow_pickle=allow_pickle)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded as archive:
            return {key: archive[key] for key in archive.files}
    return loaded


# --------------------------------------------------------------------------- layouts

def pick_arrays(arrays: dict[str, Any], name: str) -> Arrays:
    """The images and labels of a mapping of named arrays (an .npz file, a dict saved by torch.save)."""
    images_key = next((key for key in IMAGE_KEYS if key in arrays), None)
    labels_key = next((key for key in LABEL_KEYS if key in arrays), None)
    if images_key is None or labels_key is None:
        found = ", ".join(repr(key) for key in arrays) or "none"
        raise DataError(f"{name}: expected keys 'images' (or 'x') and 'labels' (or 'y'), or FeatureCloud's "
                        f"'data' and 'targets', found keys: {found}. Save the arrays under those names.")
    return Arrays(arrays[images_key], arrays[labels_key], f"arrays '{images_key}' and '{labels_key}'")


def _from_npy(array: np.ndarray, name: str) -> Arrays:
    if array.dtype == object:
        return _from_object_array(array, name)
    if array.ndim == 2 and array.dtype.kind in "biuf":
        images = array[:, :-1]
        if array.dtype.kind in "iu" and images.size and images.min() >= 0 and images.max() <= 255:
            # np.append(image, label) widened 8-bit pixels to the label's integer type
            images = images.astype(np.uint8)
        return Arrays(images, array[:, -1], "same-last (one row per sample: the flattened image, then its label)")
    if array.ndim >= 3:
        raise DataError(f"{name}: holds {array.shape[0]} images of shape {array.shape[1:]} but no labels. Name "
                        "the file with their labels in train_labels / test_labels, or save [images, labels] "
                        "in one file (FeatureCloud's same-sep layout).")
    raise DataError(f"{name}: holds a {array.dtype} array of shape {array.shape}, which is no dataset layout "
                    f"this app knows. {LAYOUTS_HINT}.")


def _from_object_array(array: np.ndarray, name: str) -> Arrays:
    if len(array) == 2 and _sequence(array[0]) and _sequence(array[1]) and len(array[0]) == len(array[1]) \
            and all(_scalar(value) for value in array[1]):
        return Arrays(array[0], array[1], "same-sep (object array [images, labels])")
    rows = list(array) if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 2) else None
    if rows is not None and all(_sequence(row) and len(row) == 2 and _scalar(row[1]) for row in rows):
        return Arrays([row[0] for row in rows], [row[1] for row in rows],
                      "same-last (object array of [image, label] pairs)")
    raise DataError(f"{name}: an object array of shape {array.shape} whose entries are not image/label pairs "
                    f"({_first_misfit(array)}). {LAYOUTS_HINT}.")


def _images_only(content: Any, name: str, labels_name: str) -> Any:
    if isinstance(content, dict):
        key = next((key for key in IMAGE_KEYS if key in content), None)
        if key is None and len(content) == 1:
            key = next(iter(content))   # np.savez(file, features) names its one array arr_0
        if key is None:
            found = ", ".join(repr(key) for key in content) or "none"
            raise DataError(f"{name}: expected the images in an array named 'images' (or 'x', 'data') or as the "
                            f"file's only array, found keys: {found}. Save the images alone (the labels are in "
                            f"{labels_name}).")
        return content[key]
    return content


def _labels_only(content: Any, labels_name: str) -> Any:
    if isinstance(content, dict):
        key = next((key for key in LABEL_KEYS if key in content), None)
        if key is None and len(content) == 1:
            key = next(iter(content))
        if key is None:
            found = ", ".join(repr(key) for key in content) or "none"
            raise DataError(f"{labels_name}: expected the labels in an array named 'labels' (or 'y', 'targets') "
                            f"or as the file's only array, found keys: {found}. Save the labels alone.")
        return content[key]
    return content


# --------------------------------------------------------------------------- entries

def _numeric(entry: Any) -> np.ndarray | None:
    """``entry`` as a numeric array, or None when it is something else (text, dicts, ragged lists)."""
    try:
        array = np.asarray(entry)
    except (ValueError, TypeError):
        return None
    return array if array.dtype.kind in "biuf" else None


def _scalar(value: Any) -> bool:
    """A label: one number or one text (a class name)."""
    return isinstance(value, (int, float, str, np.number, np.str_, np.bool_)) or \
        (isinstance(value, np.ndarray) and value.ndim == 0)


def _sequence(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim > 0
    return isinstance(value, (list, tuple))


def _label_list(labels: Any, name: str) -> np.ndarray:
    values = list(labels)
    for index, value in enumerate(values):
        if not _scalar(value):
            raise DataError(f"{name}: label {index} is {_describe(value)}, not a class number. "
                            f"{LAYOUTS_HINT}.")
    texts = any(isinstance(value, (str, np.str_)) for value in values)
    return np.array([str(value) for value in values]) if texts else np.array(values)


def _is_whole_number(text: str) -> bool:
    return text.isdigit() or (text.startswith("-") and text[1:].isdigit())


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, (str, np.str_)):
        return f"the text {str(value)[:20]!r}"
    return f"a {type(value).__name__}"


def _first_misfit(array: np.ndarray) -> str:
    first = array.flat[0] if array.size else None
    if array.ndim == 1 and _sequence(first):
        return f"entry 0 holds {len(first)} items, not an image and a label"
    return f"entry 0 is {_describe(first)}"
