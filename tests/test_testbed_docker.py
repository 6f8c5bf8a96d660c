"""The test-bed running every site in a container of the app's image (`simulate --image`).

Real containers on small real-MNIST sites, driven through nginx by the same controller
as local processes; every test also checks that no container of its run is left.
Needs a Docker engine and the image (``scripts/docker-ci.sh`` builds it; env ``KD_TEST_IMAGE``
names another tag). The app in a container shortens the engine's waits itself (as on the
platform), and the test-bed passes none in.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import yaml

from testbed.cli import CONTAINER_START_TIMEOUT, main as simulate
from testbed.controller import FederationResult, Timeouts, run_federation
from testbed.docker import LABEL, ContainerClient, DockerLauncher
from testbed.launcher import ClientSpec, LaunchError
from scripts.check_outputs import problems
from tests.conftest import REPO, SAMPLE, SECTION, in_background
from tests.test_docker import IMAGE, docker, why_no_docker

pytestmark = pytest.mark.docker

QUICK = {"max_iter": 2, "batch_size": 32}
LONG = {"max_iter": 30, "batch_size": 32}   # runs long enough to be interrupted mid-round
FAILURE_BUDGET = 30.0   # seconds from a fault until the run has ended and its containers are gone
RUN_TIMEOUT = 300.0     # a whole federation, so a broken test cannot hang the suite
OTHER_OWNER = (4321, 4321)


@pytest.fixture(scope="module")
def image_ready() -> None:
    reason = why_no_docker()
    if reason:
        pytest.skip(reason)


needs_image = pytest.mark.usefixtures("image_ready")


class RecordingLauncher(DockerLauncher):
    """The real Docker launcher, remembering its containers and how Docker was told to run them."""

    def __init__(self, **options):
        super().__init__(IMAGE, **options)
        self.clients: dict[str, ContainerClient] = {}
        self.inspected: dict[str, dict] = {}

    def start(self, spec: ClientSpec) -> ContainerClient:
        client = super().start(spec)
        self.clients[spec.id] = client
        self.inspected[spec.id] = json.loads(docker("inspect", client.name).stdout)[0]
        return client


class Progress(io.StringIO):
    """The controller's progress lines, watched from the test while the run goes on in another thread."""

    def wait_for(self, pattern: str, run: Future, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.getvalue()):
            assert not run.done(), f"the run ended before /{pattern}/ showed:\n{self.getvalue()}\n{run.result()}"
            assert time.monotonic() < deadline, f"/{pattern}/ not shown within {timeout} s:\n{self.getvalue()}"
            time.sleep(0.1)


def containers(label: str) -> list[str]:
    """Names of the containers (running or not) carrying label (`key` or `key=value`)."""
    listed = docker("ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def federate(clients: list[Path], generic: Path, output: Path, launcher: DockerLauncher,
             out: io.StringIO | None = None, **options) -> FederationResult:
    options.setdefault("timeouts", Timeouts(start=CONTAINER_START_TIMEOUT, run=RUN_TIMEOUT))
    return run_federation(clients, generic, output, launcher=launcher, out=out or io.StringIO(), **options)


def own_config(generic: Path, client: Path, **changes) -> None:
    """Give one client its own config.yml (it wins over the generic one)."""
    settings = yaml.safe_load((generic / "config.yml").read_text())[SECTION]
    (client / "config.yml").write_text(yaml.safe_dump({SECTION: {**settings, **changes}}))


