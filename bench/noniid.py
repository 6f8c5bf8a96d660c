"""Label skew: what non-IID sites cost the federated student, FedAvg against FedProx.

On real MNIST, 3 sites distill the sample teacher into the sample student. Their training
images are split IID, Dirichlet(0.5) or Dirichlet(0.1) by label (the splits of
``scripts.make_sample_data``) and the sites' students are combined by FedAvg or FedProx;
a centralized distillation on the pooled images of the same 3 sites is the reference.
Every final student is scored on one common test set (MNIST t10k) and on the sites' own
test sets, which are skewed like their training sets.

The federation runs in this process with the app's ``Site`` objects: training, payloads
and aggregation are the app's own, only the HTTP transport between sites is skipped.

    python -m bench.noniid [--per-site 5000] [--rounds 10] [--mu 0.1]
"""
from __future__ import annotations

import argparse
import datetime
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from app.aggregation import flatten, to_arrays
from app.api import distill
from app.config import SECTION, TRAINING_KEYS
from app.data import TensorData
from app.federation import Controller, federate, hand_over
from app.model_files import build_model
from app.weights import load_weights
from app.site import Site
from app.training import evaluate
from bench.output import save
from scripts.devdata.args import positive_int
from scripts.devdata.idx import DEFAULT_MNIST, MNIST_FILES, idx_file, read_idx
from scripts.devdata.partition import site_indices

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "noniid.txt"
SAMPLE = ROOT / "sample_data"
# The sample teacher was trained on the first 30,000 images of this permutation of the MNIST
# training set (make_sample_data.py's defaults): the sites get only the other 30,000.
TEACHER_SEED, TEACHER_IMAGES = 0, 30_000

Arrays = tuple[np.ndarray, np.ndarray]   # images uint8 [N, 28, 28], labels int64 [N]


@dataclass(frozen=True)
class Pool:
    """The images sites may receive, the test images, and where both came from."""

    train: Arrays
    test: Arrays
    source: str


@dataclass(frozen=True)
class Outcome:
    """One run: the final global student's accuracies (and the baseline's), its weights and the run's seconds."""

    label: list[str]
    common: float                # on the common test set
    sites: list[float]           # on each site's own test set
    seconds: float
    weights: np.ndarray | None   # the final global student, flattened (None for the centralized run)
    finite: bool = True          # whether the final student's test losses were finite (no NaN outputs)
    baseline: float | None = None   # with baseline: true, the baseline student's common accuracy


# --------------------------------------------------------------------------- data

def load_pool(mnist_dir: Path, sample_dir: Path) -> Pool:
    """MNIST training images the sample teacher did not see, and t10k; else the sample sites' data."""
    files = [idx_file(mnist_dir, stem) for stem in MNIST_FILES]
    if all(files):
        images, labels, test_images, test_labels = (read_idx(f) for f in files)
        unseen = np.random.default_rng(TEACHER_SEED).permutation(len(labels))[TEACHER_IMAGES:]
        return Pool((images[unseen], labels[unseen].astype(np.int64)),
                    (test_images, test_labels.astype(np.int64)),
                    f"real MNIST from {mnist_dir}: the {len(unseen):,} training images the sample teacher did not "
                    f"see; common test set: all {len(test_labels):,} t10k images")
    folders = sample_sites(sample_dir)
    if not folders:
        raise SystemExit(
            f"no MNIST in {mnist_dir} (looked for {', '.join(MNIST_FILES)}, optionally .gz) and no sample "
            f"sites {sample_dir}/c*/train.npz + test.npz. Pass --mnist-dir with the folder holding the MNIST "
            f"IDX files, or create the sample data with scripts.make_sample_data.")
    train, test = (concatenate([read_npz(f / name) for f in folders]) for name in ("train.npz", "test.npz"))
    names = ", ".join(f.name for f in folders)
    return Pool(train, test, f"NO MNIST in {mnist_dir}: falling back to the sample sites {names} in {sample_dir} "
                             f"({len(train[1]):,} training images re-split here; common test set: their "
                             f"{len(test[1]):,} test images)")


def sample_sites(sample_dir: Path) -> list[Path]:
    """The sample federation's site folders: ``c*/`` holding train.npz and test.npz."""
    return sorted(f for f in sample_dir.glob("c*") if (f / "train.npz").is_file() and (f / "test.npz").is_file())


def read_npz(path: Path) -> Arrays:
    with np.load(path) as archive:
        return archive["images"], archive["labels"].astype(np.int64)


def concatenate(parts: list[Arrays]) -> Arrays:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def split_sites(pool: Pool, alpha: float | None, sites: int, per_site: int, per_site_test: int,
                seed: int) -> list[tuple[Arrays, Arrays]]:
    """Each site's (train, test) arrays: IID when ``alpha`` is None, else Dirichlet(alpha) label skew
    (a site's test set skewed like its training set), exactly as scripts.make_sample_data splits."""
    train_parts, test_parts = site_indices("iid" if alpha is None else "dirichlet", pool.train[1], pool.test[1],
                                           sites, per_site, per_site_test, alpha, seed)
    return [((pool.train[0][tr], pool.train[1][tr]), (pool.test[0][te], pool.test[1][te]))
            for tr, te in zip(train_parts, test_parts)]


