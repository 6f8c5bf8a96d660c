"""Checking what the models output before anything is trained: one small batch of real images through
teacher and student, their logits' shape and values, and the number of classes both must share.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from app.errors import ModelError
from app.model_files import describe_error, line_in, model_file_name, model_path

if TYPE_CHECKING:
    from app.data import Data

DRY_RUN_BATCH = 4


def dry_run(model: nn.Module, images: torch.Tensor, key: str) -> torch.Tensor:
    """Run one small batch through ``model`` (eval mode, inference mode); return its logits.

    The model's train/eval mode is restored afterwards.
    """
    file = model_file_name(model)
    where = f"{key} '{file}'"
    shape = list(images.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            output = model(images)
    except Exception as error:
        raise ModelError(
            f"{where}: the forward pass failed on a batch of shape {shape}: {describe_error(error)}"
            f"{line_in(model_path(model), error)}. Make Model accept images of shape "
            f"[batch, {', '.join(map(str, shape[1:]))}] "
            "(check the first layer's input channels and the in_features of the first Linear layer "
            "after flattening), or, for image folders, set image_size and channels in config.yml to what "
            "Model was built for.") from error
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
                   files: tuple[str, str], device: torch.device | str = "cpu",
                   classes: list[str] | None = None) -> int:
    """Run a few training images through both models (``dry_run``) and return the number of classes
    they both output (``check_outputs``), which must cover every label of ``train`` and ``test`` and,
    when the federation agreed on a class list, every class of ``classes`` (a site may lack some)."""
    _, sample, _ = next(iter(train.batches(DRY_RUN_BATCH)))
    sample = sample.to(device)
    labels_need = max(train.num_classes_seen, test.num_classes_seen if test is not None else 0,
                      len(classes) if classes is not None else 0)
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
