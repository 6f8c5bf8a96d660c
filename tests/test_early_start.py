"""A site's input read before the controller names it (app/early_start.py), on real files and processes."""
import io
import json
import time

import pytest
import torch
import yaml

from app import early_start
from app.early_start import EarlyStart
from app.errors import DataError
from app.folds import Folds
from testbed.client_api import ClientApi, Unreachable
from testbed.controller import run_federation
from testbed.launcher import LocalProcessLauncher
from tests.conftest import REPO, SECTION, site_input


def started(folder, tmp_path):
    early = EarlyStart(folder, tmp_path / "out")
    early.start()
    return early


def set_config(folder, **changes):
    """Change config.yml in ``folder`` (a new file: the test-bed's input folders link theirs)."""
    path = folder / "config.yml"
    document = yaml.safe_load(path.read_text())
    document[SECTION].update(changes)
    path.unlink()
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_the_site_read_early_is_named_and_timed_from_then_and_its_teacher_outputs_are_those_computed_now(tmp_path):
    folder = site_input(tmp_path / "in", n_train=300, n_test=100)
    early = started(folder, tmp_path)
    time.sleep(0.5)   # the controller names the site later; the run's clock starts then
    lines, statuses = [], []
    named = time.time()
    folds = early.take("c7", log=lines.append, status=statuses.append)
    site = folds.sites[""]
    assert folds.name == site.name == "c7"
    assert site.started >= named and site.timings.start >= named
    assert "300 training and 100 test samples of shape [1, 28, 28], 10 classes, device cpu" in lines
    site.status("decoding")   # where decoding image folders reports to
    assert statuses == ["decoding"]
    site.adopt_plan(folds.make_plan())
    assert site.make_plan()["coordinator"] == "c7"
    evaluation = site.prepare_teacher()
    again, teaching = site.teacher_outputs()
    assert evaluation.accuracy == again.accuracy > 0.9
    assert torch.equal(site.teaching.logits, teaching.logits)
    assert not any("computing them again" in line for line in lines)


def test_a_teacher_changed_after_its_outputs_were_computed_ahead_is_run_again(tmp_path):
    folder = site_input(tmp_path / "in", n_train=300, n_test=100)
    lines = []
    site = started(folder, tmp_path).take("c1", log=lines.append, status=lambda message: None).sites[""]
    with torch.no_grad():
        next(site.teacher.parameters()).mul_(0.5)   # as loading other weights would
    site.prepare_teacher()
    assert any("changed after the teacher's outputs were computed ahead: computing them again" in line
               for line in lines)
    assert torch.equal(site.teaching.logits, site.teacher_outputs()[1].logits)


def test_data_normalized_after_the_teachers_outputs_were_computed_ahead_are_run_again(tmp_path):
    """Outputs computed on unnormalized images must not serve normalized ones (normalize: federated sets
    its statistics only after the plan; such a run never computes ahead, and this guard holds regardless)."""
    folder = site_input(tmp_path / "in", n_train=300, n_test=100)
    lines = []
    site = started(folder, tmp_path).take("c1", log=lines.append, status=lambda message: None).sites[""]
    early_logits = site._early_teacher[1].result()[1].logits
    site.adopt_normalization({"mean": [0.5], "std": [0.25]})
    site.prepare_teacher()
    assert any("computing them again" in line for line in lines)
    assert not torch.equal(site.teaching.logits, early_logits)
    assert torch.equal(site.teaching.logits, site.teacher_outputs()[1].logits)


def test_input_changed_after_reading_began_is_read_again(tmp_path):
    folder = site_input(tmp_path / "in", n_train=300, n_test=100, max_iter=3)
    early = started(folder, tmp_path)
    time.sleep(0.5)   # reading begins with the folder's listing, at once
    set_config(folder, max_iter=2)
    lines = []
    folds = early.take("c1", log=lines.append, status=lambda message: None)
    assert folds.config.max_iter == 2
    assert lines[0] == f"the input folder {folder} changed after the app began reading it: reading it again"


def test_a_mistake_found_early_is_raised_when_the_site_is_taken_as_reading_it_then_would(tmp_path):
    folder = site_input(tmp_path / "in", n_train=300, n_test=100)
    (folder / "train.npz").unlink()
    early = started(folder, tmp_path)
    with pytest.raises(DataError) as late:
        Folds.load(folder, tmp_path / "out", "c1", log=lambda message: None)
    with pytest.raises(DataError) as raised:
        early.take("c1", log=lambda message: None, status=lambda message: None)
    assert str(raised.value) == str(late.value) and "train.npz" in str(raised.value)


def test_a_folder_too_large_to_compare_is_read_only_when_taken(tmp_path, monkeypatch):
    folder = site_input(tmp_path / "in", n_train=300, n_test=100, max_iter=3)
    monkeypatch.setattr(early_start, "MAX_ENTRIES", 4)
    early = started(folder, tmp_path)
    time.sleep(0.5)   # long enough for an early read of 300 images, had there been one
    set_config(folder, max_iter=2)
    lines = []
    assert early.take("c1", log=lines.append, status=lambda message: None).config.max_iter == 2
    assert not any("changed after the app began reading it" in line for line in lines)


class ChangingInputLauncher(LocalProcessLauncher):
    """The real local launcher; once a client answers, and has read its input, its config.yml is changed."""

    def __init__(self, **changes):
        super().__init__(REPO / "main.py")
        self.changes = changes

    def start(self, spec):
        client = super().start(spec)
        deadline = time.monotonic() + 60
        while True:
            try:
                ClientApi(client.api_url).status(timeout=1)
                break
            except Unreachable:
                assert time.monotonic() < deadline, "the client never answered"
                time.sleep(0.05)
        time.sleep(1)   # the early read starts before the client answers and takes a fraction of this
        set_config(spec.input_dir, **self.changes)
        return client


def test_a_client_whose_input_changed_before_the_controller_named_it_runs_on_the_new_input(
        small_federation, tmp_path):
    generic, clients = small_federation(n_train=200, n_test=100, max_iter=2)
    result = run_federation(clients, generic, tmp_path / "out", launcher=ChangingInputLauncher(max_iter=1),
                            out=io.StringIO())
    assert result.ok, result.message
    for site in ("site1", "site2"):
        metrics = json.loads((tmp_path / "out" / site / "metrics.json").read_text())
        assert [row["round"] for row in metrics["rounds"]] == [1]
        assert "changed after the app began reading it: reading it again" in result.logs[site].read_text()
