"""A site's outputs: the global student, metrics, per-round table, plots, config.

Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so an interrupted run leaves either the old file or the new
one, never half of one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import matplotlib

matplotlib.use("Agg")   # no display in containers and CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from app.errors import first_line  # noqa: E402

STUDENT_WEIGHTS = "student.pt"
STUDENT_TORCHSCRIPT = "student_torchscript.pt"
STUDENT_ONNX = "student.onnx"
BASELINE_WEIGHTS = "baseline_student.pt"
CONFUSION_PLOT = "confusion_matrix.png"
FEDERATION_PLOT = "federation_accuracy.png"
REPORT = "report.md"
METRICS = "metrics.json"
ROUNDS_CSV = "rounds.csv"
ACCURACY_PLOT = "accuracy.png"
LOSS_PLOT = "loss.png"
CONFIG = "config.yml"
LOG = "log.txt"


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through ``write(handle)`` into a temporary file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def save_state_dict(state_dict: Mapping[str, Any], path: Path) -> None:
    """Saved with every tensor on the CPU, so a GPU site's file loads anywhere."""
    atomic_write(path, lambda handle: torch.save(_on_cpu(state_dict), handle))


def _on_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {key: _on_cpu(item) for key, item in value.items()}
    return value


# The exports below take a CPU model and are reported in the returned dict, never raised:
# a model an exporter cannot handle must not cost the run's other results.

def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> dict:
    """A TorchScript file runnable without the model's Python source (traced on ``example``)."""
    model.eval()
    # TorchScript is deprecated in favour of torch.export but is still what most
    # deployment stacks load; the warning would only confuse users reading the log.
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, example, check_trace=False)
            atomic_write(path, lambda handle: torch.jit.save(traced, handle))
    except Exception as error:  # noqa: BLE001 — any tracing failure is reported the same way
        return {"exported": False, "error": f"{type(error).__name__}: {first_line(error)}"}
    return {"exported": True}


def export_onnx(model: nn.Module, images: torch.Tensor, path: Path) -> dict:
    """Export to ONNX (dynamic batch size), written only once onnxruntime predicts like PyTorch
    on ``images`` (or nearly: the returned dict says how near)."""
    model.eval()
    buffer = io.BytesIO()
    try:
        # The TorchScript-based exporter: fast (well under a second for small models)
        # and without the dynamo exporter's extra dependencies.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (images[:1],), buffer, dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        import onnxruntime   # only needed here; keeps start-up light

        session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {"images": images.numpy()})[0]
    except Exception as error:  # noqa: BLE001 — any exporter or runtime failure is reported the same way
        return {"exported": False, "error": f"{type(error).__name__}: {first_line(error)}"}
    write_bytes(path, buffer.getvalue())
    with torch.no_grad():
        torch_logits = model(images).float().numpy()
    return {"exported": True, "checked_samples": len(images),
            "max_abs_difference": float(abs(onnx_logits - torch_logits).max()),
            "same_predictions": bool((onnx_logits.argmax(1) == torch_logits.argmax(1)).all())}


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


def plot_rounds(rounds: list[dict], path: Path, *, title: str, ylabel: str,
                series: Mapping[str, str], references: Mapping[str, float | None] | None = None) -> None:
    """Line plot of ``rounds[i][column]`` per round for each (label → column) in ``series``
    (columns without values are left out), plus dashed horizontal reference lines."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    xs = [row["round"] for row in rounds]
    for label, column in series.items():
        ys = [row.get(column) for row in rounds]
        if any(y is not None for y in ys):
            axes.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=label)
    for label, value in (references or {}).items():
        if value is not None:
            axes.axhline(value, linestyle="--", color="grey", label=label)
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    if xs:
        axes.set_xticks(xs if len(xs) <= 20 else xs[:: max(1, len(xs) // 10)])
    _save_png(figure, path)


def plot_confusion(matrix: list[list[int]], path: Path, *, title: str) -> None:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted)."""
    classes = len(matrix)
    size = min(10, 2 + 0.5 * classes)
    figure, axes = plt.subplots(figsize=(size, size), dpi=100)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    if classes <= 20:
        axes.set_xticks(range(classes))
        axes.set_yticks(range(classes))
        peak = max(max(row) for row in matrix) or 1
        for true, row in enumerate(matrix):
            for predicted, count in enumerate(row):
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > peak / 2 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    _save_png(figure, path)


def _save_png(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_bytes(path, buffer.getvalue())


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON; write them as null rather than produce an invalid file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(key): _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(value) for value in obj]
    return obj
