"""Output files: atomic writes, JSON, CSV, plots, TorchScript, ONNX and its int8 version, config."""
import json
import struct

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
import yaml
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from app import exports, files, plots, quantization
from app.model_files import build_model
from app.profile import parameter_count
from tests.conftest import REPO


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out" / "file.txt"
    files.write_text(path, "one")
    files.write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_text(path, "previous")

    def explode(handle):
        handle.write(b"half of a new fi")
        raise OSError("disk full")
    with pytest.raises(OSError):
        files.atomic_write(path, explode)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_turns_non_finite_floats_into_null(tmp_path):
    path = tmp_path / "m.json"
    files.write_json(path, {"a": float("nan"), "b": [1.5, float("inf")], "c": (1, 2)})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "c": [1, 2]}


def test_rounds_csv_has_one_row_per_round_and_skips_nested_values(tmp_path):
    rounds = [{"round": 1, "accuracy": 0.5, "per_class": [1, 2]}, {"round": 2, "accuracy": 0.75}]
    path = tmp_path / "rounds.csv"
    files.write_rounds_csv(rounds, path)
    assert path.read_text().splitlines() == ["round,accuracy", "1,0.5", "2,0.75"]


def test_plot_is_a_valid_png(tmp_path):
    path = tmp_path / "accuracy.png"
    rounds = [{"round": r, "accuracy": 0.5 + r / 10, "baseline": None} for r in range(1, 6)]
    plots.plot_rounds(rounds, path, title="t", ylabel="acc",
                      series={"student": "accuracy", "baseline": "baseline"}, references={"teacher": 0.99})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    with Image.open(path) as image:
        image.verify()
    assert (width, height) == (600, 400)


