"""Distillation losses against values computed independently with numpy."""
import numpy as np
import pytest
import torch

from app.losses import distillation_loss, kd_loss

RNG = np.random.default_rng(0)
STUDENT = RNG.normal(size=(6, 5)) * 3
TEACHER = RNG.normal(size=(6, 5)) * 3
LABELS = RNG.integers(0, 5, size=6)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits, labels):
    return float(np.mean(-np.log(softmax(logits)[np.arange(len(labels)), labels])))


def loss(kind, temperature, student=STUDENT, teacher=TEACHER):
    return distillation_loss(torch.tensor(student), torch.tensor(teacher), temperature, kind).item()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_is_t_squared_batchmean_kl_of_softened_distributions(temperature):
    p_t, p_s = softmax(TEACHER / temperature), softmax(STUDENT / temperature)
    expected = np.sum(p_t * (np.log(p_t) - np.log(p_s))) / len(p_t) * temperature ** 2
    assert loss("kl", temperature) == pytest.approx(expected, rel=1e-9)


def test_mse_is_on_raw_logits_and_ignores_temperature():
    expected = np.mean((STUDENT - TEACHER) ** 2)
    assert loss("mse", 1.0) == pytest.approx(expected) == loss("mse", 7.0)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_ce_is_t_squared_cross_entropy_with_soft_targets(temperature):
    p_t, p_s = softmax(TEACHER / temperature), softmax(STUDENT / temperature)
    expected = np.mean(-np.sum(p_t * np.log(p_s), axis=1)) * temperature ** 2
    assert loss("soft_ce", temperature) == pytest.approx(expected, rel=1e-9)


def test_soft_ce_equals_kl_plus_teacher_entropy():
    temperature = 2.0
    p_t = softmax(TEACHER / temperature)
    entropy = np.mean(-np.sum(p_t * np.log(p_t), axis=1)) * temperature ** 2
    assert loss("soft_ce", temperature) == pytest.approx(loss("kl", temperature) + entropy)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_distillation_vanishes_when_student_matches_teacher(kind):
    assert loss(kind, 2.0, student=TEACHER) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_total_loss_blends_distillation_and_cross_entropy(alpha):
    temperature = 2.0
    p_t, p_s = softmax(TEACHER / temperature), softmax(STUDENT / temperature)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s))) / len(p_t) * temperature ** 2
    expected = alpha * kl + (1 - alpha) * cross_entropy(STUDENT, LABELS)
    total = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), temperature, alpha)
    assert total.item() == pytest.approx(expected, rel=1e-9)


def test_gradient_reaches_only_the_student():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    kd_loss(student, teacher.detach(), torch.tensor(LABELS), 2.0, 0.5).backward()
    assert student.grad is not None and torch.count_nonzero(student.grad) > 0
    assert teacher.grad is None
