"""The real app end to end: separate client processes on the real FeatureCloud engine,
driven over HTTP by the local test-bed, on small real MNIST sites; and several sites in
one process, as FeatureCloud's own in-process mock controller runs them."""
import functools
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import FeatureCloud.app.engine.app as engine
import pytest
import torch
import yaml

import main
from app import results
from states import Folders, register_states
from testbed.client_api import Status
from testbed.controller import Timeouts, client_env, run_federation
from testbed.launcher import LocalProcessLauncher
from testbed.routing import Router
from testbed.sites import prepare_sites
from tests.conftest import REPO, SECTION, make_federation
from web.status import StatusBoard

pytestmark = pytest.mark.slow
QUICK = {"max_iter": 2, "batch_size": 32}


def federate(tmp_path, make, sites=2, out="out", **overrides):
    generic, clients = make(sites=sites, **{**QUICK, **overrides})
    log = io.StringIO()
    result = run_federation(clients, generic, tmp_path / out, REPO / "main.py", out=log)
    return result, log.getvalue()


def metrics(result, site):
    return json.loads((result.outputs[site] / "metrics.json").read_text())


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Test-bed runs of small federations with the QUICK settings, each made once per module:
    ``quick_runs(sites, **overrides)`` gives (client folders, generic folder, result, log)."""
    runs = {}

    def run(sites=2, **overrides):
        key = (sites, *sorted(overrides.items()))
        if key not in runs:
            root = tmp_path_factory.mktemp("quick")
            generic, clients = make_federation(root, sites=sites, **{**QUICK, **overrides})
            log = io.StringIO()
            result = run_federation(clients, generic, root / "out", REPO / "main.py", out=log)
            runs[key] = clients, generic, result, log.getvalue()
        return runs[key]
    return run


def assert_same_student_and_a_round_per_entry(outputs, log, sites):
    students = {(folder / "student.pt").read_bytes() for folder in outputs.values()}
    assert len(outputs) == sites and len(students) == 1   # byte-identical everywhere
    written = {site: json.loads((folder / "metrics.json").read_text()) for site, folder in outputs.items()}
    for data in written.values():
        assert [row["round"] for row in data["rounds"]] == [1, 2]
        assert all(math.isfinite(value) for row in data["rounds"] for value in row.values())
        assert data["student"]["accuracy"] > 0.6   # chance is 0.1
        assert data["compression"]["parameters_ratio"] >= 10
    assert "round 2/2 distilling" in log
    coordinator = written[next(iter(outputs))]
    assert coordinator["federation"]["test_samples"] == 200 * sites
    for row in coordinator["federation"]["sites"]:   # each site's `done` carried its int8 accuracy
        int8 = written[row["site"]]["int8"]
        assert int8["exported"] and row["int8_accuracy"] == int8["accuracy"]
        assert (outputs[row["site"]] / "student_int8.onnx").stat().st_size == int8["size_bytes"]


def test_three_sites_end_with_the_same_student_and_a_round_per_entry(quick_runs):
    _, _, result, log = quick_runs(3)
    assert result.ok, result.message
    assert_same_student_and_a_round_per_entry(result.outputs, log, 3)


def test_simulate_run_from_the_data_folder_reads_and_writes_relative_to_it(tmp_path):
    """A user runs main.py from wherever the data is, with paths relative to that folder."""
    make_federation(tmp_path / "photos", sites=2, **QUICK)
    done = subprocess.run([sys.executable, str(REPO / "main.py"), "simulate", "--client-dirs",
                           "photos/site1,photos/site2", "--generic-dir", "photos/generic", "--output-dir", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    outputs = {site: tmp_path / "out" / site for site in ("site1", "site2")}
    assert_same_student_and_a_round_per_entry(outputs, done.stdout, 2)
    assert all((tmp_path / "out" / f"{site}.log").stat().st_size > 0 for site in outputs)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["site1", "site1.log", "site2", "site2.log"]
    assert "Each site's student, metrics, plots and report.md are in out/<site>/." in done.stdout


def test_a_broken_config_at_one_site_ends_the_run_quickly_naming_site_key_and_value(tmp_path, small_federation):
    generic, clients = small_federation(**QUICK)
    (clients[1] / "config.yml").write_text(yaml.safe_dump({SECTION: {**yaml.safe_load(
        (generic / "config.yml").read_text())[SECTION], "alpha": 2}}))
    started = time.monotonic()
    result = run_federation(clients, generic, tmp_path / "out", REPO / "main.py", out=io.StringIO())
    assert not result.ok and time.monotonic() - started < 30
    assert result.failed_site == "site2"
    assert "site site2: config.yml: alpha: 2 — must be a number between 0 and 1" in result.message


def test_the_last_state_returns_only_once_the_controller_took_its_last_message(tmp_path, small_federation):
    """The app sets the engine's TRANSITION_WAIT to 0, which is also the pause of the engine's loop at
    `terminal` while queued data waits to leave: a participant reaching `terminal` with its `done` still
    queued would spin there, logging on every pass, until the controller's next poll. Its last state
    waits for that poll instead (``KDState.wait_until_sent``)."""
    generic, clients = small_federation(**QUICK)
    result = run_federation(clients, generic, tmp_path / "out", REPO / "main.py", query_interval=0.5,
                            out=io.StringIO())
    assert result.ok, result.message
    for site, log in result.logs.items():
        text = log.read_text()
        assert "[CTRL] GET /data" in text and "transition: terminal" in text, site
        assert "waiting for the last" not in text, site


def test_sites_disagreeing_on_rounds_are_told_which_key(tmp_path, small_federation):
    generic, clients = small_federation(**QUICK)
    settings = yaml.safe_load((generic / "config.yml").read_text())[SECTION]
    (clients[1] / "config.yml").write_text(yaml.safe_dump({SECTION: {**settings, "max_iter": 3}}))
    result = run_federation(clients, generic, tmp_path / "out", REPO / "main.py", out=io.StringIO())
    assert not result.ok
    assert "disagrees with the coordinator's on max_iter: max_iter: 3 here, 2 at the coordinator" in result.message


FEDERATED_TEACHER = {"teacher_rounds": 2, "teacher_weights": None, "learning_rate": 0.002}


@pytest.mark.parametrize("source", [FEDERATED_TEACHER,
                                    {"teacher_epochs": 2, "teacher_weights": None, "learning_rate": 0.002}])
def test_a_teacher_trained_by_the_federation_or_at_each_site(quick_runs, source):
    _, _, result, _ = quick_runs(**source)
    assert result.ok, result.message
    teachers = {site: metrics(result, site)["teacher"] for site in result.outputs}
    for teacher in teachers.values():
        assert teacher["accuracy"] > 0.6
        assert ("federated rounds" in teacher["source"]) == ("teacher_rounds" in source)


def test_baseline_is_trained_alongside_and_reported(tmp_path, small_federation):
    result, _ = federate(tmp_path, small_federation, baseline=True)
    assert result.ok, result.message
    coordinator = metrics(result, "site1")
    assert {"accuracy", "baseline_accuracy"} <= set(coordinator["rounds"][-1])
    assert coordinator["distillation_gain"] == pytest.approx(
        coordinator["student"]["accuracy"] - coordinator["baseline"]["accuracy"])
    assert coordinator["federation"]["baseline_accuracy"] is not None
    assert "baseline student (no teacher)" in (result.outputs["site1"] / "report.md").read_text()
    read = {name: {(result.outputs[site] / name).read_bytes() for site in result.outputs}
            for name in ("student.pt", "baseline_student.pt")}
    assert len(read["student.pt"]) == len(read["baseline_student.pt"]) == 1   # one of each, at every site
    assert read["student.pt"] != read["baseline_student.pt"]   # trained apart (without the teacher: test_site)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_student(tmp_path, small_federation, quick_runs):
    whole, _ = federate(tmp_path, small_federation, out="whole", max_iter=3)
    _, _, first_part, _ = quick_runs(2)   # the same sites and settings, stopped after round 2
    assert whole.ok and first_part.ok
    generic = tmp_path / "generic"
    (generic / "resume.pt").write_bytes((first_part.outputs["site1"] / "checkpoint.pt").read_bytes())
    rest, _ = federate(tmp_path, small_federation, out="rest", max_iter=3, init_student="resume.pt")
    assert rest.ok, rest.message
    assert [row["round"] for row in metrics(rest, "site1")["rounds"]] == [3]
    resumed = torch.load(rest.outputs["site1"] / "student.pt", weights_only=True)
    uninterrupted = torch.load(whole.outputs["site1"] / "student.pt", weights_only=True)
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare, to mount a small file system for one command")
def test_a_disk_that_fills_up_during_the_run_is_one_message_naming_the_file_and_the_fix(tmp_path, small_federation):
    """The outputs do not fit on a real 300 KB file system (mounted for the one command): the run ends
    with the app's message instead of an OSError traceback."""
    generic, clients = small_federation(**QUICK)
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [sys.executable, "main.py", "simulate", "--client-dirs", ",".join(map(str, clients)),
               "--generic-dir", str(generic), "--output-dir", str(disk / "out"), "--timeout", "300"]
    script = f"mount -t tmpfs -o size=300k tmpfs {disk} && exec \"$@\""
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", *command], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    first = done.stderr.splitlines()[0]
    expected = (rf"site (site\d): cannot write \S+ to {disk}/out/\1\.failed/unfinished: No space left on device\. "
                r"Free some space on that disk \(or give the site an output folder on another one\)\.")
    assert re.fullmatch(expected, first), done.stderr


