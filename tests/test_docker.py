"""The app's Docker image, run for real: a one-client federation driven through nginx as
the FeatureCloud controller drives it, and a broken config reported as an error.

Needs a Docker engine and the image (``scripts/docker-ci.sh`` builds it); env ``KD_TEST_IMAGE``
names another tag. Each container keeps the engine's default waits, so the file takes about
a minute.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from app.model_files import build_model
from tests.conftest import SAMPLE, site_input

pytestmark = pytest.mark.docker

IMAGE = os.environ.get("KD_TEST_IMAGE", "fc-knowledge-distillation:ci")
ONE_CLIENT = {"id": "1", "coordinator": True, "clients": ["1"], "coordinatorID": "1"}
STATUS_FIELDS = {"available", "finished", "message", "progress", "state", "destination", "smpc", "dp", "memo"}
START_TIMEOUT = 90      # seconds until nginx and the app answer (importing torch dominates)
RUN_TIMEOUT = 180       # one round on the sample site plus the engine's terminal waits (~20 s)
POLL_INTERVAL = 0.5


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def why_no_docker() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if shutil.which("docker") is None:
        return "docker CLI not found"
    try:
        info = docker("info", timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        return f"no Docker engine reachable (`docker info`: {info.stderr.strip()[:200]})"
    if docker("image", "inspect", IMAGE).returncode != 0:
        return f"image {IMAGE} not found; build it with scripts/docker-ci.sh or set KD_TEST_IMAGE"
    return None


@pytest.fixture(scope="module", autouse=True)
def docker_ready() -> None:
    reason = why_no_docker()
    if reason:
        pytest.skip(reason)


class Container:
    """A running app container, reached through its published nginx ports on 127.0.0.1."""

    def __init__(self, container_id: str) -> None:
        self.id = container_id
        self.api = f"http://127.0.0.1:{self.host_port(9000)}"
        self.web = f"http://127.0.0.1:{self.host_port(9001)}"

    def host_port(self, port: int) -> int:
        mapping = docker("port", self.id, f"{port}/tcp").stdout.split()
        assert mapping, f"port {port} of container {self.id} is not published"
        return int(mapping[0].rsplit(":", 1)[1])

    def logs(self) -> str:
        result = docker("logs", self.id)
        return result.stdout + result.stderr

    def request(self, path: str, body: bytes | None = None, json_body: dict | None = None,
                base: str | None = None) -> bytes:
        headers = {}
        if json_body is not None:
            body, headers = json.dumps(json_body).encode(), {"Content-Type": "application/json"}
        request = urllib.request.Request((base or self.api) + path, data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def status(self) -> dict:
        return json.loads(self.request("/status"))

    def wait_until_serving(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return self.status()
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                # nginx answers 502 until the app's Bottle server is up
                if time.monotonic() > deadline:
                    pytest.fail(f"container not serving /status after {START_TIMEOUT}s; logs:\n{self.logs()[-3000:]}")
                time.sleep(POLL_INTERVAL)


@contextmanager
def app_container(input_dir: Path, output_dir: Path) -> Iterator[Container]:
    """`docker run` the image with the site's folders mounted; always removed afterwards."""
    output_dir.mkdir(parents=True, exist_ok=True)
    started = docker("run", "-d", "--label", "fc-knowledge-distillation.test=1",
                     "-p", "127.0.0.1::9000", "-p", "127.0.0.1::9001",
                     "-v", f"{input_dir}:/mnt/input", "-v", f"{output_dir}:/mnt/output", IMAGE)
    assert started.returncode == 0, f"docker run failed: {started.stderr}"
    container_id = started.stdout.strip()
    try:
        yield Container(container_id)
    finally:
        docker("rm", "-f", container_id)


def drive_to_end(container: Container) -> tuple[dict, list[str]]:
    """Poll like the controller: one /status, then one /data when an item is available.
    A lone client has nobody to send to, so its items are only popped. Returns the final
    status and the memos of the items popped."""
    memos = []
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        status = container.status()
        if status["finished"] or status["state"] == "error":
            return status, memos
        if status["available"]:
            assert container.request("/data"), f"empty /data item for memo {status['memo']}"
            memos.append(status["memo"])
        time.sleep(POLL_INTERVAL)
    pytest.fail(f"run not finished after {RUN_TIMEOUT}s (items popped: {memos}); logs:\n{container.logs()[-3000:]}")


def container_exists(container_id: str) -> bool:
    return bool(docker("ps", "-aq", "--filter", f"id={container_id}").stdout.strip())


def test_one_client_federation_runs_to_finished_through_nginx(tmp_path):
    input_dir = site_input(tmp_path / "input", "c1", n_train=5000, n_test=1000, max_iter=1)
    output_dir = tmp_path / "output"
    with app_container(input_dir, output_dir) as container:
        before = container.wait_until_serving()
        assert set(before) == STATUS_FIELDS and before["state"] is None and not before["finished"]

        container.request("/setup", json_body=ONE_CLIENT)
        final, memos = drive_to_end(container)
        assert final["finished"] and final["state"] != "error", f"{final}\n{container.logs()[-3000:]}"
        assert memos, "the coordinator's broadcasts never came out through GET /data"

        # nginx: port 9001 reaches the live page and its status, and large bodies pass (client_max_body_size 0)
        assert container.request("/", base=container.web).decode().startswith("<!DOCTYPE html>")
        page_status = json.loads(container.request("/status.json", base=container.web))
        assert page_status["phase"] == "done" and page_status["state"] == "terminal"
        assert container.request("/data?client=2&memo=bulk", body=os.urandom(8 * 2**20)) == b""
        container_id = container.id
    assert not container_exists(container_id)
    assert not (input_dir / "__pycache__").exists(), "importing the user's model files wrote bytecode into /mnt/input"

    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["data"]["train_samples"] == 5000 and metrics["data"]["test_samples"] == 1000
    assert [record["round"] for record in metrics["rounds"]] == [1]
    assert metrics["student"]["accuracy"] >= 0.9
    student = build_model(SAMPLE / "generic" / "student.py", {}, "student_model")
    state = torch.load(output_dir / "student.pt", weights_only=True)
    assert state.keys() == student.state_dict().keys()


def test_broken_config_reports_error_status_and_kd_error_line(tmp_path):
    input_dir = site_input(tmp_path / "input", "c1", n_train=200, n_test=100, alpha=2)
    with app_container(input_dir, tmp_path / "output") as container:
        container.wait_until_serving()
        container.request("/setup", json_body=ONE_CLIENT)
        final, _ = drive_to_end(container)
        logs = container.logs()
        deadline = time.monotonic() + 15
        # supervisord forwards the app's output to docker's log on its own schedule: on a busy machine the
        # line can arrive after the status says error
        while "KD-ERROR" not in logs and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            logs = container.logs()
    assert final["state"] == "error" and final["finished"], final
    assert final["message"] == "ConfigError"
    error_lines = [line for line in logs.splitlines() if line.startswith("KD-ERROR")]
    assert len(error_lines) == 1, logs[-3000:]
    assert "config.yml: alpha: 2" in json.loads(error_lines[0].removeprefix("KD-ERROR "))
