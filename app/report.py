"""Human-readable views of metrics.json: a site's report.md and the test-bed's summary table.

Both are rendered from the metrics dictionary alone, with the formatting helpers
below, so every figure shown is a rounding of a value in metrics.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from app import checkpoint, files


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def number(value: int) -> str:
    return f"{value:,}"


def size(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


def milliseconds(value: float) -> str:
    return f"{value:.3f} ms"


def points(value: float) -> str:
    return f"{100 * value:+.2f} points"


def render_report(metrics: dict) -> str:
    """The whole report.md of one site."""
    sections = [_headline(metrics), _accuracy(metrics), _size_and_speed(metrics), _rounds(metrics),
                _per_class(metrics)]
    if "federation" in metrics:
        sections.append(_federation(metrics["federation"]))
    sections += [_files(metrics), _settings(metrics)]
    return "\n\n".join(sections) + "\n"


def print_summary(outputs: dict[str, Path]) -> None:
    """The test-bed's closing table, from each site's metrics.json (in client order)."""
    all_metrics = {site: json.loads((folder / files.METRICS).read_text()) for site, folder in outputs.items()}
    print("\n" + summary_table(all_metrics))
    print(f"\nEach site's student, metrics, plots and report.md are in {_common_parent(outputs)}/<site>/.")


def _common_parent(outputs: dict[str, Path]) -> Path:
    parents = {folder.parent for folder in outputs.values()}
    return parents.pop() if len(parents) == 1 else Path(".")


def summary_table(all_metrics: dict[str, dict]) -> str:
    """One line per site (teacher, student, baseline accuracy, size) and the federation's weighted line."""
    with_baseline = any("baseline" in metrics for metrics in all_metrics.values())
    rows = [("site", "teacher", "student") + (("baseline",) if with_baseline else ())
            + ("student params", "smaller", "faster (batch 1)")]
    federation = None
    for site, metrics in all_metrics.items():
        compression = metrics["compression"]
        rows.append((site, percent(metrics["teacher"]["accuracy"]), percent(metrics["student"]["accuracy"]))
                    + ((percent(metrics.get("baseline", {}).get("accuracy")),) if with_baseline else ())
                    + (number(metrics["student"]["parameters"]), times(compression["parameters_ratio"]),
                       times(compression["speedup_batch1"])))
        federation = metrics.get("federation", federation)
    if federation is not None:
        rows.append((f"all {len(federation['sites'])} sites", percent(federation["teacher_accuracy"]),
                     percent(federation["student_accuracy"]))
                    + ((percent(federation["baseline_accuracy"]),) if with_baseline else ()) + ("", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    rule = "-" * max(len(line) for line in lines)
    lines.insert(1, rule)
    if federation is not None:
        lines.insert(len(lines) - 1, rule)
        lines.append("(accuracy on each site's own test set; 'all sites' weights them by test-set size)")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _headline(metrics: dict) -> str:
    teacher, student, compression = metrics["teacher"], metrics["student"], metrics["compression"]
    text = (f"# Knowledge distillation report: site {metrics['site']}\n\n"
            f"The distilled student reaches **{percent(student['accuracy'])}** test accuracy on this site's "
            f"{number(metrics['data']['test_samples'])} test images, against {percent(teacher['accuracy'])} for "
            f"the teacher, with {times(compression['parameters_ratio'])} fewer parameters and "
            f"{times(compression['speedup_batch1'])} faster inference on one image.")
    if "baseline" in metrics:
        gain, noise = metrics["distillation_gain"], metrics["distillation_gain_noise"]
        text += (f" Trained without the teacher, the same student reaches {percent(metrics['baseline']['accuracy'])}:"
                 f" distillation gains {points(gain)}")
        text += (f", within the ±{100 * noise:.2f} points the choice of test images alone can make."
                 if abs(gain) < noise else f" (more than the ±{100 * noise:.2f} points test-set chance explains).")
    return text


def _accuracy(metrics: dict) -> str:
    rows = [(f"teacher ({metrics['teacher']['source']})", percent(metrics["teacher"]["accuracy"]),
             f"{metrics['teacher']['loss']:.4f}"),
            ("distilled student", percent(metrics["student"]["accuracy"]), f"{metrics['student']['loss']:.4f}")]
    if "baseline" in metrics:
        rows.append(("baseline student (no teacher)", percent(metrics["baseline"]["accuracy"]),
                     f"{metrics['baseline']['loss']:.4f}"))
    return "## Accuracy on this site's test set\n\n" + _table(("model", "test accuracy", "test loss"), rows, "lrr")


def _size_and_speed(metrics: dict) -> str:
    teacher, student, ratio = metrics["teacher"], metrics["student"], metrics["compression"]
    batch = student["large_batch"]
    rows = [("parameters", number(teacher["parameters"]), number(student["parameters"]),
             times(ratio["parameters_ratio"])),
            ("size on disk", size(teacher["size_bytes"]), size(student["size_bytes"]), times(ratio["size_ratio"])),
            ("latency, batch of 1", milliseconds(teacher["latency_ms_batch1"]),
             milliseconds(student["latency_ms_batch1"]), times(ratio["speedup_batch1"])),
            (f"latency per image, batch of {batch}", milliseconds(teacher["latency_ms_per_sample"]),
             milliseconds(student["latency_ms_per_sample"]), times(ratio["speedup_large_batch"])),
            (f"peak inference memory, batch of {batch}", size(teacher["peak_memory_bytes"]),
             size(student["peak_memory_bytes"]), times(ratio["memory_ratio"]))]
    return ("## Size and speed (CPU inference)\n\n"
            + _table(("", "teacher", "student", "teacher ÷ student"), rows, "lrrr"))


def _rounds(metrics: dict) -> str:
    baseline = "baseline" in metrics
    header = ("round", "train loss (KD)", "test accuracy", "test loss") + (("baseline accuracy",) if baseline else ())
    rows = [(str(row["round"]), f"{row['train_loss']:.4f}", percent(row["accuracy"]), f"{row['loss']:.4f}")
            + ((percent(row["baseline_accuracy"]),) if baseline else ()) for row in metrics["rounds"]]
    resumed = (f"Resumed from a checkpoint: this run trained rounds {metrics['first_round']} and later.\n\n"
               if metrics["first_round"] > 1 else "")
    return (f"## Rounds\n\nThe global models after each round, evaluated on this site's test set.\n\n{resumed}"
            f"![accuracy per round]({files.ACCURACY_PLOT})\n![loss per round]({files.LOSS_PLOT})\n\n"
            + _table(header, rows, "r" * len(header)))


def _per_class(metrics: dict) -> str:
    per_class = metrics["student"]["per_class_accuracy"]
    rows = [(str(label), percent(value), str(sum(metrics["student"]["confusion_matrix"][label])))
            for label, value in enumerate(per_class)]
    return ("## Distilled student per class\n\n" + _table(("class", "accuracy", "test images"), rows, "rrr")
            + f"\n\n![confusion matrix]({files.CONFUSION_PLOT})")


def _federation(federation: dict) -> str:
    rows = [(site["site"], number(site["test_samples"]), percent(site["teacher_accuracy"]),
             percent(site["student_accuracy"]), percent(site["baseline_accuracy"])) for site in federation["sites"]]
    rows.append(("**all sites (weighted)**", number(federation["test_samples"]),
                 percent(federation["teacher_accuracy"]), percent(federation["student_accuracy"]),
                 percent(federation["baseline_accuracy"])))
    return (f"## Federation ({len(federation['sites'])} sites)\n\nEach site's accuracy on its own test set; the last "
            "line weights the sites by test-set size.\n\n"
            + _table(("site", "test images", "teacher", "distilled student", "baseline student"), rows, "lrrrr")
            + f"\n\n![federation accuracy per round]({files.FEDERATION_PLOT})")


def _files(metrics: dict) -> str:
    onnx = metrics["onnx"]
    if onnx["exported"]:
        verdict = "same predictions" if onnx["same_predictions"] else "**different predictions**"
        onnx_line = (f"`{files.STUDENT_ONNX}`: ONNX, checked with onnxruntime on {onnx['checked_samples']} "
                     f"test images: {verdict}, largest logit difference {onnx['max_abs_difference']:.2e}")
    else:
        onnx_line = f"`{files.STUDENT_ONNX}`: not exported ({onnx['error']})"
    torchscript = metrics["torchscript"]
    torchscript_line = f"`{files.STUDENT_TORCHSCRIPT}`: " + (
        "TorchScript, runs without the model's Python file" if torchscript["exported"]
        else f"not exported ({torchscript['error']})")
    lines = [f"`{files.STUDENT_WEIGHTS}`: the global student's state_dict (load with `torch.load(..., "
             "weights_only=True)` into the student model)", torchscript_line, onnx_line]
    if "baseline" in metrics:
        lines.append(f"`{files.BASELINE_WEIGHTS}`: the baseline student's state_dict")
    lines += [f"`{files.METRICS}`, `{files.ROUNDS_CSV}`: every figure of this report",
              f"`{checkpoint.CHECKPOINT}`: the last round's global models; name it in `init_student` to continue "
              "training",
              f"`{files.CONFIG}`: the settings used, defaults included; `{files.LOG}`: this site's log"]
    return "## Files\n\n" + "\n".join(f"- {line}" for line in lines)


def _settings(metrics: dict) -> str:
    config = metrics["config"]
    keys = ("max_iter", "local_epochs", "batch_size", "learning_rate", "optimizer", "temperature", "alpha",
            "loss", "seed")
    return "## Settings\n\n" + ", ".join(f"{key} {config[key]}" for key in keys) + "."
