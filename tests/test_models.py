"""Tests of the model modules (model_files, weights, model_checks, profile): importing user model files,
loading weights, dry runs, summaries."""
from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from app import profile
from app.errors import ModelError
from app.model_checks import check_outputs, dry_run
from app.model_files import build_model
from app.profile import ModelSummary, parameter_count, serialized_size, summarize
from app.weights import load_weights, state_signature

torch.set_num_threads(1)

# A valid model file: images [B, 1, 2, 2] -> logits [B, num_classes].
GOOD = """
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, num_classes=3, hidden=8):
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
"""
IMAGES = torch.rand(5, 1, 2, 2)


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def model_error(path: Path, kwargs: dict | None = None, key: str = "teacher_model") -> str:
    with pytest.raises(ModelError) as caught:
        build_model(path, kwargs or {}, key)
    return str(caught.value)


def with_forward(body: str) -> str:
    """A model file whose forward is ``body`` (using self.fc: Linear(4, 3))."""
    return f"""
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        {body}
"""


# --------------------------------------------------------------------------- build_model

def test_build_model_instantiates_model_with_kwargs(tmp_path):
    model = build_model(write(tmp_path, "teacher.py", GOOD), {"num_classes": 7, "hidden": 5}, "teacher_model")
    assert isinstance(model, nn.Module) and type(model).__name__ == "Model"
    assert model.fc1.out_features == 5
    assert model(IMAGES).shape == (5, 7)


def test_teacher_and_student_files_get_separate_modules(tmp_path):
    teacher = build_model(write(tmp_path / "a", "model.py", GOOD), {}, "teacher_model")
    student = build_model(write(tmp_path / "b", "model.py", GOOD.replace("hidden=8", "hidden=2")), {},
                          "student_model")
    assert type(teacher).__module__ != type(student).__module__
    assert (teacher.fc1.out_features, student.fc1.out_features) == (8, 2)
    for model in (teacher, student):
        assert sys.modules[type(model).__module__].Model is type(model)


def test_same_file_as_teacher_and_student_gives_independent_classes(tmp_path):
    path = write(tmp_path, "net.py", GOOD)
    teacher = build_model(path, {}, "teacher_model")
    student = build_model(path, {}, "student_model")
    assert type(teacher) is not type(student)
    assert pickle.loads(pickle.dumps(teacher)).__class__ is type(teacher)
    assert pickle.loads(pickle.dumps(student)).__class__ is type(student)


def test_importing_a_file_again_gives_a_fresh_consistent_class(tmp_path):
    path = write(tmp_path, "teacher.py", GOOD)
    first = type(build_model(path, {}, "teacher_model"))
    path.write_text(textwrap.dedent(GOOD).replace("hidden=8", "hidden=6"))
    model = build_model(path, {}, "teacher_model")
    second = type(model)
    assert second is not first and model.fc1.out_features == 6
    assert sys.modules[second.__module__].Model is second and sys.modules[first.__module__].Model is first
    assert "hidden=6" in inspect.getsource(second)   # TorchScript needs the class's current source
    assert type(pickle.loads(pickle.dumps(model))) is second


def test_model_file_can_import_a_helper_next_to_it(tmp_path):
    write(tmp_path, "kd_blocks.py", """
        from torch import nn
        def block(width):
            return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))
        """)
    path = write(tmp_path, "student.py", """
        from torch import nn
        from kd_blocks import block
        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = block(6)
            def forward(self, x):
                return self.body(x.flatten(1))
        """)
    path_before = list(sys.path)
    model = build_model(path, {}, "student_model")
    assert model(IMAGES).shape == (5, 3)
    assert sys.path == path_before