@needs_image
@pytest.mark.parametrize("query_interval", [1.0, 2.0], ids=["query every 1 s", "query every 2 s"])
def test_two_containers_end_with_the_same_student_like_local_processes(tmp_path, small_federation, query_interval):
    """At the platform's query intervals (the CLI's default 2 s, the docs' 1 s), with the app's short engine
    waits: every message arrives, once, and every output is written."""
    generic, clients = small_federation(**QUICK)
    launcher = RecordingLauncher(owner=OTHER_OWNER)
    progress = Progress()
    result = federate(clients, generic, tmp_path / "out", launcher, progress, query_interval=query_interval)
    assert result.ok, f"{result.message}\n{progress.getvalue()}"
    assert containers(launcher.label) == []
    received = {site: sorted((d.memo, d.sender, d.kind) for d in deliveries)
                for site, deliveries in result.traffic.items()}
    assert received == {
        "site1": sorted([("survey", "site2", "to_coordinator"), ("r1_update", "site2", "to_coordinator"),
                         ("r2_update", "site2", "to_coordinator"), ("done", "site2", "to_coordinator")]),
        "site2": sorted([("plan", "site1", "broadcast"), ("r1_global", "site1", "broadcast"),
                         ("r2_global", "site1", "broadcast")])}

    # the outputs the local end-to-end check expects, with a plausible student after 2 rounds
    assert problems(tmp_path / "out", min_accuracy=0.6, min_compression=10, min_int8_agreement=0.9) == []
    assert len({(result.outputs[site] / "student.pt").read_bytes() for site in ("site1", "site2")}) == 1
    for site in ("site1", "site2"):
        metrics = json.loads((result.outputs[site] / "metrics.json").read_text())
        assert [row["round"] for row in metrics["rounds"]] == [1, 2]
        assert "[KD] round 2/2" in result.logs[site].read_text()   # the container's log, kept after removal
        # written by root in the container, handed to the controller's user (here another uid)
        assert {path.stat().st_uid for path in result.outputs[site].rglob("*")} == {OTHER_OWNER[0]}
    assert "round 2/2 distilling" in progress.getvalue()

    for site, container in launcher.inspected.items():
        assert container["Name"] == f"/fc-kd-{launcher.run_id}-{site}"
        assert container["Config"]["Labels"][LABEL] == launcher.run_id
        assert container["Config"]["Labels"][f"{LABEL}.site"] == site
        bindings = container["HostConfig"]["PortBindings"]
        assert set(bindings) == {"9000/tcp", "9001/tcp"}
        assert all(b["HostIp"] == "127.0.0.1" for port in bindings.values() for b in port)
        mounts = {mount["Destination"]: Path(mount["Source"]) for mount in container["Mounts"]}
        assert mounts["/mnt/input"].parts[-2:] == (site, "input")
        assert mounts["/mnt/output"].parts[-2:] == (site, "output")
        env = container["Config"]["Env"]
        assert f"KD_NUM_THREADS={max(1, (os.cpu_count() or 1) // 2)}" in env   # a fair share of the cores
        assert not [item for item in env if item.startswith("FC_")], "the test-bed's short waits are local only"
        assert mounts["/mnt/sources/own"] == clients[int(site[-1]) - 1].resolve()   # the user's folder, read-only
        assert mounts["/mnt/sources/generic"] == generic.resolve()
        assert not [m for m in container["Mounts"] if m["Destination"] != "/mnt/output" and m["RW"]]


@needs_image
def test_the_sample_federation_in_containers_reaches_95_percent_at_every_site(tmp_path):
    """What CI checks (scripts/container-federation-check.sh): the committed sample federation."""
    launcher = DockerLauncher(IMAGE)
    result = federate([SAMPLE / "c1", SAMPLE / "c2"], SAMPLE / "generic", tmp_path / "out", launcher)
    assert result.ok, result.message
    assert containers(launcher.label) == []
    assert problems(tmp_path / "out", min_accuracy=0.95, min_compression=10) == []


@needs_image
def test_a_broken_config_in_one_container_ends_the_run_with_its_message(tmp_path, small_federation):
    generic, clients = small_federation(**QUICK)
    own_config(generic, clients[1], alpha=2)
    launcher = DockerLauncher(IMAGE)
    result = federate(clients, generic, tmp_path / "out", launcher)
    assert not result.ok and result.failed_site == "site2"
    assert "site site2: config.yml: alpha: 2 — must be a number between 0 and 1" in result.message
    assert containers(launcher.label) == []
    assert "KD-ERROR" in result.logs["site2"].read_text()   # the log outlives the container
    assert sorted(path.name for path in (tmp_path / "out").iterdir() if path.is_dir()) == \
        ["site1.failed", "site2.failed"]


@needs_image
def test_a_container_killed_mid_run_ends_the_run_quickly_naming_its_site(tmp_path, small_federation):
    generic, clients = small_federation(**LONG)
    launcher = RecordingLauncher()
    progress = Progress()
    run = in_background(federate, clients, generic, tmp_path / "out", launcher, progress)
    progress.wait_for(r"\[site2\].*round 2/30 distilling", run)
    assert docker("kill", launcher.clients["site2"].name).returncode == 0
    killed = time.monotonic()
    result = run.result(timeout=120)
    assert time.monotonic() - killed < FAILURE_BUDGET
    assert not result.ok and result.failed_site == "site2"
    assert result.message.startswith("site site2: container killed (exit code 137) while in state 'distill'")
    assert containers(launcher.label) == []
    saved = torch.load(tmp_path / "out" / "site1.failed" / "unfinished" / "checkpoint.pt", weights_only=True)
    assert saved["round"] >= 1   # the rounds done so far are not lost


@needs_image
def test_a_paused_container_is_found_unresponsive_and_removed(tmp_path, small_federation):
    generic, clients = small_federation(**LONG)
    launcher = RecordingLauncher()
    progress = Progress()
    unresponsive = 5.0
    run = in_background(federate, clients, generic, tmp_path / "out", launcher, progress,
                        timeouts=Timeouts(start=CONTAINER_START_TIMEOUT, run=RUN_TIMEOUT, unresponsive=unresponsive))
    progress.wait_for(r"\[site2\].*round 2/30 distilling", run)
    assert docker("pause", launcher.clients["site2"].name).returncode == 0   # alive, but answers nothing
    paused = time.monotonic()
    result = run.result(timeout=120)
    assert time.monotonic() - paused < unresponsive + FAILURE_BUDGET
    assert not result.ok and result.failed_site == "site2"
    assert result.message.startswith("site site2: unresponsive: no answer for "), result.message
    assert containers(launcher.label) == []


