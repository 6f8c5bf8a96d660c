"""Work a site does while it only waits for the other sites.

In every round a site sends its update and then waits for the global model; the coordinator
waits for the others' updates. Its CPU is idle then (on a machine it shares with other sites,
another site is using its own core). Measurements that do not depend on the rounds, such as the
frozen teacher's size and speed and those of the student's architecture, run in those windows
instead of at the end of the run, where every site would pay for them on the run's critical path:

    idle = IdleTime()
    result = idle.start(lambda: summarize(teacher, shape, idle=idle))   # a Future
    with idle.waiting():        # the states wrap each wait for other sites' data
        received = wait_for_data()
    idle.finish(result)         # when the result is needed: the rest runs now, unpaused
    result.result()

A job calls ``idle.run(call)`` for each small piece of work (one timed forward pass): the piece
starts only inside a window, and ``run`` says whether the window lasted until it ended, so a
timing the site's own work may have slowed down is dropped. ``idle.whole()`` guards a piece that
must not overlap the site's work at all (a profiler records every thread): the window's end waits
for it. ``ALWAYS`` is the idle time of code that runs a job at once (no windows, nothing paused).

On Linux the job's thread runs at the lowest priority (nice 19) until ``finish``: a piece that
outlasts its window then yields the CPU to the site's own work instead of slowing it down
(measured under load 8, a 0.3-1 s piece of the teacher's made the next round's exchange up to
0.9 s longer).
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class IdleTime:
    """The windows in which one site waits for the others; background jobs run only inside them."""

    def __init__(self, always: bool = False) -> None:
        self._turn = threading.Condition()
        self._open = False        # inside a window
        self._always = always     # no pauses at all (``ALWAYS``)
        self._closed = 0          # windows closed so far: a piece that saw one close overlapped the site's work
        self._whole = 0           # pieces running that a window's end must wait for
        self._jobs: dict[Future, int] = {}   # each job's place in the order started
        self._unpaused = 0        # jobs before this place run without pauses (``finish``)
        self._thread = threading.local()   # in a job's thread: its place, and its priority while lowered

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """The block only waits for other sites: background pieces may run meanwhile."""
        with self._turn:
            self._open = True
            self._turn.notify_all()
        try:
            yield
        finally:
            with self._turn:
                self._open = False
                self._closed += 1
                while self._whole:
                    self._turn.wait()

    @property
    def waits(self) -> int:
        """How many waits have ended so far."""
        return self._closed

    def run(self, call: Callable[[], T]) -> tuple[T, bool]:
        """``call()`` started inside a window; its result, and whether the window lasted until it ended."""
        with self._turn:
            self._wait_for_window()
            closed = self._closed
        result = call()
        with self._turn:
            return result, self._closed == closed

    @contextmanager
    def whole(self) -> Iterator[None]:
        """Run the block inside a window; the window does not end before the block does."""
        with self._turn:
            self._wait_for_window()
            self._whole += 1
        try:
            yield
        finally:
            with self._turn:
                self._whole -= 1
                self._turn.notify_all()

    def start(self, job: Callable[[], T], name: str = "idle-time job") -> "Future[T]":
        """Run ``job`` in a background thread (it paces itself with ``run``/``whole``); its Future.
        Jobs run one after another, in the order started: they never compete for the idle core, and
        one needed first can be started first."""
        place, previous = len(self._jobs), next(reversed(self._jobs), None)

        def body() -> T:
            if previous is not None:
                wait([previous])   # how it ended is for whoever takes its result
            self._thread.place = place
            self._lower_priority()
            return job()
        future = in_background(body, name)
        self._jobs[future] = place
        return future

    def finish(self, job: Future) -> None:
        """From now on every piece of ``job``, and of the jobs started before it (it runs after them), runs
        at once: call it when its result is needed now. Later jobs still wait for windows. (A Future not
        started here, such as a result measured at once, has nothing left to run.)"""
        with self._turn:
            if job in self._jobs:
                self._unpaused = max(self._unpaused, self._jobs[job] + 1)
                self._turn.notify_all()

    def _wait_for_window(self) -> None:
        place = getattr(self._thread, "place", None)

        def unpaused() -> bool:
            return self._always or (place is not None and place < self._unpaused)
        while not (self._open or unpaused()):
            self._turn.wait()
        if unpaused():
            self._restore_priority()

    def _lower_priority(self) -> None:
        if sys.platform.startswith("linux"):   # there a thread's id is what setpriority takes: this thread only
            try:
                nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
                self._thread.nice = nice
            except OSError:
                pass

    def _restore_priority(self) -> None:
        """The result is awaited now: full speed (raising a priority may need privileges: then it stays)."""
        nice = getattr(self._thread, "nice", None)
        if nice is not None:
            self._thread.nice = None
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            except OSError:
                pass


ALWAYS = IdleTime(always=True)


def in_background(job: Callable[[], T], name: str) -> "Future[T]":
    """Run ``job`` in a daemon thread (the process need not wait for it to exit); its Future."""
    future: Future[T] = Future()
    threading.Thread(target=settle, args=(future, job), name=name, daemon=True).start()
    return future


def settle(future: "Future[T]", job: Callable[[], T]) -> None:
    """Run ``job`` and put its result, or what it raised, into ``future``."""
    try:
        future.set_result(job())
    except BaseException as error:  # noqa: BLE001 — handed to whoever asks for the result
        future.set_exception(error)
