"""How a round's update travels to the coordinator, and how it becomes the global model.

- plain: each site sends its models and sample count (pickled), with its summary
  (accuracy per round so far, for the coordinator's live page); the coordinator runs
  FedAvg weighted by samples.
- secure aggregation (SMPC): each site, the coordinator included, sends one
  numeric vector ``[n·weights..., n]``; the controller adds the vectors of all
  sites in fixed point and hands the coordinator only the sum, which it divides
  by its last entry (Σn). No single site's model is ever seen. The site sends the
  vector as the integers the controller's fixed point would make of it
  (``int(x·10^smpc_exponent)``, computed alike), and the controller is told to
  scale by 10^0: the same sum, a third fewer bytes, and integers are several
  times faster to write and read as JSON than floats at full precision.
- differential privacy (DP): each site sends the change of its float weights in
  this round, ``local − global``, each number to 9 significant digits (float32's
  precision, which the weights have anyway: a third fewer bytes than float64's 17
  digits); the controller clips that vector's norm to
  ``dp.clipping`` and adds noise before anyone else sees it. The coordinator adds
  the sites' mean change to the previous global model. Sample counts would have
  to be noised as well, so under DP the sites weigh equally, and integer counters
  (BatchNorm's ``num_batches_tracked``) keep their previous global values.
  Running variances that the noise pushed below zero are set to zero: a negative
  variance is no variance at all, and its square root would make every output NaN.
  This post-processing of the noised result costs no privacy.
  With SMPC and DP together, the noised changes are summed securely.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.aggregation import Arrays, Update, fedavg, flatten, to_arrays, unflatten
from app.config import KDConfig

Models = dict[str, Arrays]   # model name ("student", "baseline", "teacher") → its shared entries


@dataclass(frozen=True)
class Wire:
    smpc: bool = False
    dp: bool = False
    exponent: int = 8   # decimal digits the secure sum keeps (smpc_exponent)

    @classmethod
    def from_config(cls, config: KDConfig) -> "Wire":
        return cls(smpc=config.use_smpc, dp=config.dp is not None, exponent=config.smpc_exponent)

    @property
    def fixed_point(self) -> bool:
        """Sites send integers already in fixed point (secure sum without DP: DP noise is added to
        the sites' own numbers, so those stay floats and the controller does the fixed point)."""
        return self.smpc and not self.dp

    @property
    def controller_exponent(self) -> int:
        """The exponent of the controller's fixed point (configure_smpc)."""
        return 0 if self.fixed_point else self.exponent

    def encode(self, site: str, models: Models, samples: int, previous: Models, summary: dict | None = None) -> Any:
        """What a site sends for ``models`` trained on ``samples`` samples from ``previous``; a plain
        update carries the site's ``summary`` too (secure sums and noised changes carry numbers only)."""
        if not (self.smpc or self.dp):
            return {"site": site, "models": models, "samples": samples, "summary": summary}
        if self.dp:
            return _nine_digits(flatten(models, floats_only=True) - flatten(previous, floats_only=True)).tolist()
        return _fixed_point(np.append(flatten(models) * samples, samples), self.exponent)

    def encode_numbers(self, values: list[float]) -> list:
        """A vector of plain numbers (not models: the normalization's channel sums) as a site sends it
        into a secure sum: in the wire's fixed point when the controller is told to scale by 10^0."""
        return _fixed_point(np.asarray(values, dtype=np.float64), self.exponent) if self.fixed_point else values

    def decode_numbers(self, summed: Any) -> list[float]:
        """The controller's secure sum of ``encode_numbers`` vectors, as numbers."""
        scale = 10 ** self.exponent if self.fixed_point else 1
        return [float(value) / scale for value in summed]

    def decode(self, received: Any, previous: Models, sites: int) -> Models:
        """The global models from what the controller delivered to the coordinator: a list of
        updates (plain, DP) or one summed vector (SMPC)."""
        if not (self.smpc or self.dp):
            return {name: to_arrays(fedavg([Update(update["site"], update["models"][name], update["samples"])
                                            for update in received]))
                    for name in previous}
        if self.dp:
            total = np.asarray(received, dtype=np.float64) if self.smpc \
                else np.sum([np.asarray(change, dtype=np.float64) for change in received], axis=0)
            mean_change = total / sites
            return _valid_variances(unflatten(flatten(previous, floats_only=True) + mean_change, previous,
                                              floats_only=True))
        summed = np.asarray(received, dtype=np.float64) / 10 ** self.exponent
        return unflatten(summed[:-1] / summed[-1], previous)

    def summaries(self, received: Any) -> list[dict]:
        """The sites' summaries that came with plain updates (none under SMPC or DP)."""
        if self.smpc or self.dp:
            return []
        return [update["summary"] for update in received if update.get("summary") is not None]


def _fixed_point(vector: np.ndarray, exponent: int) -> list[int]:
    """``int(x·10^exponent)`` of every number, as the controller computes it from a float."""
    scaled = np.trunc(vector * 10 ** exponent)
    if np.abs(scaled).max(initial=0) < 2 ** 63:
        return scaled.astype(np.int64).tolist()
    return [int(value) for value in scaled.tolist()]   # beyond int64 (huge weights or exponents): exact all the same


def _nine_digits(vector: np.ndarray) -> np.ndarray:
    """Every finite number rounded to 9 significant digits, so JSON writes at most those."""
    magnitude = np.abs(vector)
    usable = np.isfinite(vector) & (magnitude > 1e-290)   # 10^(8-e) stays finite
    exponent = np.floor(np.log10(np.where(usable, magnitude, 1.0)))
    scale = 10.0 ** (8 - exponent)
    return np.where(usable, np.rint(vector * scale) / scale, vector)


def _valid_variances(models: Models) -> Models:
    """``models`` with every normalisation layer's ``running_var`` clipped at 0."""
    return {model: {name: np.maximum(value, 0) if name.endswith("running_var") else value
                    for name, value in weights.items()}
            for model, weights in models.items()}
