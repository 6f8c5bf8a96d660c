"""The files a site writes, and how: every file atomically (a temporary file in the same folder,
then ``os.replace``), so an interrupted run leaves either the old file or the new one, never half
of one. Tensors are saved on the CPU, JSON without NaN, YAML in the order given.

A run writes its outputs (and each round's checkpoint) into ``<output>/unfinished/`` and
``publish`` moves them into ``<output>/`` together at the very end: a run failing on the way
changes none of an earlier run's files, and leaves ``unfinished/`` with ``error.txt``.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from app.errors import OutputError

# The names of a site's output files.
STUDENT_WEIGHTS = "student.pt"
STUDENT_TORCHSCRIPT = "student_torchscript.pt"
STUDENT_ONNX = "student.onnx"
STUDENT_INT8_ONNX = "student_int8.onnx"
BASELINE_WEIGHTS = "baseline_student.pt"
CLASSES = "classes.json"
CONFUSION_PLOT = "confusion_matrix.png"
FEDERATION_PLOT = "federation_accuracy.png"
REPORT = "report.md"
METRICS = "metrics.json"
ROUNDS_CSV = "rounds.csv"
ACCURACY_PLOT = "accuracy.png"
LOSS_PLOT = "loss.png"
CONFIG = "config.yml"
LOG = "log.txt"
TENSORBOARD = "tensorboard"   # a folder of event files
CHECKPOINT = "checkpoint.pt"
UNFINISHED = "unfinished"   # where a run's outputs wait until they are published together
ERROR = "error.txt"         # in unfinished/: why the run failed
REPLACED = ".replaced"      # in unfinished/: an earlier run's folders, removed with it


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through ``write(handle)`` into a temporary file, then rename it over ``path``. A disk that
    is full or not writable is an OutputError naming the file and the fix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno not in _CANNOT_WRITE:
            raise
        raise OutputError(f"cannot write {path.name} to {path.parent}: {error.strerror}. "
                          f"{_CANNOT_WRITE[error.errno]}") from error
    finally:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass   # the folder itself is not writable: there is no temporary file either


_FULL = "Free some space on that disk (or give the site an output folder on another one)."
_READ_ONLY = "Make the output folder writable."
_CANNOT_WRITE = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EFBIG: _FULL,
                 errno.EROFS: _READ_ONLY, errno.EACCES: _READ_ONLY, errno.EPERM: _READ_ONLY}


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(json_safe(obj), indent=2) + "\n")


def save_state_dict(state_dict: Mapping[str, Any], path: Path) -> None:
    """Saved with every tensor on the CPU, so a GPU site's file loads anywhere."""
    # torch is imported here, not at the top: the test-bed's own process reads the outputs' names and
    # metrics.json through this module, and importing torch would cost it seconds before any site starts.
    import torch

    atomic_write(path, lambda handle: torch.save(_on_cpu(state_dict, torch.Tensor), handle))


def _on_cpu(value: Any, tensor: type) -> Any:
    if isinstance(value, tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {key: _on_cpu(item, tensor) for key, item in value.items()}
    return value


def write_rounds_csv(rounds: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(key for row in rounds for key in row
                                 if not isinstance(row[key], (list, dict))))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rounds)
    write_text(path, buffer.getvalue())


def write_config(document: Mapping, path: Path) -> None:
    write_text(path, yaml.safe_dump(dict(document), sort_keys=False))


def json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON; write them as null rather than produce an invalid file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(key): json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def publish(output_dir: Path) -> None:
    """Publish what ``unfinished/`` holds (the last checkpoint and the run's outputs, files and
    folders such as tensorboard/) in ``output_dir``, replacing an earlier run's, and drop ``unfinished/``
    with what was replaced."""
    unfinished = output_dir / UNFINISHED
    replaced = unfinished / REPLACED
    for staged in sorted(unfinished.iterdir()):
        if staged.name in (ERROR, REPLACED):
            continue
        target = output_dir / staged.name
        if staged.is_dir() and (target.exists() or target.is_symlink()):
            replaced.mkdir(exist_ok=True)
            target.replace(replaced / staged.name)   # a folder cannot be renamed over another one
        staged.replace(target)
    shutil.rmtree(unfinished, ignore_errors=True)


def write_error(output_dir: Path, message: str) -> None:
    """Say in ``unfinished/error.txt`` why the run failed, when the disk lets us: a full disk must not
    replace the error being reported with its own."""
    try:
        write_text(output_dir / UNFINISHED / ERROR, message.rstrip() + "\n")
    except OutputError:
        pass