def test_helpers_of_the_same_name_in_two_folders_do_not_mix(tmp_path):
    models = []
    for width in (2, 9):
        folder = tmp_path / f"site{width}"
        write(folder, "kd_width.py", f"WIDTH = {width}\n")
        path = write(folder, "teacher.py", GOOD.replace("hidden=8", "hidden=None").replace(
            "super().__init__()", "super().__init__()\n        from kd_width import WIDTH; hidden = WIDTH"))
        models.append(build_model(path, {}, "teacher_model"))
    assert [m.fc1.out_features for m in models] == [2, 9]


def test_missing_file_says_where_it_was_looked_for(tmp_path):
    message = model_error(tmp_path / "teacher.py")
    assert "teacher_model 'teacher.py'" in message and "not found" in message
    assert str(tmp_path / "teacher.py") in message


def test_non_python_file_is_refused(tmp_path):
    message = model_error(write(tmp_path, "teacher.txt", GOOD))
    assert "teacher_model 'teacher.txt'" in message and "not a Python file" in message and ".py" in message


def test_syntax_error_names_file_line_and_code(tmp_path):
    path = write(tmp_path, "student.py", "from torch import nn\n\nclass Model(nn.Module)\n    pass\n")
    message = model_error(path, key="student_model")
    assert "student_model 'student.py'" in message and "syntax error" in message
    assert "line 3" in message and "class Model(nn.Module)" in message
    assert not any(getattr(m, "__file__", None) == str(path) for m in list(sys.modules.values()))


def test_import_time_exception_names_type_message_and_line(tmp_path):
    path = write(tmp_path, "teacher.py", "import torch\nSIZE = {'a': 1}\nWIDTH = SIZE['b']\n")
    message = model_error(path)
    assert "teacher_model 'teacher.py'" in message and "KeyError: 'b'" in message
    assert "line 3" in message and "WIDTH = SIZE['b']" in message


def test_missing_package_hints_at_helper_modules(tmp_path):
    message = model_error(write(tmp_path, "teacher.py", "import kd_no_such_module_here\n"))
    assert "ModuleNotFoundError" in message and "kd_no_such_module_here.py next to the model file" in message


def test_file_without_model_lists_its_classes(tmp_path):
    path = write(tmp_path, "teacher.py", """
        from torch import nn
        class Net(nn.Module):
            pass
        class Config:
            pass
        """)
    message = model_error(path)
    assert "no class `Model`" in message and "Net, Config" in message
    assert "Model = Net" in message


def test_model_that_is_not_a_module_is_refused(tmp_path):
    message = model_error(write(tmp_path, "teacher.py", "class Model:\n    pass\n"))
    assert "must subclass torch.nn.Module" in message and "(object)" in message


def test_model_that_is_an_instance_is_refused(tmp_path):
    message = model_error(write(tmp_path, "teacher.py", "from torch import nn\nModel = nn.Linear(4, 3)\n"))
    assert "`Model` is a Linear, not a class" in message


def test_constructor_rejecting_arguments_points_to_args_key(tmp_path):
    message = model_error(write(tmp_path, "student.py", GOOD), {"width": 3}, key="student_model")
    assert "student_model 'student.py'" in message and "TypeError" in message and "width" in message
    assert "student_args" in message and "(num_classes=3, hidden=8)" in message


def test_constructor_missing_argument_points_to_args_key(tmp_path):
    path = write(tmp_path, "teacher.py", GOOD.replace("num_classes=3", "num_classes"))
    message = model_error(path)
    assert "missing 1 required positional argument: 'num_classes'" in message and "teacher_args" in message


def test_constructor_raising_names_error_and_line(tmp_path):
    path = write(tmp_path, "teacher.py", GOOD.replace(
        "super().__init__()", "super().__init__()\n        raise RuntimeError('no GPU here')"))
    message = model_error(path)
    assert "RuntimeError: no GPU here" in message and "line 9" in message
    assert "raise RuntimeError('no GPU here')" in message and "teacher_args" not in message


# --------------------------------------------------------------------------- load_weights

@pytest.fixture
def model_file(tmp_path) -> Path:
    return write(tmp_path, "teacher.py", GOOD)