def test_the_container_entry_serves_the_featurecloud_api(tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5000)) == 0:
            pytest.skip("port 5000 is taken on this machine")
    process = subprocess.Popen([sys.executable, str(REPO / "main.py")], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:5000/api/status", timeout=2) as answer:
                    status = json.loads(answer.read())
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the API never answered"
                time.sleep(0.3)
        assert status["available"] is False and status["finished"] is False
    finally:
        process.terminate()
        process.wait(10)


class RecordingLauncher(LocalProcessLauncher):
    """The real local launcher, remembering what it started."""

    def __init__(self):
        super().__init__(REPO / "main.py")
        self.started = {}

    def start(self, spec):
        client = super().start(spec)
        self.started[spec.id] = (spec, client)
        return client


def test_the_coordinator_killed_mid_run_ends_the_run_within_seconds_and_the_others_keep_their_checkpoint(
        tmp_path, small_federation):
    """Participants killed mid-run are tested with the test-bed's toy app (tests/test_testbed.py); here the
    coordinator dies while the participant waits for its next global model."""
    generic, clients = small_federation(max_iter=30, batch_size=32)
    launcher = RecordingLauncher()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_federation, clients, generic, tmp_path / "out", launcher=launcher, out=io.StringIO())
        deadline = time.monotonic() + 120
        while "site2" not in launcher.started or not (
                launcher.started["site2"][0].output_dir / "unfinished" / "checkpoint.pt").exists():
            assert time.monotonic() < deadline and not run.done(), "round 1 never finished"
            time.sleep(0.05)
        os.kill(launcher.started["site1"][1].pid, signal.SIGKILL)
        killed = time.monotonic()
        result = run.result(timeout=60)
    # Noticed from the exit itself (about 1 s on an idle machine), not after the 20 s a silent site is given.
    assert time.monotonic() - killed < Timeouts().unresponsive / 2
    assert not result.ok and result.failed_site == "site1"
    assert result.message.startswith("site site1: process killed by SIGKILL")
    for spec, client in launcher.started.values():
        with pytest.raises(ProcessLookupError):
            os.kill(client.pid, 0)   # no client left behind
    saved = torch.load(tmp_path / "out" / "site2.failed" / "unfinished" / "checkpoint.pt", weights_only=True)
    assert saved["round"] >= 1 and "student" in saved   # the rounds done so far are not lost


