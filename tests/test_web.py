"""The live page on /web, in a real browser, during and after one real federation of local processes.

One module-scoped run serves every assertion: headless Chromium renders the coordinator's page
mid-run and again after it (kept up by the test-bed's hold), status.json is compared with
metrics.json, requests are timed while both sites train, a connection that never finishes its
request is held open against each site for the rest of the run, path-traversal URLs are tried,
and the TensorBoard files are read back with TensorBoard's own reader.
"""
from __future__ import annotations

import http.client
import io
import json
import re
import socket
import time
import urllib.parse
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from app.report import percent
from scripts.browser import CHROMIUM, Page, get, is_blank, render, screenshot
from testbed.controller import FederationResult, run_federation
from tests.conftest import REPO, cut_site, generic_dir, in_background

pytestmark = pytest.mark.slow

ROUNDS = 3
PAGE_BUDGET = 0.2   # seconds a page request may take while the sites train
TIMED_REQUESTS = 15
SECRET = "kd-web-secret-4711"   # in files next to the outputs: never served
TRAVERSALS = ["../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "files/../../../../etc/passwd", "files/..%2f..%2fmetrics.json", "files/%2e%2e%2fmetrics.json",
              "files/%2e%2e/%2e%2e/secret.txt", "files//etc/passwd", "files/%2Fetc%2Fpasswd",
              "files/metrics.json", "files/student.pt", "files/log.txt", "files/config.yml", "files/secret.txt",
              "files/report.md", "files/accuracy.png/..", "metrics.json", "report.md", "secret.txt",
              "files/%252e%252e%252fmetrics.json", "..", "%2e%2e", "files/..", "/etc/passwd", "//etc/passwd",
              "files/\\..\\..\\metrics.json"]


class Progress(io.StringIO):
    """The controller's progress lines, read while the run goes on in another thread."""

    def wait_for(self, pattern: str, run: Future, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.getvalue()):
            assert not run.done(), f"the run ended before /{pattern}/ showed:\n{self.getvalue()}\n{run.result()}"
            assert time.monotonic() < deadline, f"/{pattern}/ not shown within {timeout} s:\n{self.getvalue()}"
            time.sleep(0.1)

    def pages(self) -> dict[str, str]:
        return dict(re.findall(r"^\[(\w+)\s*\] live page: (\S+)$", self.getvalue(), re.M))


@dataclass
class Run:
    result: FederationResult
    progress: str
    during: Page
    during_status: dict
    latencies: list[float]
    after: dict = field(default_factory=dict)


def raw_get(page: str, path: str) -> tuple[int, bytes]:
    """GET page + path sent exactly as written (no client-side normalisation of dots or escapes)."""
    url = urllib.parse.urlsplit(page)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        connection.putrequest("GET", url.path + path, skip_accept_encoding=True)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def stalled_request(page: str) -> socket.socket:
    """A connection to the page's server whose request never ends (a slow client, a browser's pre-connect)."""
    url = urllib.parse.urlsplit(page)
    connection = socket.create_connection((url.hostname, url.port), timeout=5)
    connection.sendall(f"GET {url.path}status.json HTTP/1.1\r\nHost: {url.hostname}\r\n".encode())
    return connection


def look_after(pages: dict[str, str], folder: Path) -> dict:
    """Everything checked while the finished run's clients still serve their pages."""
    coordinator = pages["site1"]
    seen = {"status": {site: json.loads(get(page + "status.json")[1]) for site, page in pages.items()},
            "page": render(coordinator),
            "without_slash": render(coordinator.rstrip("/")),
            "screenshot": screenshot(coordinator, folder / "site1.png"),
            "traversals": {path: raw_get(coordinator, path) for path in TRAVERSALS},
            "image": get(coordinator + "files/accuracy.png")}
    with stalled_request(coordinator):
        seen["api_beside_stalled"] = get(coordinator.replace("/web/", "/api/status"), timeout=5)
    return seen


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("web")
    # Three local epochs a round keep rounds 2 and 3 long enough for the browser to look mid-run.
    generic = generic_dir(tmp / "generic", max_iter=ROUNDS, batch_size=32, local_epochs=3)
    clients = [cut_site("c1", tmp / "site1", 600, 200), cut_site("c2", tmp / "site2", 600, 200)]
    for client in clients:
        (client / "secret.txt").write_text(SECRET)
    progress, after = Progress(), {}

    def hold(pages: dict[str, str]) -> None:
        try:
            after.update(look_after(pages, tmp))
        except Exception as error:   # noqa: BLE001 — reported by the tests, after the clients are stopped
            after["failure"] = error

    federation = in_background(run_federation, clients, generic, tmp / "out", REPO / "main.py",
                               out=progress, hold=hold)
    progress.wait_for(rf"\[site1\]\s+\d+%\s+round 2/{ROUNDS} distilling", federation)
    pages = progress.pages()
    stalled = [stalled_request(page) for page in pages.values()]   # open until the run has ended
    try:
        during_status = json.loads(get(pages["site1"] + "status.json")[1])
        during = render(pages["site1"])
        latencies = []
        for _ in range(TIMED_REQUESTS):
            for path in ("", "status.json"):
                status, _, seconds = get(pages["site1"] + path)
                assert status == 200
                latencies.append(seconds)
        result = federation.result(timeout=300)
    finally:
        for connection in stalled:
            connection.close()
    assert result.ok, f"{result.message}\n{progress.getvalue()}"
    assert "failure" not in after, after.get("failure")
    return Run(result, progress.getvalue(), during, during_status, latencies, after)


