"""Cross-validation folds (logic: {mode: directory, dir: data}): one student per fold, all folds in the
same rounds and the same messages, outputs per fold and a cross-validated summary on top.

The sites hold FeatureCloud Cross-Validation output (data/<k>/train.npy, test.npy, same-sep), written
by the same function as the workflow sample (scripts.make_sample_data --folds).
"""
from __future__ import annotations

import hashlib
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from app import results
from app.errors import ConfigError, ModelError
from app.folds import Folds
from app.profile import ModelSummary, parameter_count
from app.report import cv_summary_table
from scripts.make_sample_data import write_folds
from testbed.controller import run_federation
from tests.conftest import REPO, SAMPLE, SECTION, generic_dir, sample_config

FOLDS = ("0", "1", "2")
PER_SITE = 72   # 3 folds of 48 training and 24 test images
LOGIC = {"mode": "directory", "dir": "data"}
CROSS_VALIDATION = {"local_dataset": {"data": "data.npy", "target_value": "same-sep"}, "n_splits": 3,
                    "split_dir": "data", "result": {"train": "train.npy", "test": "test.npy"}}
FOLD_FILES = ("student.pt", "student_torchscript.pt", "student.onnx", "student_int8.onnx", "baseline_student.pt",
              "checkpoint.pt", "metrics.json", "rounds.csv", "accuracy.png", "loss.png", "confusion_matrix.png",
              "report.md", "config.yml", "log.txt")


def fold_site(folder: Path, source: str, part: int = 0) -> Path:
    """A site folder holding PER_SITE images of sample_data/<source> as 3 Cross-Validation folds."""
    with np.load(SAMPLE / source / "train.npz") as archive:
        chosen = slice(part * PER_SITE, (part + 1) * PER_SITE)
        write_folds(folder / "data", archive["images"][chosen], archive["labels"][chosen], len(FOLDS), seed=part)
    return folder


def fold_generic(folder: Path, **overrides) -> Path:
    """The sample generic folder with a Workflow's config.yml: Cross-Validation's section and ours."""
    generic_dir(folder)
    settings = {**sample_config(), "train_dataset": "train.npy", "test_dataset": "test.npy", "logic": LOGIC,
                "max_iter": 1, "batch_size": 16, **overrides}
    (folder / "config.yml").write_text(yaml.safe_dump({"fc_cross_validation": CROSS_VALIDATION,
                                                      SECTION: settings}, sort_keys=False))
    return folder


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def federations(tmp_path_factory):
    """The same 3-fold, 2-site federation run plainly and under secure aggregation (one round each)."""
    root = tmp_path_factory.mktemp("folds")
    clients = [fold_site(root / f"site{i + 1}", f"c{i + 1}") for i in range(2)]
    runs = {}
    for name, overrides in (("plain", {}), ("smpc", {"use_smpc": True})):
        generic = fold_generic(root / f"generic_{name}", baseline=True, **overrides)
        runs[name] = run_federation(clients, generic, root / name, REPO / "main.py", out=io.StringIO())
        assert runs[name].ok, runs[name].message
    return runs


