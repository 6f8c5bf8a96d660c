"""The coordinator's optimizer over rounds (Reddi et al. 2021, *Adaptive Federated Optimization*).

After each round the coordinator knows the global models the round started from
(``previous``) and the sites' average (``averaged``: FedAvg, the secure sum divided by
Σn, or the previous model plus the noised mean change under DP). Their difference
Δ = averaged − previous is treated as a pseudo-gradient (pointing downhill), and the
new global model is ``previous + server_learning_rate · step(Δ)``:

- ``fedavg``: the average itself (step = Δ, learning rate 1): McMahan et al. 2017.
- ``fedavgm``: heavy-ball momentum, m ← server_momentum·m + Δ, step = m (Hsu et al. 2019).
- ``fedadam``: m ← β1·m + (1−β1)·Δ, v ← β2·v + (1−β2)·Δ², step = m̂ / (√v̂ + τ) with
  Adam's bias corrections m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ) (as Flower's FedAdam).
- ``fedyogi``: as fedadam, but v ← v − (1−β2)·Δ²·sign(v − Δ²), so v grows no faster
  than Δ² and shrinks slowly (Zaheer et al. 2018); no bias correction of v, which starts at τ².

Only trainable parameters are optimized. BatchNorm's running statistics and counters
are statistics of the data, not parameters: they take the sites' average, as under
fedavg (a momentum or Adam step could push a running variance below zero, and would
make it the statistic of no data at all). FedBN's local entries never reach the
coordinator and are left alone. Everything runs in float64 at the coordinator; the
state never leaves it, except into its ``checkpoint.pt``, so a resumed run continues
exactly as an uninterrupted one.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from app.aggregation import Arrays
from app.config import KDConfig
from app.transport import Models


class ServerOptimizer:
    """Turns each round's averaged models into the next global models; holds the state between rounds."""

    def __init__(self, config: KDConfig, parameters: Mapping[str, set[str]]) -> None:
        """``parameters``: for each model name, the state_dict keys of its trainable parameters."""
        self.config = config
        self.parameters = {name: set(keys) for name, keys in parameters.items()}
        self.state: dict[str, dict] = {}   # model name → {"step": t, "m": {key: array}, "v": {key: array}}

    @property
    def stateful(self) -> bool:
        return self.config.server_optimizer != "fedavg"

    def step(self, previous: Models, averaged: Models) -> Models:
        """The next global models from the round's start (``previous``) and the sites' average."""
        if not self.stateful:
            return averaged
        return {name: self._step_model(name, previous[name], weights) if name in self.parameters else weights
                for name, weights in averaged.items()}

    def _step_model(self, name: str, previous: Arrays, averaged: Arrays) -> Arrays:
        config = self.config
        state = self.state.setdefault(name, {"step": 0, "m": {}, "v": {}})
        state["step"] += 1
        t = state["step"]
        result = dict(averaged)
        for key in sorted(self.parameters[name] & set(averaged)):
            start = np.asarray(previous[key], dtype=np.float64)
            delta = np.asarray(averaged[key], dtype=np.float64) - start
            m = state["m"].get(key, np.zeros_like(delta))
            if config.server_optimizer == "fedavgm":
                m = config.server_momentum * m + delta
                update = m
            else:
                beta1, beta2, tau = config.server_beta1, config.server_beta2, config.server_tau
                m = beta1 * m + (1 - beta1) * delta
                squared = delta * delta
                if config.server_optimizer == "fedadam":
                    v = beta2 * state["v"].get(key, np.zeros_like(delta)) + (1 - beta2) * squared
                    update = (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + tau)
                else:
                    v = state["v"].get(key, np.full_like(delta, tau * tau))
                    v = v - (1 - beta2) * squared * np.sign(v - squared)
                    update = (m / (1 - beta1 ** t)) / (np.sqrt(v) + tau)
                state["v"][key] = v
            state["m"][key] = m
            result[key] = (start + config.server_learning_rate * update).astype(np.asarray(averaged[key]).dtype)
        return result

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """The state as tensors and numbers (for ``checkpoint.pt``, loadable with weights_only)."""
        return {"server_optimizer": self.config.server_optimizer,
                "models": {name: {"step": state["step"],
                                  **{moment: {key: torch.from_numpy(value) for key, value in state[moment].items()}
                                     for moment in ("m", "v")}}
                           for name, state in self.state.items()}}

    def load_state_dict(self, saved: Mapping) -> None:
        self.state = {name: {"step": int(state["step"]),
                             **{moment: {key: value.numpy() for key, value in state[moment].items()}
                                for moment in ("m", "v")}}
                      for name, state in saved["models"].items()}
