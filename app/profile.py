"""How large and how fast a model is on the CPU: parameters, size on disk, latency, peak memory."""
from __future__ import annotations

import copy
import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

LATENCY_BUDGET_S = 0.2    # per measurement: a few ms models run hundreds of times, large ones `repeats` times
LATENCY_MAX_RUNS = 2000


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
              repeats: int = 10) -> ModelSummary:
    """Size and CPU inference speed of ``model`` on random inputs of ``sample_shape``.

    A model living on another device is measured on a CPU copy; its mode is left unchanged.
    """
    cpu_model = model if all(t.device.type == "cpu" for t in model.state_dict().values()) \
        else copy.deepcopy(model).cpu()
    was_training = cpu_model.training
    cpu_model.eval()
    try:
        with torch.inference_mode():
            single = torch.randn(1, *sample_shape)
            batch = torch.randn(large_batch, *sample_shape)
            latency_single = _fastest_ms(cpu_model, single, repeats)
            latency_batch = _fastest_ms(cpu_model, batch, repeats) / large_batch
            peak = _peak_forward_memory(cpu_model, batch)
    finally:
        cpu_model.train(was_training)
    return ModelSummary(parameters=parameter_count(model), size_bytes=serialized_size(model),
                        latency_ms_batch1=latency_single, latency_ms_per_sample=latency_batch,
                        large_batch=large_batch, peak_memory_bytes=peak)


def _fastest_ms(model: nn.Module, inputs: torch.Tensor, repeats: int) -> float:
    # The fastest run is the model's own cost; slower runs measure whatever else shares the
    # CPU (other sites of a local federation, other containers), which would blur the ratios.
    # Fast calls repeat for at least LATENCY_BUDGET_S, so one of them finds the CPU free.
    model(inputs)   # warm-up: first calls pay for allocation and kernel selection
    times: list[float] = []
    budget_ends = time.perf_counter() + LATENCY_BUDGET_S
    while len(times) < repeats or (time.perf_counter() < budget_ends and len(times) < LATENCY_MAX_RUNS):
        start = time.perf_counter()
        model(inputs)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


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
