"""A site's set-up, begun before the controller names the site.

The controller starts a site with ``POST /setup`` (its id, the other sites, who coordinates), and
featurecloud 0.1.0's engine sleeps one second before it starts the state machine; on the platform
the request itself comes only at the controller's next poll, 1-2 s after the app answers. Reading
the input needs nothing from the controller, so the app reads it as soon as it serves: config.yml,
the models, the arrays (``Folds.load``), and, where nothing to come can change what the frozen
teacher computes, the teacher's evaluation and logits (``Folds.teach_early``) keep running while the
initial state agrees on the plan.

The initial state takes what was read (``take``) only if the input folder is exactly as it was
when reading began: every file and folder under it with the same size, modification time and
inode. Input that arrives or changes later, from the platform or the user, is read again, with a
log line saying so. A mistake found in the input is raised by the initial state, with the same
message, as if it had been found there.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from app.folds import Folds

# Comparing more files' metadata than this would cost about as much as reading early saves; a larger
# input folder (thousands of photos) is read once the controller named the site, as before.
MAX_ENTRIES = 10_000

Snapshot = dict[str, tuple[int, int, int, int] | None]


class EarlyStart:
    """The input of one site, read in a background thread from ``start`` on (if never started, ``take``
    reads it then)."""

    def __init__(self, input_dir: Path, output_dir: Path) -> None:
        self.input_dir = input_dir
        self.output_dir = output_dir
        self._thread: threading.Thread | None = None
        self._snapshot: Snapshot | None = None
        self._folds: Folds | None = None
        self._error: Exception | None = None
        self._log = _Relay()

    def start(self, after: threading.Thread | None = None) -> None:
        """Read the input in the background, once ``after`` (the start-up imports) has ended: two threads
        importing the same modules at once can deadlock."""
        def read() -> None:
            if after is not None:
                after.join()
            self._snapshot = _snapshot(self.input_dir)
            if self._snapshot is None:
                return
            try:
                self._folds = Folds.load(self.input_dir, self.output_dir, "", log=self._log)
                self._folds.teach_early()
            except Exception as error:  # noqa: BLE001 — raised again by take(), in the initial state
                self._error = error
        self._thread = threading.Thread(target=read, name="early start", daemon=True)
        self._thread.start()

    def take(self, name: str, log: Callable[[str], None], status: Callable[[str], None]) -> Folds:
        """The site ``name``, as ``Folds.load`` would read it now: what was read early if the input folder is
        unchanged (its log lines go to ``log`` now), else read again. What was read early is taken once."""
        if self._thread is not None:
            self._thread.join()
        # Held here no longer: an input read again must not keep the first reading's data alive.
        folds, error, self._folds, self._error = self._folds, self._error, None, None
        if folds is None and error is None:   # nothing read early (too many files), or taken already
            return Folds.load(self.input_dir, self.output_dir, name, log=log, status=status)
        if _snapshot(self.input_dir) != self._snapshot:
            log(f"the input folder {self.input_dir} changed after the app began reading it: reading it again")
            return Folds.load(self.input_dir, self.output_dir, name, log=log, status=status)
        self._log.to(log)
        if error is not None:
            raise error
        folds.begin_run(name)
        for site in folds.sites.values():
            site.status = status
        return folds


class _Relay:
    """A log callback that keeps the lines until ``to(target)``, then passes them and every later one on."""

    def __init__(self) -> None:
        self._kept: list[str] = []
        self._target: Callable[[str], None] | None = None

    def __call__(self, message: str) -> None:
        if self._target is None:
            self._kept.append(message)
        else:
            self._target(message)

    def to(self, target: Callable[[str], None]) -> None:
        for message in self._kept:
            target(message)
        self._kept, self._target = [], target


def _snapshot(folder: Path) -> Snapshot | None:
    """(size, modification time, inode, device) of every file and folder under ``folder``, links followed
    (None for a broken one); None if there are more than MAX_ENTRIES."""
    found: Snapshot = {}
    seen: set[tuple[int, int]] = set()   # folders already walked: a link may lead back up
    for root, folders, names in os.walk(folder, followlinks=True):
        try:
            here = os.stat(root)
        except OSError:   # removed while walked
            found[root] = None
            continue
        if (here.st_dev, here.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        for name in (".", *names):
            path = os.path.join(root, name)
            try:
                entry = os.stat(path)
                found[path] = (entry.st_size, entry.st_mtime_ns, entry.st_ino, entry.st_dev)
            except OSError:
                found[path] = None
            if len(found) > MAX_ENTRIES:
                return None
    return found
