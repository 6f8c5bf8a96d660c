"""The Python API: KD in a script, on real MNIST."""
import pytest
import torch

from app.api import distill
from app.config import KDConfig
from app.data import TensorData
from app.errors import ConfigError, ModelError
from app.model_files import build_model
from app.training import compute_logits, make_optimizer, train_local
from app.weights import load_weights
from tests.conftest import SAMPLE


def sample_models():
    teacher = build_model(SAMPLE / "generic" / "teacher.py", {}, "teacher_model")
    load_weights(teacher, SAMPLE / "generic" / "teacher.pt")
    torch.manual_seed(0)
    return teacher, build_model(SAMPLE / "generic" / "student.py", {}, "student_model")


def test_student_distilled_from_trained_teacher_reaches_95_percent_on_real_mnist():
    teacher, student = sample_models()
    lines = []
    history = distill(teacher, student, SAMPLE / "c1" / "train.npz", SAMPLE / "c1" / "test.npz",
                      temperature=4.0, alpha=0.8, epochs=3, batch_size=32, learning_rate=0.004, log=lines.append)
    assert history.teacher_accuracy > 0.97
    assert history.epochs[-1]["accuracy"] >= 0.95
    assert [record["epoch"] for record in history.epochs] == [1, 2, 3]
    assert lines[0].startswith("teacher: logits of 5000 training samples cached in")   # then one line per epoch
    assert len(lines) == 4 and "test accuracy" in lines[-1]


def test_tensors_without_test_set():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images, labels = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    before = student[1].weight.detach().clone()
    history = distill(teacher, student, (images, labels), epochs=2, batch_size=16)
    assert history.teacher_accuracy is None and "accuracy" not in history.epochs[0]
    assert not torch.equal(before, student[1].weight)


def test_bad_hyper_parameter_gets_the_config_message():
    teacher, student = sample_models()
    with pytest.raises(ConfigError, match="distill\\(\\): alpha: 1.5 — must be a number between 0 and 1"):
        distill(teacher, student, SAMPLE / "c1" / "test.npz", alpha=1.5)


def test_federation_keys_and_typos_are_refused_not_ignored():
    teacher, student = sample_models()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ConfigError) as caught:
        distill(teacher, student, SAMPLE / "c1" / "test.npz", max_iter=3, temprature=4.0)
    message = str(caught.value)
    assert "temprature: unknown key — did you mean 'temperature'?" in message
    assert "max_iter: not a setting of distill()" in message and "learning_rate" in message
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_settings_not_given_take_the_config_defaults():
    """distill() without settings trains as with config.yml's defaults written out, and a setting counts."""
    images, labels = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))

    def distilled(**settings):
        torch.manual_seed(0)
        teacher, student = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)) for _ in range(2))
        distill(teacher, student, (images, labels), epochs=2, **settings)
        return student[1].weight

    default = distilled()
    assert torch.equal(default, distilled(batch_size=32, learning_rate=0.008, temperature=4.0, alpha=0.8))
    assert not torch.equal(default, distilled(learning_rate=0.01))


def test_one_optimizer_runs_through_all_epochs():
    """distill(epochs=3) trains as one Adam over three epochs (its moments carry over), not as three fresh ones."""
    images, labels = torch.rand(96, 1, 4, 4), torch.randint(0, 3, (96,))
    config = KDConfig(batch_size=32, learning_rate=0.01)

    def models():
        torch.manual_seed(0)
        return [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)) for _ in range(2)]

    teacher, student = models()
    distill(teacher, student, (images, labels), epochs=3, batch_size=32, learning_rate=0.01)
    data = TensorData(images, labels)
    logits = compute_logits(teacher, data)

    def by_hand(keep: bool):
        _, model = models()
        optimizer = make_optimizer(model, config) if keep else None
        for epoch in range(3):
            train_local(model, data, config, epochs=1, teacher_logits=logits, round_index=epoch, rounds=3,
                        optimizer=optimizer)
        return model[1].weight

    kept, fresh = by_hand(keep=True), by_hand(keep=False)
    assert torch.equal(student[1].weight, kept)
    assert not torch.equal(kept, fresh)


def test_accuracy_counts_over_the_models_outputs_not_the_labels_seen():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    images, labels = torch.rand(40, 1, 4, 4), torch.randint(0, 5, (40,))   # labels 0..4 only
    history = distill(teacher, student, (images, labels), (images, labels), epochs=1, batch_size=8)
    with torch.no_grad():
        expected = (student(images).argmax(1) == labels).float().mean().item()
    assert history.epochs[0]["accuracy"] == pytest.approx(expected)


def test_models_too_small_for_the_labels_are_named_before_training():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images, labels = torch.rand(40, 1, 4, 4), torch.arange(40) % 5
    before = student[1].weight.detach().clone()
    with pytest.raises(ModelError, match="outputs 3 classes, but the labels go up to 4"):
        distill(teacher, student, (images, labels), epochs=1, batch_size=8)
    assert torch.equal(before, student[1].weight)
