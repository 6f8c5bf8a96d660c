"""Everything a site leaves behind at the end of a run.

``export_student`` writes the student's model files (with ``quantize`` also the int8
one, measured against the float one); ``write_outputs`` measures the final student's accuracy
and the size, latency and memory of student and teacher (unless ``measure_student`` and
``measure_teacher`` had them measured while the site waited during the rounds), assembles
``metrics.json`` and writes every other file from that one dictionary, so report.md, rounds.csv and the plots
always agree with it. It is ``prepare_outputs`` (what needs only this site) then
``finish_outputs`` (what needs the federation's results too), so the coordinator can do
the first part while the other sites write theirs.
The files are written next to the round checkpoint in ``unfinished/`` and published
together at the very end (``files.publish``): a run failing on the way changes none of an earlier run's files.
Exporting and both steps take their turn with the other sites of the process
(``process_wide.exclusive``): profiling, exporting and plotting use process-wide state.
"""
from __future__ import annotations

import copy
import math
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

import torch

from app import exports, files, plots, quantization
from app.event_logs import write_events
from app.idle import ALWAYS, IdleTime
from app.config import KDConfig, effective_document, read_document
from app.memory import release_free_memory
from app.process_wide import exclusive
from app.profile import summarize
from app.report import render_report

if TYPE_CHECKING:
    from app.data import Batch, Data
    from app.site import Site

ONNX_CHECK_SAMPLES = 64


@exclusive()
def export_student(site: "Site") -> dict:
    """The student's model files in ``unfinished/`` (weights, TorchScript, ONNX and, with
    ``quantize``, its int8 version), each with its check: the part of the outputs that
    ``site_summary`` reports to the coordinator, so made before the rest."""
    out = site.output_dir / files.UNFINISHED
    _, check_images, _ = next(deployed_batches(site.test, ONNX_CHECK_SAMPLES))
    cpu_student = copy.deepcopy(site.student).cpu()   # exported on the CPU, whatever trained it
    deployed = exports.deployable(cpu_student, site.normalization)   # takes [0, 1] images
    files.save_state_dict(site.student.state_dict(), out / files.STUDENT_WEIGHTS)
    files.write_json(out / files.CLASSES, class_names(site))
    exported = {"torchscript": exports.export_torchscript(deployed, check_images[:1], out / files.STUDENT_TORCHSCRIPT),
                "onnx": exports.export_onnx(deployed, check_images, out / files.STUDENT_ONNX)}
    if site.config.quantize:
        exported["int8"] = _export_int8(site, out)
    return exported


def deployed_batches(data: "Data", batch_size: int, **options) -> Iterator[Batch]:
    """Batches of ``data`` as the exported models take them (``Data.batches`` options), for every
    check of an export and for the int8 calibration: those models must see what a deployment
    gives them, [0, 1] images (the normalization is in their graph), so all of them take their
    images from here."""
    return iter(data.batches(batch_size, normalized=False, **options))


