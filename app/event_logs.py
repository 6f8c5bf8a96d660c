"""TensorBoard event files of a site's run (``tensorboard --logdir OUT``), written from metrics.json's
dictionary, so every scalar TensorBoard shows is a value of metrics.json.

Per round (step = round number): the global student's train loss and accuracy, test accuracy and
loss, the baseline's the same way, the teacher's test accuracy and loss as reference lines, and on
the coordinator the federation's accuracies weighted by test-set size. The run's settings go to
TensorBoard's hyperparameter view, with the final student accuracy as its metric.

TensorBoard's writer is imported only here and only when the files are written: importing it
takes seconds that every site's start-up would otherwise pay.
"""
from __future__ import annotations

import json
from pathlib import Path

# metrics.json round key → TensorBoard tag
ROUND_TAGS = {"train_loss": "student/train_loss", "train_accuracy": "student/train_accuracy",
              "accuracy": "student/test_accuracy", "loss": "student/test_loss",
              "baseline_train_loss": "baseline/train_loss", "baseline_train_accuracy": "baseline/train_accuracy",
              "baseline_accuracy": "baseline/test_accuracy", "baseline_loss": "baseline/test_loss"}
TEACHER_TAGS = {"accuracy": "teacher/test_accuracy", "loss": "teacher/test_loss"}
FEDERATION_TAGS = {"accuracy": "federation/student_accuracy", "baseline_accuracy": "federation/baseline_accuracy"}
FINAL_METRIC = "student/test_accuracy"


def write_events(metrics: dict, folder: Path) -> None:
    """Write ``metrics`` (a site's metrics.json) as event files into ``folder``."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    folder.mkdir(parents=True, exist_ok=True)
    with SummaryWriter(log_dir=str(folder)) as writer:
        for row in metrics["rounds"]:
            step = row["round"]
            for key, tag in ROUND_TAGS.items():
                _scalar(writer, tag, row.get(key), step)
            for key, tag in TEACHER_TAGS.items():
                _scalar(writer, tag, metrics["teacher"].get(key), step)
        for row in metrics.get("federation", {}).get("rounds", []):
            for key, tag in FEDERATION_TAGS.items():
                _scalar(writer, tag, row.get(key), row["round"])
        experiment, session_start, session_end = hparams(
            {key: _hparam(value) for key, value in metrics["config"].items()},
            {FINAL_METRIC: metrics["student"]["accuracy"]})
        for summary in (experiment, session_start, session_end):
            writer.file_writer.add_summary(summary)


def _scalar(writer, tag: str, value: float | None, step: int) -> None:
    if value is not None:
        writer.add_scalar(tag, value, step)


def _hparam(value: object) -> bool | int | float | str:
    """TensorBoard takes numbers, booleans and strings: anything else is shown as its JSON text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)