def as_data(arrays: Arrays, name: str) -> TensorData:
    return TensorData(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]), name=name)


# --------------------------------------------------------------------------- sites

def generic_settings(generic: Path) -> dict:
    """The sample federation's config.yml section."""
    return yaml.safe_load((generic / "config.yml").read_text())[SECTION]


def site_folder(folder: Path, generic: Path, settings: dict) -> Path:
    """A site's input folder as the platform assembles it, without its data: the generic files, its config."""
    folder.mkdir(parents=True)
    for item in generic.iterdir():
        if item.is_file():
            shutil.copy(item, folder / item.name)
    (folder / "config.yml").write_text(yaml.safe_dump({SECTION: settings}, sort_keys=False))
    return folder


def write_site(folder: Path, generic: Path, settings: dict, train: Arrays, test: Arrays) -> Path:
    """A site's input folder as the platform assembles it: the generic files, its config, its data."""
    site_folder(folder, generic, settings)
    for name, (images, labels) in (("train.npz", train), ("test.npz", test)):
        np.savez(folder / name, images=images, labels=labels)
    return folder


def load_sites(folders: list[Path], output_root: Path) -> list[Site]:
    return [Site.load(folder, output_root / folder.name, folder.name, log=lambda message: None)
            for folder in folders]


# --------------------------------------------------------------------------- runs

def run_federated(label: list[str], parts: list[tuple[Arrays, Arrays]], settings: dict, generic: Path,
                  workdir: Path, common: TensorData | None = None,
                  controller: Callable[[list[Site]], Controller] = lambda sites: hand_over) -> Outcome:
    """One federation of sites holding ``parts``; ``controller(sites)`` gives what plays the controller.
    Without a ``common`` test set the common accuracy is that on all the sites' test images."""
    started = time.perf_counter()
    folders = [write_site(workdir / f"site{i + 1}", generic, settings, train, test)
               for i, (train, test) in enumerate(parts)]
    sites = load_sites(folders, workdir / "out")
    federate(sites, controller(sites))
    accuracy = {name: common_accuracy(sites, name, common) for name in sites[0].models}
    evaluations = [site.evaluations["student"] for site in sites]
    return Outcome(label, accuracy["student"], [e.accuracy for e in evaluations], time.perf_counter() - started,
                   flatten({"student": to_arrays(sites[0].student.state_dict())}),
                   all(math.isfinite(e.loss) for e in evaluations), accuracy.get("baseline"))


def common_accuracy(sites: list[Site], model: str, common: TensorData | None) -> float:
    """The final global ``model``'s accuracy on ``common``, or on all the sites' test images."""
    if common is not None:
        return evaluate(sites[0].models[model], common, sites[0].num_classes).accuracy
    evaluations = [site.evaluations[model] for site in sites]
    return sum(e.accuracy * e.samples for e in evaluations) / sum(e.samples for e in evaluations)


def run_centralized(label: list[str], parts: list[tuple[Arrays, Arrays]], settings: dict, generic: Path,
                    common: TensorData, workdir: Path) -> Outcome:
    """Distillation on the pooled training images of the sites, as many epochs as the federation's
    rounds × local epochs, from the same teacher and the same initial student (``Site.load``)."""
    started = time.perf_counter()
    pooled = concatenate([train for train, _ in parts])
    folder = write_site(workdir / "pooled", generic, settings, pooled, parts[0][1])
    site = load_sites([folder], workdir / "out")[0]
    config = site.config
    distill(site.teacher, site.student, site.train, epochs=config.max_iter * config.local_epochs,
            **config.model_dump(include=set(TRAINING_KEYS)))
    own = [evaluate(site.student, as_data(test, "site test"), site.num_classes).accuracy for _, test in parts]
    return Outcome(label, evaluate(site.student, common, site.num_classes).accuracy, own,
                   time.perf_counter() - started, None)


def teacher_on(data: TensorData, generic: Path, settings: dict) -> float:
    """The sample teacher's accuracy on ``data``."""
    teacher = build_model(generic / settings["teacher_model"], settings.get("teacher_args", {}), "teacher_model")
    load_weights(teacher, generic / settings["teacher_weights"])
    return evaluate(teacher, data, data.num_classes_seen).accuracy


# --------------------------------------------------------------------------- report

def table(columns: list[str], rows: list[list[str]], labels: int) -> list[str]:
    """A text table; the first ``labels`` columns are left-aligned, the others (numbers) right-aligned."""
    widths = [max(len(row[i]) for row in [columns, *rows]) + 2 for i in range(len(columns))]
    return ["".join(text.ljust(w) if i < labels else text.rjust(w) for i, (text, w) in enumerate(zip(row, widths)))
            .rstrip() for row in [columns, *rows]]


