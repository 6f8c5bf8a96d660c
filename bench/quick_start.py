"""What the README says of the quick start, measured: what distillation buys, and what SMPC costs.

The sample federation (sample_data/c1, c2 with generic/: 5,000 training and 1,000 test images
per site, 6 rounds) runs in this process with the app's ``Site`` objects (``app.federation.federate``)
as ``python main.py simulate`` runs it: same data, same settings and, by default, as many torch
threads as each of its client processes gets, so the distilled student is the quick start's byte
for byte (tests/test_federation.py shows sites sharing one process end with the student of
separate processes). Rows:

- the sample federation with ``baseline: true``: the distilled student (the quick start's) and
  the same student trained alone, without the teacher;
- the same with ``use_smpc: true``: the sites' updates summed in fixed point as the test-bed's
  controller sums them;
- 500 training images per site (``--scarce``), split from MNIST as ``python -m
  scripts.make_sample_data --train-per-client 500`` splits it, with ``baseline: true``.

    python -m bench.quick_start [--threads N] [--mnist-dir DIR] [--scarce 500]
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch

from app.results import chance_margin
from bench.noniid import (ROOT, SAMPLE, Arrays, Outcome, generic_settings, load_pool, read_npz, run_federated,
                          run_script, sample_sites, shown, split_sites, table)
from scripts.devdata.args import positive_int
from scripts.devdata.idx import DEFAULT_MNIST
from testbed.controller import client_env
from testbed.privacy import smpc_sum

DEFAULT_RESULTS = ROOT / "bench" / "results" / "quick_start.txt"
# What one client process of a two-site `simulate` run gets (the test-bed's share of the cores).
CLIENT_THREADS = int(client_env(2, None)["KD_NUM_THREADS"])


def secure_sum(sites):
    exponent = sites[0].config.smpc_exponent
    return lambda payloads, memo: smpc_sum(payloads, exponent)


def run_all(args: argparse.Namespace) -> list[str]:
    folders = sample_sites(args.sample_dir)
    if not folders:
        raise SystemExit(f"quick_start: no sample sites {args.sample_dir}/c*/train.npz + test.npz. Create them "
                         "with scripts.make_sample_data or pass --sample-dir.")
    generic = args.sample_dir / "generic"
    settings = {**generic_settings(generic), **({"max_iter": args.rounds} if args.rounds else {})}
    sample: list[tuple[Arrays, Arrays]] = [(read_npz(f / "train.npz"), read_npz(f / "test.npz")) for f in folders]
    pool = load_pool(args.mnist_dir, args.sample_dir)
    test_per_site = len(sample[0][1][1])
    scarce = split_sites(pool, None, len(folders), args.scarce, test_per_site, settings["seed"])
    runs = [("sample", sample, {"baseline": True}, None),
            ("sample, use_smpc", sample, {"use_smpc": True}, secure_sum),
            (f"{args.scarce} images per site", scarce, {"baseline": True}, None)]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="quick-start-") as scratch:
        for index, (label, parts, overrides, controller) in enumerate(runs):
            options = {} if controller is None else {"controller": controller}
            outcomes.append(run_federated([label, f"{len(parts[0][0][1]):,}"], parts, {**settings, **overrides},
                                          generic, Path(scratch) / str(index), **options))
            print(f"  done: {label} ({outcomes[-1].seconds:.0f}s)", file=sys.stderr)
    test_images = sum(len(test[1]) for _, test in sample)
    header = [
        f"The quick start's federation, {datetime.datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s) (a two-site simulate client gets {CLIENT_THREADS} here)",
        f"sample federation: {', '.join(f.name for f in folders)} in {shown(args.sample_dir)}, settings of "
        f"{shown(generic / 'config.yml')} ({settings['max_iter']} rounds, batch {settings['batch_size']}, "
        f"lr {settings['learning_rate']:g}, T {settings['temperature']:g}, alpha {settings['alpha']:g}, "
        f"seed {settings['seed']}); {args.scarce} images per site: {pool.source}, split as "
        f"scripts.make_sample_data --train-per-client {args.scarce} splits it, as many test images per site as "
        "the sample's",
        f"accuracy: the final global model on all the sites' test images ({test_images:,}), as the summary's "
        "'all sites' line; alone: the baseline student (same architecture, start, rounds and data, no teacher); "
        "chance: two standard errors of the difference (report.md's distillation_gain_noise)", ""]
    columns = ["run", "train/site", "distilled", "alone", "gain", "chance", "seconds"]
    return header + table(columns, [row(o, test_images) for o in outcomes], labels=2)


def row(outcome: Outcome, test_images: int) -> list[str]:
    distilled, alone = outcome.common, outcome.baseline
    if alone is None:
        return [*outcome.label, f"{100 * distilled:.2f}%", "-", "-", "-", f"{outcome.seconds:.1f}"]
    return [*outcome.label, f"{100 * distilled:.2f}%", f"{100 * alone:.2f}%", f"{100 * (distilled - alone):+.2f}",
            f"±{100 * chance_margin(distilled, alone, test_images):.2f}", f"{outcome.seconds:.1f}"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, default=CLIENT_THREADS,
                        help=f"torch.set_num_threads (default {CLIENT_THREADS}: what each client process of the "
                             "quick start gets on this machine)")
    parser.add_argument("--scarce", type=positive_int, default=500,
                        help="training images per site of the last row (default 500)")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="rounds (default: max_iter of the sample config.yml, 6)")
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help=f"folder with the MNIST IDX files, for the last row's sites (default {DEFAULT_MNIST}; "
                             "without MNIST the sample sites' images are re-split, and the header says so)")
    parser.add_argument("--sample-dir", type=Path, default=SAMPLE,
                        help="the sample federation: generic/ and c*/ (default sample_data/)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/quick_start.txt)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_script(run_all, parse_args(argv))


if __name__ == "__main__":
    main()
