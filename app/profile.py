"""How large and how fast a model is on the CPU: parameters, size on disk, latency, peak memory
(PyTorch models), and latency of onnxruntime sessions."""
from __future__ import annotations

import copy
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from app.idle import ALWAYS, IdleTime
from app.process_wide import exclusive

# Per measurement timed in wall time: a few ms models run hundreds of times, large ones at least
# `repeats` times, to find moments when the CPU is free. Three tries of a slow call (the sample
# teacher's batch of 256 takes 0.1 s) were ten until issue 15: that was a second of every site's
# writing results.
LATENCY_BUDGET_S = 0.2
# Per measurement timed in the CPU time of the one thread doing the work (onnxruntime sessions of one
# thread, torch with one thread, as every local test-bed site on 2 cores): other programs do not
# inflate it, so a few runs suffice. Measured under load 7 on 2 cores (sample student and teacher,
# both batch sizes): the fastest of 0.03 s of runs matched that of 0.1 s within the runs' spread,
# while batch 256 in wall time read 1.7-1.9x slower. It is paid at the end of every run.
CPU_TIME_BUDGET_S = 0.03
LATENCY_MAX_RUNS = 2000
LATENCY_TURNS = 10        # models measured together take turns of a tenth of their budget
ONNX_LATENCY_REPEATS = 3


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a site sends per update."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


@dataclass(frozen=True)
class ModelSummary:
    parameters: int
    size_bytes: int
    latency_ms_batch1: float       # ms per sample at batch 1 (fastest of `repeats` runs)
    latency_ms_per_sample: float   # ms per sample at batch `large_batch` (fastest of `repeats` runs)
    large_batch: int
    peak_memory_bytes: int         # peak CPU memory torch allocated during one forward at `large_batch`

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(model: nn.Module, sample_shape: tuple[int, ...], large_batch: int = 256,
              repeats: int = 3, idle: IdleTime = ALWAYS) -> ModelSummary:
    """Size and CPU inference speed of ``model`` on random inputs of ``sample_shape``.

    A model living on another device is measured on a CPU copy; its mode is left unchanged.
    With torch on one thread, latencies are timed in that thread's CPU time (``CPU_TIME_BUDGET_S``),
    else in wall time (``LATENCY_BUDGET_S``).
    ``idle``: the site's idle time, when the measurement runs in the background while the site waits
    (each timed run then starts inside a window, and one the window's end cut short is not counted).
    The inputs come from a generator of their own: a job in the background must not draw from the
    global one, which the site's training (dropout) uses.
    """
    cpu_model = model if all(t.device.type == "cpu" for t in model.state_dict().values()) \
        else copy.deepcopy(model).cpu()
    was_training = cpu_model.training
    cpu_model.eval()
    try:
        with torch.inference_mode():
            generator = torch.Generator().manual_seed(0)
            single = torch.randn(1, *sample_shape, generator=generator)
            batch = torch.randn(large_batch, *sample_shape, generator=generator)
            latency_single = _fastest_ms(cpu_model, single, repeats, idle)
            # The profiler records every thread: the site's own work must not run meanwhile. Its forward
            # pass is also the large batch's first (the same peak as any later one's, checked on the sample
            # models and torchvision's), so the timed runs need no warm-up call: a fifth of a large
            # model's measurement.
            with idle.whole(), exclusive():
                peak = _peak_forward_memory(cpu_model, batch)
            latency_batch = _fastest_ms(cpu_model, batch, repeats, idle, warmed_up=True) / large_batch
    finally:
        cpu_model.train(was_training)
    return ModelSummary(parameters=parameter_count(model), size_bytes=serialized_size(model),
                        latency_ms_batch1=latency_single, latency_ms_per_sample=latency_batch,
                        large_batch=large_batch, peak_memory_bytes=peak)


def _fastest_ms(model: nn.Module, inputs: torch.Tensor, repeats: int, idle: IdleTime,
                warmed_up: bool = False) -> float:
    if torch.get_num_threads() == 1:   # every operation runs in the calling thread
        return fastest_ms({"model": lambda: model(inputs)}, repeats, CPU_TIME_BUDGET_S, time.thread_time,
                          idle=idle, warmed_up=warmed_up)["model"]
    return fastest_ms({"model": lambda: model(inputs)}, repeats, idle=idle, warmed_up=warmed_up)["model"]