def _export_int8(site: "Site", out) -> dict:
    """student.onnx quantized, calibrated on up to CALIBRATION_SAMPLES of the site's training
    images (a seeded random choice: files sorted by class must not calibrate on one class)."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(site.config.seed)
    _, calibration, _ = next(deployed_batches(site.train, quantization.CALIBRATION_SAMPLES, shuffle=True,
                                              generator=generator))
    test = ((images.numpy(), labels.numpy())
            for _, images, labels in deployed_batches(site.test, quantization.CHECK_BATCH))
    result = with_accuracy_change(quantization.export_int8(out / files.STUDENT_ONNX, calibration.numpy(), test,
                                                           out / files.STUDENT_INT8_ONNX))
    result["seconds"] = time.perf_counter() - started
    site.log(int8_line(result))
    return result


def with_accuracy_change(int8: dict) -> dict:
    """``export_int8``'s result with what int8 changed in test accuracy and that change's chance margin."""
    if not int8["exported"]:
        return int8
    float_accuracy = int8["float_onnx"]["accuracy"]
    return {**int8, "accuracy_change": int8["accuracy"] - float_accuracy,
            "accuracy_change_noise": chance_margin(int8["accuracy"], float_accuracy, int8["test_samples"])}


def int8_line(result: dict) -> str:
    """One log line on the int8 model."""
    if not result["exported"]:
        return f"{files.STUDENT_INT8_ONNX}: not written ({result['error']})"
    size_ratio = result["size_bytes"] / result["float_onnx"]["size_bytes"]
    return (f"{files.STUDENT_INT8_ONNX}: test accuracy {result['accuracy']:.4f} (float ONNX "
            f"{result['float_onnx']['accuracy']:.4f}), {size_ratio:.2f}x the float file's size, calibrated on "
            f"{result['calibration_samples']} training images; quantized and measured in {result['seconds']:.1f}s")


def site_summary(site: "Site", exported: dict) -> dict:
    """What a site sends the coordinator with ``done``: ``Site.summary`` and its int8 accuracy."""
    return {**site.summary(), "int8_accuracy": exported.get("int8", {}).get("accuracy")}


def write_outputs(site: "Site", federation: list[dict] | None = None, exported: dict | None = None,
                  publish: bool = True) -> dict:
    """Write this site's outputs; ``federation`` (coordinator only) holds every site's summary,
    ``exported`` what ``export_student`` returned if it ran already. ``publish=False`` leaves the
    outputs in ``unfinished/`` for the caller to publish with others."""
    return finish_outputs(site, prepare_outputs(site, exported), federation, publish)


def prepare_outputs(site: "Site", exported: dict | None = None) -> dict:
    """The outputs that need only this site (the student's measurements, its plots, rounds.csv,
    config.yml), in ``unfinished/``; returns the metrics so far. The coordinator makes these while the
    other sites write theirs, and finishes (``finish_outputs``) once their summaries are in. The
    teacher's size and speed, measured in the background (``measure_teacher``), come in with
    ``finish_outputs``: the coordinator's wait for the other sites is time that measurement can use."""
    exported = export_student(site) if exported is None else exported
    # Outside the process's turn: a student measured in the background may need it to finish.
    return _prepare_outputs(site, exported, student_summary(site))


@exclusive()
def _prepare_outputs(site: "Site", exported: dict, student_size: dict) -> dict:
    out = site.output_dir / files.UNFINISHED
    config = effective_config(site)
    # Each step's peak alone, not their sum: the export and int8 calibration, then the plots.
    release_free_memory()
    metrics = {
        "site": site.name,
        "teacher": {**site.teacher_evaluation.as_dict(), "source": teacher_source(site)},   # size: finish_outputs
        "student": {**site.evaluations["student"].as_dict(), **student_size},
        "compression": None,   # finish_outputs, with the teacher's size
        "rounds": site.rounds,
        "first_round": site.first_round,
        "data": {"train_samples": len(site.train), "test_samples": len(site.test),
                 "num_classes": site.num_classes, "sample_shape": list(site.train.sample_shape)},
        "classes": class_names(site),
        "preprocessing": preprocessing(site),
        "warnings": site.warnings,
        "config": config.model_dump(),
    }
    if "baseline" in site.evaluations:
        metrics["baseline"] = site.evaluations["baseline"].as_dict()
        metrics["distillation_gain"] = metrics["student"]["accuracy"] - metrics["baseline"]["accuracy"]
        metrics["distillation_gain_noise"] = chance_margin(metrics["student"]["accuracy"],
                                                           metrics["baseline"]["accuracy"], len(site.test))
    metrics.update(exported)
    if "baseline" in site.models:
        files.save_state_dict(site.models["baseline"].state_dict(), out / files.BASELINE_WEIGHTS)
    _write_site_plots(metrics, out)
    files.write_config(effective_document(read_document(site.input_dir / files.CONFIG), config), out / files.CONFIG)
    files.write_rounds_csv(site.rounds, out / files.ROUNDS_CSV)
    return metrics


def finish_outputs(site: "Site", metrics: dict, federation: list[dict] | None = None,
                   publish: bool = True) -> dict:
    """Add the teacher's size and speed and the federation's results (coordinator), write metrics.json,
    the TensorBoard events, report.md and the log, and publish (``publish``) every output at once;
    returns the metrics."""
    # Outside the process's turn: a teacher measured in the background may need it to finish.
    teacher_size = teacher_summary(site.teacher, site.train.sample_shape)
    evaluation = {key: value for key, value in metrics["teacher"].items() if key != "source"}
    metrics["teacher"] = {**evaluation, **teacher_size, "source": metrics["teacher"]["source"]}
    metrics["compression"] = compression(teacher_size, metrics["student"])
    return _finish_outputs(site, metrics, federation, publish)


