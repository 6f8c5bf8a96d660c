"""Knowledge distillation in a script, without any federation.

    from app.api import distill
    history = distill(teacher, student, "train.npz", "test.npz", temperature=4.0, alpha=0.8, epochs=5)
    print(history.teacher_accuracy, history.epochs[-1]["accuracy"])

The student is trained in place. Hyper-parameters are checked by the same rules
as config.yml, so a bad value gets the same message (e.g. ``alpha: 1.5 — must be
a number between 0 and 1``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from app.config import SECTION, TRAINING_KEYS, parse_config
from app.data import as_train_and_test, check_compatible
from app.errors import ConfigError
from app.model_checks import agreed_classes
from app.training import evaluate, make_optimizer, prepare_teaching, resolve_device, train_local


@dataclass
class History:
    """What ``distill`` measured: the teacher's test accuracy and one record per epoch."""

    teacher_accuracy: float | None
    epochs: list[dict] = field(default_factory=list)


def distill(teacher: nn.Module, student: nn.Module, train: Any, test: Any = None, *, epochs: int = 5,
            log: Callable[[str], None] | None = None, **settings: Any) -> History:
    """Distill the frozen ``teacher`` into ``student`` on ``train`` for ``epochs`` epochs.

    ``settings``: the training keys of config.yml (``app.config.TRAINING_KEYS``: temperature,
    alpha, loss, batch_size, learning_rate, optimizer, ...), with config.yml's defaults.

    ``train``/``test``: a path (.pt/.pth/.npz/image folder), an ``(images, labels)`` pair of
    tensors or arrays, a torch Dataset, or ``app.data.TensorData``. With ``test`` given, each
    epoch record has the student's test ``accuracy`` and ``loss``. One batch first goes through
    both models, so a model whose outputs do not fit the labels (or each other) is reported before
    training. The teacher's logits are computed once and reused every epoch (with ``augment``, once
    per cached view; with ``teacher_views=0`` the teacher runs on every augmented batch); one
    optimizer runs through all epochs.
    """
    _check_keys(settings)
    config = parse_config({SECTION: settings}, source="distill()", require_teacher=False)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    train_data, test_data = as_train_and_test(train, test)
    if test_data is not None:
        check_compatible(train_data, test_data)
    run_on = resolve_device(config.device)
    teacher.to(run_on).eval()
    student.to(run_on)
    classes = agreed_classes(teacher, student, train_data, test_data,
                             (type(teacher).__name__, type(student).__name__), run_on)
    teaching = prepare_teaching(teacher, train_data, config, run_on)
    if log is not None:
        log(f"teacher: {teaching.description}")
    history = History(teacher_accuracy=evaluate(teacher, test_data, classes, run_on).accuracy
                      if test_data is not None else None)
    optimizer = make_optimizer(student, config)   # one optimizer over all epochs, as any training loop has
    for epoch in range(epochs):
        record = {"epoch": epoch + 1, **train_local(student, train_data, config, epochs=1, **teaching.targets(),
                                                    views=teaching.views, round_index=epoch, rounds=epochs,
                                                    device=run_on, optimizer=optimizer)}
        if test_data is not None:
            result = evaluate(student, test_data, classes, run_on)
            record.update(accuracy=result.accuracy, loss=result.loss)
        history.epochs.append(record)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}"
                + (f", test accuracy {record['accuracy']:.4f}" if test_data is not None else ""))
    return history


def _check_keys(settings: dict) -> None:
    """Only training keys: a federation key (max_iter, ...) or a typo would otherwise be ignored."""
    problems = []
    for key in sorted(set(settings) - set(TRAINING_KEYS)):
        close = difflib.get_close_matches(key, TRAINING_KEYS, n=1, cutoff=0.6)
        problems.append(f"{key}: unknown key — did you mean '{close[0]}'?" if close else
                        f"{key}: not a setting of distill()")
    if problems:
        raise ConfigError(f"distill(): {'; '.join(problems)}. distill() takes epochs, log and the training keys "
                          f"of config.yml: {', '.join(TRAINING_KEYS)}")
