"""Where a site's run time goes, in seconds, written to metrics.json as ``timings``.

    {"start": <epoch seconds when the site's first state began>,
     "initial": s, "teacher": s,
     "rounds": [{"round": 1, "training": s, "evaluation": s, "exchange": s}, ...],
     "write_results": s}

Work the site did before the controller named it (``early_start``) is not counted: ``teacher`` is
what the teacher still had to do then. A round runs from the end of the previous one (or of the
teacher phase) to its own end; ``exchange`` is what is neither local training nor evaluation:
sending the update, waiting for the other sites and the coordinator, receiving and loading the
global model, the checkpoint, the engine's state transition. ``write_results`` runs until
metrics.json is written (the coordinator's includes waiting for the other sites to finish theirs).
``bench/run_breakdown.py`` reads these to show where a federation's wall time goes.
"""
from __future__ import annotations

import time


class Timings:
    def __init__(self, start: float | None = None) -> None:
        self.start = time.time() if start is None else start
        self.phases: dict[str, float] = {}
        self.rounds: list[dict] = []
        self._mark = time.perf_counter() - (time.time() - self.start)
        self._round = {"training": 0.0, "evaluation": 0.0}

    def phase_done(self, name: str) -> None:
        """The phase ``name`` (initial, teacher) ends now; it began where the last one ended."""
        self.phases[name] = self.phases.get(name, 0.0) + self._lap()

    def add(self, part: str, seconds: float) -> None:
        """``seconds`` of this round went to ``part`` (training or evaluation)."""
        self._round[part] += seconds

    def round_done(self, number: int) -> None:
        total = self._lap()
        parts = self._round
        self.rounds.append({"round": number, **parts, "exchange": max(0.0, total - sum(parts.values()))})
        self._round = {"training": 0.0, "evaluation": 0.0}

    def as_dict(self) -> dict:
        """Everything so far; the time since the last round (or phase) is ``write_results``."""
        return {"start": self.start, **self.phases, "rounds": self.rounds, "write_results": self._since()}

    def _since(self) -> float:
        return time.perf_counter() - self._mark

    def _lap(self) -> float:
        seconds = self._since()
        self._mark = time.perf_counter()
        return seconds