@exclusive()
def _finish_outputs(site: "Site", metrics: dict, federation: list[dict] | None, publish: bool) -> dict:
    out = site.output_dir / files.UNFINISHED
    if federation is not None:
        metrics["federation"] = federation_summary(federation)
        _write_federation_plot(metrics["federation"], out)
    metrics["seconds"] = time.time() - site.started
    metrics["timings"] = site.timings.as_dict()
    files.write_json(out / files.METRICS, metrics)
    write_events(metrics, out / files.TENSORBOARD)
    files.write_text(out / files.REPORT, render_report(metrics))
    site.log(f"outputs written to {site.output_dir}")
    files.write_text(out / files.LOG, "\n".join(site.log_lines) + "\n")
    if publish:
        files.publish(site.output_dir)
    release_free_memory()
    return metrics


def measure_student(site: "Site", idle: IdleTime) -> None:
    """Measure the student's size and speed in the background, in the site's ``idle`` time, instead of
    at the end of the run. They depend on its architecture, not on the weights the rounds give it
    (``summarize`` times random inputs), so a copy taken now stands for the final student; the copy,
    because the rounds change the student's weights and mode meanwhile. ``student_summary`` takes the
    result. Started before ``measure_teacher``: it is needed first, and idle-time jobs run in order."""
    student, shape = copy.deepcopy(site.student).cpu(), site.train.sample_shape
    _STUDENT_SUMMARIES[site.student] = (idle.start(lambda: summarize(student, shape, idle=idle).as_dict(),
                                                   name=f"measuring {site.name}'s student"), idle)


def student_summary(site: "Site") -> dict:
    """``summarize`` of the site's student: what ``measure_student`` measured (the rest of it now, unpaused,
    if the waits were too short), or a measurement now if none was started."""
    started = _STUDENT_SUMMARIES.pop(site.student, None)
    if started is None:
        with exclusive():   # sites of one process take turns, as for every output
            return summarize(site.student, site.train.sample_shape).as_dict()   # on a CPU copy if need be
    result, idle = started
    idle.finish(result)
    return result.result()


def measure_teacher(site: "Site", idle: IdleTime) -> None:
    """Measure the site's frozen teacher (``teacher_summary``) in the background, in the site's ``idle``
    time (while it waits for the other sites in the rounds), instead of at the end of the run: its
    size and speed do not depend on the rounds. ``teacher_summary`` takes the result, and finishes
    the measurement first if the waits were too short for it."""
    with _TEACHER_LOCK:
        measured = _TEACHER_SUMMARIES.setdefault(site.teacher, {})
        shape = site.train.sample_shape
        if shape not in measured:
            teacher = site.teacher
            measured[shape] = (idle.start(lambda: summarize(teacher, shape, idle=idle).as_dict(),
                                          name=f"measuring {site.name}'s teacher"), idle)


def teacher_summary(teacher: torch.nn.Module, sample_shape: tuple[int, ...]) -> dict:
    """``summarize`` of the teacher, measured once per teacher and image shape: cross-validation folds
    share one frozen teacher, whose latency would otherwise be measured again for every fold. Waits
    for a measurement ``measure_teacher`` started, letting it run unpaused."""
    with _TEACHER_LOCK:
        measured = _TEACHER_SUMMARIES.setdefault(teacher, {})
        started = measured.get(sample_shape)
        if started is None:
            with exclusive():   # sites of one process take turns, as for every output
                summary = summarize(teacher, sample_shape).as_dict()
            measured[sample_shape] = (_done(summary), ALWAYS)
            return summary
    result, idle = started
    idle.finish(result)
    return result.result()


def _done(value: dict) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


# {student: (Future of its summary, the idle time it is measured in)}
_STUDENT_SUMMARIES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
# {teacher: {image shape: (Future of its summary, the idle time it is measured in)}}
_TEACHER_SUMMARIES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_TEACHER_LOCK = threading.Lock()


def class_names(site: "Site") -> list[str]:
    """The name of each model output, in index order: the agreed class list (outputs beyond it
    belong to no class), or the label numbers of arrays."""
    names = site.classes or []
    return names + [str(index) if not names else f"output {index} (no class)"
                    for index in range(len(names), site.num_classes)]


def preprocessing(site: "Site") -> dict:
    """How images reach the models (and must reach the exported student): size, channels, normalization."""
    channels, height, width = site.train.sample_shape
    normalization = site.normalization.as_dict() if site.normalization else None
    if normalization:
        normalization.update(site.pooled_from)
    return {"image_size": [height, width], "channels": channels,
            "channel_order": {1: "grayscale", 3: "RGB"}.get(channels) if site.channels else "as in the arrays",
            "normalize": site.config.normalize if isinstance(site.config.normalize, str) else "mean/std",
            "normalization": normalization}