def test_a_plot_is_drawn_once_to_be_saved(tmp_path, monkeypatch):
    """tight_layout measures the figure without drawing it; savefig would draw it twice (once without
    output, for a layout engine tight_layout leaves behind) unless the engine is removed."""
    drawn = []
    draw = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda figure, renderer: (drawn.append(figure), draw(figure, renderer))[1])
    plots.plot_rounds([{"round": 1, "accuracy": 0.5}], tmp_path / "rounds.png", title="t", ylabel="acc",
                      series={"student": "accuracy"})
    plots.plot_confusion([[5, 1], [0, 4]], tmp_path / "confusion.png", title="t")
    assert len(drawn) == 2 and drawn[0] is not drawn[1]
    for name in ("rounds.png", "confusion.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()


def test_the_confusion_matrix_axes_name_the_classes(tmp_path, monkeypatch):
    drawn = []
    save = plots._save_png
    monkeypatch.setattr(plots, "_save_png", lambda figure, path: (drawn.append(figure.axes[0]), save(figure, path)))
    names = ["cat", "dog", "a rather long class name"]
    plots.plot_confusion([[5, 1, 0], [0, 4, 2], [1, 0, 7]], tmp_path / "named.png", title="t", labels=names)
    plots.plot_confusion([[5, 1], [0, 4]], tmp_path / "numbered.png", title="t")
    named, numbered = ([[label.get_text() for label in ticks()] for ticks in (axes.get_xticklabels,
                                                                              axes.get_yticklabels)]
                       for axes in drawn)
    assert named == [["cat", "dog", "a rather long…"]] * 2   # rows: true class, columns: predicted
    assert numbered == [["0", "1"]] * 2
    with Image.open(tmp_path / "named.png") as image:
        image.verify()


def test_torchscript_export_runs_without_the_python_class(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    example = torch.randn(3, 1, 28, 28)
    path = tmp_path / "student_torchscript.pt"
    exports.export_torchscript(model, example, path)
    loaded = torch.jit.load(str(path))
    other = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(loaded(other), model(other))


def test_a_model_tracing_cannot_handle_is_reported_not_raised(tmp_path):
    class DictOutput(nn.Module):
        def forward(self, x):
            return {"logits": x.flatten(1)}
    result = exports.export_torchscript(DictOutput(), torch.randn(1, 1, 4, 4), tmp_path / "student_torchscript.pt")
    assert result["exported"] is False and "dict" in result["error"].lower()
    assert not (tmp_path / "student_torchscript.pt").exists()


def test_state_dict_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    files.save_state_dict(model.state_dict(), tmp_path / "student.pt")
    loaded = torch.load(tmp_path / "student.pt", weights_only=True)
    assert torch.equal(loaded["weight"], model.weight.detach())


def test_config_round_trip_keeps_key_order(tmp_path):
    document = {"fc_knowledge_distillation": {"max_iter": 3, "alpha": 0.5}, "other_app": {"x": 1}}
    files.write_config(document, tmp_path / "config.yml")
    assert yaml.safe_load((tmp_path / "config.yml").read_text()) == document
    assert (tmp_path / "config.yml").read_text().startswith("fc_knowledge_distillation:")


def onnx_export(model: nn.Module, folder, shape=(1, 28, 28)) -> tuple:
    """``model`` exported as student.onnx in ``folder``; the images it was checked on."""
    images = torch.rand(8, *shape)
    assert exports.export_onnx(model.eval(), images, folder / "student.onnx")["exported"]
    return folder / "student.onnx", images.numpy()


def int8_of(float_path, calibration: np.ndarray, test_images: np.ndarray) -> dict:
    labels = np.zeros(len(test_images), dtype=np.int64)
    return quantization.export_int8(float_path, calibration, [(test_images, labels)],
                                    float_path.with_name("student_int8.onnx"))


def test_int8_file_of_a_50k_parameter_student_is_at_most_035_of_the_float_file(tmp_path):
    model = build_model(REPO / "models" / "mnist_mlp_student.py", {}, "student_model")
    assert parameter_count(model) >= 50_000
    float_path, images = onnx_export(model, tmp_path)
    int8 = int8_of(float_path, np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32), images)
    assert int8["exported"] and int8["calibration_samples"] == 64
    assert int8["size_bytes"] == (tmp_path / "student_int8.onnx").stat().st_size
    assert int8["float_onnx"]["size_bytes"] == float_path.stat().st_size
    assert int8["size_bytes"] <= 0.35 * float_path.stat().st_size


def test_a_model_onnxruntime_cannot_quantize_is_reported_not_raised(tmp_path):
    class NotANumber(nn.Module):   # exports and runs, but its activations are NaN: no int8 range fits them
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(784, 10)

        def forward(self, x):
            return self.head(torch.log(x.flatten(1) - 2))
    float_path, images = onnx_export(NotANumber(), tmp_path)
    int8 = int8_of(float_path, images, images)
    assert int8["exported"] is False
    assert int8["error"].startswith("onnxruntime could not quantize student.onnx: AssertionError: scale issue")
    assert any("NaN" in warning for warning in int8["quantizer_warnings"])
    assert not (tmp_path / "student_int8.onnx").exists()


def test_no_float_onnx_means_a_note_not_an_int8_model(tmp_path):
    int8 = int8_of(tmp_path / "student.onnx", np.zeros((1, 1, 28, 28), np.float32), np.zeros((1, 1, 28, 28)))
    assert int8 == {"exported": False, "error": "student.onnx was not exported, so there is nothing to quantize"}


def test_onnx_file_is_written_even_when_its_check_finds_different_predictions(tmp_path):
    class Branchy(nn.Module):   # tracing keeps the branch the example image took
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            flat = x.flatten(1)
            return self.head(flat) if float(flat.sum()) > 0 else -self.head(flat)
    images = torch.cat([torch.ones(1, 1, 2, 2), -torch.ones(3, 1, 2, 2)])
    check = exports.export_onnx(Branchy(), images, tmp_path / "student.onnx")
    assert check["exported"] and not check["same_predictions"]
    assert (tmp_path / "student.onnx").is_file()   # as export_onnx's docstring says


def test_int8_model_keeps_a_normalization_inside_the_graph_and_takes_the_same_input(tmp_path):
    class Normalize(nn.Module):   # a normalization exported inside the graph, as a run with `normalize` does
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(0.1307))
            self.register_buffer("std", torch.tensor(0.3081))

        def forward(self, x):
            return (x - self.mean) / self.std
    student = build_model(REPO / "sample_data" / "generic" / "student.py", {}, "student_model")
    float_path, images = onnx_export(nn.Sequential(Normalize(), student), tmp_path)
    assert int8_of(float_path, images, images)["exported"]

    def contract(graph):
        return [(value.name, value.type.tensor_type.elem_type, [dim.dim_param or dim.dim_value
                                                                for dim in value.type.tensor_type.shape.dim])
                for value in (*graph.input, *graph.output)]

    def normalization(graph):   # the nodes turning the [0, 1] input into what the student sees, with constants
        constants = {tensor.name: onnx.numpy_helper.to_array(tensor).tolist() for tensor in graph.initializer}
        first = next(node for node in graph.node if "images" in node.input)
        second = next(node for node in graph.node if first.output[0] in node.input)
        return [(node.op_type, [constants.get(name, "input") for name in node.input]) for node in (first, second)]
    float_graph, int8_graph = (onnx.load(path).graph for path in (float_path, tmp_path / "student_int8.onnx"))
    assert contract(int8_graph) == contract(float_graph)
    assert normalization(int8_graph) == normalization(float_graph) == [
        ("Sub", ["input", pytest.approx(0.1307)]), ("Div", ["input", pytest.approx(0.3081)])]
