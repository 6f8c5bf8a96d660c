"""What the FeatureCloud controller does to SMPC and DP payloads, done locally.

Payloads are JSON values made of numbers, lists and dicts. SMPC sums the payloads
of all clients in fixed point (`int(x * 10**exponent)` per number, integer sum,
divided by `10**exponent`), so the coordinator sees only the sum. DP clips a
payload (all its numbers as one vector: L1 norm for Laplace noise, L2 for Gauss)
and adds noise calibrated to the sensitivity (`sensitivity`, else 2 * clippingVal).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat
from typing import Any

import numpy as np

Payload = Any   # a JSON value: number, list or dict of payloads


class PayloadError(ValueError):
    """A payload or privacy configuration the controller cannot process."""


def numbers(payload: Payload) -> list[float]:
    """All numbers of the payload in a fixed order (dict keys sorted, so key order does not matter)."""
    if isinstance(payload, bool) or not isinstance(payload, (int, float, list, dict)):
        raise PayloadError(f"payload holds {payload!r} ({type(payload).__name__}); "
                           "only numbers and lists/dicts of numbers can be summed or noised")
    if isinstance(payload, (int, float)):
        return [payload]
    items = [payload[key] for key in sorted(payload)] if isinstance(payload, dict) else payload
    return [number for item in items for number in numbers(item)]


def refill(template: Payload, values: Iterator[float]) -> Payload:
    """The template's structure with its numbers replaced, in the order `numbers` lists them."""
    if isinstance(template, dict):
        return {key: refill(template[key], values) for key in sorted(template)}
    if isinstance(template, list):
        return [refill(item, values) for item in template]
    return next(values)


def smpc_sum(payloads: list[Payload], exponent: int) -> Payload:
    """Element-wise fixed-point sum of payloads of one structure."""
    skeleton = refill(payloads[0], repeat(0))
    for index, payload in enumerate(payloads[1:], start=1):
        if refill(payload, repeat(0)) != skeleton:
            raise PayloadError(f"SMPC payload {index + 1} has another structure than payload 1; "
                               "every client must send numbers in the same nested lists/dicts")
    scale = 10 ** exponent
    totals = [sum(column) for column in zip(*([int(x * scale) for x in numbers(p)] for p in payloads))]
    return refill(payloads[0], iter([total / scale for total in totals]))


def dp_noise(payload: Payload, config: dict, rng: np.random.Generator) -> Payload:
    """The payload clipped and noised as the controller does for a `use_dp` send configured by `config`
    (the engine's `default_dp`: noisetype, epsilon, delta, sensitivity, clippingVal)."""
    noisetype, epsilon = config.get("noisetype"), config.get("epsilon")
    clipping, sensitivity = config.get("clippingVal"), config.get("sensitivity")
    if noisetype not in ("laplace", "gauss"):
        raise PayloadError(f"DP noisetype {noisetype!r} is unknown; use 'laplace' or 'gauss'")
    if not epsilon or epsilon <= 0:
        raise PayloadError(f"DP epsilon must be positive, got {epsilon!r}")
    if not sensitivity:
        if not clipping:
            raise PayloadError("DP needs a sensitivity or a clippingVal; both are unset")
        sensitivity = 2 * clipping
    vector = np.asarray(numbers(payload), dtype=np.float64)
    if clipping:
        vector = clip(vector, clipping, ord=1 if noisetype == "laplace" else 2)
    if noisetype == "laplace":
        noise = rng.laplace(0.0, sensitivity / epsilon, vector.shape)
    else:
        delta = config.get("delta")
        if not delta or delta <= 0:
            raise PayloadError(f"DP with Gauss noise needs delta > 0, got {delta!r}")
        noise = rng.normal(0.0, gauss_sigma(epsilon, delta, sensitivity), vector.shape)
    return refill(payload, iter((vector + noise).tolist()))


def clip(vector: np.ndarray, bound: float, ord: int) -> np.ndarray:
    """Scale the vector down so that its L-`ord` norm is at most bound."""
    norm = float(np.linalg.norm(vector, ord=ord))
    return vector * (bound / norm) if norm > bound else vector


def gauss_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Standard deviation of the Gaussian mechanism."""
    return math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon
