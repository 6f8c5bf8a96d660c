"""What differential privacy costs in accuracy on the sample federation, and what secure aggregation costs.

The sample federation (sample_data/c1, c2 and generic/, 6 rounds) runs in this process with the
app's ``Site`` objects. The controller is played by the test-bed's own code: ``dp_noise`` clips
and noises each site's round change with the DP settings the app hands the engine
(``states/base.py`` ``configure_privacy``), ``smpc_sum`` adds the payloads in fixed point.
A first run without privacy measures how large a site's round change is; the clipping norm
is chosen from it unless ``--clipping`` / ``--l1-clipping`` say otherwise.

    python -m bench.privacy [--epsilons 1,10,100,1000,10000] [--clipping 3.5]
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import math
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from app.aggregation import flatten, to_arrays
from app.config import DPConfig
from app.federation import Controller, hand_over
from app.site import Site
from bench.noniid import (Arrays, Outcome, generic_settings, positive_numbers, read_npz, run_federated, run_script,
                          sample_sites, shown, table)
from scripts.devdata.args import positive_int
from testbed.privacy import dp_noise, gauss_sigma, smpc_sum

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "privacy.txt"
SAMPLE = ROOT / "sample_data"
DELTA = 1e-5
CLIP_ONLY_EPSILON = 1e12   # noise with a standard deviation of ~1e-11: the clipping alone
JITTER = 1e-7              # about float32's rounding of a weight near 1


@dataclass
class ChangeMeter:
    """The controller without privacy, measuring each site's round change (local − global) on the way."""

    sites: list[Site] = field(default_factory=list)
    l2: list[float] = field(default_factory=list)
    l1: list[float] = field(default_factory=list)
    size: int = 0

    def watch(self, sites: list[Site]) -> Controller:
        self.sites = sites
        return self.deliver

    def deliver(self, payloads: list[dict], memo: str) -> list[dict]:
        start = flatten(self.sites[0].previous, floats_only=True)   # this round's global model
        for payload in payloads:
            change = flatten(payload["models"], floats_only=True) - start
            self.l2.append(float(np.linalg.norm(change)))
            self.l1.append(float(np.linalg.norm(change, ord=1)))
            self.size = change.size
        return hand_over(payloads, memo)


def controller_dp(dp: DPConfig) -> dict:
    """The engine's DP settings after ``configure_privacy``: what the controller noises with."""
    return {"serialization": "json", "noisetype": dp.noise, "epsilon": dp.epsilon,
            "delta": dp.delta if dp.noise == "gauss" else 0.0, "sensitivity": None, "clippingVal": dp.clipping}


def noising(sites: list[Site], seed: int) -> Controller:
    """The controller of a DP run: every site's payload clipped and noised, the coordinator's too (not the
    channel sums of ``normalize: federated``, as the states send them); the noise depends on the seed, the
    site and the exchange's position in the run."""
    config = controller_dp(sites[0].config.dp)
    exchanges = itertools.count()

    def deliver(payloads: list[object], memo: str) -> list[object]:
        if memo == "norm":
            return payloads
        exchange = next(exchanges)
        return [dp_noise(payload, config, np.random.default_rng([seed, index, exchange]))
                for index, payload in enumerate(payloads)]
    return deliver


@dataclass
class SecureSum:
    """The controller of an SMPC run (the coordinator gets only the fixed-point sum), measuring on the way
    how far each round's sum, once divided by the sample count as the coordinator does, is from the exact one."""

    exponent: int = 0
    error: float = 0.0   # the largest difference over all rounds and weights
    sites: list[Site] = field(default_factory=list)

    def watch(self, sites: list[Site]) -> Controller:
        self.exponent, self.sites = sites[0].wire.controller_exponent, sites
        return self.deliver

    def deliver(self, payloads: list[list[int]], memo: str) -> list[float]:
        # The sites send their [n·weights..., n] in fixed point already; the exact sum comes from their models.
        total = smpc_sum(payloads, self.exponent)
        exact = np.sum([np.append(flatten({name: to_arrays(model.state_dict()) for name, model in site.models.items()})
                                  * len(site.train), len(site.train)) for site in self.sites], axis=0)
        summed = np.asarray(total) / 10 ** self.sites[0].config.smpc_exponent
        self.error = max(self.error, float(np.max(np.abs(summed - exact))) / exact[-1])
        return total


def jittered(scale: float, seed: int) -> Callable[[list[Site]], Controller]:
    """Plain FedAvg whose first-round payloads have every float weight moved by N(0, scale²): a control
    of how far two runs drift apart from a difference as small as SMPC's rounding."""
    def deliver(payloads: list[dict], memo: str) -> list[dict]:
        if memo != "r1":
            return payloads
        rng = np.random.default_rng(seed)
        return [{**payload, "models": {name: {key: value + rng.normal(0, scale, value.shape).astype(value.dtype)
                                              if value.dtype.kind == "f" else value
                                              for key, value in weights.items()}
                                       for name, weights in payload["models"].items()}}
                for payload in payloads]
    return lambda sites: deliver


def noise_norm(dp: dict, size: int) -> float:
    """Expected L2 norm of the noise ``dp_noise`` adds to a vector of ``size`` numbers (sensitivity 2·clipping)."""
    sensitivity = 2 * dp["clipping"]
    if dp["noise"] == "gauss":
        return gauss_sigma(dp["epsilon"], dp["delta"], sensitivity) * math.sqrt(size)
    return sensitivity / dp["epsilon"] * math.sqrt(2 * size)   # Laplace(b): variance 2b² per number


def two_digits(value: float) -> float:
    return float(f"{value:.2g}")


@dataclass(frozen=True)
class Federation:
    """The sample federation: its sites' names and data, its generic folder and settings."""

    names: list[str]
    parts: list[tuple[Arrays, Arrays]]
    generic: Path
    settings: dict

    @classmethod
    def load(cls, sample_dir: Path, rounds: int | None) -> "Federation":
        folders = sample_sites(sample_dir)
        if not folders:
            raise SystemExit(f"privacy: no sample sites {sample_dir}/c*/train.npz + test.npz. Create them with "
                             "scripts.make_sample_data or pass --sample-dir.")
        settings = generic_settings(sample_dir / "generic")
        if rounds:
            settings["max_iter"] = rounds
        return cls([f.name for f in folders], [(read_npz(f / "train.npz"), read_npz(f / "test.npz")) for f in folders],
                   sample_dir / "generic", settings)

    def run(self, label: list[str], overrides: dict, controller: Callable[[list[Site]], Controller],
            workdir: Path) -> Outcome:
        outcome = run_federated(label, self.parts, {**self.settings, **overrides}, self.generic, workdir,
                                controller=controller)
        print(f"  done: {' '.join(label)} ({outcome.seconds:.0f}s)", file=sys.stderr)
        return outcome


def dp_settings(noise: str, epsilon: float, clipping: float) -> dict:
    """The config.yml ``dp`` section of one row."""
    return {"epsilon": epsilon, "delta": DELTA if noise == "gauss" else 0.0, "clipping": clipping, "noise": noise}


def row(outcome: Outcome) -> list[str]:
    return [*outcome.label, f"{outcome.common:.4f}", *(f"{a:.4f}" for a in outcome.sites),
            "finite" if outcome.finite else "NaN", f"{outcome.seconds:.1f}"]


# --------------------------------------------------------------------------- main