def engine_status(app: engine.App) -> Status:
    """What GET /status would answer: the engine gives a dict, or a queued item's status as a JSON string."""
    value = app.handle_status()
    value = json.loads(value) if isinstance(value, str) else value
    return Status(**{key: item for key, item in value.items() if key in Status.__dataclass_fields__})


def run_in_one_process(sites, timeout=600.0, when_finished=lambda site_id: None) -> dict[str, engine.App]:
    """Every site an engine ``App`` of this process with its own folders, driven through the engine's
    handle_* calls as FeatureCloud's in-process mock controller (FeatureCloud/app-four, utils.py
    ``Controller``) drives them, brought up to the memo protocol: one status before each data pull,
    memos and destinations routed by the test-bed's Router. ``when_finished(site_id)`` is called as soon as
    a site's status says finished."""
    apps = {site.id: register_states(engine.App(), Folders(site.input_dir, site.output_dir), StatusBoard())
            for site in sites}
    ids = list(apps)
    router = Router(ids, ids[0], dp_seed=0)
    # Daemon threads: a site left waiting when the test fails must not keep pytest alive.
    with mock.patch.object(threading, "Thread", functools.partial(threading.Thread, daemon=True)):
        for site_id, app in apps.items():
            app.register()
            app.handle_setup(site_id, site_id == ids[0], ids, ids[0])
    finished, deadline = set(), time.monotonic() + timeout
    while len(finished) < len(apps):
        for site_id, app in apps.items():
            status = engine_status(app)
            assert not status.failed, f"site {site_id} failed with {status.message}"
            if status.available:
                for post in router.route(site_id, status, app.handle_outgoing()):
                    apps[post.recipient].handle_incoming(post.body, post.delivery.sender, post.delivery.memo)
            elif status.finished and site_id not in finished:
                when_finished(site_id)
                finished.add(site_id)
        assert time.monotonic() < deadline, "the in-process federation did not finish"
        time.sleep(0.02)
    return apps


