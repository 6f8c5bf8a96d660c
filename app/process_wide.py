"""What the sites of one process must take turns with.

One site per process is the normal case (a FeatureCloud container, a test-bed client). FeatureCloud's
in-process mock controller, or a script training several ``Site`` objects in threads, runs several
sites in one process, and then some of torch's and Python's state is shared between them:

- torch's global random generator: the user's model classes initialise their layers from it, and
  dropout draws from it. ``seeded(seed)`` seeds it for one block and puts the previous state back
  afterwards, so a site's initial weights and dropout masks depend on its seed (and round) alone,
  whatever the other sites of the process do meanwhile. Shuffling needs no turn: every epoch has
  its own ``torch.Generator`` (``training.epoch_generator``).
- what importing a model file changes (``sys.path``, ``sys.modules``), and what measuring and
  exporting a model uses (the profiler, file descriptor 2, the ONNX exporter's settings, pyplot):
  ``exclusive()``.

Both hold one re-entrant lock of the process. Blocks never wait for other sites (``Site`` methods
compute, they never communicate), so taking turns cannot deadlock; with one site per process the
lock is never contended.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_TURN = threading.RLock()


@contextmanager
def exclusive() -> Iterator[None]:
    """Run the block while no other thread of this process runs an ``exclusive`` or ``seeded`` block."""
    with _TURN:
        yield


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block exclusively, with torch's global random generator (CPU and CUDA) seeded with ``seed``;
    the CPU generator's previous state is restored afterwards."""
    with _TURN:
        previous = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.set_rng_state(previous)