def trained_pair(model_file: Path) -> tuple[nn.Module, nn.Module]:
    """Two instances of the same class with different random weights."""
    return build_model(model_file, {}, "teacher_model"), build_model(model_file, {}, "teacher_model")


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name


def test_state_dict_round_trip(model_file, tmp_path):
    source, target = trained_pair(model_file)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    load_weights(target, tmp_path / "w.pt")
    assert_same_weights(source, target)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict"])
def test_wrapped_state_dict_round_trip(model_file, tmp_path, wrapper):
    source, target = trained_pair(model_file)
    torch.save({"epoch": 4, wrapper: source.state_dict(), "optimizer": {"lr": 0.1}}, tmp_path / "w.pt")
    load_weights(target, tmp_path / "w.pt")
    assert_same_weights(source, target)


def test_pickled_module_round_trip_under_the_names_it_was_saved_with(model_file, tmp_path):
    # A separate Python saves torch.save(model) once with the class imported as `teacher.Model`
    # and once with it defined in the script itself (`__main__.Model`).
    script = f"""
import sys, torch
sys.path.insert(0, {str(model_file.parent)!r})
import teacher
model = teacher.Model()
torch.save(model, "imported.pt")
torch.save(model.state_dict(), "imported_state.pt")
exec(open({str(model_file)!r}).read())
model = Model()
torch.save(model, "main.pt")
torch.save(model.state_dict(), "main_state.pt")
print(Model.__module__, teacher.Model.__module__)
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["__main__", "teacher"]
    for name in ("imported", "main"):
        target, expected = build_model(model_file, {}, "teacher_model"), build_model(model_file, {}, "teacher_model")
        load_weights(target, tmp_path / f"{name}.pt")
        load_weights(expected, tmp_path / f"{name}_state.pt")
        assert_same_weights(expected, target)


def test_pickled_module_of_our_own_class_round_trip(model_file, tmp_path):
    source, target = trained_pair(model_file)
    torch.save(source, tmp_path / "whole.pt")
    load_weights(target, tmp_path / "whole.pt")
    assert_same_weights(source, target)


class Metadata:
    """A class of the test's own: its pickle must not be loaded."""

    def __init__(self):
        self.note = "trained on site 1"