def effective_config(site: "Site") -> KDConfig:
    """The config with what the federation agreed in place of unset keys (class list, channels)."""
    agreed = {key: value for key, value in (("classes", site.classes), ("channels", site.channels))
              if getattr(site.config, key) is None and value is not None}
    return site.config.model_copy(update=agreed)


def teacher_source(site: "Site") -> str:
    config, parts = site.config, []
    if config.teacher_weights:
        parts.append(f"weights from {config.teacher_weights}")
    if config.teacher_rounds:
        parts.append(f"{config.teacher_rounds} federated rounds")
    if config.teacher_epochs:
        parts.append(f"{config.teacher_epochs} local epochs at each site")
    return ", then ".join(parts)


def chance_margin(first: float, second: float, test_samples: int) -> float:
    """Two standard errors of the difference between two accuracies on ``test_samples`` images:
    a gap smaller than this may come from which images happen to be in the test set."""
    return 2 * math.sqrt((first * (1 - first) + second * (1 - second)) / max(test_samples, 1))


def compression(teacher: dict, student: dict) -> dict:
    """How much smaller and faster the student is: teacher ÷ student for each measure."""
    def ratio(key: str) -> float | None:
        return teacher[key] / student[key] if student[key] else None
    return {"parameters_ratio": ratio("parameters"), "size_ratio": ratio("size_bytes"),
            "speedup_batch1": ratio("latency_ms_batch1"), "speedup_large_batch": ratio("latency_ms_per_sample"),
            "memory_ratio": ratio("peak_memory_bytes")}


def federation_summary(sites: list[dict]) -> dict:
    """Per-site results and, over all sites, accuracies weighted by test-set size (also per round)."""
    sites = sorted(sites, key=lambda site: site["site"])
    total = sum(site["test_samples"] for site in sites)

    def weighted(rows: list[tuple[dict, dict]], key: str) -> float | None:
        if any(row.get(key) is None for row, _ in rows):
            return None
        return sum(row[key] * site["test_samples"] for row, site in rows) / total

    everyone = [(site, site) for site in sites]
    rounds = [{"round": round_rows[0][0]["round"],
               "accuracy": weighted(round_rows, "accuracy"),
               "baseline_accuracy": weighted(round_rows, "baseline_accuracy")}
              for round_rows in zip(*[[(row, site) for row in site["rounds"]] for site in sites])]
    return {"sites": sites, "test_samples": total,
            "teacher_accuracy": weighted(everyone, "teacher_accuracy"),
            "student_accuracy": weighted(everyone, "student_accuracy"),
            "baseline_accuracy": weighted(everyone, "baseline_accuracy"),
            "int8_accuracy": weighted(everyone, "int8_accuracy"),
            "rounds": rounds}


def _write_site_plots(metrics: dict, out) -> None:
    rounds, site = metrics["rounds"], metrics["site"]
    baseline = "baseline" in metrics
    accuracy_series = {"distilled student": "accuracy",
                       **({"baseline student": "baseline_accuracy"} if baseline else {})}
    loss_series = {"student test loss": "loss", "student train loss (KD)": "train_loss",
                   **({"baseline test loss": "baseline_loss"} if baseline else {})}
    plots.plot_rounds(rounds, out / files.ACCURACY_PLOT, title=f"Global model accuracy on {site}'s test set",
                      ylabel="test accuracy", series=accuracy_series,
                      references={"teacher": metrics["teacher"]["accuracy"]})
    plots.plot_rounds(rounds, out / files.LOSS_PLOT, title=f"Loss per round at {site}", ylabel="loss",
                      series=loss_series, references={"teacher test loss": metrics["teacher"]["loss"]})
    plots.plot_confusion(metrics["student"]["confusion_matrix"], out / files.CONFUSION_PLOT,
                         title=f"Distilled student on {site}'s test set", labels=metrics["classes"])


def _write_federation_plot(federation: dict, out) -> None:
    plots.plot_rounds(federation["rounds"], out / files.FEDERATION_PLOT,
                      title="Federation: accuracy weighted by test-set size", ylabel="test accuracy",
                      series={"distilled student": "accuracy", "baseline student": "baseline_accuracy"},
                      references={"teacher": federation["teacher_accuracy"]})
