"""A site's final outputs: report.md agrees with metrics.json, plots are images, ONNX predicts like PyTorch."""
import json
import re

import pytest
import torch
from PIL import Image

from app import plots
from app.report import milliseconds, number, percent, size, times
from app.results import write_outputs
from app.site import Site
from tests.conftest import site_input


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Two sites, baseline on, two rounds; the coordinator's output folder and metrics."""
    tmp = tmp_path_factory.mktemp("results")
    sites = [Site.load(site_input(tmp / f"in_{c}", source=c, baseline=True, max_iter=2, batch_size=32),
                       tmp / f"out_{c}", c, log=lambda message: None) for c in ("c1", "c2")]
    plan = sites[0].make_plan()
    for site in sites:
        site.adopt_plan(plan)
        site.prepare_teacher()
    for round_index in range(2):
        global_models = sites[0].aggregate([site.train_round(round_index) for site in sites], sites=2)
        for site in sites:
            site.apply_global(global_models, round_index)
    metrics = write_outputs(sites[0], federation=[site.summary() for site in sites])
    return tmp / "out_c1", metrics


def table(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``heading``, keyed by their first cell."""
    section = markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}


def test_metrics_json_is_what_write_outputs_returned(outputs):
    folder, metrics = outputs
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(metrics))


def test_report_accuracy_table_equals_metrics(outputs):
    folder, metrics = outputs
    rows = table((folder / "report.md").read_text(), "Accuracy on this site's test set")
    teacher_row = next(value for key, value in rows.items() if key.startswith("teacher"))
    assert teacher_row == [percent(metrics["teacher"]["accuracy"]), f"{metrics['teacher']['loss']:.4f}"]
    assert rows["distilled student"] == [percent(metrics["student"]["accuracy"]), f"{metrics['student']['loss']:.4f}"]
    assert rows["baseline student (no teacher)"][0] == percent(metrics["baseline"]["accuracy"])


def test_report_size_and_speed_table_equals_metrics(outputs):
    folder, metrics = outputs
    rows = table((folder / "report.md").read_text(), "Size and speed")
    teacher, student, ratio = metrics["teacher"], metrics["student"], metrics["compression"]
    assert rows["parameters"] == [number(teacher["parameters"]), number(student["parameters"]),
                                  times(ratio["parameters_ratio"])]
    assert rows["size on disk"] == [size(teacher["size_bytes"]), size(student["size_bytes"]),
                                    times(ratio["size_ratio"])]
    assert rows["latency, batch of 1"] == [milliseconds(teacher["latency_ms_batch1"]),
                                           milliseconds(student["latency_ms_batch1"]), times(ratio["speedup_batch1"])]
    memory = next(value for key, value in rows.items() if key.startswith("peak inference memory"))
    assert memory == [size(teacher["peak_memory_bytes"]), size(student["peak_memory_bytes"]),
                      times(ratio["memory_ratio"])]
    assert teacher["parameters"] / student["parameters"] == pytest.approx(ratio["parameters_ratio"])


def test_report_rounds_and_federation_tables_equal_metrics(outputs):
    folder, metrics = outputs
    report = (folder / "report.md").read_text()
    rounds = table(report, "Rounds")
    for row in metrics["rounds"]:
        assert rounds[str(row["round"])] == [f"{row['train_loss']:.4f}", percent(row["accuracy"]),
                                             f"{row['loss']:.4f}", percent(row["baseline_accuracy"])]
    federation = table(report, "Federation")
    for site in metrics["federation"]["sites"]:
        assert federation[site["site"]] == [number(site["test_samples"]), percent(site["teacher_accuracy"]),
                                            percent(site["student_accuracy"]), percent(site["baseline_accuracy"])]
    assert federation["**all sites (weighted)**"][2] == percent(metrics["federation"]["student_accuracy"])
    headline = report.split("\n\n")[1]
    assert f"**{percent(metrics['student']['accuracy'])}**" in headline
    assert f"distillation gains {100 * metrics['distillation_gain']:+.2f} points" in headline
    noise = metrics["distillation_gain_noise"]
    student, baseline = metrics["student"]["accuracy"], metrics["baseline"]["accuracy"]
    variance = (student * (1 - student) + baseline * (1 - baseline)) / metrics["data"]["test_samples"]
    assert noise == pytest.approx(2 * variance ** 0.5)
    assert f"±{100 * noise:.2f} points" in headline


def test_every_image_the_report_shows_is_a_valid_png(outputs):
    folder, _ = outputs
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (folder / "report.md").read_text())
    assert set(shown) == {"accuracy.png", "loss.png", "confusion_matrix.png", "federation_accuracy.png"}
    for name in shown:
        with Image.open(folder / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] >= 400


def test_onnx_export_predicts_like_pytorch(outputs):
    folder, metrics = outputs
    check = metrics["onnx"]
    assert check["exported"] and check["same_predictions"] and check["checked_samples"] == 64
    assert check["max_abs_difference"] < 1e-4
    assert (folder / "student.onnx").stat().st_size > 10_000


def test_a_run_failing_while_writing_changes_no_earlier_output(tmp_path, monkeypatch):
    site = Site.load(site_input(tmp_path / "in", max_iter=1, batch_size=32), tmp_path / "out", "c1",
                     log=lambda message: None)
    site.adopt_plan(site.make_plan())
    site.prepare_teacher()
    site.apply_global(site.aggregate([site.train_round(0)], sites=1), 0)
    write_outputs(site, federation=[site.summary()])
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
