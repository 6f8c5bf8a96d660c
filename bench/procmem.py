"""Memory of running processes as Linux accounts it: private bytes (USS) and proportional set size (PSS).

PSS splits every shared page among the processes sharing it, so the PSS of a group of
processes adds up to the memory the group holds; private memory is what a process holds
alone (it is freed when that process ends).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Usage:
    private: int   # bytes
    pss: int       # bytes


def usage(pid: int) -> Usage | None:
    """The process's memory now, None when it is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("Pss:", "Private_Clean:", "Private_Dirty:"):
                    fields[parts[0]] = int(parts[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if "Pss:" not in fields:
        return None
    return Usage(fields.get("Private_Clean:", 0) + fields.get("Private_Dirty:", 0), fields["Pss:"])


@dataclass
class Peaks:
    total_pss: int = 0                                        # bytes, the largest sum over the processes at once
    private: dict[int, int] = field(default_factory=dict)    # pid -> its largest private bytes


class Sampler:
    """Samples the processes `pids()` names every `interval` seconds in a thread, keeping the peaks."""

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 0.2):
        self.pids = pids
        self.interval = interval
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in list(self.pids()):
                now = usage(pid)
                if now is None:
                    continue
                total += now.pss
                self.peaks.private[pid] = max(self.peaks.private.get(pid, 0), now.private)
            self.peaks.total_pss = max(self.peaks.total_pss, total)
            self._stop.wait(self.interval)
