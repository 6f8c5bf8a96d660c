"""Tests of the model zoo in models/: every file builds, matches what its docstring and
models/README.md say (parameter count, input shape, arguments, size ratios) and
produces logits [batch, num_classes]."""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from app.model_checks import dry_run
from app.model_files import build_model
from app.profile import parameter_count

torch.set_num_threads(1)

ZOO = Path(__file__).resolve().parent.parent / "models"
FILES = sorted(p.name for p in ZOO.glob("*.py"))
BATCH = 3


@dataclass(frozen=True)
class Doc:
    """What a zoo file's docstring claims."""

    parameters: int
    input_shape: tuple[int, ...]
    arguments: dict[str, object]
    student_of: dict[str, float]   # teacher file -> claimed "N x fewer parameters"
    pairs_with: tuple[str, ...]


def read_doc(name: str) -> Doc:
    text = ast.get_docstring(ast.parse((ZOO / name).read_text()))
    assert text, f"{name} has no module docstring"
    fields = dict(re.findall(r"^(Parameters|Input|Arguments|Student of|Pairs with): (.*)$", text, re.M))
    shape = re.search(r"\[N, ([\d, ]+)\]", fields["Input"]).group(1)
    return Doc(
        parameters=int(re.match(r"([\d,]+) \(num_classes=10\)", fields["Parameters"]).group(1).replace(",", "")),
        input_shape=tuple(int(n) for n in shape.split(", ")),
        arguments={k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=([^,]+)", fields["Arguments"])},
        student_of={t: float(r)
                    for t, r in re.findall(r"(\w+\.py) \(([\d.]+)x fewer parameters\)", fields.get("Student of", ""))},
        pairs_with=tuple(re.findall(r"\w+\.py", fields.get("Pairs with", ""))),
    )


def build(name: str, **kwargs) -> torch.nn.Module:
    return build_model(ZOO / name, kwargs, "teacher_model")


def test_zoo_has_the_documented_files():
    assert {"mnist_cnn_teacher.py", "mnist_cnn_student.py", "mnist_mlp_student.py", "hinton_teacher.py",
            "hinton_student.py", "cifar_resnet18_teacher.py", "cifar_cnn_student.py"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_parameter_count_matches_docstring(name):
    assert parameter_count(build(name)) == read_doc(name).parameters


@pytest.mark.parametrize("name", FILES)
def test_arguments_match_docstring_and_all_have_defaults(name):
    model_class = type(build(name))
    parameters = inspect.signature(model_class).parameters
    assert {k: p.default for k, p in parameters.items()} == read_doc(name).arguments
    assert read_doc(name).arguments["num_classes"] == 10


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("num_classes", [10, 4])
def test_forward_gives_logits_for_the_documented_input(name, num_classes):
    torch.manual_seed(0)
    model = build(name, num_classes=num_classes)
    images = torch.randn(BATCH, *read_doc(name).input_shape)
    logits = dry_run(model, images, "teacher_model")
    assert logits.shape == (BATCH, num_classes)
    # the images matter: a different batch gives different logits
    assert not torch.allclose(logits, dry_run(model, torch.randn_like(images), "teacher_model"))


@pytest.mark.parametrize("name", [n for n in FILES if read_doc(n).student_of])
def test_claimed_size_ratios_hold(name):
    doc = read_doc(name)
    for teacher, claimed in doc.student_of.items():
        actual = read_doc(teacher).parameters / doc.parameters
        decimals = len(str(claimed).split(".")[1]) if not claimed.is_integer() else 0
        assert round(actual, decimals) == claimed, f"{name} vs {teacher}: {actual:.2f}x"
        assert read_doc(teacher).input_shape == doc.input_shape


def test_pairings_are_stated_on_both_sides():
    students_of = {(t, s) for s in FILES for t in read_doc(s).student_of}
    paired = {(t, s) for t in FILES for s in read_doc(t).pairs_with}
    assert paired <= students_of
    assert {t for t, _ in students_of} <= {t for t, _ in paired}


def test_mnist_cnn_student_is_at_least_50_times_smaller():
    ratio = parameter_count(build("mnist_cnn_teacher.py")) / parameter_count(build("mnist_cnn_student.py"))
    assert ratio >= 50


def test_teacher_of_the_hinton_pair_is_the_papers_architecture():
    hidden = [m for m in build("hinton_teacher.py").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in hidden] == [(784, 1200), (1200, 1200), (1200, 10)]
    hidden = [m for m in build("hinton_student.py").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in hidden] == [(784, 800), (800, 800), (800, 10)]


def test_cifar_resnet18_is_torchvisions_with_a_cifar_stem():
    model = build("cifar_resnet18_teacher.py", num_classes=7)
    reference = resnet18(num_classes=7).state_dict()
    ours = {k.removeprefix("net."): v for k, v in model.state_dict().items()}
    assert ours.keys() == reference.keys()
    differing = {k for k in ours if ours[k].shape != reference[k].shape}
    assert differing == {"conv1.weight"} and ours["conv1.weight"].shape == (64, 3, 3, 3)
    seen = []
    model.net.layer1.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    dry_run(model, torch.randn(2, 3, 32, 32), "teacher_model")
    assert seen == [(2, 64, 32, 32)]   # no stride-2 stem, no max-pool: full resolution into layer1


def readme_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (ZOO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(r"`\w+\.py`", cells[0]):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_readme_table_matches_the_files():
    rows = readme_rows()
    assert set(rows) == set(FILES)
    for name, (role, parameters, input_shape, goes_with) in rows.items():
        doc = read_doc(name)
        assert int(parameters.replace(",", "")) == doc.parameters, name
        assert input_shape == f"`[N, {', '.join(map(str, doc.input_shape))}]`", name
        assert role == ("student" if doc.student_of else "teacher"), name
        partners = set(re.findall(r"\w+\.py", goes_with))
        assert partners == set(doc.student_of) | set(doc.pairs_with), name
        for claimed in doc.student_of.values():
            assert f"({claimed:g}×" in goes_with, name
