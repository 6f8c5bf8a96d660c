"""Human-readable views of metrics.json: a site's report.md and the test-bed's summary table.

Both are rendered from the metrics dictionary alone, with the formatting helpers
below, so every figure shown is a rounding of a value in metrics.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from app import files

INT8_TOLERATED_LOSS = 0.01      # more lost accuracy than this and report.md recommends the float model
SMALL_MODEL_SIZE_RATIO = 0.35   # an int8 file larger than this share of the float one: fixed overhead dominates


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


def ratio(value: float) -> str:
    return f"{value:.2f}×"


def milliseconds(value: float) -> str:
    # small students answer in microseconds: "0.000 ms" would say nothing
    return f"{value:.3f} ms" if value >= 0.1 else f"{1000 * value:.2f} µs"


def points(value: float) -> str:
    return f"{100 * value:+.2f} points"


def render_report(metrics: dict) -> str:
    """The whole report.md of one site."""
    sections = [_headline(metrics)]
    if metrics.get("warnings"):
        sections.append(_warnings(metrics["warnings"]))
    sections += [_accuracy(metrics), _size_and_speed(metrics)]
    if "int8" in metrics:
        sections.append(_int8(metrics))
    sections += [_rounds(metrics), _per_class(metrics)]
    if "federation" in metrics:
        sections.append(_federation(metrics["federation"]))
    sections += [_files(metrics), _settings(metrics)]
    return "\n\n".join(sections) + "\n"


def print_summary(outputs: dict[str, Path]) -> None:
    """The test-bed's closing table, from each site's metrics.json (in client order)."""
    all_metrics = {site: json.loads((folder / files.METRICS).read_text()) for site, folder in outputs.items()}
    cross_validation = all("cross_validation" in metrics for metrics in all_metrics.values())
    print("\n" + (cv_summary_table if cross_validation else summary_table)(all_metrics))
    if cross_validation:
        folder = next(iter(all_metrics.values()))["cross_validation"]["dir"]
        print(f"\nEach site's cross-validation report.md is in {_common_parent(outputs)}/<site>/, every fold's "
              f"student, metrics, plots and report.md in {_common_parent(outputs)}/<site>/{folder}/<fold>/.")
    else:
        print(f"\nEach site's student, metrics, plots and report.md are in {_common_parent(outputs)}/<site>/.")


def _common_parent(outputs: dict[str, Path]) -> Path:
    parents = {folder.parent for folder in outputs.values()}
    return parents.pop() if len(parents) == 1 else Path(".")


def summary_table(all_metrics: dict[str, dict]) -> str:
    """One line per site (teacher, student, baseline and int8 accuracy, size) and the federation's weighted line."""
    with_baseline = any("baseline" in metrics for metrics in all_metrics.values())
    with_int8 = any("int8" in metrics for metrics in all_metrics.values())
    rows = [("site", "teacher", "student") + (("baseline",) if with_baseline else ()) + (("int8",) if with_int8 else ())
            + ("student params", "smaller", "faster (batch 1)")]
    federation = None
    for site, metrics in all_metrics.items():
        compression = metrics["compression"]
        rows.append((site, percent(metrics["teacher"]["accuracy"]), percent(metrics["student"]["accuracy"]))
                    + ((percent(metrics.get("baseline", {}).get("accuracy")),) if with_baseline else ())
                    + ((percent(metrics.get("int8", {}).get("accuracy")),) if with_int8 else ())
                    + (number(metrics["student"]["parameters"]), times(compression["parameters_ratio"]),
                       times(compression["speedup_batch1"])))
        federation = metrics.get("federation", federation)
    if federation is not None:
        rows.append((f"all {len(federation['sites'])} sites", percent(federation["teacher_accuracy"]),
                     percent(federation["student_accuracy"]))
                    + ((percent(federation["baseline_accuracy"]),) if with_baseline else ())
                    + ((percent(federation.get("int8_accuracy")),) if with_int8 else ()) + ("", "", ""))
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
    int8 = metrics.get("int8", {})
    if int8.get("exported"):
        text += (f" Quantized to int8 (`{files.STUDENT_INT8_ONNX}`), it reaches {percent(int8['accuracy'])} at "
                 f"{ratio(int8['size_bytes'] / int8['float_onnx']['size_bytes'])} the size of the float ONNX file")
        text += f": {_int8_cost(int8)}" if _int8_too_costly(int8) else "."
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


def _int8_too_costly(int8: dict) -> bool:
    return int8["accuracy_change"] < -INT8_TOLERATED_LOSS