@needs_image
@pytest.mark.parametrize("sig, message", [(signal.SIGTERM, "interrupted (SIGTERM)"),
                                          (signal.SIGINT, "interrupted (Ctrl-C)")], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_simulate_image_removes_every_container(tmp_path, small_federation, sig, message):
    generic, clients = small_federation(**LONG)
    progress = tmp_path / "progress.txt"
    command = [sys.executable, "main.py", "simulate", "--image", IMAGE, "--client-dirs", ",".join(map(str, clients)),
               "--generic-dir", str(generic), "--output-dir", str(tmp_path / "out")]
    with open(progress, "w") as stdout:
        controller = subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while "round 1/30 distilling" not in progress.read_text():
            assert controller.poll() is None and time.monotonic() < deadline, progress.read_text()
            time.sleep(0.1)
        ours = f"{LABEL}.controller-pid={controller.pid}"
        assert len(containers(ours)) == 2
        controller.send_signal(sig)
        _, error = controller.communicate(timeout=FAILURE_BUDGET)
    finally:
        controller.kill()
        controller.wait()
    assert controller.returncode == 1
    assert error.strip() == message
    assert containers(ours) == []


@needs_image
def test_an_exception_in_the_controller_removes_every_container(tmp_path, small_federation):
    class BrokenOutput(io.StringIO):
        def write(self, text: str) -> int:
            if "checking config" in text:
                raise RuntimeError("progress output broke")
            return super().write(text)

    generic, clients = small_federation(**QUICK)
    launcher = DockerLauncher(IMAGE)
    with pytest.raises(RuntimeError, match="progress output broke"):
        federate(clients, generic, tmp_path / "out", launcher, BrokenOutput())
    assert containers(launcher.label) == []


@needs_image
def test_containers_started_side_by_side_are_all_removed_when_one_site_cannot_start(tmp_path, small_federation):
    """prepare() runs every site's `docker run` at once; a site failing before the others are handed to the
    controller must not leave their containers behind."""
    class FirstSiteFails(DockerLauncher):
        def start(self, spec: ClientSpec) -> ContainerClient:
            if spec.id == "site1":
                deadline = time.monotonic() + CONTAINER_START_TIMEOUT
                while len(containers(self.label)) < 2:   # site2's too, before it is asked to start
                    assert time.monotonic() < deadline, "prepare() did not run every site's container"
                    time.sleep(0.1)
                raise LaunchError("site1 fails on purpose")
            return super().start(spec)

    generic, clients = small_federation(**QUICK)
    launcher = FirstSiteFails(IMAGE)
    result = federate(clients, generic, tmp_path / "out", launcher)
    assert not result.ok and result.failed_site == "site1"
    assert result.message == "site site1: site1 fails on purpose"
    assert containers(launcher.label) == []


@needs_image
def test_container_start_up_is_bounded_by_the_start_timeout(tmp_path, small_federation):
    generic, clients = small_federation(sites=1, **QUICK)
    launcher = DockerLauncher(IMAGE)
    started = time.monotonic()
    result = federate(clients, generic, tmp_path / "out", launcher, timeouts=Timeouts(start=2))
    assert time.monotonic() - started < 2 + FAILURE_BUDGET
    assert not result.ok and result.failed_site == "site1"
    assert result.message.startswith("site site1: did not answer GET /status within 2 s of starting")
    assert containers(launcher.label) == []


@pytest.mark.parametrize("case, needs, expected", [
    ("no docker", None, "error: docker not found on PATH: --image runs every client in a container."),
    ("no daemon", "cli", "error: the Docker daemon does not answer (`docker info`: Cannot connect"),
    ("no image", "daemon", "error: image 'fc-kd-test-missing:none' is not in the local Docker engine (the test-bed "
                           "never pulls images). Build it in the app's folder with `docker build -t "
                           "fc-kd-test-missing:none .`"),
], ids=["no-docker", "no-daemon", "no-image"])
def test_simulate_image_without_docker_or_image_exits_2_in_one_line(
        tmp_path, monkeypatch, capsys, case, needs, expected):
    if needs and shutil.which("docker") is None:
        pytest.skip("docker CLI not found")
    if needs == "daemon" and docker("info").returncode != 0:
        pytest.skip("no Docker engine reachable")
    image = IMAGE
    if case == "no docker":
        monkeypatch.setenv("PATH", str(tmp_path))
    elif case == "no daemon":
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    else:
        image = "fc-kd-test-missing:none"
    (tmp_path / "c1").mkdir()
    code = simulate(["--image", image, "--client-dirs", str(tmp_path / "c1"), "--output-dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert len(error.splitlines()) == 1 and error.startswith(expected), error
