"""Every ``torch.load`` of the app, each with its trust policy.

- ``load_tensors``: tensors, containers and numbers only (``weights_only=True``), plus the classes a
  caller explicitly allows. Weights files and checkpoints are read this way, whoever wrote them.
- ``load_trusted``: whatever the file pickles. Only for datasets in the site's own input folder
  (a pickled torch ``Dataset``, as the original app accepted), which the site trusts as it trusts
  the model files it imports.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def load_tensors(path: Path, allowed_globals: Iterable = ()) -> Any:
    """The file's content, unpickling nothing but torch's safe types and ``allowed_globals``."""
    with torch.serialization.safe_globals(list(allowed_globals)):
        return torch.load(path, map_location="cpu", weights_only=True)


def refused_globals(error: BaseException) -> bool:
    """Whether ``load_tensors`` refused the file because it pickles more than tensors (Python classes,
    function calls); ``pickled_globals`` then says what."""
    return isinstance(error, pickle.UnpicklingError) and str(error).startswith("Weights only load failed")


def pickled_globals(path: Path) -> list[str]:
    """The classes and functions the file pickles beyond torch's safe types (read without unpickling)."""
    return torch.serialization.get_unsafe_globals_in_checkpoint(path)


def load_trusted(path: Path) -> Any:
    """Everything the file pickles; only for files from the site's own input folder."""
    return torch.load(path, map_location="cpu", weights_only=False)
