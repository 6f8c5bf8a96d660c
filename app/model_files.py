"""Importing the user's model files: class ``Model`` from a .py file, instantiated with its arguments.

Every mistake a user can make here (a missing file, a syntax error, no ``Model`` class, a
constructor failing on its arguments) becomes a ``ModelError`` naming the config key, the file
and the fix. The helpers that locate a model's file and the line of its code that failed serve
the other model modules' messages too.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from app.errors import ModelError
from app.process_wide import exclusive

_import_count = itertools.count(1)
# Names of modules that model files imported from their own folder (helpers next to them).
_helper_modules: set[str] = set()


def build_model(path: Path, kwargs: dict, key: str) -> nn.Module:
    """Import class ``Model`` from the .py file at ``path`` and return ``Model(**kwargs)``.

    ``key`` is the config key naming the file ("teacher_model" / "student_model").
    """
    path = Path(path)
    where = f"{key} '{path.name}'"
    if not path.is_file():
        raise ModelError(f"{where}: file not found at {path.resolve()}. Put the file in the input "
                         f"folder (or the generic folder) or fix the name in {key}.")
    if path.suffix != ".py":
        raise ModelError(f"{where}: not a Python file. {key} must name a .py file that defines "
                         "`class Model(nn.Module)`.")
    # Absolute, but links not followed: the helpers next to a linked-in file are those of its input folder.
    path = Path(os.path.abspath(path))
    # Model files may import helper modules next to them, at import time or in __init__; sys.path and
    # sys.modules belong to the process, so sites sharing one take turns.
    with exclusive(), _importable_folder(path.parent):
        model_class = _model_class(_import_file(path, key, where), where)
        return _instantiate(model_class, kwargs, key, where, path)


def _module_name(path: Path, key: str) -> str:
    # A new name for every import: teacher.py and student.py never share a module, and a
    # file imported again gets a fresh class while the classes of earlier imports stay
    # registered under their own names (pickling looks classes up by name).
    stem = re.sub(r"\W", "_", path.stem)
    return f"kd_{role_of(key)}_{stem}_{next(_import_count)}"


def role_of(key: str) -> str:
    """'teacher' for 'teacher_model' / 'teacher_weights', 'student' for 'student_model' / 'init_student'."""
    return "student" if key == "init_student" else key.rsplit("_", 1)[0]


def _import_file(path: Path, key: str, where: str) -> types.ModuleType:
    """Execute the file as a fresh module registered in sys.modules.

    Registering it keeps ``Model.__module__`` resolvable, which pickling and
    TorchScript (it reads the class's source) rely on.
    """
    name = _module_name(path, key)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[name]
        line = (error.text or "").strip()
        raise ModelError(f"{where}: syntax error in {Path(error.filename or path).name} line "
                         f"{error.lineno}: {error.msg}\n    {line}\nFix that line.") from error
    except (Exception, SystemExit) as error:
        del sys.modules[name]
        raise ModelError(f"{where}: importing the file raised {describe_error(error)}"
                         f"{line_in(path, error)}.{_import_hint(error)}") from error
    return module


@contextmanager
def _importable_folder(folder: Path) -> Iterator[None]:
    """Put ``folder`` first on sys.path for the duration.

    Helper modules that earlier model files imported from their folders are cached in
    sys.modules; those this folder also provides are set aside, so this model imports
    its own, current copy. They are put back afterwards unless re-imported, because the
    models built from them still refer to them.
    """
    provided = {p.stem for p in folder.glob("*.py")} | {p.parent.name for p in folder.glob("*/__init__.py")}
    stale = {n: sys.modules.pop(n) for n in list(_helper_modules)
             if n in sys.modules and n.split(".")[0] in provided}
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()   # the folder's files may be newer than the import system's listing
    # The input folder is the user's (or read-only): leave no __pycache__ in it.
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = writes_bytecode
        sys.path.remove(str(folder))
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None)
            if name.split(".")[0] in provided and file and Path(os.path.abspath(file)).is_relative_to(folder):
                _helper_modules.add(name)
        for name, module in stale.items():
            sys.modules.setdefault(name, module)


def _model_class(module: types.ModuleType, where: str) -> type:
    model_class = getattr(module, "Model", None)
    if model_class is None:
        defined = [n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__]
        networks = [n for n in defined if issubclass(vars(module)[n], nn.Module)]
        found = f"it defines the classes {', '.join(defined)}" if defined else "it defines no classes"
        fix = (f"Rename `{networks[0]}` to `Model` or add `Model = {networks[0]}`" if len(networks) == 1
               else "Define `class Model(nn.Module)` in the file")
        raise ModelError(f"{where}: no class `Model` found; {found}. {fix}.")
    if not isinstance(model_class, type):
        raise ModelError(f"{where}: `Model` is a {type(model_class).__name__}, not a class. Define "
                         "`class Model(nn.Module)` with the layers in __init__ and the computation in forward.")
    if not issubclass(model_class, nn.Module):
        bases = ", ".join(b.__name__ for b in model_class.__bases__)
        raise ModelError(f"{where}: class `Model` must subclass torch.nn.Module, but its bases are "
                         f"({bases}). Declare it as `class Model(nn.Module)`.")
    return model_class


def _instantiate(model_class: type, kwargs: dict, key: str, where: str, path: Path) -> nn.Module:
    try:
        return model_class(**kwargs)
    except Exception as error:
        args_key = f"{role_of(key)}_args"
        about_arguments = bool(kwargs) or (isinstance(error, TypeError) and "argument" in str(error))
        fix = (f"Make {args_key} in config.yml match the constructor Model{_signature(model_class)} "
               f"(given: {kwargs or 'no arguments'})." if about_arguments
               else f"Fix Model.__init__ in {path.name}.")
        raise ModelError(f"{where}: Model(**{kwargs!r}) raised {describe_error(error)}"
                         f"{line_in(path, error)}. {fix}") from error


def _signature(model_class: type) -> str:
    try:
        return str(inspect.signature(model_class))
    except (TypeError, ValueError):
        return "(...)"


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def line_in(path: Path | None, error: BaseException) -> str:
    """' (at <file> line N: <code>)' for the deepest frame of ``error`` inside ``path``, if any."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if path and Path(f.filename) == path]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {path.name} line {frame.lineno}: {(frame.line or '').strip()})"


def _import_hint(error: BaseException) -> str:
    if isinstance(error, ModuleNotFoundError):
        return (f" Only the packages installed in the app (torch, torchvision, numpy) are available; "
                f"put {error.name}.py next to the model file if it is your own helper module.")
    return " Fix the file so that it can be imported."


def model_path(model: nn.Module) -> Path | None:
    """The file the model's class was imported from, if it came from a file."""
    file = getattr(sys.modules.get(type(model).__module__), "__file__", None)
    return Path(file) if file else None


def model_file_name(model: nn.Module) -> str:
    """The name of the model's file for messages (its class name if it has no file)."""
    path = model_path(model)
    return path.name if path else type(model).__name__