def _int8_cost(int8: dict) -> str:
    return (f"**int8 costs {100 * -int8['accuracy_change']:.2f} points of test accuracy, more than "
            f"{100 * INT8_TOLERATED_LOSS:.0f} point: use the float model, `{files.STUDENT_ONNX}`.**")


def _speed(float_ms: float, int8_ms: float) -> str:
    return f"{float_ms / int8_ms:.2f}× faster" if int8_ms <= float_ms else f"{int8_ms / float_ms:.2f}× slower"


def _int8(metrics: dict) -> str:
    # Not imported at the top: print_summary runs in the test-bed's own process, which must not import
    # torch (quantization imports profile) before it starts the sites.
    from app.quantization import FEW_CALIBRATION_SAMPLES

    int8 = metrics["int8"]
    heading = "## int8 student (onnxruntime, this site's CPU)\n\n"
    if not int8["exported"]:
        return heading + f"`{files.STUDENT_INT8_ONNX}` was not written: {int8['error']}. The float model, " \
                         f"`{files.STUDENT_ONNX}`, is unaffected."
    float_onnx, change, noise = int8["float_onnx"], int8["accuracy_change"], int8["accuracy_change_noise"]
    size_ratio = int8["size_bytes"] / float_onnx["size_bytes"]
    rows = [("test accuracy", percent(float_onnx["accuracy"]), percent(int8["accuracy"]),
             f"{points(change)} (chance: ±{100 * noise:.2f})"),
            ("size on disk", size(float_onnx["size_bytes"]), size(int8["size_bytes"]), f"{ratio(size_ratio)} the size")]
    for key, label in (("latency_ms_batch1", "latency, batch of 1"),
                       ("latency_ms_per_sample", f"latency per image, batch of {int8['large_batch']}")):
        rows.append((label, milliseconds(float_onnx[key]), milliseconds(int8[key]), _speed(float_onnx[key], int8[key])))
    header = ("", f"float (`{files.STUDENT_ONNX}`)", f"int8 (`{files.STUDENT_INT8_ONNX}`)", "int8 against float")
    text = (heading + f"`{files.STUDENT_INT8_ONNX}` is `{files.STUDENT_ONNX}` quantized to int8 by onnxruntime "
            "(static, QDQ, weights per output channel), its activation ranges calibrated on "
            f"{number(int8['calibration_samples'])} of this site's training images, which never left the site. It "
            f"takes the same input as `{files.STUDENT_ONNX}`. Both ran in onnxruntime with the same session options "
            f"(one thread) on this site's {number(int8['test_samples'])} test images; latency is the fastest of "
            "repeated runs on random images, the two models taking turns, in CPU time of that thread (so "
            "other programs on this machine do not count).\n\n" + _table(header, rows, "lrrr") + "\n\n")
    if _int8_too_costly(int8):
        text += _int8_cost(int8)
    else:
        within = "within" if abs(change) < noise else "beyond"
        text += (f"int8 changes test accuracy by {points(change)}, {within} the ±{100 * noise:.2f} points the choice "
                 f"of test images alone can make; the two models predict the same class for "
                 f"{percent(int8['agreement'])} of the test images.")
    if int8["latency_ms_batch1"] > float_onnx["latency_ms_batch1"] \
            and int8["latency_ms_per_sample"] > float_onnx["latency_ms_per_sample"]:
        text += (" On this CPU int8 is slower than float for this student: choose it for its size, the float "
                 "model for speed.")
    notes = []
    if size_ratio > SMALL_MODEL_SIZE_RATIO:
        notes.append(f"The file shrinks less than the 4× of int8 weights: a student of "
                     f"{number(metrics['student']['parameters'])} parameters is small next to the fixed part of "
                     "an ONNX file (graph, names, and the int8 model's scales and zero points).")
    if int8["calibration_samples"] < FEW_CALIBRATION_SAMPLES:
        notes.append(f"Calibrated on only {number(int8['calibration_samples'])} training images (all this site "
                     "has): activation ranges from so few images may not fit others; the test accuracy above shows "
                     "whether that mattered.")
    notes += [f"onnxruntime's quantizer warned: {warning}" for warning in int8.get("quantizer_warnings", [])]
    return text + "".join(f"\n\n{note}" for note in notes)


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


def _warnings(warnings: list[str]) -> str:
    return "## Warnings\n\n" + "\n".join(f"- {warning}" for warning in warnings)


def _per_class(metrics: dict) -> str:
    per_class, names = metrics["student"]["per_class_accuracy"], metrics["classes"]
    rows = [(str(label), names[label], percent(value), str(sum(metrics["student"]["confusion_matrix"][label])))
            for label, value in enumerate(per_class)]
    return ("## Distilled student per class\n\n"
            + _table(("index", "class", "accuracy", "test images"), rows, "rlrr")
            + f"\n\n![confusion matrix]({files.CONFUSION_PLOT})")