@pytest.mark.slow
def test_every_fold_has_its_student_and_files_and_the_summary_is_their_mean(federations):
    result = federations["plain"]
    coordinator = result.outputs[result.coordinator]
    for site, output in result.outputs.items():
        assert not (output / "unfinished").exists()
        students = []
        for fold in FOLDS:
            folder = output / "data" / fold
            for name in FOLD_FILES:
                assert (folder / name).stat().st_size > 0, f"{site}: data/{fold}/{name}"
            students.append((folder / "student.pt").read_bytes())
            assert students[-1] == (coordinator / "data" / fold / "student.pt").read_bytes()   # global student
        assert len(set(students)) == len(FOLDS)   # one student per fold, each trained on its own data
        folds = [read_json(output / "data" / fold / "metrics.json") for fold in FOLDS]
        cv = read_json(output / "metrics.json")["cross_validation"]
        assert cv["folds"] == list(FOLDS)
        for role in ("teacher", "student", "baseline"):
            values = [metrics[role]["accuracy"] for metrics in folds]
            assert [row[f"{role}_accuracy"] for row in cv["per_fold"]] == values
            assert cv["mean"][f"{role}_accuracy"] == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert cv["std"][f"{role}_accuracy"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert [row["test_samples"] for row in cv["per_fold"]] == [24] * len(FOLDS)
        top = read_json(output / "metrics.json")   # the live page's curve: each round's mean over the folds
        assert top["rounds"][-1]["accuracy"] == pytest.approx(statistics.fmean(
            metrics["rounds"][-1]["accuracy"] for metrics in folds), abs=1e-12)
        report = (output / "report.md").read_text()
        assert f"{100 * cv['mean']['student_accuracy']:.2f}%" in report
        document = yaml.safe_load((output / "config.yml").read_text())
        assert document["fc_cross_validation"] == CROSS_VALIDATION   # the other app's section, kept
        assert document[SECTION]["logic"] == LOGIC
    federation = read_json(coordinator / "metrics.json")["cross_validation"]["federation"]
    per_fold = [read_json(coordinator / "data" / fold / "metrics.json")["federation"]["student_accuracy"]
                for fold in FOLDS]
    assert federation["mean"]["student_accuracy"] == pytest.approx(statistics.fmean(per_fold), abs=1e-12)
    assert [site["site"] for site in federation["sites"]] == ["site1", "site2"]
    table = cv_summary_table({site: read_json(output / "metrics.json") for site, output in result.outputs.items()})
    assert "all 2 sites" in table and "mean ± standard deviation over 3 folds" in table


@pytest.mark.slow
def test_under_secure_aggregation_one_sum_per_round_carries_every_fold_and_equals_fedavg(federations):
    plain, secure = federations["plain"], federations["smpc"]
    updates = [d for d in secure.traffic[secure.coordinator] if d.memo and d.memo.endswith("_update")]
    assert [(d.memo, d.kind) for d in updates] == [("r1_update", "smpc_sum")]   # never one site's own update
    for fold in FOLDS:   # every fold's global student came out of that one sum
        for model in ("student.pt", "baseline_student.pt"):
            mine = torch.load(secure.outputs["site1"] / "data" / fold / model, weights_only=True)
            reference = torch.load(plain.outputs["site1"] / "data" / fold / model, weights_only=True)
            for name, value in reference.items():   # fixed point with 8 decimals, summed over 2 sites
                torch.testing.assert_close(mine[name].float(), value.float(), rtol=0, atol=2e-6)


def image_digests(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images}


def test_a_folds_teacher_trains_on_that_folds_training_files_only(tmp_path):
    """teacher_rounds and teacher_epochs train one teacher per fold; a fold's test images never reach it."""
    folder = fold_site(tmp_path / "in", "c1")
    fold_generic(folder, teacher_weights=None, teacher_rounds=1, teacher_epochs=1)
    folds = Folds.load(folder, tmp_path / "out", "site1", log=lambda message: None)
    seen = {fold: set() for fold in FOLDS}
    for fold, site in folds.sites.items():
        site.teacher.register_forward_pre_hook(
            lambda module, inputs, fold=fold: seen[fold].update(image_digests(inputs[0])) if module.training else None)
    folds.adopt_plan(folds.make_plan())
    folds.apply_teacher(folds.aggregate([folds.teacher_round()], sites=1))
    folds.prepare_teacher()
    assert len({id(site.teacher) for site in folds.sites.values()}) == len(FOLDS)
    for fold, site in folds.sites.items():
        train, test = image_digests(site.train.float_images()), image_digests(site.test.float_images())
        assert seen[fold] == train   # every training image, in the teacher round and the local epoch
        assert not seen[fold] & test


def test_a_teacher_from_teacher_weights_serves_every_fold(tmp_path):
    folder = fold_site(tmp_path / "in", "c1")
    fold_generic(folder)
    folds = Folds.load(folder, tmp_path / "out", "site1", log=lambda message: None)
    assert len({id(site.teacher) for site in folds.sites.values()}) == 1   # loaded once, frozen, shared
    assert [site.output_dir for site in folds.sites.values()] == [tmp_path / "out" / "data" / f for f in FOLDS]


def test_the_folds_students_and_shared_teacher_are_measured_in_the_sites_waits(tmp_path):
    """prepare_teacher hands every fold's student and the frozen teacher (once) to the site's idle time
    (the states' waits), the students first: their figures are needed first."""
    folder = fold_site(tmp_path / "in", "c1")
    fold_generic(folder)
    folds = Folds.load(folder, tmp_path / "out", "site1", log=lambda message: None)
    folds.adopt_plan(folds.make_plan())
    folds.prepare_teacher()
    teacher = folds.sites[FOLDS[0]].teacher
    [(future, idle)] = results._TEACHER_SUMMARIES[teacher].values()
    students = [results._STUDENT_SUMMARIES[site.student] for site in folds.sites.values()]
    assert {idle for _, idle in students} == {idle} and idle is folds.idle
    assert not any(job.done() for job, _ in [*students, (future, idle)])   # nothing ran: the site has not waited yet
    with folds.idle.waiting():
        measured = future.result(timeout=120)
        assert all(job.done() for job, _ in students)   # before the teacher's
    assert measured == results.teacher_summary(teacher, folds.sites[FOLDS[0]].train.sample_shape)
    assert [results.student_summary(site)["parameters"] for site in folds.sites.values()] == \
        [parameter_count(site.student) for site in folds.sites.values()]


def test_a_shared_teacher_is_measured_once(monkeypatch):
    calls = []
    summary = ModelSummary(1, 2, 3, 4, 5, 6)
    monkeypatch.setattr(results, "summarize", lambda model, shape: calls.append(shape) or summary)
    teacher, other = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    for model in (teacher, teacher, other):
        assert results.teacher_summary(model, (1, 2, 2))["parameters"] == 1
    assert results.teacher_summary(teacher, (1, 3, 3))["size_bytes"] == 2
    assert calls == [(1, 2, 2), (1, 2, 2), (1, 3, 3)]   # once per teacher and image shape


def test_resuming_folds_from_a_checkpoint_is_refused_with_the_reason(tmp_path):
    folder = fold_site(tmp_path / "in", "c1")
    fold_generic(folder, init_student="checkpoint.pt")
    torch.save({"format": "fc-knowledge-distillation checkpoint 1", "round": 1, "student": {}},
               folder / "checkpoint.pt")
    with pytest.raises(ConfigError) as info:
        Folds.load(folder, tmp_path / "out", "site1")
    assert "init_student: 'checkpoint.pt' is a checkpoint, and resuming is not supported" in str(info.value)


@pytest.mark.parametrize("logic, expected", [
    ({"mode": "folds"}, "logic.mode: 'folds' — must be one of: file, directory"),
    ({"mode": "directory", "dir": "splits"}, "logic.dir: 'splits' — no such folder in the input folder"),
    ({"mode": "directory", "dir": "../data"}, "logic.dir: '../data' — must name a file inside the input folder"),
])
def test_a_logic_that_finds_no_folds_says_where_it_looked(tmp_path, logic, expected):
    folder = fold_site(tmp_path / "in", "c1")
    fold_generic(folder, logic=logic)
    with pytest.raises(ConfigError) as info:
        Folds.load(folder, tmp_path / "out", "site1")
    assert expected in str(info.value)


@pytest.mark.parametrize("wire", [{}, {"use_smpc": True}, {"dp": {"epsilon": 1.0, "clipping": 1e6}}],
                         ids=["plain", "smpc", "dp"])
def test_each_fold_gets_its_own_part_of_the_message_back(tmp_path, wire):
    """One site alone: whatever the wire form, every fold's global student is what that fold trained
    (the controller's secure sum of one message is the message; noise is the controller's, not here)."""
    folder = fold_site(tmp_path / "in", "c1")
    fold_generic(folder, **wire)
    folds = Folds.load(folder, tmp_path / "out", "site1", log=lambda message: None)
    folds.adopt_plan(folds.make_plan())
    folds.prepare_teacher()
    payload = folds.train_round()
    trained = {fold: {key: value.clone() for key, value in site.student.state_dict().items()}
               for fold, site in folds.sites.items()}
    folds.apply_global(folds.aggregate(payload if wire.get("use_smpc") else [payload], sites=1))
    for fold, site in folds.sites.items():
        for key, value in site.student.state_dict().items():
            if value.is_floating_point() or "dp" not in wire:   # under DP counters keep their global value
                torch.testing.assert_close(value.float(), trained[fold][key].float(), rtol=0, atol=1e-6)
    assert len({tuple(site.student.state_dict()["head.bias"].tolist()) for site in folds.sites.values()}) == 3


def test_a_mistake_in_one_fold_names_the_fold(tmp_path):
    folder = fold_site(tmp_path / "in", "c1")
    fold_generic(folder)
    path = folder / "data" / "2" / "test.npy"
    images, labels = np.load(path, allow_pickle=True)
    labels[3] = 12
    np.save(path, np.array([images, labels]))
    with pytest.raises(ModelError) as info:
        Folds.load(folder, tmp_path / "out", "site1")
    assert str(info.value).startswith("fold '2': teacher_model 'teacher.py': outputs 10 classes, but the labels "
                                      "go up to 12")
