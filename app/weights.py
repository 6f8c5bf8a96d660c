"""Loading weights files safely into a model, and telling whether two models share an architecture.

Weights are always read with ``torch.load(weights_only=True)``; a file holding a whole pickled
module is accepted only if it pickles nothing but torch classes and the user's ``Model``. Weights
that do not fit the model are listed key by key, with the fix.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.errors import ModelError, first_line
from app.model_files import model_file_name, role_of
from app.torch_files import load_tensors, pickled_globals, refused_globals

# Keys under which training scripts commonly wrap a state_dict together with other things.
WRAPPER_KEYS = ("state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."
SHOWN_PER_KIND = 5


def load_weights(model: nn.Module, path: Path, key: str = "teacher_weights") -> None:
    """Load the weights file at ``path`` into ``model`` (always ``weights_only=True``).

    Accepts a state_dict, a dict wrapping one under "state_dict" / "model_state_dict",
    or a whole pickled module (``torch.save(model)``) made only of torch classes and
    the user's ``Model`` class.
    """
    path = Path(path)
    where = f"{key} '{path.name}'"
    if not path.is_file():
        raise ModelError(f"{where}: file not found at {path.resolve()}. Put the weights file in the "
                         f"input folder (or the generic folder) or fix the name in {key}.")
    content = _read_checkpoint(path, type(model), where)
    state = _strip_data_parallel_prefix(_state_dict_of(content, path, where), model.state_dict())
    _check_fits(model, state, key, where)
    model.load_state_dict(state)


def _read_checkpoint(path: Path, model_class: type, where: str) -> Any:
    try:
        return load_tensors(path)
    except Exception as error:
        if not refused_globals(error):
            raise _unreadable(path, where, error) from error
    # The file pickles Python objects beyond tensors (typically torch.save(model)).
    try:
        names = pickled_globals(path)
    except Exception as inspect_error:
        raise _unreadable(path, where, inspect_error) from inspect_error
    allowed = _allowed_globals(names, model_class, path, where)
    try:
        return load_tensors(path, allowed)
    except Exception as second:
        raise _unreadable(path, where, second) from second


def _unreadable(path: Path, where: str, error: BaseException) -> ModelError:
    return ModelError(f"{where}: cannot be read as PyTorch weights ({first_line(error)}). The file is truncated, "
                      f"corrupt or was not written by torch.save. Save the weights again with "
                      f"torch.save(model.state_dict(), '{path.name}') and copy the whole file.")


def _allowed_globals(names: list[str], model_class: type, path: Path, where: str) -> list:
    """The safe_globals entries that let a pickled module load: torch classes as they are,
    and any ``<module>.Model`` (e.g. ``__main__.Model``) aliased to the class we imported."""
    allowed: list = []
    refused = []
    for name in names:
        if name.rpartition(".")[2] == "Model":
            allowed.append((model_class, name))
        elif (torch_class := _torch_class(name)) is not None:
            allowed.append(torch_class)
        else:
            refused.append(name)
    if refused:
        raise ModelError(
            f"{where}: the file pickles Python objects that cannot be loaded safely: {', '.join(refused)} "
            f"(only torch classes and your Model class are allowed). Save the weights with "
            f"torch.save(model.state_dict(), '{path.name}') instead.")
    return allowed


def _torch_class(name: str) -> type | None:
    module_name, _, attribute = name.rpartition(".")
    if module_name != "torch" and not module_name.startswith("torch."):
        return None
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def _state_dict_of(content: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    if isinstance(content, nn.Module):
        return content.state_dict()
    if isinstance(content, Mapping):
        for wrapper in WRAPPER_KEYS:
            if wrapper in content:
                return _state_dict_of(content[wrapper], path, where)
        if content and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
            return dict(content)
        keys = ", ".join(map(str, list(content)[:10])) or "none"
        found = f"a dict (keys: {keys}) that is not a state_dict of tensors"
    else:
        found = f"a {type(content).__name__}"
    raise ModelError(f"{where}: holds {found}, not model weights. Save them with "
                     f"torch.save(model.state_dict(), '{path.name}').")


def _strip_data_parallel_prefix(state: dict[str, torch.Tensor], own: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Undo nn.DataParallel's 'module.' key prefix when it is the only difference."""
    if not (state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state)):
        return state
    if own and all(k.startswith(DATA_PARALLEL_PREFIX) for k in own):
        return state
    return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], key: str, where: str) -> None:
    own = model.state_dict()
    missing = [f"{k} {_shape(own[k])}" for k in own if k not in state]
    unexpected = [f"{k} {_shape(state[k])}" for k in state if k not in own]
    mismatched = [f"{k}: file {_shape(state[k])}, model {_shape(own[k])}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = [_listing(title, items) for title, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if items]
    if problems:
        role = role_of(key)
        raise ModelError(
            f"{where}: the weights do not fit the {role}'s Model from {model_file_name(model)}:\n"
            + "\n".join(problems)
            + f"\nThe weights were saved from a different architecture or with different {role}_args. "
              f"Use the {role}_model file and {role}_args they were trained with, or other weights.")


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def _listing(title: str, items: list[str]) -> str:
    more = f" (and {len(items) - SHOWN_PER_KIND} more)" if len(items) > SHOWN_PER_KIND else ""
    return f"  {title} ({len(items)}): " + "; ".join(items[:SHOWN_PER_KIND]) + more


def state_signature(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every state_dict entry, in order: equal iff architectures match."""
    return [(name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items()]