def feeding(metrics: dict) -> str:
    """One line: what the exported student takes as input."""
    prep = metrics["preprocessing"]
    shape = f"[N, {prep['channels']}, {prep['image_size'][0]}, {prep['image_size'][1]}]"
    orders = {"grayscale": "one grayscale channel, values in [0, 1]", "RGB": "RGB channel order, values in [0, 1]"}
    order = orders.get(prep["channel_order"], "channels and scale as the training arrays, uint8 ones divided by 255")
    inside = (f"the normalization (mean {_values(prep['normalization']['mean'])}, std "
              f"{_values(prep['normalization']['std'])}) is inside the exported graph"
              if prep["normalization"] else "no normalization")
    return (f"Feed `{files.STUDENT_ONNX}` and `{files.STUDENT_TORCHSCRIPT}` float32 images of shape {shape} "
            f"({order}); {inside}. Output i is class i of `{files.CLASSES}`.")


def _values(values: list[float]) -> str:
    return "[" + ", ".join(f"{value:.4f}" for value in values) + "]"


def _federation(federation: dict) -> str:
    int8 = any(site.get("int8_accuracy") is not None for site in federation["sites"])
    rows = [(site["site"], number(site["test_samples"]), percent(site["teacher_accuracy"]),
             percent(site["student_accuracy"]), percent(site["baseline_accuracy"]))
            + ((percent(site.get("int8_accuracy")),) if int8 else ()) for site in federation["sites"]]
    rows.append(("**all sites (weighted)**", number(federation["test_samples"]),
                 percent(federation["teacher_accuracy"]), percent(federation["student_accuracy"]),
                 percent(federation["baseline_accuracy"]))
                + ((percent(federation.get("int8_accuracy")),) if int8 else ()))
    header = ("site", "test images", "teacher", "distilled student", "baseline student") + (
        ("int8 student",) if int8 else ())
    return (f"## Federation ({len(federation['sites'])} sites)\n\nEach site's accuracy on its own test set; the last "
            "line weights the sites by test-set size.\n\n"
            + _table(header, rows, "lrrrr" + ("r" if int8 else ""))
            + f"\n\n![federation accuracy per round]({files.FEDERATION_PLOT})")


def _files(metrics: dict) -> str:
    onnx = metrics["onnx"]
    if onnx["exported"]:
        verdict = "same predictions" if onnx["same_predictions"] else (
            "**different predictions** (the file is written all the same: check it before deploying it)")
        onnx_line = (f"`{files.STUDENT_ONNX}`: ONNX, checked with onnxruntime on {onnx['checked_samples']} "
                     f"test images: {verdict}, largest logit difference {onnx['max_abs_difference']:.2e}")
    else:
        onnx_line = f"`{files.STUDENT_ONNX}`: not exported ({onnx['error']})"
    int8 = metrics.get("int8")
    if int8 is None:
        int8_line = f"`{files.STUDENT_INT8_ONNX}`: not made (`quantize: false`)"
    elif int8["exported"]:
        advice = "; not recommended here: it costs too much accuracy" if _int8_too_costly(int8) else ""
        int8_line = (f"`{files.STUDENT_INT8_ONNX}`: `{files.STUDENT_ONNX}` quantized to int8, same input "
                     f"(see the int8 section above{advice})")
    else:
        int8_line = f"`{files.STUDENT_INT8_ONNX}`: not written ({int8['error']})"
    torchscript = metrics["torchscript"]
    torchscript_line = f"`{files.STUDENT_TORCHSCRIPT}`: " + (
        "TorchScript, runs without the model's Python file" if torchscript["exported"]
        else f"not exported ({torchscript['error']})")
    normalized = ", which takes normalized images" if metrics["preprocessing"]["normalization"] else ""
    lines = [f"`{files.STUDENT_WEIGHTS}`: the global student's state_dict (load with `torch.load(..., "
             f"weights_only=True)` into the student model{normalized})", torchscript_line, onnx_line, int8_line,
             f"`{files.CLASSES}`: the class names in output order"]
    if "baseline" in metrics:
        lines.append(f"`{files.BASELINE_WEIGHTS}`: the baseline student's state_dict")
    lines += [f"`{files.METRICS}`, `{files.ROUNDS_CSV}`: every figure of this report",
              f"`{files.CHECKPOINT}`: the last round's global models; name it in `init_student` to continue "
              "training",
              f"`{files.CONFIG}`: the settings used, defaults included; `{files.LOG}`: this site's log"]
    return "## Files\n\n" + feeding(metrics) + "\n\n" + "\n".join(f"- {line}" for line in lines)


