"""Output files: atomic writes, JSON, CSV, plots, TorchScript, config."""
import json
import struct

import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from app import exports, files, plots


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
