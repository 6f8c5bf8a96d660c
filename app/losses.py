"""Distillation losses and their blend with the hard-label cross-entropy.

All three distillation terms compare the student's logits with the teacher's:

- ``kl``: T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean (Hinton et al. 2015).
  The T² keeps the gradient scale independent of the temperature.
- ``mse``: mean squared error between the raw logits (Ba & Caruana 2014).
- ``soft_ce``: T²·(−Σ softmax(t/T)·log softmax(s/T)), averaged over the batch;
  it equals ``kl`` plus the teacher's entropy, so its gradient is the same.

The total loss is alpha·distill + (1 − alpha)·cross_entropy(student, labels).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DistillKind = Literal["kl", "mse", "soft_ce"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float, kind: DistillKind = "kl") -> torch.Tensor:
    """The distillation term alone (a scalar)."""
    if kind == "mse":
        return F.mse_loss(student_logits, teacher_logits)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    if kind == "kl":
        log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
        divergence = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
        return divergence * temperature ** 2
    if kind == "soft_ce":
        teacher_probs = F.softmax(teacher_logits / temperature, dim=1)
        return -(teacher_probs * log_student).sum(dim=1).mean() * temperature ** 2
    raise ValueError(f"unknown distillation loss {kind!r}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float, kind: DistillKind = "kl") -> torch.Tensor:
    """alpha·distill + (1 − alpha)·cross-entropy; a term with weight 0 is not computed."""
    total = student_logits.new_zeros(())
    if alpha > 0:
        total = total + alpha * distillation_loss(student_logits, teacher_logits, temperature, kind)
    if alpha < 1:
        total = total + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return total
