"""What every state of this app shares: where the site's files are, the site
object, progress reporting, and turning user mistakes into one readable log line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from FeatureCloud.app.engine.app import AppState, State

from app.errors import KDError
from app.site import Site

ERROR_MARKER = "KD-ERROR"
MAX_MESSAGE = 40   # the engine rejects longer status messages


@dataclass
class Paths:
    """The site's input and output folders; the container's unless ``main.py serve`` says otherwise."""

    input_dir: Path = Path("/mnt/input")
    output_dir: Path = Path("/mnt/output")


PATHS = Paths()


class KDState(AppState):
    """Base state: ``step()`` does the work; a KDError is logged as one ``KD-ERROR`` line
    (the engine itself reports only the exception's class name to the controller)."""

    def step(self) -> str:
        raise NotImplementedError

    def run(self) -> str:
        try:
            return self.step()
        except KDError as error:
            print(f"{ERROR_MARKER} {json.dumps(f'site {self.id}: {error}')}", flush=True)
            raise

    @property
    def site(self) -> Site:
        return self.load("site")

    def progress(self, message: str, fraction: float) -> None:
        self.update(message=message[:MAX_MESSAGE], progress=min(max(fraction, 0.0), 1.0), state=State.RUNNING)

    @staticmethod
    def site_log(message: str) -> None:
        """The site's own log lines, distinct from the engine's per-state lines."""
        print(f"[KD] {message}", flush=True)
