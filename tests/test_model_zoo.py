"""Tests of the model zoo in models/: every file builds, matches what its docstring and
models/README.md say (parameter count, multiply-adds, input shape, arguments, size ratios) and
produces logits [batch, num_classes]; the torchvision teacher loads pretrained backbones."""
from __future__ import annotations

import ast
import inspect
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet18

from app.errors import ModelError
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
    multiply_adds: int
    input_shape: tuple[int, ...]
    any_size: bool
    arguments: dict[str, object]
    student_of: dict[str, float]   # teacher file -> claimed "N x fewer parameters"
    pairs_with: tuple[str, ...]


def read_doc(name: str) -> Doc:
    text = ast.get_docstring(ast.parse((ZOO / name).read_text()))
    assert text, f"{name} has no module docstring"
    fields = dict(re.findall(r"^(Parameters|Multiply-adds|Input|Arguments|Student of|Pairs with): (.*)$", text,
                             re.M))
    shape = re.search(r"\[N, ([\d, ]+)\]", fields["Input"]).group(1)
    return Doc(
        parameters=int(re.match(r"([\d,]+) \(num_classes=10\)", fields["Parameters"]).group(1).replace(",", "")),
        multiply_adds=int(re.match(r"([\d,]+) per image", fields["Multiply-adds"]).group(1).replace(",", "")),
        input_shape=tuple(int(n) for n in shape.split(", ")),
        any_size="any size" in fields["Input"],
        arguments={k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=([^,]+)", fields["Arguments"])},
        student_of={t: float(r)
                    for t, r in re.findall(r"(\w+\.py) \(([\d.]+)x fewer parameters\)", fields.get("Student of", ""))},
        pairs_with=tuple(re.findall(r"\w+\.py", fields.get("Pairs with", ""))),
    )


def build(name: str, **kwargs) -> torch.nn.Module:
    return build_model(ZOO / name, kwargs, "teacher_model")


def test_zoo_has_the_documented_files():
    assert {"mnist_cnn_teacher.py", "mnist_cnn_student.py", "mnist_mlp_student.py", "hinton_teacher.py",
            "hinton_student.py", "cifar_resnet18_teacher.py", "cifar_cnn_student.py", "torchvision_teacher.py",
            "gap_cnn_student.py"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_parameter_count_matches_docstring(name):
    assert parameter_count(build(name)) == read_doc(name).parameters


def multiply_adds(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of one image through the convolutions and linear layers (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", FILES)
def test_multiply_adds_match_docstring(name):
    doc = read_doc(name)
    assert multiply_adds(build(name), doc.input_shape) == doc.multiply_adds


@pytest.mark.parametrize("name", [n for n in FILES if read_doc(n).any_size])
def test_any_size_models_take_other_non_square_sizes(name):
    torch.manual_seed(0)
    model = build(name, num_classes=4)
    channels = read_doc(name).input_shape[0]
    for height, width in ((40, 72), (97, 33)):
        assert dry_run(model, torch.rand(2, channels, height, width), "teacher_model").shape == (2, 4)


def test_gap_student_costs_about_a_million_multiply_adds_at_32_pixels():
    assert 0.95e6 <= multiply_adds(build("gap_cnn_student.py"), (3, 32, 32)) <= 1.05e6   # models/README.md


def receptive_field(model: torch.nn.Module, size: int) -> tuple[int, int]:
    """Height and width of the input pixels the centre feature before the global pooling depends on.
    Weights made positive and a positive input keep every ReLU open, so the gradient reaches each of them."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.abs_()
    image = torch.ones(1, 3, size, size, requires_grad=True)
    features = model.eval().features[:-2](image)   # before AdaptiveAvgPool2d and Flatten
    features[0, :, features.shape[2] // 2, features.shape[3] // 2].sum().backward()
    rows, columns = image.grad[0].abs().sum(dim=0).nonzero().unbind(dim=1)
    return int(rows.max() - rows.min() + 1), int(columns.max() - columns.min() + 1)


@pytest.mark.parametrize("stages", [4, 5])
def test_gap_student_sees_as_far_as_its_docstring_says(stages):
    """2^(stages + 1) - 1 pixels: 31 by default, 63 with the 5 stages a 64-px image needs."""
    model = build("gap_cnn_student.py", stages=stages)
    assert receptive_field(model, 160) == (2 ** (stages + 1) - 1,) * 2
    assert model.classifier.in_features == 16 * 2 ** (stages - 1)


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
    for name, (role, parameters, macs, input_shape, goes_with) in rows.items():
        doc = read_doc(name)
        assert int(parameters.replace(",", "")) == doc.parameters, name
        assert int(macs.replace(",", "")) == doc.multiply_adds, name
        shape = f"`[N, {', '.join(map(str, doc.input_shape))}]`"
        assert input_shape == (f"{shape}, any size" if doc.any_size else shape), name
        assert role == ("student" if doc.student_of else "teacher"), name
        partners = set(re.findall(r"\w+\.py", goes_with))
        assert partners == set(doc.student_of) | set(doc.pairs_with), name
        for claimed in doc.student_of.values():
            assert f"({claimed:g}×" in goes_with, name


# --- torchvision_teacher.py: architectures by name, pretrained backbones ---

def input_folder(folder: Path, weights: object, name: str = "pretrained.pth") -> Path:
    """A site's input folder holding the zoo's torchvision teacher as teacher.py and a weights file
    (``weights`` saved with torch.save, or bytes written as they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ZOO / "torchvision_teacher.py", folder / "teacher.py")
    if isinstance(weights, bytes):
        (folder / name).write_bytes(weights)
    elif weights is not None:
        torch.save(weights, folder / name)
    return folder / "teacher.py"


def teacher_with_weights(folder: Path, weights: object, **kwargs) -> torch.nn.Module:
    return build_model(input_folder(folder, weights), {"pretrained_weights": "pretrained.pth", **kwargs},
                       "teacher_model")


def test_pretrained_weights_fill_the_backbone_and_the_head_is_new(tmp_path):
    torch.manual_seed(1)
    imagenet_like = torchvision.models.resnet18()   # 1000 classes, as torchvision's ImageNet weights
    imagenet_like.layer3[0].bn1.running_mean.uniform_()   # buffers travel with the weights too
    torch.manual_seed(0)
    teacher = teacher_with_weights(tmp_path, imagenet_like.state_dict(), arch="resnet18", num_classes=7)
    torch.manual_seed(0)
    untouched = build("torchvision_teacher.py", arch="resnet18", num_classes=7)

    loaded = {k.removeprefix("net."): v for k, v in teacher.state_dict().items()}
    source = imagenet_like.state_dict()
    backbone = [k for k in source if not k.startswith("fc.")]
    assert loaded.keys() == source.keys() and len(backbone) == len(source) - 2
    assert all(torch.equal(loaded[k], source[k]) for k in backbone)
    # the same seed without the file gives other weights: the equality above came from the file
    assert not torch.equal(untouched.net.conv1.weight, teacher.net.conv1.weight)
    assert teacher.net.fc.weight.shape == (7, 512) and teacher.net.fc.bias.shape == (7,)
    assert torch.equal(teacher.net.fc.weight, untouched.net.fc.weight)   # freshly initialised, not from the file
    assert not torch.equal(teacher.net.fc.weight, source["fc.weight"][:7])
    assert dry_run(teacher, torch.rand(2, 3, 64, 48), "teacher_model").shape == (2, 7)


def test_a_grayscale_image_is_seen_as_the_same_gray_in_three_channels():
    torch.manual_seed(0)
    teacher = build("torchvision_teacher.py", arch="resnet18", num_classes=3)
    gray = torch.rand(2, 1, 40, 40)
    as_colour = dry_run(teacher, gray.repeat(1, 3, 1, 1), "teacher_model")
    assert torch.allclose(dry_run(teacher, gray, "teacher_model"), as_colour, atol=1e-6)
    with pytest.raises(ModelError, match=r"forward pass failed on a batch of shape \[2, 2, 40, 40\].*"
                                         r"expected images \[N, 3, H, W\] or \[N, 1, H, W\]"):
        dry_run(teacher, torch.rand(2, 2, 40, 40), "teacher_model")


def test_googlenet_weights_in_torchvisions_form_load_without_the_auxiliary_classifiers(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.googlenet(aux_logits=True, init_weights=False).state_dict()
    assert any(k.startswith("aux1.") for k in source)
    teacher = teacher_with_weights(tmp_path, source, arch="googlenet", num_classes=5)
    assert teacher.net.aux1 is None and teacher.net.transform_input   # as torchvision's own pretrained googlenet
    assert torch.equal(teacher.net.conv1.conv.weight, source["conv1.conv.weight"])
    assert teacher.net.fc.weight.shape == (5, 1024)
    assert dry_run(teacher, torch.rand(2, 3, 64, 64), "teacher_model").shape == (2, 5)


def test_an_unknown_architecture_is_refused_with_the_valid_names():
    with pytest.raises(ModelError) as caught:
        build("torchvision_teacher.py", arch="resnet19")
    message = str(caught.value)
    assert message.startswith("teacher_model 'torchvision_teacher.py': Model(**{'arch': 'resnet19'}) raised "
                              "ValueError: arch 'resnet19' is not a torchvision classification model. "
                              "Did you mean 'resnet18'? Set arch in teacher_args to one of: alexnet, ")
    assert all(name in message for name in ("resnet50", "efficientnet_b0", "vit_b_16", "mobilenet_v3_small"))


@pytest.mark.parametrize("weights, expected", [
    (None, r"pretrained_weights 'resnet18\.pth': no such file at .*resnet18\.pth\. Put the weights file next to "
           r"the teacher's model file \(the site's input folder\) or fix pretrained_weights in teacher_args"),
    ("resnet34", r"pretrained_weights 'resnet18\.pth': does not fit torchvision's resnet18 \(96 problems: "
                 r"unexpected layer1\.2\.conv1\.weight;.*\(and 91 more\)\)\. Use weights saved from "
                 r"torchvision\.models\.resnet18, or set arch in teacher_args"),
    ("list", r"pretrained_weights 'resnet18\.pth': holds a list, not a state_dict of tensors\. Save it with "
             r"torch\.save\(torchvision\.models\.resnet18\(weights=\.\.\.\)\.state_dict\(\), 'resnet18\.pth'\)"),
    ("garbage", r"pretrained_weights 'resnet18\.pth': cannot be read as a state_dict"),
])
def test_unusable_pretrained_weights_name_the_file_and_the_fix(tmp_path, weights, expected):
    content = {None: None, "resnet34": torchvision.models.resnet34().state_dict(), "list": [1, 2],
               "garbage": b"not a torch file"}[weights]
    teacher_file = input_folder(tmp_path, content, name="resnet18.pth")
    with pytest.raises(ModelError, match=r"^teacher_model 'teacher\.py': Model\(\*\*\{'pretrained_weights': "
                                         r"'resnet18\.pth'\}\) raised \w+: " + expected):
        build_model(teacher_file, {"pretrained_weights": "resnet18.pth"}, "teacher_model")
