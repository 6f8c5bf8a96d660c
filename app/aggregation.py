"""Federated averaging of student weights.

Updates travel between sites as plain ``{name: numpy array}`` dicts (``to_arrays``),
so no torch pickle crosses the network. ``fedavg`` averages every floating-point
entry of the state_dict, parameters and BatchNorm running statistics alike,
weighted by each site's number of training samples (McMahan et al. 2017).
Integer buffers such as ``num_batches_tracked`` are counters: they are averaged the
same way but rounded back to whole numbers and keep their integer type.

``flatten``/``unflatten`` turn models into one float vector and back, the numeric
form secure aggregation and differential privacy need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from app.errors import FederationError

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Update:
    """One site's contribution to a round."""

    site: str
    weights: Mapping[str, np.ndarray | torch.Tensor]
    samples: int


def to_arrays(state_dict: Mapping[str, torch.Tensor]) -> Arrays:
    """A state_dict as numpy arrays (copies, safe to send while training goes on)."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in state_dict.items()}


def to_state_dict(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.asarray(value)).clone() for name, value in arrays.items()}


def fedavg(updates: list[Update]) -> dict[str, torch.Tensor]:
    """Sample-weighted average of the updates' state_dicts."""
    if not updates:
        raise FederationError("no site sent an update to aggregate")
    check_updates(updates)
    total = sum(update.samples for update in updates)
    first = updates[0].weights
    averaged: dict[str, torch.Tensor] = {}
    for name in first:
        tensors = [torch.as_tensor(np.asarray(update.weights[name])) for update in updates]
        mean = sum(t.double() * (update.samples / total) for t, update in zip(tensors, updates))
        averaged[name] = (mean if tensors[0].is_floating_point() else mean.round()).to(tensors[0].dtype)
    return averaged


def batchnorm_keys(model: torch.nn.Module) -> set[str]:
    """state_dict entries of the model's BatchNorm layers (weights, biases, running statistics)."""
    return {f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            for name in module.state_dict()}


def flatten(models: Mapping[str, Mapping[str, np.ndarray]], floats_only: bool = False) -> np.ndarray:
    """Every entry of every model, in order, as one float64 vector."""
    parts = [np.asarray(value, dtype=np.float64).ravel()
             for weights in models.values() for value in weights.values()
             if not floats_only or np.asarray(value).dtype.kind == "f"]
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, template: Mapping[str, Mapping[str, np.ndarray]],
              floats_only: bool = False) -> dict[str, Arrays]:
    """The inverse of ``flatten``: shapes and dtypes from ``template``, whole numbers rounded.
    With ``floats_only`` the integer entries are taken from ``template`` unchanged."""
    vector = np.asarray(vector, dtype=np.float64)
    expected = flatten(template, floats_only).size
    if vector.size != expected:
        raise FederationError(f"received {vector.size} numbers for models of {expected}: the sites' "
                              "students differ. Every site must use the same student_model and student_args.")
    models, offset = {}, 0
    for model, weights in template.items():
        models[model] = {}
        for name, value in weights.items():
            value = np.asarray(value)
            if floats_only and value.dtype.kind != "f":
                models[model][name] = value.copy()
                continue
            chunk = vector[offset:offset + value.size].reshape(value.shape)
            offset += value.size
            models[model][name] = (chunk if value.dtype.kind == "f" else np.rint(chunk)).astype(value.dtype)
    return models


def check_updates(updates: list[Update]) -> None:
    """Every update has the first one's entries and shapes, finite values and samples > 0."""
    reference = updates[0]
    ref_shapes = {name: tuple(np.shape(value)) for name, value in reference.weights.items()}
    for update in updates:
        if update.samples <= 0:
            raise FederationError(f"site {update.site} sent an update trained on {update.samples} "
                                  "samples; every site needs a non-empty train_dataset")
        shapes = {name: tuple(np.shape(value)) for name, value in update.weights.items()}
        missing = sorted(set(ref_shapes) - set(shapes))
        extra = sorted(set(shapes) - set(ref_shapes))
        if missing or extra:
            raise FederationError(
                f"site {update.site}'s student differs from site {reference.site}'s: "
                f"missing {missing[:5]}, unexpected {extra[:5]}. Every site must use the same "
                "student_model file and student_args.")
        for name, shape in shapes.items():
            if shape != ref_shapes[name]:
                raise FederationError(
                    f"site {update.site}'s student tensor '{name}' has shape {list(shape)}, "
                    f"site {reference.site}'s has {list(ref_shapes[name])}. Every site must use "
                    "the same student_model file and student_args.")
            values = np.asarray(update.weights[name])
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise FederationError(
                    f"site {update.site} sent non-finite values in '{name}' (training diverged). "
                    "Lower learning_rate in config.yml.")
