"""A site's final outputs: metrics.json holds what the saved models really do, report.md and rounds.csv
show metrics.json's values, plots are images, the ONNX models (float and int8), loaded here with
onnxruntime, predict like PyTorch.

The expectations are computed here, independently of the app's code: accuracies by running the saved
models on the test file, report cells by parsing them back into numbers."""
import csv
import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from app import plots, quantization
from app.data import load_dataset
from app.federation import federate
from app.model_files import build_model
from app.report import render_report, summary_table
from app.results import export_student, site_summary, with_accuracy_change, write_outputs
from app.site import Site
from tests.conftest import SAMPLE, site_input


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Two sites, baseline on, two rounds; the coordinator's output folder and metrics."""
    tmp = tmp_path_factory.mktemp("results")
    sites = [Site.load(site_input(tmp / f"in_{c}", source=c, baseline=True, max_iter=2, batch_size=32),
                       tmp / f"out_{c}", c, log=lambda message: None) for c in ("c1", "c2")]
    federate(sites)
    exported = [export_student(site) for site in sites]   # as every site does before reporting `done`
    metrics = write_outputs(sites[0], federation=[site_summary(site, made) for site, made in zip(sites, exported)],
                            exported=exported[0])
    return tmp / "out_c1", metrics


@pytest.fixture(scope="module")
def models(outputs):
    """The coordinator's student.onnx and student_int8.onnx in onnxruntime sessions of our own, and
    the PyTorch student rebuilt from student.pt and the sample student.py."""
    folder, _ = outputs
    student = build_model(SAMPLE / "generic" / "student.py", {}, "student_model")
    student.load_state_dict(torch.load(folder / "student.pt", weights_only=True))
    sessions = {name: onnxruntime.InferenceSession(folder / file, providers=["CPUExecutionProvider"])
                for name, file in (("float", "student.onnx"), ("int8", "student_int8.onnx"))}
    return student.eval(), sessions


def predict(session, images: torch.Tensor) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def site_test_set(folder):
    """The coordinator's test images and labels, read from its input folder as a user would."""
    data = load_dataset(folder.parent / "in_c1" / "test.npz", "test_dataset")
    return data.float_images(), data.labels


def shows(cell: str, value: float) -> bool:
    """Whether a report cell (``97.50%``, ``9,122``, ``36.53 kB``, ``0.123 ms``, ``98.3×``, ``0.1234``,
    ``+1.50``) is ``value`` rounded to the digits it shows."""
    text, scale = cell.strip(), 1.0
    for suffix, factor in (("%", 0.01), ("×", 1.0), (" ms", 1.0), (" µs", 1e-3), (" GB", 1e9), (" MB", 1e6),
                           (" kB", 1e3), (" B", 1.0)):
        if text.endswith(suffix):
            text, scale = text[:-len(suffix)], factor
            break
    text = text.replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) * scale - value) <= 0.5 * 10 ** -decimals * scale * (1 + 1e-9)