def metrics(run: Run, site: str) -> dict:
    return json.loads((run.result.outputs[site] / "metrics.json").read_text())


def test_simulate_prints_each_sites_page_url_when_it_starts(run):
    lines = run.progress.splitlines()
    for site in ("site1", "site2"):
        pattern = rf"\[{site}\s*\] live page: http://127\.0\.0\.1:\d+/web/$"
        announced = next(i for i, line in enumerate(lines) if re.match(pattern, line))
        first_status = next(i for i, line in enumerate(lines) if line.startswith(f"[{site}]") and "%" in line)
        assert announced < first_status
    # The engine's placeholder between two states (the new state's name) is told apart through status.json.
    placeholders = re.findall(r"^\[site\d\s*\]\s+(?:\d+%|-)\s+(?:initial|teacher|distill|write_results)$",
                              run.progress, re.M)
    assert not placeholders, run.progress


def test_the_page_mid_run_shows_the_round_and_the_accuracy_so_far(run):
    page, final = run.during, metrics(run, "site1")
    phase = page.text("phase")
    assert re.fullmatch(rf"round [23]/{ROUNDS}", phase), phase
    done = int(re.search(r"rounds done: (\d+)", page.text("round")).group(1))
    assert 1 <= done < ROUNDS
    assert page.text("student-accuracy") == percent(final["rounds"][done - 1]["accuracy"])
    assert page.text("teacher-accuracy") == percent(final["teacher"]["accuracy"])
    assert "<polyline" in page.element("accuracy-chart") and 'class="reference"' in page.element("accuracy-chart")
    assert re.search(r"about .+ left", page.text("eta"))
    assert 0 < run.during_status["progress"] < 1 and run.during_status["eta_seconds"] > 0


def test_page_requests_answer_within_200_ms_while_both_sites_train(run):
    assert len(run.latencies) == 2 * TIMED_REQUESTS
    print(f"page requests while training: slowest {1000 * max(run.latencies):.1f} ms, "
          f"median {1000 * sorted(run.latencies)[len(run.latencies) // 2]:.1f} ms")
    assert max(run.latencies) < PAGE_BUDGET, sorted(run.latencies)


def test_a_request_that_never_ends_blocks_neither_the_controller_nor_the_page(run):
    # Each site had such a connection open from round 2 to the end, and the run finished anyway.
    status, body, _ = run.after["api_beside_stalled"]
    assert status == 200 and json.loads(body)["finished"] is True


def test_the_page_after_the_run_shows_the_final_figures_the_federation_and_the_report(run):
    page, final = run.after["page"], metrics(run, "site1")
    federation = final["federation"]
    assert page.text("phase") == "done"
    assert page.text("student-accuracy") == percent(final["student"]["accuracy"])
    assert page.text("teacher-accuracy") == percent(final["teacher"]["accuracy"])
    assert page.text("federation-accuracy") == percent(federation["rounds"][-1]["accuracy"])
    for row in final["rounds"]:
        assert f"<td>{row['round']}</td>" in page.element("rounds-table")
        assert percent(row["accuracy"]) in page.element("rounds-table")
    for site in federation["sites"]:
        assert all(percent(row["accuracy"]) in page.element("federation-table") for row in site["rounds"])
    chart = page.element("federation-chart")
    assert chart.count("<polyline") == 3   # two sites and the weighted line
    report = page.element("report")
    assert "Knowledge distillation report: site site1" in report and 'src="files/accuracy.png"' in report
    assert page.dom.count("<script") == 2 and "http" not in re.sub(r"<[^>]+>", "", page.element("report"))


def test_the_page_works_at_web_without_the_trailing_slash(run):
    page = run.after["without_slash"]
    assert page.text("phase") == "done"
    assert page.text("student-accuracy") == percent(metrics(run, "site1")["student"]["accuracy"])
    assert 'src="files/accuracy.png"' in page.element("report")


def test_the_screenshot_is_a_png_of_the_page(run):
    image = run.after["screenshot"]
    assert image.format == "PNG" and image.size == (1100, 1800)
    assert not is_blank(image)


def test_status_json_matches_metrics_json_at_the_end(run):
    for site in ("site1", "site2"):
        status, final = run.after["status"][site], metrics(run, site)
        assert status["phase"] == "done" and status["progress"] == 1.0 and status["report"] is True
        assert status["metrics"] == final
        assert status["rounds"] == final["rounds"]
        assert status["teacher"]["accuracy"] == final["teacher"]["accuracy"]
        assert status["site"] == site and status["coordinator"] == (site == "site1")
        assert status["federation"] == final.get("federation")


