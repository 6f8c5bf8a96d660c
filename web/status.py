"""The snapshot a site's page shows: published by the states, read by the page's handlers.

Every ``publish`` call serializes the whole snapshot to JSON once, in the states' thread;
a handler then returns those bytes as they are. Readers never see a half-updated snapshot
and never wait for the training thread (the lock only guards the publishers' read-modify-write).
The end of a run adds the report as HTML and the images it shows, read into memory: the page
serves these bytes and nothing from the file system.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from app.files import json_safe
from web.markdown import image_names, to_html

PHASES = ("starting", "checking", "teacher", "round", "writing", "done", "error")
REPORT_IMAGE_SUFFIXES = (".png",)


class StatusBoard:
    """What the page shows, as JSON bytes ready to send, and the final report with its images."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = {"phase": "starting", "message": "waiting for the controller",
                                          "progress": 0.0, "eta_seconds": None, "rounds": [],
                                          "federation": None, "teacher": None, "report": False}
        self._started: tuple[float, float] | None = None   # (time, progress) of the first measured step
        self.status_json = _encode(self._snapshot)
        self.report_html: bytes | None = None
        self.images: dict[str, bytes] = {}

    def snapshot(self) -> dict[str, Any]:
        """A copy of the current snapshot (as the page receives it)."""
        return json.loads(self.status_json)

    def publish(self, **fields: Any) -> None:
        """Replace the given top-level fields of the snapshot."""
        with self._lock:
            self._snapshot.update(fields)
            self._snapshot["time"] = time.time()
            self.status_json = _encode(self._snapshot)

    def progress(self, phase: str, message: str, fraction: float, *, measured: bool = True, **fields: Any) -> None:
        """A new phase or step, and the share of the run done. Steps that are ``measured`` (teacher
        rounds and rounds, whose durations are alike) set the pace the time left is estimated from."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        now = time.time()
        eta = None
        if measured:
            if self._started is None:
                self._started = (now, fraction)
            began, first = self._started
            if fraction > first and now > began:
                eta = (1.0 - fraction) * (now - began) / (fraction - first)
        self.publish(phase=phase, message=message, progress=fraction, eta_seconds=eta, **fields)

    def fail(self, message: str) -> None:
        self.publish(phase="error", message=message, eta_seconds=None)

    def finish(self, metrics: dict, output_dir: Path, report_name: str) -> None:
        """The run's end: its metrics, and its report rendered as HTML with the images it names,
        each read from ``output_dir`` when it is a regular file (no link) directly in it."""
        report = (output_dir / report_name).read_text(encoding="utf-8")
        images = {}
        for name in image_names(report):
            path = output_dir / name
            if Path(name).name == name and name.endswith(REPORT_IMAGE_SUFFIXES) and not path.is_symlink() \
                    and path.is_file():
                images[name] = path.read_bytes()
        self.images = images
        self.report_html = to_html(report, lambda name: f"files/{name}" if name in images else None).encode()
        # a cross-validation summary has no single teacher: the page keeps the one published in training
        teacher = {"teacher": metrics["teacher"]} if "teacher" in metrics else {}
        self.publish(phase="done", message="done", progress=1.0, eta_seconds=0.0, metrics=metrics,
                     rounds=metrics["rounds"], federation=metrics.get("federation"), report=True, **teacher)


def _encode(snapshot: dict) -> bytes:
    """NaN and infinities become null, as in metrics.json."""
    return json.dumps(json_safe(snapshot), separators=(",", ":")).encode()