def fastest_ms(runs: dict[str, Callable[[], object]], repeats: int, budget_s: float = LATENCY_BUDGET_S,
               clock: Callable[[], float] = time.perf_counter, idle: IdleTime = ALWAYS,
               warmed_up: bool = False) -> dict[str, float]:
    """Milliseconds of the fastest of repeated calls of each run, the runs taking turns.

    The fastest run is the model's own cost; slower runs measure whatever else shares the
    CPU (other sites of a local federation, other containers), which would blur the ratios.
    Each run is called for about ``budget_s`` in all (at least ``repeats`` times), so a fast
    one is tried often enough to find the CPU free. The runs take turns of a tenth of that:
    a burst of load from elsewhere slows all of them rather than one, and a slow run does not
    leave a fast one only a few tries. ``clock``: wall time by default; single-threaded runs
    can pass ``time.thread_time``, which time given to other programs does not advance.
    ``idle``: start runs only in the site's idle time (``summarize``). A run that the end of such a wait
    cut short is dropped when timed in wall time, which the site's own work may have stretched; in a
    thread's CPU time (``time.thread_time``) it counts: that time is the run's own, whatever else ran.
    Each run is called once untimed first (first calls pay for allocation and kernel selection), unless
    ``warmed_up``: the caller made that call already.
    """
    for run in runs.values() if not warmed_up else ():
        idle.run(run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    spent = dict.fromkeys(runs, 0.0)

    def wanted(name: str) -> bool:
        count = len(times[name])
        return count < repeats or (spent[name] < budget_s and count < LATENCY_MAX_RUNS)
    while any(wanted(name) for name in runs):
        for name, run in runs.items():
            turn_ends = spent[name] + budget_s / LATENCY_TURNS
            while wanted(name) and spent[name] < turn_ends:
                (took, clocked), intact = idle.run(partial(_timed, run, clock))
                if intact or clock is time.thread_time:
                    times[name].append(clocked)
                    spent[name] += took   # the budget is wall time, whatever the clock
    return {name: min(run_times) * 1000 for name, run_times in times.items()}


def _timed(run: Callable[[], object], clock: Callable[[], float]) -> tuple[float, float]:
    """Wall seconds of ``run()`` and what ``clock`` says it took."""
    started, start = time.perf_counter(), clock()
    run()
    return time.perf_counter() - started, clock() - start


def onnx_latency(sessions: dict, sample_shape: tuple[int, ...], large_batch: int = 256) -> dict[str, dict]:
    """Per-sample ms at batch 1 and at ``large_batch`` of each single-threaded onnxruntime session
    (by name), on random [0, 1) images: the fastest of repeated runs, the sessions taking turns.

    Timed in CPU time of the calling thread, where a one-thread session does all its work: a
    run the OS interrupts to serve other programs costs no more than one it did not. (Wall time
    made a batch of 256 look up to 20 times slower while other sites trained.)"""
    result: dict[str, dict] = {name: {"large_batch": large_batch} for name in sessions}
    generator = np.random.default_rng(0)
    for batch, key in ((1, "latency_ms_batch1"), (large_batch, "latency_ms_per_sample")):
        inputs = generator.random((batch, *sample_shape), dtype=np.float32)
        runs = {name: partial(session.run, None, {session.get_inputs()[0].name: inputs})
                for name, session in sessions.items()}
        for name, ms in fastest_ms(runs, ONNX_LATENCY_REPEATS, CPU_TIME_BUDGET_S, time.thread_time).items():
            result[name][key] = ms / batch
    return result


def _peak_forward_memory(model: nn.Module, inputs: torch.Tensor) -> int:
    """Peak bytes torch's CPU allocator holds during one forward pass, beyond what existed before.

    The profiler with profile_memory=True records every CPU allocation (+bytes) and free
    (-bytes) as a '[memory]' event. Replayed in time order, their running sum is the
    memory the forward pass holds at each moment (activations, workspaces, the output);
    its maximum is the peak. The output is dropped inside the profiled block, so the sum
    returns to zero. The per-operator totals of ``prof.events()`` would hide peaks
    inside an operator, hence the raw event list.
    """
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(inputs)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a moment: the profiler's C++ side (kineto) prints
    'USDT ... profiler_start/stop' lines there that no environment variable turns off,
    and they would read like errors in every site's log."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
