"""User model files and weights: import ``Model`` from a .py file, load weights safely,
dry-run a batch, and summarise size and speed.

Every mistake a user can make here (a missing file, a syntax error, no ``Model`` class,
weights from another architecture, a forward pass returning the wrong shape) becomes a
``ModelError`` naming the config key, the file and the fix.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import io
import itertools
import os
import pickle
import re
import sys
import time
import traceback
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from app.errors import ModelError, first_line

if TYPE_CHECKING:
    from app.data import Data

# Keys under which training scripts commonly wrap a state_dict together with other things.
WRAPPER_KEYS = ("state_dict", "model_state_dict")
DATA_PARALLEL_PREFIX = "module."
SHOWN_PER_KIND = 5
DRY_RUN_BATCH = 4
LATENCY_BUDGET_S = 0.2    # per measurement: a few ms models run hundreds of times, large ones `repeats` times
LATENCY_MAX_RUNS = 2000

_import_count = itertools.count(1)
# Names of modules that model files imported from their own folder (helpers next to them).
_helper_modules: set[str] = set()


# --------------------------------------------------------------------------- import

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
    path = path.resolve()
    # Model files may import helper modules next to them, at import time or in __init__.
    with _importable_folder(path.parent):
        model_class = _model_class(_import_file(path, key, where), where)
        return _instantiate(model_class, kwargs, key, where, path)


def _module_name(path: Path, key: str) -> str:
    # A new name for every import: teacher.py and student.py never share a module, and a
    # file imported again gets a fresh class while the classes of earlier imports stay
    # registered under their own names (pickling looks classes up by name).
    stem = re.sub(r"\W", "_", path.stem)
    return f"kd_{_role(key)}_{stem}_{next(_import_count)}"


def _role(key: str) -> str:
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
        raise ModelError(f"{where}: importing the file raised {_describe_error(error)}"
                         f"{_line_in(path, error)}.{_import_hint(error)}") from error
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
            if name.split(".")[0] in provided and file and Path(file).resolve().is_relative_to(folder):
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
        args_key = f"{_role(key)}_args"
        about_arguments = bool(kwargs) or (isinstance(error, TypeError) and "argument" in str(error))
        fix = (f"Make {args_key} in config.yml match the constructor Model{_signature(model_class)} "
               f"(given: {kwargs or 'no arguments'})." if about_arguments
               else f"Fix Model.__init__ in {path.name}.")
        raise ModelError(f"{where}: Model(**{kwargs!r}) raised {_describe_error(error)}"
                         f"{_line_in(path, error)}. {fix}") from error


def _signature(model_class: type) -> str:
    try:
        return str(inspect.signature(model_class))
    except (TypeError, ValueError):
        return "(...)"


def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _line_in(path: Path | None, error: BaseException) -> str:
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


def _model_path(model: nn.Module) -> Path | None:
    """The file the model's class was imported from, if it came from a file."""
    file = getattr(sys.modules.get(type(model).__module__), "__file__", None)
    return Path(file) if file else None


def _model_file(model: nn.Module) -> str:
    """The name of the model's file for messages (its class name if it has no file)."""
    path = _model_path(model)
    return path.name if path else type(model).__name__


# --------------------------------------------------------------------------- weights

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
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not str(error).startswith("Weights only load failed"):
            raise _unreadable(path, where, error) from error
        # The file pickles Python objects beyond tensors (typically torch.save(model)).
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as inspect_error:
            raise _unreadable(path, where, inspect_error) from inspect_error
        with torch.serialization.safe_globals(_allowed_globals(names, model_class, path, where)):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as second:
                raise _unreadable(path, where, second) from second
    except Exception as error:
        raise _unreadable(path, where, error) from error


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
        role = _role(key)
        raise ModelError(
            f"{where}: the weights do not fit the {role}'s Model from {_model_file(model)}:\n"
            + "\n".join(problems)
            + f"\nThe weights were saved from a different architecture or with different {role}_args. "
              f"Use the {role}_model file and {role}_args they were trained with, or other weights.")


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def _listing(title: str, items: list[str]) -> str:
    more = f" (and {len(items) - SHOWN_PER_KIND} more)" if len(items) > SHOWN_PER_KIND else ""
    return f"  {title} ({len(items)}): " + "; ".join(items[:SHOWN_PER_KIND]) + more