def table(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``heading``, keyed by their first cell."""
    section = markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}


def test_metrics_json_holds_what_the_saved_student_and_teacher_do_on_the_test_set(outputs, models):
    folder, metrics = outputs
    student, _ = models
    images, labels = site_test_set(folder)
    with torch.no_grad():
        predicted = student(images).argmax(1).numpy()
    labels = labels.numpy()
    assert metrics["student"]["accuracy"] == float((predicted == labels).mean()) > 0.5
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    assert metrics["student"]["confusion_matrix"] == confusion.tolist()
    for name, model_file, weights in (("baseline", "student.py", folder / "baseline_student.pt"),
                                      ("teacher", "teacher.py", SAMPLE / "generic" / "teacher.pt")):
        model = build_model(SAMPLE / "generic" / model_file, {}, "student_model")
        model.load_state_dict({key: value.float() if value.is_floating_point() else value
                               for key, value in torch.load(weights, weights_only=True).items()})
        with torch.no_grad():
            assert metrics[name]["accuracy"] == float((model.eval()(images).argmax(1).numpy() == labels).mean())
    assert metrics["student"]["parameters"] == sum(p.numel() for p in student.parameters())
    assert metrics["data"]["test_samples"] == len(labels) == 200


def test_rounds_csv_has_a_row_per_round_with_the_values_of_metrics_json(outputs):
    folder, metrics = outputs
    with open(folder / "rounds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["round"] for row in rows] == ["1", "2"]
    for row, expected in zip(rows, metrics["rounds"]):
        for key in ("train_loss", "accuracy", "loss", "baseline_accuracy", "baseline_train_loss"):
            assert float(row[key]) == expected[key], key
    assert metrics["rounds"][-1]["accuracy"] == metrics["student"]["accuracy"]


def test_report_accuracy_table_shows_metrics(outputs):
    folder, metrics = outputs
    rows = table((folder / "report.md").read_text(), "Accuracy on this site's test set")
    teacher_row = next(value for key, value in rows.items() if key.startswith("teacher"))
    for cells, model in ((teacher_row, "teacher"), (rows["distilled student"], "student"),
                         (rows["baseline student (no teacher)"], "baseline")):
        assert cells[0].endswith("%") and shows(cells[0], metrics[model]["accuracy"]), model
        assert shows(cells[1], metrics[model]["loss"]), model


def test_report_size_and_speed_table_shows_metrics(outputs):
    folder, metrics = outputs
    rows = table((folder / "report.md").read_text(), "Size and speed")
    teacher, student, ratio = metrics["teacher"], metrics["student"], metrics["compression"]
    for label, key, ratio_key in (("parameters", "parameters", "parameters_ratio"),
                                  ("size on disk", "size_bytes", "size_ratio"),
                                  ("latency, batch of 1", "latency_ms_batch1", "speedup_batch1"),
                                  ("latency per image, batch of 256", "latency_ms_per_sample", "speedup_large_batch"),
                                  ("peak inference memory, batch of 256", "peak_memory_bytes", "memory_ratio")):
        cells = rows[label]
        assert shows(cells[0], teacher[key]) and shows(cells[1], student[key]), label
        assert shows(cells[2], ratio[ratio_key]) and shows(cells[2], teacher[key] / student[key]), label
    assert rows["parameters"][1] == f"{student['parameters']:,}"   # whole numbers in full


def test_report_rounds_and_federation_tables_and_headline_show_metrics(outputs):
    folder, metrics = outputs
    report = (folder / "report.md").read_text()
    rounds = table(report, "Rounds")
    assert list(rounds) == ["1", "2"]
    for row in metrics["rounds"]:
        for cell, key in zip(rounds[str(row["round"])], ("train_loss", "accuracy", "loss", "baseline_accuracy")):
            assert shows(cell, row[key]), (row["round"], key)
    federation = table(report, "Federation")
    assert set(federation) == {"c1", "c2", "**all sites (weighted)**"}
    sites = {site["site"]: site for site in metrics["federation"]["sites"]}
    for name, site in sites.items():
        cells = federation[name]
        assert cells[0] == str(site["test_samples"])
        for cell, key in zip(cells[1:4], ("teacher_accuracy", "student_accuracy", "baseline_accuracy")):
            assert shows(cell, site[key]), (name, key)
    weighted = sum(site["student_accuracy"] * site["test_samples"] for site in sites.values()) / 400
    assert metrics["federation"]["student_accuracy"] == pytest.approx(weighted)
    assert shows(federation["**all sites (weighted)**"][2], weighted)

    headline = report.split("\n\n")[1]
    student, baseline = metrics["student"]["accuracy"], metrics["baseline"]["accuracy"]
    assert shows(re.search(r"reaches \*\*([\d.]+%)\*\*", headline).group(1), student)
    assert shows(re.search(r"distillation gains ([+-][\d.]+) points", headline).group(1), 100 * (student - baseline))
    noise = 2 * ((student * (1 - student) + baseline * (1 - baseline)) / 200) ** 0.5
    assert metrics["distillation_gain_noise"] == pytest.approx(noise)
    assert shows(re.search(r"±([\d.]+) points", headline).group(1), 100 * noise)


def test_every_image_the_report_shows_is_a_valid_png(outputs):
    folder, _ = outputs
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (folder / "report.md").read_text())
    assert set(shown) == {"accuracy.png", "loss.png", "confusion_matrix.png", "federation_accuracy.png"}
    for name in shown:
        with Image.open(folder / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 400


def test_onnx_export_predicts_like_pytorch(outputs, models):
    folder, metrics = outputs
    student, sessions = models
    images, _ = site_test_set(folder)
    with torch.no_grad():
        expected = student(images).numpy()
    logits = predict(sessions["float"], images)
    assert np.abs(logits - expected).max() < 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()
    check = metrics["onnx"]   # the app's own check says the same
    assert check["exported"] and check["same_predictions"] and check["checked_samples"] == 64
    assert check["max_abs_difference"] < 1e-4


def test_int8_model_predicts_like_the_float_model_on_the_sample_federations_test_images(models):
    student, sessions = models
    images = torch.cat([load_dataset(SAMPLE / site / "test.npz", "test_dataset").float_images()
                        for site in ("c1", "c2")])
    with torch.no_grad():
        expected = student(images).argmax(1).numpy()
    float_predictions = predict(sessions["float"], images).argmax(1)
    int8_predictions = predict(sessions["int8"], images).argmax(1)
    assert len(images) == 2000
    assert (float_predictions == expected).all()
    assert (int8_predictions == float_predictions).mean() >= 0.98
    assert (int8_predictions == expected).mean() >= 0.98


def test_int8_figures_are_those_of_the_files(outputs, models):
    folder, metrics = outputs
    _, sessions = models
    int8, float_onnx = metrics["int8"], metrics["int8"]["float_onnx"]
    images, labels = site_test_set(folder)
    accuracy = {name: float((predict(session, images).argmax(1) == labels.numpy()).mean())
                for name, session in sessions.items()}
    assert int8["exported"] and int8["test_samples"] == len(labels) == 200
    assert int8["accuracy"] == accuracy["int8"] and float_onnx["accuracy"] == accuracy["float"]
    assert float_onnx["accuracy"] == pytest.approx(metrics["student"]["accuracy"], abs=1 / len(labels))
    assert int8["accuracy_change"] == int8["accuracy"] - float_onnx["accuracy"]
    assert int8["size_bytes"] == (folder / "student_int8.onnx").stat().st_size
    assert float_onnx["size_bytes"] == (folder / "student.onnx").stat().st_size
    assert int8["calibration_samples"] == 256   # a few hundred of the site's 600 training images
    assert int8["large_batch"] == 256 and all(
        model[key] > 0 for model in (int8, float_onnx) for key in ("latency_ms_batch1", "latency_ms_per_sample"))


def test_int8_model_takes_the_float_models_input(outputs, models):
    folder, _ = outputs
    _, sessions = models

    def contract(path):
        graph = onnx.load(path).graph
        return [(value.name, value.type.tensor_type.elem_type,
                 [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim])
                for value in (*graph.input, *graph.output)]
    assert contract(folder / "student_int8.onnx") == contract(folder / "student.onnx") == [
        ("images", onnx.TensorProto.FLOAT, ["batch", 1, 28, 28]), ("logits", onnx.TensorProto.FLOAT, ["batch", 10])]
    images, _ = site_test_set(folder)
    assert 0 <= images.min() and images.max() <= 1   # the [0, 1] images both were checked on
    for batch in (1, 3):
        assert predict(sessions["int8"], images[:batch]).shape == predict(sessions["float"], images[:batch]).shape


def test_report_int8_section_and_federation_column_equal_metrics(outputs):
    folder, metrics = outputs
    report = (folder / "report.md").read_text()
    int8, float_onnx = metrics["int8"], metrics["int8"]["float_onnx"]
    rows = table(report, "int8 student")
    change, noise = int8["accuracy_change"], int8["accuracy_change_noise"]
    cells = rows["test accuracy"]
    assert shows(cells[0], float_onnx["accuracy"]) and shows(cells[1], int8["accuracy"])
    shown_change, shown_noise = re.fullmatch(r"([+-][\d.]+) points \(chance: ±([\d.]+)\)", cells[2]).groups()
    assert shows(shown_change, 100 * change) and shows(shown_noise, 100 * noise)
    cells = rows["size on disk"]
    assert shows(cells[0], float_onnx["size_bytes"]) and shows(cells[1], int8["size_bytes"])
    assert cells[2].endswith(" the size") and shows(cells[2][:-len(" the size")],
                                                    int8["size_bytes"] / float_onnx["size_bytes"])
    for label, key in (("latency, batch of 1", "latency_ms_batch1"),
                       ("latency per image, batch of 256", "latency_ms_per_sample")):
        assert shows(rows[label][0], float_onnx[key]) and shows(rows[label][1], int8[key]), label
    assert noise == pytest.approx(
        2 * ((int8["accuracy"] * (1 - int8["accuracy"]) + float_onnx["accuracy"] * (1 - float_onnx["accuracy"]))
             / 200) ** 0.5)
    # the 9,122-parameter sample student: the fixed part of an ONNX file shows, and the report says so
    assert int8["size_bytes"] / float_onnx["size_bytes"] > 0.35 and "fixed part of an ONNX file" in report
    federation = table(report, "Federation")
    for site in metrics["federation"]["sites"]:
        assert site["int8_accuracy"] is not None
        assert shows(federation[site["site"]][-1], site["int8_accuracy"])
    assert metrics["federation"]["sites"][0]["int8_accuracy"] == int8["accuracy"]
    assert shows(federation["**all sites (weighted)**"][-1], metrics["federation"]["int8_accuracy"])
    closing = summary_table({"c1": metrics}).splitlines()
    assert closing[0].split()[:5] == ["site", "teacher", "student", "baseline", "int8"]
    assert shows(closing[2].split()[4], int8["accuracy"])
    assert shows(closing[-2].split()[6], metrics["federation"]["int8_accuracy"])


@pytest.mark.parametrize("black", [False, True])
def test_a_single_calibration_image_gives_a_model_and_a_clear_note(outputs, tmp_path, black):
    folder, metrics = outputs
    image = load_dataset(folder.parent / "in_c1" / "train.npz", "train_dataset").float_images()[:1].numpy()
    images, labels = site_test_set(folder)
    test = [(batch.numpy(), batch_labels.numpy()) for batch, batch_labels in zip(images.split(64), labels.split(64))]
    int8 = with_accuracy_change(quantization.export_int8(folder / "student.onnx", 0 * image if black else image,
                                                         test, tmp_path / "student_int8.onnx"))
    assert int8["exported"] and int8["calibration_samples"] == 1 and int8["test_samples"] == 200
    assert (tmp_path / "student_int8.onnx").is_file()
    report = render_report({**metrics, "int8": int8})
    assert "Calibrated on only 1 training images" in report
    # whenever int8 costs more than 1 point the report says to use the float model; ranges from a
    # black image fit no real image, so there it always does
    recommended = "more than 1 point: use the float model, `student.onnx`.**" in report
    assert recommended == ("not recommended here" in report) == (int8["accuracy_change"] < -0.01)
    assert recommended or not black


def test_a_run_failing_while_writing_changes_no_earlier_output(tmp_path, monkeypatch):
    site = Site.load(site_input(tmp_path / "in", max_iter=1, batch_size=32), tmp_path / "out", "c1",
                     log=lambda message: None)
    federate([site], write=True)
    earlier = published(tmp_path / "out")
    with torch.no_grad():
        next(site.student.parameters()).add_(1.0)   # the next run's student differs

    def broken_plot(*args, **kwargs):
        raise RuntimeError("plotting failed")
    with monkeypatch.context() as patch:
        patch.setattr(plots, "plot_confusion", broken_plot)
        with pytest.raises(RuntimeError, match="plotting failed"):
            write_outputs(site, federation=[site.summary()])
    assert published(tmp_path / "out") == earlier
    assert {"student.pt", "report.md"} <= set(earlier)
    assert [name for name in earlier if name.startswith("tensorboard/events.out.tfevents.")]

    write_outputs(site, federation=[site.summary()])   # a run that succeeds replaces the earlier folder
    events = [name for name in published(tmp_path / "out") if name.startswith("tensorboard/")]
    assert len(events) == 1 and events[0] not in earlier
    assert not (tmp_path / "out" / "unfinished").exists()


def published(folder) -> dict[str, bytes]:
    """Every file of an output folder but the staging area, by relative path."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and path.relative_to(folder).parts[0] != "unfinished"}