def _settings(metrics: dict) -> str:
    config = metrics["config"]
    keys = ("max_iter", "local_epochs", "batch_size", "learning_rate", "optimizer", "temperature", "alpha",
            "loss", "seed")
    return "## Settings\n\n" + ", ".join(f"{key} {config[key]}" for key in keys) + "."


def render_cv_report(metrics: dict) -> str:
    """report.md at the top of a cross-validation run's output: the folds' accuracies, mean and spread."""
    cv = metrics["cross_validation"]
    folds = ", ".join(f"`{cv['dir']}/{fold}/`" for fold in cv["folds"])
    mean, std = cv["mean"], cv["std"]
    text = (f"# Cross-validation report: site {metrics['site']}\n\n"
            f"{len(cv['folds'])} folds ({folds}) were trained in the same rounds: each fold's teacher and students "
            "learned from that fold's training files only and were tested on its test files. The distilled student "
            f"reaches **{_mean_std(mean, std, 'student_accuracy')}** (mean ± standard deviation over the folds) on "
            f"this site's test files, the teacher {_mean_std(mean, std, 'teacher_accuracy')}. Each fold's folder "
            f"holds its own student, metrics and `{files.REPORT}`.")
    sections = [text, "## This site\n\n" + _cv_table(cv, with_sizes=True)]
    if "federation" in cv:
        federation = cv["federation"]
        site_rows = [(site["site"],) + tuple(_mean_std(site["mean"], site["std"], key) for key in _cv_keys(cv))
                     for site in federation["sites"]]
        sections.append(f"## Federation ({len(federation['sites'])} sites)\n\nEach fold's accuracy over all sites, "
                        "weighted by test-set size.\n\n" + _cv_table(federation, with_sizes=False)
                        + "\n\nEvery site, mean ± standard deviation over the folds:\n\n"
                        + _table(("site",) + _cv_headers(cv), site_rows, "l" + "r" * len(_cv_keys(cv))))
    return "\n\n".join(sections) + "\n"


def cv_summary_table(all_metrics: dict[str, dict]) -> str:
    """The test-bed's closing table for cross-validation runs: one line per site and the federation's,
    each accuracy as mean ± standard deviation over the folds."""
    first = next(iter(all_metrics.values()))["cross_validation"]
    keys = _cv_keys(first)
    rows = [("site",) + _cv_headers(first)]
    federation = None
    for site, metrics in all_metrics.items():
        cv = metrics["cross_validation"]
        rows.append((site,) + tuple(_mean_std(cv["mean"], cv["std"], key) for key in keys))
        federation = cv.get("federation", federation)
    if federation is not None:
        rows.append((f"all {len(federation['sites'])} sites",)
                    + tuple(_mean_std(federation["mean"], federation["std"], key) for key in keys))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    lines.append(f"(mean ± standard deviation over {len(first['folds'])} folds of each site's test files"
                 + ("; 'all sites' weights the sites by test-set size)" if federation is not None else ")"))
    return "\n".join(lines)


def _cv_keys(cv: dict) -> tuple[str, ...]:
    baseline = any(row["baseline_accuracy"] is not None for row in cv["per_fold"])
    return ("teacher_accuracy", "student_accuracy") + (("baseline_accuracy",) if baseline else ())


def _cv_headers(cv: dict) -> tuple[str, ...]:
    names = {"teacher_accuracy": "teacher", "student_accuracy": "distilled student",
             "baseline_accuracy": "baseline student"}
    return tuple(names[key] for key in _cv_keys(cv))


def _cv_table(cv: dict, with_sizes: bool) -> str:
    keys = _cv_keys(cv)
    sizes = ("train images", "test images") if with_sizes else ("test images",)
    rows = [(row["fold"],) + ((number(row["train_samples"]),) if with_sizes else ()) + (number(row["test_samples"]),)
            + tuple(percent(row[key]) for key in keys) for row in cv["per_fold"]]
    blank = ("",) * len(sizes)
    rows.append(("**mean**",) + blank + tuple(percent(cv["mean"][key]) for key in keys))
    rows.append(("**standard deviation**",) + blank + tuple(_spread(cv["std"][key]) for key in keys))
    return _table(("fold",) + sizes + _cv_headers(cv), rows, "l" + "r" * (len(sizes) + len(keys)))


def _mean_std(mean: dict, std: dict, key: str) -> str:
    return percent(mean[key]) + ("" if std[key] is None else f" ± {_spread(std[key])}")


def _spread(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"
