"""Local training, distillation with a cached or online teacher, evaluation."""
import numpy as np
import pytest
import torch
from torch import nn

from app.data import TensorData
from app.errors import ConfigError, TrainingError
from app.config import KDConfig
from app.training import compute_logits, evaluate, resolve_device, train_local


def blobs(n=600, seed=0, classes=3):
    """Gaussian blobs in 2x4x4 'images', linearly separable."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    centres = torch.randn(classes, 2, 4, 4, generator=torch.Generator().manual_seed(99)) * 2
    images = centres[labels] + 0.5 * torch.randn(n, 2, 4, 4, generator=generator)
    return TensorData(images, labels)


def net(seed=0, classes=3, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, classes))


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_plain_training_learns_separable_data():
    data, model = blobs(), net()
    before = evaluate(model, data, 3).accuracy
    stats = train_local(model, data, KDConfig(batch_size=32, learning_rate=0.01), epochs=5)
    after = evaluate(model, data, 3)
    assert after.accuracy > 0.95 > before
    assert stats["samples"] == 600 and stats["epochs"] == 5 and np.isfinite(stats["train_loss"])


def test_sgd_with_momentum_and_weight_decay_also_learns():
    data, model = blobs(), net()
    config = KDConfig(batch_size=32, learning_rate=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-4)
    train_local(model, data, config, epochs=5)
    assert evaluate(model, data, 3).accuracy > 0.95


def test_seeded_training_is_reproducible_and_the_seed_matters():
    data = blobs()
    runs = []
    for seed in (3, 3, 4):
        model = net(dropout=0.3)
        train_local(model, data, KDConfig(batch_size=16, learning_rate=0.01, seed=seed), epochs=2, round_index=2)
        runs.append(weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize("loss", ["kl", "mse", "soft_ce"])
def test_cached_teacher_logits_give_the_same_student_as_the_online_teacher(loss):
    data = blobs()
    teacher = net(seed=1, dropout=0.5)   # dropout: the teacher must be in eval mode to be cacheable
    train_local(teacher, data, KDConfig(batch_size=32, learning_rate=0.01), epochs=3)
    teacher_before = weights(teacher)
    teacher.zero_grad(set_to_none=True)
    config = KDConfig(batch_size=32, learning_rate=0.01, alpha=0.7, temperature=3.0, loss=loss)
    cached, online = net(seed=2), net(seed=2)
    train_local(cached, data, config, epochs=2, teacher_logits=compute_logits(teacher, data))
    teacher.train()   # train_local must put it back in eval mode
    train_local(online, data, config, epochs=2, teacher=teacher)
    for name, tensor in weights(cached).items():
        torch.testing.assert_close(tensor, online.state_dict()[name], rtol=1e-5, atol=1e-6)
    assert not teacher.training
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())


def test_distillation_pulls_the_student_towards_the_teacher():
    data = blobs()
    teacher = net(seed=1)
    train_local(teacher, data, KDConfig(batch_size=32, learning_rate=0.01), epochs=3)
    logits = compute_logits(teacher, data)
    student = net(seed=5)
    gap_before = (compute_logits(student, data) - logits).abs().mean()
    train_local(student, data, KDConfig(batch_size=32, learning_rate=0.01, alpha=1.0, loss="mse"), epochs=4,
                teacher_logits=logits)
    assert (compute_logits(student, data) - logits).abs().mean() < gap_before / 3


def test_compute_logits_is_in_dataset_order_and_independent_of_batch_size():
    data, model = blobs(n=70), net()
    full = compute_logits(model, data, batch_size=1000)
    assert full.shape == (70, 3)
    torch.testing.assert_close(compute_logits(model, data, batch_size=8), full)
    torch.testing.assert_close(full[:5], model(data.images[:5]))


def test_diverging_loss_stops_with_a_learning_rate_hint():
    data = blobs()
    with pytest.raises(TrainingError) as caught:
        # beyond config.yml's limit (10), so that training surely diverges
        too_fast = KDConfig(batch_size=32, optimizer="sgd").model_copy(update={"learning_rate": 1e12})
        train_local(net(), data, too_fast, epochs=3)
    message = str(caught.value)
    assert "training the student diverged" in message
    assert "learning_rate 1e+12" in message and "Lower learning_rate in config.yml (e.g. to 1e+11)" in message


def test_evaluation_matches_an_independent_count():
    data = blobs(n=200, classes=4)
    model = net(classes=4)
    result = evaluate(model, data, 4, batch_size=64)
    with torch.no_grad():
        logits = model(data.images).numpy()
    predictions, labels = logits.argmax(1), data.labels.numpy()
    expected = np.zeros((4, 4), dtype=int)
    np.add.at(expected, (labels, predictions), 1)
    assert result.confusion_matrix == expected.tolist()
    assert result.accuracy == pytest.approx((predictions == labels).mean())
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert result.loss == pytest.approx(-log_probs[np.arange(200), labels].mean(), rel=1e-5)
    for cls in range(4):
        mask = labels == cls
        expected_class = (predictions[mask] == cls).mean() if mask.any() else None
        assert result.per_class_accuracy[cls] == pytest.approx(expected_class)


def test_classes_absent_from_the_test_set_have_no_accuracy():
    data = TensorData(torch.randn(10, 1, 2, 2), torch.zeros(10, dtype=torch.int64))
    result = evaluate(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), data, 3)
    assert result.per_class_accuracy[1] is None and result.per_class_accuracy[0] is not None


def test_explicit_cuda_without_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(ConfigError, match="device: 'cuda' — no CUDA GPU is visible"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_fedprox_with_mu_zero_is_plain_training():
    data = blobs()
    plain, prox = net(), net()
    train_local(plain, data, KDConfig(batch_size=32, learning_rate=0.01), epochs=2)
    train_local(prox, data, KDConfig(batch_size=32, learning_rate=0.01), epochs=2, proximal_mu=0.0)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in prox.state_dict().items())


def test_fedprox_keeps_the_local_model_closer_to_where_it_started():
    data = blobs()
    start = weights(net())
    distances = {}
    for mu in (0.0, 1.0):
        model = net()
        train_local(model, data, KDConfig(batch_size=32, learning_rate=0.01), epochs=3, proximal_mu=mu)
        distances[mu] = sum(((model.state_dict()[k] - v) ** 2).sum() for k, v in start.items()).sqrt()
    assert distances[1.0] < 0.8 * distances[0.0]


def test_proximal_term_adds_to_the_distillation_loss():
    """Two SGD steps of train_local equal a hand-written loop on alpha·KD + (1−alpha)·CE + mu/2·‖w − w0‖²."""
    data = blobs(n=64)
    teacher_logits = torch.randn(64, 3)
    config = KDConfig(batch_size=32, learning_rate=0.1, optimizer="sgd", momentum=0.0, alpha=0.6, temperature=2.0)
    model, reference = net(), net()
    train_local(model, data, config, epochs=1, proximal_mu=0.5, teacher_logits=teacher_logits)

    start = [p.detach().clone() for p in reference.parameters()]
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))   # epoch_generator(0, 0, 0)
    for indices in order.split(32):
        s = reference(data.images[indices])
        soft_t = torch.softmax(teacher_logits[indices] / 2.0, dim=1)
        kl = (soft_t * (soft_t.log() - torch.log_softmax(s / 2.0, dim=1))).sum(dim=1).mean() * 4.0
        ce = torch.nn.functional.cross_entropy(s, data.labels[indices])
        prox = sum(((p - p0) ** 2).sum() for p, p0 in zip(reference.parameters(), start))
        total = 0.6 * kl + 0.4 * ce + 0.25 * prox
        reference.zero_grad()
        total.backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.1 * p.grad
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
