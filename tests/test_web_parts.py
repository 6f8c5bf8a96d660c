"""The live page's parts without a federation: the report's HTML, what the board publishes and
serves, and `simulate --keep-pages` (on the test-bed's toy app)."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from scripts.browser import get
from tests.test_testbed import REPO, TOY, make_federation
from web.markdown import image_names, to_html
from web.status import StatusBoard

REPORT = """# Knowledge distillation report: site <b>c1</b>

The student reaches **97.70%** on `c1`'s <script>alert(1)</script> images.

| model | test accuracy |
|---|---:|
| teacher <i>x</i> | 98.30% |

![accuracy per round](accuracy.png)
![loss per round](loss.png)

- `student.pt`: weights
- `metrics.json`: figures
"""


def test_the_report_becomes_html_with_every_text_escaped():
    html = to_html(REPORT, lambda name: f"files/{name}" if name == "accuracy.png" else None)
    assert "<h1>Knowledge distillation report: site &lt;b&gt;c1&lt;/b&gt;</h1>" in html
    assert "<strong>97.70%</strong>" in html and "<code>c1</code>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<th class="right">test accuracy</th>' in html and '<td class="right">98.30%</td>' in html
    assert "teacher &lt;i&gt;x&lt;/i&gt;" in html
    assert '<img src="files/accuracy.png" alt="accuracy per round">' in html
    assert "loss.png" not in html   # an image without a URL is left out
    assert "<ul><li><code>student.pt</code>: weights</li><li><code>metrics.json</code>: figures</li></ul>" in html
    assert image_names(REPORT) == ["accuracy.png", "loss.png"]


def test_the_board_serves_only_regular_report_images_directly_in_the_output(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "accuracy.png").write_bytes(b"\x89PNG accuracy")
    (out / "sub" / "deep.png").write_bytes(b"\x89PNG deep")
    (out / "link.png").symlink_to(secret)
    (out / "notes.txt").write_text("notes")
    names = ["accuracy.png", "link.png", "../secret.png", "sub/deep.png", "/etc/passwd", "notes.txt", "gone.png"]
    (out / "report.md").write_text("# r\n\n" + "\n".join(f"![{name}]({name})" for name in names) + "\n")
    board = StatusBoard()
    board.finish({"rounds": [{"round": 1, "accuracy": 0.5}], "teacher": {"accuracy": 0.9}, "site": "c1"},
                 out, "report.md")
    assert board.images == {"accuracy.png": b"\x89PNG accuracy"}
    assert re.findall(r'src="([^"]+)"', board.report_html.decode()) == ["files/accuracy.png"]
    status = board.snapshot()
    assert status["phase"] == "done" and status["report"] is True
    assert status["rounds"] == [{"round": 1, "accuracy": 0.5}]


def test_the_board_publishes_json_ready_bytes_and_estimates_time_left(monkeypatch):
    board, now = StatusBoard(), [1000.0]
    monkeypatch.setattr("web.status.time.time", lambda: now[0])
    board.progress("teacher", "preparing teacher", 0.1)
    assert board.snapshot()["eta_seconds"] is None   # no pace yet
    now[0] += 30
    board.progress("round", "round 2/4 distilling", 0.4, round=2)
    assert board.snapshot()["eta_seconds"] == pytest.approx(60.0)   # 0.3 of the run in 30 s, 0.6 to go
    board.publish(rounds=[{"round": 1, "loss": math.nan}])
    assert json.loads(board.status_json)["rounds"] == [{"round": 1, "loss": None}]
    board.fail("site c1: config.yml: alpha: 2 — must be a number between 0 and 1")
    assert board.snapshot()["phase"] == "error" and board.snapshot()["eta_seconds"] is None
    with pytest.raises(ValueError):
        board.progress("training", "unknown phase", 0.5)


@pytest.mark.slow
def test_keep_pages_holds_every_client_until_ctrl_c_then_stops_them(tmp_path):
    federation = make_federation(tmp_path, [3, 5], rounds=1)
    command = [sys.executable, "-m", "testbed", "--entry", str(TOY), "--generic-dir", str(federation.generic),
               "--client-dirs", ",".join(map(str, federation.clients)), "--output-dir", str(federation.output),
               "--keep-pages"]
    controller = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in controller.stdout:
            lines.append(line)
            if "stay up until Ctrl-C" in line:
                break
        pages = dict(re.findall(r"^  (c\d): (\S+)$", "".join(next(controller.stdout) for _ in range(2)), re.M))
        assert set(pages) == {"c1", "c2"}, "".join(lines)
        for site, url in pages.items():
            assert f"[{site}] live page: {url}\n" in lines
            status, body, _ = get(url)
            assert status == 200 and body == b"State: terminal"   # the toy serves the engine's page
        pids = [int((federation.pid_dir / f"{site}.pid").read_text()) for site in ("c1", "c2")]
        controller.send_signal(signal.SIGINT)
        rest, error = controller.communicate(timeout=30)
    finally:
        controller.kill()
        controller.wait()
    assert controller.returncode == 0, error
    assert "stopping the clients" in rest and "finished in" in rest
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert (federation.output / "c1" / "round1.json").exists()


def test_plain_updates_carry_the_sites_summary_private_ones_carry_numbers_only():
    from app.transport import Wire
    models = {"student": {"w": np.ones(3, dtype=np.float32)}}
    summary = {"site": "c2", "test_samples": 200, "rounds": [{"round": 1, "accuracy": 0.9}]}
    plain = Wire().encode("c2", models, 600, models, summary=summary)
    assert Wire().summaries([plain]) == [summary]
    for wire in (Wire(smpc=True), Wire(dp=True)):
        update = wire.encode("c2", models, 600, models, summary=summary)
        # numbers only: fixed-point integers for the secure sum, floats under DP
        assert isinstance(update, list) and all(type(value) in (int, float) for value in update)
        assert wire.summaries([update]) == []