def run_all(args: argparse.Namespace) -> list[str]:
    federation = Federation.load(args.sample_dir, args.rounds)
    meter = ChangeMeter()
    with tempfile.TemporaryDirectory(prefix="privacy-") as scratch:
        plain = federation.run(["off (FedAvg)", "-", "-", "-", "-"], {}, meter.watch, Path(scratch) / "plain")
        summer = SecureSum()
        secure = federation.run(["SMPC", "-", "-", "-", "-"], {"use_smpc": True}, summer.watch, Path(scratch) / "smpc")
        control = federation.run([f"off, round 1 jittered {JITTER:g}", "-", "-", "-", "-"], {},
                                 jittered(JITTER, args.seed), Path(scratch) / "jitter")
        typical = statistics.median(meter.l2)
        clipping = {"gauss": args.clipping or two_digits(typical),
                    "laplace": args.l1_clipping or two_digits(statistics.median(meter.l1))}
        noised = []
        for noise, epsilon in [("gauss", CLIP_ONLY_EPSILON), *(("gauss", e) for e in args.epsilons),
                               *(("laplace", e) for e in args.laplace_epsilons)]:
            dp = dp_settings(noise, epsilon, clipping[noise])
            label = ["DP, clipping only" if epsilon == CLIP_ONLY_EPSILON else "DP", noise, f"{epsilon:g}",
                     f"{'L2' if noise == 'gauss' else 'L1'} {clipping[noise]:g}",
                     f"{noise_norm(dp, meter.size) / typical:.3g}"]
            noised.append(federation.run(label, {"dp": dp}, lambda sites: noising(sites, args.seed),
                                         Path(scratch) / f"dp{len(noised)}"))
    sizes = ", ".join(f"{name} ({len(train[1]):,} train, {len(test[1]):,} test)"
                      for name, (train, test) in zip(federation.names, federation.parts))
    settings = federation.settings
    header = [
        f"Cost of differential privacy and secure aggregation, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        f"sample federation: {sizes} in {shown(args.sample_dir)}; {settings['max_iter']} rounds of "
        f"{settings['local_epochs']} local epoch(s), batch {settings['batch_size']}, lr {settings['learning_rate']:g}, "
        f"seed {settings['seed']}",
        f"round change of a site without DP (local - global, {meter.size:,} float weights, {len(meter.l2)} changes): "
        f"L2 norm median {typical:.3g} ({min(meter.l2):.3g}..{max(meter.l2):.3g}), "
        f"L1 norm median {statistics.median(meter.l1):.3g} ({min(meter.l1):.3g}..{max(meter.l1):.3g})",
        f"clipping: L2 {clipping['gauss']:g} for gauss ({'--clipping' if args.clipping else 'the median, 2 digits'}), "
        f"L1 {clipping['laplace']:g} for laplace ({'--l1-clipping' if args.l1_clipping else 'the median, 2 digits'}); "
        f"delta {DELTA:g} (gauss); sensitivity 2 x clipping; noise seed {args.seed}",
        "noise/change: expected L2 norm of the noise added to one site's change / median L2 norm of a change",
        f"SMPC: a round's secure sum / sample count is at most {summer.error:.2g} from the exact one (fixed point, "
        f"exponent {summer.exponent}); training amplifies such differences: the final students of the plain and "
        f"SMPC runs differ by up to {float(np.max(np.abs(secure.weights - plain.weights))):.2g} per weight, those "
        f"of the plain and the jittered run by up to {float(np.max(np.abs(control.weights - plain.weights))):.2g}",
        "accuracy: final global student on all the sites' test images; c1, c2: on each site's own; outputs: NaN when "
        "the final student's outputs are not finite on some test image (the app clips noised BatchNorm running "
        "variances at 0, so noise alone should not cause it)", ""]
    columns = ["privacy", "noise", "epsilon", "clipping", "noise/change", "accuracy", *federation.names,
               "outputs", "seconds"]
    return header + table(columns, [row(o) for o in [plain, secure, control, *noised]], labels=4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=positive_numbers, default=[1.0, 10.0, 100.0, 1000.0, 10000.0],
                        help="epsilons of the Gauss rows, comma-separated (default 1,10,100,1000,10000)")
    parser.add_argument("--laplace-epsilons", type=positive_numbers, default=[1e4, 1e5],
                        help="epsilons of the Laplace rows, comma-separated (default 10000,100000)")
    parser.add_argument("--clipping", type=float, default=None,
                        help="L2 clipping norm of the Gauss rows (default: the measured median L2 norm of a "
                             "site's round change, to 2 digits)")
    parser.add_argument("--l1-clipping", type=float, default=None,
                        help="L1 clipping norm of the Laplace rows (default: the measured median L1 norm)")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="rounds (default: max_iter of the sample config.yml, 6)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the DP noise (default 0)")
    parser.add_argument("--sample-dir", type=Path, default=SAMPLE,
                        help="the sample federation: generic/ and c*/ (default sample_data/)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/privacy.txt)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_script(run_all, parse_args(argv))


if __name__ == "__main__":
    main()
