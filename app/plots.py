"""The PNG plots of a site's outputs: values per round, and the confusion matrix."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")   # no display in containers and CI
import matplotlib.pyplot as plt  # noqa: E402

from app.files import write_bytes  # noqa: E402


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


def plot_confusion(matrix: list[list[int]], path: Path, *, title: str, labels: list[str] | None = None) -> None:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted), its axes
    labelled with the class names ``labels`` (else the class indices)."""
    classes = len(matrix)
    size = min(10, 2 + 0.5 * classes)
    figure, axes = plt.subplots(figsize=(size, size), dpi=100)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    if classes <= 20:
        names = [_short(name) for name in labels] if labels else [str(index) for index in range(classes)]
        axes.set_xticks(range(classes), names, rotation=90 if max(map(len, names)) > 3 else 0)
        axes.set_yticks(range(classes), names)
        peak = max(max(row) for row in matrix) or 1
        for true, row in enumerate(matrix):
            for predicted, count in enumerate(row):
                axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > peak / 2 else "black")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    _save_png(figure, path)


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def _save_png(figure: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    # tight_layout leaves a placeholder layout engine behind, and for any engine savefig first draws the
    # whole figure once without output, for the engine's layout: a third of each plot's saving time,
    # for the same pixels (checked byte for byte on the run's plots).
    figure.set_layout_engine(None)
    # zlib's fastest level: the files are a fifth larger (45 KB for a confusion matrix of 10 classes),
    # and compressing took a quarter of each plot's time at the end of every run (PNG is lossless either way).
    figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