def test_two_sites_in_one_process_end_with_the_student_of_separate_processes(quick_runs, tmp_path, monkeypatch):
    """Model initialisation (a teacher trained from scratch, the student) and dropout (the teacher's, in the
    federated teacher rounds) draw from torch's global generator, and the sites' folders are per app
    instance: two sites sharing a process must not disturb each other.
    Also: the coordinator finishes only once every other site's outputs are written, even when they take it
    a second longer (the platform may stop a run's containers when its coordinator finishes)."""
    clients, generic, separate, _ = quick_runs(**FEDERATED_TEACHER)
    assert separate.ok, separate.message
    sites = prepare_sites(clients, generic, tmp_path, tmp_path / "work")
    for name, value in main.APP_ENGINE_WAITS.items():   # as each separate process has
        monkeypatch.setattr(engine, name, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(client_env(len(sites), None)["KD_NUM_THREADS"]))   # as each separate process has
    write_events = results.write_events
    monkeypatch.setattr(results, "write_events", lambda metrics, path: (
        time.sleep(1.0 if metrics["site"] != sites[0].id else 0), write_events(metrics, path)))
    written_when_coordinator_finished = {}

    def finished(site_id):
        if site_id == sites[0].id:
            written_when_coordinator_finished.update({site.id: (site.output_dir / "metrics.json").is_file()
                                                      for site in sites[1:]})
    try:
        apps = run_in_one_process(sites, when_finished=finished)
    finally:
        torch.set_num_threads(threads)
    assert written_when_coordinator_finished == {site.id: True for site in sites[1:]}
    # Each app's site is its Folds (one fold, the site itself, without cross-validation).
    teachers = [site.teacher.state_dict() for app in apps.values() for site in app.internal["site"].sites.values()]
    assert len(teachers) == 2
    assert all(torch.equal(value, teachers[1][key]) for key, value in teachers[0].items())   # one federated teacher
    # every exchange's waits were the site's idle time (where its teacher is measured)
    assert all(app.internal["site"].idle.waits > FEDERATED_TEACHER["teacher_rounds"] for app in apps.values())
    for site in sites:
        assert json.loads((site.output_dir / "metrics.json").read_text())["site"] == site.id
        assert (site.output_dir / "student.pt").read_bytes() == \
            (separate.outputs[site.id] / "student.pt").read_bytes(), site.id
