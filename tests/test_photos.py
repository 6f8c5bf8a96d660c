"""Photos as they come, end to end through the test-bed: class folders of PNG files made from real
MNIST, one class list for the whole federation even when a site lacks a class."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from testbed.controller import run_federation
from tests.conftest import REPO, SAMPLE, folder_federation

pytestmark = pytest.mark.slow

DIGITS = [str(digit) for digit in range(10)]
N_TRAIN, N_TEST = 300, 100


def run(root, sites, prepare=lambda clients: None, **overrides):
    generic, clients = folder_federation(root, sites, max_iter=2, batch_size=32, **overrides)
    prepare(clients)
    result = run_federation(clients, generic, root / "out", REPO / "main.py", out=io.StringIO())
    assert result.ok, result.message
    return result


def metrics(result, site):
    return json.loads((result.outputs[site] / "metrics.json").read_text())


def test_a_site_lacking_a_class_keeps_every_index_and_learns_as_well_as_in_an_iid_run(tmp_path):
    sites = [dict(source="c1", n_train=N_TRAIN, n_test=N_TEST), dict(source="c2", n_train=N_TRAIN, n_test=N_TEST)]
    iid = run(tmp_path / "iid", sites)
    sites[1]["lacking"] = (3,)   # no folder 3 in site2's train/ and test/, but an empty train/3: skipped
    skewed = run(tmp_path / "skewed", sites, prepare=lambda clients: (clients[1] / "train" / "3").mkdir())
    # A folder's position must not decide its label: were site2's 4..9 read as 3..8, its teacher
    # and the averaged student would be wrong for most of its images.
    for name in ("teacher", "student"):
        assert metrics(skewed, "site2")[name]["accuracy"] >= metrics(iid, "site2")[name]["accuracy"] - 0.03, name
    with np.load(SAMPLE / "c2" / "test.npz") as archive:
        fours = int((archive["labels"][:N_TEST] == 4).sum())
    confusion = metrics(skewed, "site2")["student"]["confusion_matrix"]
    assert sum(confusion[3]) == 0 and sum(confusion[4]) == fours
    for site in ("site1", "site2"):
        found = metrics(skewed, site)
        assert found["classes"] == DIGITS and found["config"]["classes"] == DIGITS
        assert json.loads((skewed.outputs[site] / "classes.json").read_text()) == DIGITS
        assert found["preprocessing"]["channels"] == 1 and found["preprocessing"]["channel_order"] == "grayscale"
    report = (skewed.outputs["site2"] / "report.md").read_text()
    assert "| 3 | 3 | — | 0 |" in report and "| 4 | 4 | " in report
    assert "Feed `student.onnx` and `student_torchscript.pt` float32 images of shape [N, 1, 28, 28]" in report
    log = (skewed.outputs["site2"] / "log.txt").read_text()
    assert "classes agreed by the federation: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in log
    empty = "train_dataset 'train': class folder 3 holds no files and is skipped"
    assert f"WARNING: {empty}" in log and empty in report.split("## Warnings")[1]