def test_web_serves_nothing_outside_the_sites_status_and_report(run):
    for path, (status, body) in run.after["traversals"].items():
        assert status in (400, 404), f"{path}: HTTP {status}"
        text = body.decode(errors="replace")
        assert "root:" not in text and SECRET not in text and '"rounds"' not in text, path
    status, image, _ = run.after["image"]
    assert status == 200 and image == (run.result.outputs["site1"] / "accuracy.png").read_bytes()


def test_tensorboard_files_hold_the_scalars_of_metrics_json(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for site in ("site1", "site2"):
        final = metrics(run, site)
        events = EventAccumulator(str(run.result.outputs[site] / "tensorboard"))
        events.Reload()

        def series(tag: str) -> list[tuple[int, float]]:
            return [(event.step, event.value) for event in events.Scalars(tag)]

        def expected(rows: list[dict], key: str) -> list[tuple[int, float]]:
            return [(row["round"], float(np.float32(row[key]))) for row in rows]

        rounds = final["rounds"]
        assert series("student/test_accuracy") == expected(rounds, "accuracy")
        assert series("student/test_loss") == expected(rounds, "loss")
        assert series("student/train_loss") == expected(rounds, "train_loss")
        teacher = [{"round": row["round"], **final["teacher"]} for row in rounds]
        assert series("teacher/test_accuracy") == expected(teacher, "accuracy")
        if site == "site1":
            assert series("federation/student_accuracy") == expected(final["federation"]["rounds"], "accuracy")
        else:
            assert "federation/student_accuracy" not in events.Tags()["scalars"]
        assert "baseline/test_accuracy" not in events.Tags()["scalars"]   # no baseline in this run
        hparams = events.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
        assert b"temperature" in hparams["_hparams_/session_start_info"]
        assert not (run.result.outputs[site] / "unfinished").exists()


@pytest.mark.docker
def test_the_page_of_a_container_through_nginx_during_and_after_the_run(tmp_path):
    """The same page in the app's image, reached the way the platform reaches it: nginx's port 9001."""
    from testbed.cli import CONTAINER_START_TIMEOUT
    from testbed.controller import Timeouts
    from testbed.docker import DockerLauncher
    from tests.test_docker import IMAGE, why_no_docker

    reason = why_no_docker() or (None if CHROMIUM else "chromium not installed (apt-get install chromium)")
    if reason:
        pytest.skip(reason)
    generic = generic_dir(tmp_path / "generic", max_iter=ROUNDS, batch_size=32, local_epochs=3)
    clients = [cut_site("c1", tmp_path / "site1", 600, 200), cut_site("c2", tmp_path / "site2", 600, 200)]
    progress, after = Progress(), {}

    def hold(pages: dict[str, str]) -> None:
        try:
            coordinator = pages["site1"]
            after.update(page=render(coordinator), status=json.loads(get(coordinator + "status.json")[1]),
                         screenshot=screenshot(coordinator, tmp_path / "site1.png"),
                         traversals={path: raw_get(coordinator, path) for path in TRAVERSALS[:12]})
        except Exception as error:   # noqa: BLE001 — reported below, after the containers are gone
            after["failure"] = error

    federation = in_background(run_federation, clients, generic, tmp_path / "out", launcher=DockerLauncher(IMAGE),
                               timeouts=Timeouts(start=CONTAINER_START_TIMEOUT, run=400), out=progress, hold=hold)
    progress.wait_for(rf"\[site1\]\s+\d+%\s+round 2/{ROUNDS} distilling", federation)
    pages = progress.pages()
    assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) for url in pages.values()), pages   # nginx, port 9001
    during = render(pages["site1"])
    result = federation.result(timeout=400)
    assert result.ok, f"{result.message}\n{progress.getvalue()}"
    assert "failure" not in after, after.get("failure")

    final = json.loads((result.outputs["site1"] / "metrics.json").read_text())
    assert re.fullmatch(rf"round [23]/{ROUNDS}", during.text("phase")), during.text("phase")
    assert during.text("teacher-accuracy") == percent(final["teacher"]["accuracy"])
    assert "<svg" in during.element("accuracy-chart")
    page = after["page"]
    assert page.text("phase") == "done"
    assert page.text("student-accuracy") == percent(final["student"]["accuracy"])
    assert page.text("federation-accuracy") == percent(final["federation"]["rounds"][-1]["accuracy"])
    assert "<polyline" in page.element("accuracy-chart")
    assert 'src="files/accuracy.png"' in page.element("report")
    assert after["status"]["metrics"] == final
    assert not is_blank(after["screenshot"])
    for path, (status, body) in after["traversals"].items():
        assert status in (400, 404), f"{path}: HTTP {status}"
        assert b"root:" not in body and b'"rounds"' not in body, path
    assert (result.outputs["site1"] / "tensorboard").is_dir()