def accuracies(outcome: Outcome) -> list[str]:
    """The common accuracy, the sites' mean and each site's accuracy, formatted."""
    return [f"{value:.4f}" for value in (outcome.common, float(np.mean(outcome.sites)), *outcome.sites)]


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def describe_split(name: str, parts: list[tuple[Arrays, Arrays]]) -> str:
    counts = "; ".join(f"site{i + 1} {len(train[1])}: {np.bincount(train[1], minlength=10).tolist()}"
                       for i, (train, _) in enumerate(parts))
    return f"  {name:<14} {counts}"


def run_all(args: argparse.Namespace) -> list[str]:
    pool = load_pool(args.mnist_dir, args.sample_dir)
    generic = args.sample_dir / "generic"
    # Fewer images than asked when the pool is small (the sample-data fallback): IID needs them all.
    per_site = min(args.per_site, len(pool.train[1]) // args.sites)
    per_site_test = min(args.per_site_test, len(pool.test[1]) // args.sites)
    common = as_data(pool.test, "common test set")
    base = {**generic_settings(generic), "max_iter": args.rounds, "seed": args.seed}
    strategies = {"FedAvg": {"aggregation": "fedavg"}, "FedProx": {"aggregation": "fedprox", "mu": args.mu}}
    splits = {"IID": None, **{f"Dirichlet {alpha:g}": alpha for alpha in args.alphas}}
    outcomes, described = [], []
    with tempfile.TemporaryDirectory(prefix="noniid-") as scratch:
        for split_name, alpha in splits.items():
            parts = split_sites(pool, alpha, args.sites, per_site, per_site_test, args.seed)
            described.append(describe_split(split_name, parts))
            for strategy, overrides in strategies.items():
                workdir = Path(scratch) / f"{split_name}-{strategy}".replace(" ", "_")
                outcomes.append(run_federated([split_name, strategy], parts, {**base, **overrides}, generic,
                                              workdir, common))
                print(f"  done: {split_name}, {strategy} ({outcomes[-1].seconds:.0f}s)", file=sys.stderr)
            outcomes.append(run_centralized([split_name, "centralized"], parts, base, generic, common,
                                            Path(scratch) / f"{split_name}-central".replace(" ", "_")))
            print(f"  done: {split_name}, centralized ({outcomes[-1].seconds:.0f}s)", file=sys.stderr)
    teacher_accuracy = teacher_on(common, generic, base)
    header = [
        f"Non-IID label skew, {datetime.datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)",
        f"data: {pool.source}",
        f"{args.sites} sites, {per_site:,} training and {per_site_test:,} test images per site on average "
        f"({args.per_site:,}/{args.per_site_test:,} requested; the Dirichlet shares make sizes unequal); "
        f"{args.rounds} rounds of "
        f"{base['local_epochs']} local epoch(s); FedProx mu {args.mu:g}; seed {args.seed}",
        f"teacher {shown(generic / 'teacher.pt')} (accuracy on the common test set {teacher_accuracy:.4f}), "
        f"student {shown(generic / 'student.py')}; settings of {shown(generic / 'config.yml')}: "
        f"batch {base['batch_size']}, "
        f"lr {base['learning_rate']:g}, T {base['temperature']:g}, alpha {base['alpha']:g}",
        f"centralized: distill() on the {args.sites} sites' pooled training images for rounds x local epochs "
        "epochs, from the same initial student",
        "accuracy: final global student on the common test set; sites mean, siteN: on the sites' own "
        "(equally skewed) test sets",
        "training images per class of each site:", *described, ""]
    columns = ["split", "strategy", "accuracy", "sites mean", *(f"site{i + 1}" for i in range(args.sites)), "seconds"]
    return header + table(columns, [[*o.label, *accuracies(o), f"{o.seconds:.1f}"] for o in outcomes], labels=2)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-site", type=positive_int, default=5000, help="training images per site (default 5000)")
    parser.add_argument("--per-site-test", type=positive_int, default=1000,
                        help="test images per site, skewed like its training images (default 1000)")
    parser.add_argument("--sites", type=positive_int, default=3, help="number of sites (default 3)")
    parser.add_argument("--rounds", type=positive_int, default=10, help="federated rounds (default 10)")
    parser.add_argument("--mu", type=float, default=0.1, help="FedProx proximal weight (default 0.1)")
    parser.add_argument("--alphas", type=positive_numbers, default=[0.5, 0.1],
                        help="Dirichlet alphas of the skewed splits, comma-separated (default 0.5,0.1)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and the training (default 0)")
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help=f"folder with the MNIST IDX files (default {DEFAULT_MNIST})")
    parser.add_argument("--sample-dir", type=Path, default=SAMPLE,
                        help="its generic/ gives teacher, student and settings; its c*/ the data when "
                             "--mnist-dir has no MNIST (default sample_data/)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/noniid.txt)")
    return parser.parse_args(argv)


def positive_numbers(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"must be positive numbers separated by commas, got {text!r}")
    return values


def run_script(run: Callable[[argparse.Namespace], list[str]], args: argparse.Namespace) -> None:
    """Set the threads, run, print the lines and write them to ``args.results``."""
    torch.set_num_threads(args.threads)
    save(run(args), args.results)


def main(argv: list[str] | None = None) -> None:
    run_script(run_all, parse_args(argv))


if __name__ == "__main__":
    main()