# --------------------------------------------------------------------------- checks

def dry_run(model: nn.Module, images: torch.Tensor, key: str) -> torch.Tensor:
    """Run one small batch through ``model`` (eval mode, inference mode); return its logits.

    The model's train/eval mode is restored afterwards.
    """
    file = _model_file(model)
    where = f"{key} '{file}'"
    shape = list(images.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            output = model(images)
    except Exception as error:
        raise ModelError(
            f"{where}: the forward pass failed on a batch of shape {shape}: {_describe_error(error)}"
            f"{_line_in(_model_path(model), error)}. Make Model accept images of shape "
            f"[batch, {', '.join(map(str, shape[1:]))}] "
            "(check the first layer's input channels and the in_features of the first Linear layer "
            "after flattening).") from error
    finally:
        model.train(was_training)
    _check_logits(output, shape[0], where)
    return output


def _check_logits(output: Any, batch: int, where: str) -> None:
    expected = f"[batch, classes] = [{batch}, K]"
    if not isinstance(output, torch.Tensor):
        raise ModelError(f"{where}: forward returned a {type(output).__name__}, not a tensor. Return only "
                         f"the logits tensor {expected}.")
    if not output.is_floating_point():
        raise ModelError(f"{where}: forward returned a {output.dtype} tensor; return the raw float logits "
                         f"{expected} (no argmax).")
    if output.dim() != 2:
        raise ModelError(f"{where}: forward returned shape {list(output.shape)}; expected {expected}. "
                         "Flatten the features (x.flatten(1)) before the last Linear layer.")
    if output.shape[0] != batch:
        raise ModelError(f"{where}: forward returned {output.shape[0]} rows for a batch of {batch} "
                         f"(shape {list(output.shape)}); the batch dimension must be kept. Use x.flatten(1) "
                         "instead of x.view(-1, ...) with a fixed feature size.")
    if not torch.isfinite(output).all():
        raise ModelError(f"{where}: forward returned NaN or infinite values on a batch of real images. "
                         "Check the initialisation and operations such as log, sqrt or division in forward.")


def agreed_classes(teacher: nn.Module, student: nn.Module, train: "Data", test: "Data | None",
                   files: tuple[str, str], device: torch.device | str = "cpu") -> int:
    """Run a few training images through both models (``dry_run``) and return the number of classes
    they both output (``check_outputs``), which must cover every label of ``train`` and ``test``."""
    _, sample, _ = next(iter(train.batches(DRY_RUN_BATCH)))
    sample = sample.to(device)
    labels_need = max(train.num_classes_seen, test.num_classes_seen if test is not None else 0)
    return check_outputs(dry_run(teacher, sample, "teacher_model"), dry_run(student, sample, "student_model"),
                         labels_need, files)


def check_outputs(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                  num_classes_in_labels: int, files: tuple[str, str]) -> int:
    """The number of classes K both models output; K must cover every label (0..K-1).

    ``num_classes_in_labels`` is the largest label + 1; ``files`` names the teacher's
    and the student's model file.
    """
    outputs = {"teacher": (files[0], teacher_logits.shape[1]), "student": (files[1], student_logits.shape[1])}
    for role, (file, k) in outputs.items():
        if k < num_classes_in_labels:
            raise ModelError(
                f"{role}_model '{file}': outputs {k} classes, but the labels go up to "
                f"{num_classes_in_labels - 1} ({num_classes_in_labels} classes). Change the output size of "
                f"{file} (its last layer, e.g. num_classes in {role}_args) to {num_classes_in_labels}. If label "
                f"{num_classes_in_labels - 1} is a mistake instead, fix the labels in train_dataset and "
                f"test_dataset (0..{k - 1} for this model).")
    (teacher_file, k_teacher), (student_file, k_student) = outputs.values()
    if k_teacher != k_student:
        # The student is the model being trained here; the teacher may come with trained weights.
        raise ModelError(
            f"student_model '{student_file}' outputs {k_student} classes but teacher_model '{teacher_file}' "
            f"outputs {k_teacher}; distillation needs both to output the same classes. Change the output "
            f"size of {student_file} (its last layer, e.g. num_classes in student_args) to {k_teacher}.")
    return k_teacher


# --------------------------------------------------------------------------- summary

def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a site sends per update."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def state_signature(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every state_dict entry, in order: equal iff architectures match."""
    return [(name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items()]


@dataclass(frozen=True)
class ModelSummary:
    parameters: int
    size_bytes: int
    latency_ms_batch1: float       # ms per sample at batch 1 (fastest of `repeats` runs)
    latency_ms_per_sample: float   # ms per sample at batch `large_batch` (fastest of `repeats` runs)
    large_batch: int
    peak_memory_bytes: int         # peak CPU memory torch allocated during one forward at `large_batch`

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(model: nn.Module, sample_shape: tuple[int, ...], large_batch: int = 256,
              repeats: int = 10) -> ModelSummary:
    """Size and CPU inference speed of ``model`` on random inputs of ``sample_shape``.

    A model living on another device is measured on a CPU copy; its mode is left unchanged.
    """
    cpu_model = model if all(t.device.type == "cpu" for t in model.state_dict().values()) \
        else copy.deepcopy(model).cpu()
    was_training = cpu_model.training
    cpu_model.eval()
    try:
        with torch.inference_mode():
            single = torch.randn(1, *sample_shape)
            batch = torch.randn(large_batch, *sample_shape)
            latency_single = _fastest_ms(cpu_model, single, repeats)
            latency_batch = _fastest_ms(cpu_model, batch, repeats) / large_batch
            peak = _peak_forward_memory(cpu_model, batch)
    finally:
        cpu_model.train(was_training)
    return ModelSummary(parameters=parameter_count(model), size_bytes=serialized_size(model),
                        latency_ms_batch1=latency_single, latency_ms_per_sample=latency_batch,
                        large_batch=large_batch, peak_memory_bytes=peak)


def _fastest_ms(model: nn.Module, inputs: torch.Tensor, repeats: int) -> float:
    # The fastest run is the model's own cost; slower runs measure whatever else shares the
    # CPU (other sites of a local federation, other containers), which would blur the ratios.
    # Fast calls repeat for at least LATENCY_BUDGET_S, so one of them finds the CPU free.
    model(inputs)   # warm-up: first calls pay for allocation and kernel selection
    times: list[float] = []
    budget_ends = time.perf_counter() + LATENCY_BUDGET_S
    while len(times) < repeats or (time.perf_counter() < budget_ends and len(times) < LATENCY_MAX_RUNS):
        start = time.perf_counter()
        model(inputs)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def _peak_forward_memory(model: nn.Module, inputs: torch.Tensor) -> int:
    """Peak bytes torch's CPU allocator holds during one forward pass, beyond what existed before.

    The profiler with profile_memory=True records every CPU allocation (+bytes) and free
    (-bytes) as a '[memory]' event. Replayed in time order, their running sum is the
    memory the forward pass holds at each moment (activations, workspaces, the output);
    its maximum is the peak. The output is dropped inside the profiled block, so the sum
    returns to zero. The per-operator totals of ``prof.events()`` would hide peaks
    inside an operator, hence the raw event list.
    """
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(inputs)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a moment: the profiler's C++ side (kineto) prints
    'USDT ... profiler_start/stop' lines there that no environment variable turns off,
    and they would read like errors in every site's log."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
