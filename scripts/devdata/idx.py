"""Read IDX files (the format MNIST is distributed in), gzip-compressed or not."""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

# MNIST as the workplace ships it, next to the repository, or next to a folder holding it (a git
# worktree in a sub-folder); tools take --mnist-dir for another folder.
_SHIPPED = [folder / "shared" / "datasets" / "mnist" for folder in Path(__file__).resolve().parents[3:]]
DEFAULT_MNIST = next((folder for folder in _SHIPPED if folder.is_dir()), _SHIPPED[0])

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def idx_file(folder: Path, stem: str) -> Path | None:
    """``stem.gz`` or ``stem`` in ``folder``, whichever exists (MNIST ships gzipped)."""
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file, e.g. MNIST images as uint8 [N, 28, 28]."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: truncated or padded IDX file ({len(data)} bytes, expected {expected})")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def read_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST from ``folder``: training images, training labels, test images, test labels (labels int64).

    Raises FileNotFoundError naming the missing files and the fix (the builders' --mnist-dir).
    """
    files = {stem: idx_file(folder, stem) for stem in MNIST_FILES}
    missing = [f"{stem}[.gz]" for stem, path in files.items() if path is None]
    if missing:
        raise FileNotFoundError(f"MNIST files not found in {folder}: {', '.join(missing)}. Pass --mnist-dir with "
                                "the folder holding the four MNIST IDX files (gzipped or not).")
    x_train, y_train, x_test, y_test = (read_idx(path) for path in files.values())
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def read_mnist_or_exit(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``read_mnist`` for the builders' command lines: a missing file is one ``error:`` line and exit code 2."""
    try:
        return read_mnist(folder)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