class Exploit:
    """Unpickling this would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("extra", ["metadata", "exploit"])
def test_pickle_with_foreign_objects_is_refused_and_not_executed(model_file, tmp_path, extra):
    marker = tmp_path / "pwned"
    source, target = trained_pair(model_file)
    payload = Metadata() if extra == "metadata" else Exploit(marker)
    torch.save({"state_dict": source.state_dict(), "extra": payload}, tmp_path / "w.pt")
    with pytest.raises(ModelError) as caught:
        load_weights(target, tmp_path / "w.pt")
    message = str(caught.value)
    expected_global = f"{__name__}.Metadata" if extra == "metadata" else "io.open"
    assert "teacher_weights 'w.pt'" in message and expected_global in message
    assert "torch.save(model.state_dict(), 'w.pt')" in message
    assert not marker.exists()


def test_data_parallel_prefix_is_stripped(model_file, tmp_path):
    source, target = trained_pair(model_file)
    torch.save(nn.DataParallel(source).state_dict(), tmp_path / "w.pt")
    assert all(k.startswith("module.") for k in torch.load(tmp_path / "w.pt"))
    load_weights(target, tmp_path / "w.pt")
    assert_same_weights(source, target)


def test_prefix_kept_when_the_model_itself_uses_it(tmp_path):
    path = write(tmp_path, "teacher.py", """
        from torch import nn
        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.module = nn.Linear(4, 3)
            def forward(self, x):
                return self.module(x.flatten(1))
        """)
    source, target = trained_pair(path)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    load_weights(target, tmp_path / "w.pt")
    assert_same_weights(source, target)


def weights_error(model: nn.Module, path: Path, key: str = "teacher_weights") -> str:
    with pytest.raises(ModelError) as caught:
        load_weights(model, path, key)
    return str(caught.value)


def test_missing_weights_file(model_file, tmp_path):
    message = weights_error(build_model(model_file, {}, "teacher_model"), tmp_path / "teacher.pt")
    assert "teacher_weights 'teacher.pt'" in message and f"not found at {tmp_path / 'teacher.pt'}" in message


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_unreadable_weights_file(model_file, tmp_path, damage):
    model = build_model(model_file, {}, "teacher_model")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    content = {"truncated": path.read_bytes()[: path.stat().st_size // 2], "empty": b"",
               "text": b"fc1.weight = [[0.1, 0.2]]\n"}[damage]
    path.write_bytes(content)
    message = weights_error(model, path)
    assert "teacher_weights 'w.pt': cannot be read as PyTorch weights" in message
    assert "truncated, corrupt" in message and "torch.save(model.state_dict(), 'w.pt')" in message


@pytest.mark.parametrize("content, found", [
    ([1, 2, 3], "holds a list"),
    ({"epoch": 3, "lr": 0.1}, "keys: epoch, lr"),
    ({"state_dict": "see other file"}, "holds a str"),
    ({}, "keys: none"),
])
def test_file_that_holds_no_weights(model_file, tmp_path, content, found):
    torch.save(content, tmp_path / "w.pt")
    message = weights_error(build_model(model_file, {}, "teacher_model"), tmp_path / "w.pt")
    assert found in message and "not model weights" in message


def test_shape_mismatch_shows_shapes_and_blames_args(model_file, tmp_path):
    wider = build_model(model_file, {"hidden": 16}, "teacher_model")
    torch.save(wider.state_dict(), tmp_path / "w.pt")
    message = weights_error(build_model(model_file, {}, "teacher_model"), tmp_path / "w.pt")
    assert "teacher_weights 'w.pt'" in message and "teacher.py" in message
    assert "shape mismatches (3)" in message
    assert "fc1.weight: file [16, 4], model [8, 4]" in message and "fc2.weight: file [3, 16], model [3, 8]" in message
    assert "different architecture or with different teacher_args" in message


def test_missing_and_unexpected_keys_are_listed_up_to_five(tmp_path):
    deep = write(tmp_path / "deep", "student.py", """
        from torch import nn
        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
            def forward(self, x):
                return self.layers(x.flatten(1))
        """)
    torch.save(build_model(deep, {}, "student_model").state_dict(), tmp_path / "w.pt")
    message = weights_error(build_model(write(tmp_path, "student.py", GOOD), {}, "student_model"),
                            tmp_path / "w.pt", key="student_weights")
    assert "missing keys (4): fc1.weight [8, 4]; fc1.bias [8]; fc2.weight [3, 8]; fc2.bias [3]" in message
    assert "unexpected keys (8): layers.0.weight [4, 4]" in message and "(and 3 more)" in message
    assert "layers.3.bias" not in message
    assert "student_args" in message


# --------------------------------------------------------------------------- dry_run / check_outputs

def dry_run_error(tmp_path: Path, forward_body: str, images: torch.Tensor = IMAGES) -> str:
    model = build_model(write(tmp_path, "student.py", with_forward(forward_body)), {}, "student_model")
    with pytest.raises(ModelError) as caught:
        dry_run(model, images, "student_model")
    message = str(caught.value)
    assert message.startswith("student_model 'student.py'")
    return message


def test_dry_run_returns_logits_and_restores_mode(model_file):
    model = build_model(model_file, {}, "teacher_model")
    model.train()
    logits = dry_run(model, IMAGES, "teacher_model")
    assert logits.shape == (5, 3) and torch.allclose(logits, model.eval()(IMAGES))
    assert logits.is_inference()
    model.train()
    dry_run(model, IMAGES, "teacher_model")
    assert model.training


def test_dry_run_uses_eval_mode(tmp_path):
    body = "return self.fc(x.flatten(1)) * (2.0 if self.training else 1.0)"
    model = build_model(write(tmp_path, "student.py", with_forward(body)), {}, "student_model").train()
    assert torch.allclose(dry_run(model, IMAGES, "student_model"), model.fc(IMAGES.flatten(1)))


def test_forward_raising_names_error_input_shape_and_line(tmp_path):
    message = dry_run_error(tmp_path, "return self.fc(x.flatten(1))", torch.rand(2, 1, 3, 3))
    assert "forward pass failed on a batch of shape [2, 1, 3, 3]" in message
    assert "RuntimeError" in message and "mat1 and mat2" in message
    assert "line 12" in message and "return self.fc(x.flatten(1))" in message
    assert "[batch, 1, 3, 3]" in message
    assert "set image_size and channels in config.yml" in message


@pytest.mark.parametrize("body, expected", [
    ("return self.fc(x.flatten(1)), x", ["returned a tuple, not a tensor"]),
    ("return self.fc(x.flatten(1)).unsqueeze(1)", ["returned shape [5, 1, 3]", "[batch, classes] = [5, K]"]),
    ("return self.fc(x.reshape(-1, 4))[:2]", ["returned 2 rows for a batch of 5", "x.flatten(1)"]),
    ("return self.fc(x.flatten(1)) / 0", ["NaN or infinite"]),
    ("return self.fc(x.flatten(1)).argmax(1, keepdim=True)", ["torch.int64", "no argmax"]),
], ids=["tuple", "3d", "batch-changed", "non-finite", "class-indices"])
def test_forward_output_that_is_not_logits(tmp_path, body, expected):
    message = dry_run_error(tmp_path, body)
    for fragment in expected:
        assert fragment in message


def test_check_outputs_returns_shared_class_count():
    assert check_outputs(torch.zeros(2, 10), torch.zeros(2, 10), 7, ("t.py", "s.py")) == 10
    assert check_outputs(torch.zeros(2, 4), torch.zeros(2, 4), 4, ("t.py", "s.py")) == 4


@pytest.mark.parametrize("teacher, student, labels, expected", [
    (3, 10, 10, "teacher_model 't.py': outputs 3 classes, but the labels go up to 9 (10 classes). "
                "Change the output size of t.py (its last layer, e.g. num_classes in teacher_args) to 10."),
    (10, 5, 10, "student_model 's.py': outputs 5 classes, but the labels go up to 9"),
    (10, 12, 10, "student_model 's.py' outputs 12 classes but teacher_model 't.py' outputs 10"),
])
def test_check_outputs_says_which_file_to_change(teacher, student, labels, expected):
    with pytest.raises(ModelError) as caught:
        check_outputs(torch.zeros(2, teacher), torch.zeros(2, student), labels, ("t.py", "s.py"))
    assert expected in str(caught.value)
    if teacher != student and min(teacher, student) >= labels:
        assert "Change the output size of s.py" in str(caught.value) and f"to {teacher}" in str(caught.value)


# --------------------------------------------------------------------------- size and summary

def test_parameter_count_serialized_size_and_signature(model_file):
    small = build_model(model_file, {}, "teacher_model")
    large = build_model(model_file, {"hidden": 64}, "teacher_model")
    assert parameter_count(small) == sum(p.numel() for p in (small.fc1.weight, small.fc1.bias,
                                                             small.fc2.weight, small.fc2.bias))
    assert parameter_count(large) > parameter_count(small)
    # float32 weights take 4 bytes each, plus the file's own structure
    assert serialized_size(small) > 4 * parameter_count(small)
    assert serialized_size(large) > 4 * parameter_count(large) and serialized_size(large) > serialized_size(small)
    assert state_signature(small) == [("fc1.weight", (8, 4), "torch.float32"), ("fc1.bias", (8,), "torch.float32"),
                                      ("fc2.weight", (3, 8), "torch.float32"), ("fc2.bias", (3,), "torch.float32")]
    assert state_signature(small) == state_signature(build_model(model_file, {}, "teacher_model"))
    assert state_signature(small) != state_signature(large)


def test_state_signature_includes_buffers_and_dtypes():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).double()
    signature = dict((name, (shape, dtype)) for name, shape, dtype in state_signature(model))
    assert signature["1.running_mean"] == ((2,), "torch.float64")
    assert signature["1.num_batches_tracked"] == ((), "torch.int64")
    assert [name for name, _, _ in state_signature(model)] == list(model.state_dict())


def conv_model(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * 28 * 28, 10))


def test_summarize_fields_are_consistent():
    model = conv_model(8).train()
    summary = summarize(model, (1, 28, 28), large_batch=32, repeats=2)
    assert isinstance(summary, ModelSummary) and model.training
    assert summary.parameters == parameter_count(model) and summary.size_bytes == serialized_size(model)
    assert summary.latency_ms_batch1 > 0 and summary.latency_ms_per_sample > 0
    assert summary.large_batch == 32
    # the convolution's output alone is 32 x 8 x 28 x 28 float32 values
    assert summary.peak_memory_bytes >= 32 * 8 * 28 * 28 * 4
    assert summary.as_dict() == {"parameters": summary.parameters, "size_bytes": summary.size_bytes,
                                 "latency_ms_batch1": summary.latency_ms_batch1,
                                 "latency_ms_per_sample": summary.latency_ms_per_sample,
                                 "large_batch": 32, "peak_memory_bytes": summary.peak_memory_bytes}


def test_the_profiled_pass_is_the_large_batchs_only_untimed_call(monkeypatch):
    """Every batch size is called once before it is timed (first calls allocate and pick kernels); at the
    large batch that first call is the profiler's, not one more forward pass."""
    monkeypatch.setattr(profile, "CPU_TIME_BUDGET_S", 1e-9)   # exactly `repeats` timed runs
    monkeypatch.setattr(profile, "LATENCY_BUDGET_S", 1e-9)
    calls = []

    class Recorded(nn.Linear):
        def forward(self, x):
            calls.append((len(x), torch.autograd.profiler._is_profiler_enabled))
            return super().forward(x)
    summarize(Recorded(4, 2), (4,), large_batch=8, repeats=3)
    assert calls == [(1, False)] * 4 + [(8, True)] + [(8, False)] * 3


class Waiting(nn.Module):
    """A layer whose forward pass also waits 5 ms, as a run does while the OS serves other programs."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        time.sleep(0.005)
        return self.linear(x)


def test_latency_with_torch_on_one_thread_is_that_threads_cpu_time():
    """One thread does all the work: time the OS gives other programs is not the model's (it made a
    batch of 256 read up to 1.9x slower while other sites trained). With more threads: wall time."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = summarize(Waiting(), (4,), large_batch=4, repeats=2)
        torch.set_num_threads(2)
        two = summarize(Waiting(), (4,), large_batch=4, repeats=2)
    finally:
        torch.set_num_threads(threads)
    assert one.latency_ms_batch1 < 2.5 and one.latency_ms_per_sample < 2.5 / 4
    assert two.latency_ms_batch1 >= 5 and two.latency_ms_per_sample >= 5 / 4


def test_summary_grows_with_model_and_batch():
    small, large = conv_model(4), conv_model(16)
    small_summary = summarize(small, (1, 28, 28), large_batch=16, repeats=1)
    large_summary = summarize(large, (1, 28, 28), large_batch=16, repeats=1)
    assert large_summary.size_bytes > small_summary.size_bytes
    assert large_summary.peak_memory_bytes > small_summary.peak_memory_bytes
    big_batch = summarize(small, (1, 28, 28), large_batch=128, repeats=1)
    assert big_batch.peak_memory_bytes > 4 * small_summary.peak_memory_bytes
