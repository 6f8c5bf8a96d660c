"""Convergence without tuning: the federated KD student against central KD and the no-KD baseline.

Over label-skewed MNIST federations (Dirichlet 0.5 and 0.1 at 3 and 5 sites, cut from the
30,000 training images the sample teacher never saw), every recipe of settings is run three
ways at equal local epochs (rounds × local epochs):

- **KD**: the federation distils the sample teacher into the sample student (the app's ``Site``
  objects in this process: their training, payloads, aggregation and server optimizer);
- **no KD**: the same federation's baseline student (``baseline: true``), trained alongside on
  the hard labels with the same rounds, seed, data and server optimizer;
- **central**: ``distill()`` on the sites' pooled training images for as many epochs, from the
  same initial student.

The recipes: the original app's defaults (``seed defaults``) alone and with each server optimizer,
the sample federation's settings, and the app's defaults alone and with each server optimizer.
Every final student is scored on one common test set (MNIST t10k).

The photo sample (``scripts.make_photo_sample``: 2 sites of MNIST digits drawn as JPEG and PNG
photos, one site without the 3s, its own teacher and student) is one more federation (``photo``
in ``--federations``), with its own files and image keys under every recipe. It is dearer (a
99k-parameter student on 5,700 decoded photos), so it runs fewer recipes (``--photo-recipes``);
its students are scored on all its sites' test photos.

The header also says why KD can trail the baseline: the teacher's weakest class, and the share of
the loss gradient the hard labels really get at the initial student for each recipe's temperature
and alpha. The last line gives, over the rows of the app's defaults (recipe ``defaults``) on every
federation, the largest gap of the federated KD student below central KD and the worst KD − no-KD
difference, in percentage points.

    python -m scripts.make_photo_sample          # once: photo_sample/, about 3 minutes
    python -m bench.convergence [--quick] [--recipes NAME,NAME] [--federations 0.5:3,0.1:5,photo] [--jobs 2]
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.api import distill
from app.config import TRAINING_KEYS, KDConfig
from app.data import Data
from app.federation import federate
from app.losses import distillation_loss
from app.results import chance_margin
from app.site import Site
from app.training import compute_logits, evaluate
from bench.noniid import (SAMPLE, Arrays, as_data, common_accuracy, concatenate, generic_settings, load_pool,
                          load_sites, run_script, site_folder, split_sites, table, write_site)
from scripts.devdata.args import positive_int
from scripts.devdata.idx import DEFAULT_MNIST

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "convergence.txt"
DEFAULT_PHOTO_SAMPLE = ROOT / "photo_sample"
PHOTO = "photo"   # the photo sample's name in --federations

# The original FeatureCloud app's defaults (and this app's until bench/convergence.py chose new ones).
SEED = {"batch_size": 256, "learning_rate": 0.001, "max_iter": 10, "local_epochs": 1, "temperature": 2.0,
        "alpha": 0.5, "optimizer": "adam", "server_optimizer": "fedavg", "lr_schedule": "constant",
        "lr_warmup": 0.0}
# The sample federation's settings (its generic/config.yml), with today's server side; a key it does
# not set takes the value the app had when the sample was tuned (constant learning rate, no warm-up).
SAMPLE_KEYS = ("batch_size", "learning_rate", "max_iter", "local_epochs", "temperature", "alpha", "loss",
               "lr_schedule", "lr_warmup")
# Server optimizers take the app's defaults of their keys (server_learning_rate: the rate of each optimizer).
SERVERS = ("fedavgm", "fedadam", "fedyogi")
RECIPES: dict[str, dict | str] = {
    "seed defaults": SEED,
    **{f"seed + {server}": {**SEED, "server_optimizer": server} for server in SERVERS},
    "sample": "sample",            # the sample's training keys, server fedavg
    "defaults": {},                # every key at the app's default
    "previous defaults": {"learning_rate": 0.004},   # as chosen by this bench's first run
    **{f"defaults + {server}": {"server_optimizer": server} for server in SERVERS},
    # FedAvgM at a full server step and lighter momentum: better than its default keys in trials (issue 13)
    "defaults + fedavgm 1/0.5": {"server_optimizer": "fedavgm", "server_learning_rate": 1.0, "server_momentum": 0.5},
}
DEFAULT_RECIPES = list(RECIPES)
QUICK_RECIPES = ["seed defaults", "defaults"]
PHOTO_RECIPES = ["sample", "defaults", "previous defaults"]
TARGET_RECIPE = "defaults"
# What each federation's own files and images are: kept under every recipe.
MNIST_KEYS = ("teacher_model", "student_model", "teacher_weights", "train_dataset", "test_dataset")
PHOTO_KEYS = (*MNIST_KEYS, "teacher_args", "image_size", "channels", "normalize")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Federation:
    """A label-skewed MNIST federation, or the photo sample (``alpha`` None)."""

    alpha: float | None
    sites: int = 0

    @property
    def name(self) -> str:
        return "photo sample" if self.alpha is None else f"Dir {self.alpha:g}, {self.sites} sites"


@dataclass(frozen=True)
class Row:
    federation: str
    recipe: str
    kd: float
    baseline: float
    central: float
    margin: float      # two standard errors of KD − no KD on the common test set
    seconds: float

    def cells(self) -> list[str]:
        return [self.federation, self.recipe, f"{self.kd:.4f}", f"{self.baseline:.4f}", f"{self.central:.4f}",
                f"{100 * (self.kd - self.central):+.2f}", f"{100 * (self.kd - self.baseline):+.2f}",
                f"{100 * self.margin:.2f}", f"{self.seconds:.0f}"]


def recipe_settings(name: str, sample: dict) -> dict:
    """The config keys a recipe sets (on top of the federation's files)."""
    recipe = RECIPES[name]
    if recipe == "sample":
        return {"server_optimizer": "fedavg", "lr_schedule": "constant", "lr_warmup": 0.0,
                **{key: sample[key] for key in SAMPLE_KEYS if key in sample}}
    return dict(recipe)


class Runs:
    """One federation's runs: every recipe federated (KD and no KD side by side) and central KD, in a
    scratch folder. Subclasses say where the sites' data come from and what the common test set is."""

    def __init__(self, args: argparse.Namespace, scratch: Path, name: str, generic: Path,
                 file_keys: tuple[str, ...]) -> None:
        self.args = args
        self.scratch = scratch
        self.name = name
        self.generic = generic
        self.sample = generic_settings(generic)
        self.files = {key: self.sample[key] for key in file_keys if key in self.sample}
        self.central: dict[tuple, float] = {}
        self.runs = 0

    def settings(self, recipe: str) -> dict:
        settings = {**self.files, "seed": self.args.seed, "baseline": True, **recipe_settings(recipe, self.sample)}
        if self.args.max_rounds:
            settings["max_iter"] = min(settings.get("max_iter", KDConfig().max_iter), self.args.max_rounds)
        return settings

    def workdir(self) -> Path:
        self.runs += 1
        return self.scratch / f"run{self.runs}"

    def federated(self, settings: dict) -> tuple[float, float]:
        """The final global KD student's and baseline's accuracy on the common test set."""
        raise NotImplementedError

    def pooled(self, settings: dict) -> tuple[Site, Data]:
        """A site holding every site's training images, ready to train, and the common test set."""
        raise NotImplementedError

    def describe(self) -> str:
        """The training images per class of each site, one line."""
        raise NotImplementedError

    @property
    def test_images(self) -> int:
        """The size of the common test set."""
        raise NotImplementedError

    def centralized(self, settings: dict) -> float:
        """distill() on the pooled training images for rounds × local epochs, from the federation's
        initial student (the same Site.load), with the same training keys; one run per training setting."""
        config = KDConfig.model_validate(settings)
        training = config.model_dump(include=set(TRAINING_KEYS))
        # repr: some training keys hold lists (augment), which a dict key cannot
        key = (config.max_iter * config.local_epochs, repr(sorted(training.items())))
        if key not in self.central:
            site, common = self.pooled(settings)
            distill(site.teacher, site.student, site.train, epochs=config.max_iter * config.local_epochs, **training)
            self.central[key] = evaluate(site.student, common, site.num_classes).accuracy
        return self.central[key]

    def diagnosis(self, recipes: list[str]) -> list[str]:
        """Why KD can trail the baseline: how good the teacher is on each class, and how much of the
        loss's gradient the hard-label term carries at the initial student for each recipe's T and alpha."""
        site, common = self.pooled({**self.files, "seed": self.args.seed})
        teacher = evaluate(site.teacher, common, site.num_classes)
        weakest = int(np.nanargmin([np.nan if a is None else a for a in teacher.per_class_accuracy]))
        teacher_logits, student_logits = (compute_logits(model, common) for model in (site.teacher, site.student))
        shares = []
        for name in recipes:
            config = KDConfig.model_validate(self.settings(name))
            share = label_share(student_logits, teacher_logits, common.labels, config.temperature, config.alpha,
                                config.loss)
            shares.append(f"{name} (T {config.temperature:g}, alpha {config.alpha:g}) {100 * share:.0f}%")
        return [f"{self.name}: teacher on the common test set: accuracy {teacher.accuracy:.4f}, weakest class "
                f"{weakest} {teacher.per_class_accuracy[weakest]:.4f}; share of the hard-label term in the loss "
                "gradient at the initial student: " + "; ".join(shares)]

    def row(self, recipe: str) -> Row:
        started = time.perf_counter()
        settings = self.settings(recipe)
        kd, baseline = self.federated(settings)
        central = self.centralized(settings)
        return Row(self.name, recipe, kd, baseline, central, chance_margin(kd, baseline, self.test_images),
                   time.perf_counter() - started)


class MnistRuns(Runs):
    """A Dirichlet label-skewed split of the MNIST images the sample teacher never saw; common test set: t10k."""

    def __init__(self, args: argparse.Namespace, scratch: Path, federation: Federation) -> None:
        super().__init__(args, scratch, federation.name, args.sample_dir / "generic", MNIST_KEYS)
        self.pool = load_pool(args.mnist_dir, args.sample_dir)
        test_images, test_labels = self.pool.test
        self.common = as_data((test_images[:args.test_images], test_labels[:args.test_images]), "common test set")
        self.parts: list[tuple[Arrays, Arrays]] = split_sites(
            self.pool, federation.alpha, federation.sites, args.per_site, args.per_site_test, args.seed)

    def federated(self, settings: dict) -> tuple[float, float]:
        workdir = self.workdir()
        folders = [write_site(workdir / f"site{i + 1}", self.generic, settings, train, test)
                   for i, (train, test) in enumerate(self.parts)]
        sites = load_sites(folders, workdir / "out")
        federate(sites)
        return tuple(common_accuracy(sites, name, self.common) for name in ("student", "baseline"))

    def pooled(self, settings: dict) -> tuple[Site, Data]:
        workdir = self.workdir()
        folder = write_site(workdir / "pooled", self.generic, settings, concatenate([p[0] for p in self.parts]),
                            self.parts[0][1])
        return load_sites([folder], workdir / "out")[0], self.common

    def describe(self) -> str:
        counts = [np.bincount(train[1], minlength=10).tolist() for train, _ in self.parts]
        return f"  {self.name}: " + "; ".join(f"site{i + 1} {sum(c)}: {c}" for i, c in enumerate(counts))

    @property
    def test_images(self) -> int:
        return len(self.common)


class PhotoRuns(Runs):
    """The photo sample's sites as they are (their folders linked); common test set: all their test photos."""

    def __init__(self, args: argparse.Namespace, scratch: Path, federation: Federation) -> None:
        self.site_dirs = photo_sites(args.photo_sample)
        super().__init__(args, scratch, federation.name, args.photo_sample / "generic", PHOTO_KEYS)

    def federated(self, settings: dict) -> tuple[float, float]:
        workdir = self.workdir()
        folders = [self.site(workdir / folder.name, settings, [folder]) for folder in self.site_dirs]
        sites = load_sites(folders, workdir / "out")
        federate(sites)
        # every site's final evaluation of the global models, weighted by its test photos: all test photos
        return tuple(common_accuracy(sites, name, None) for name in ("student", "baseline"))

    def pooled(self, settings: dict) -> tuple[Site, Data]:
        """The pooled site takes the run plan alone; with normalize: federated its statistics are those of
        all the training photos, as the federation's are."""
        workdir = self.workdir()
        site = load_sites([self.site(workdir / "pooled", settings, self.site_dirs)], workdir / "out")[0]
        site.adopt_plan(site.make_plan([site.survey()]))
        if site.needs_channel_sums():
            site.adopt_normalization(site.pool_channel_sums([site.channel_sums()], 1))
        return site, site.test

    def site(self, folder: Path, settings: dict, sources: list[Path]) -> Path:
        """A site folder whose train/ and test/ hold links to the photos of ``sources``' class folders."""
        site_folder(folder, self.generic, settings)
        for split in SPLITS:
            for source in sources:
                for photo in sorted(source.glob(f"{split}/*/*")):
                    link = folder / split / photo.parent.name / f"{source.name}-{photo.name}"
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(photo.resolve(), link)
        return folder

    def describe(self) -> str:
        counts = [[len(list(folder.glob(f"train/{digit}/*"))) for digit in range(10)] for folder in self.site_dirs]
        return f"  {self.name}: " + "; ".join(f"{folder.name} {sum(c)}: {c}"
                                              for folder, c in zip(self.site_dirs, counts))

    @property
    def test_images(self) -> int:
        return sum(1 for folder in self.site_dirs for _ in folder.glob("test/*/*"))


def photo_sites(folder: Path) -> list[Path]:
    """The photo sample's site folders (every folder beside generic/ with train/ and test/); exits with the fix
    when there are none."""
    sites = sorted(f for f in folder.glob("*") if f.name != "generic" and all((f / s).is_dir() for s in SPLITS))
    if not sites or not (folder / "generic" / "config.yml").is_file():
        raise SystemExit(f"no photo sample in {folder} (generic/config.yml and c1/train, c1/test, ...). Build it with "
                         f"'python -m scripts.make_photo_sample --out {folder}' (about 3 minutes), pass "
                         f"--photo-sample, or leave '{PHOTO}' out of --federations.")
    return sites


def runs_of(args: argparse.Namespace, scratch: Path, federation: Federation) -> Runs:
    return (PhotoRuns if federation.alpha is None else MnistRuns)(args, scratch, federation)


def recipes_of(args: argparse.Namespace, federation: Federation) -> list[str]:
    return args.photo_recipes if federation.alpha is None else args.recipes


def run_federation(args: argparse.Namespace, federation: Federation) -> tuple[list[Row], str, list[str]]:
    """Every recipe on one federation: its rows, its sites' class counts and the diagnosis line."""
    torch.set_num_threads(args.threads)   # again: a worker process of --jobs starts with torch's default
    with tempfile.TemporaryDirectory(prefix="convergence-") as scratch:
        runs = runs_of(args, Path(scratch), federation)
        recipes = recipes_of(args, federation)
        diagnosis = runs.diagnosis(recipes)
        rows = []
        for recipe in recipes:
            rows.append(runs.row(recipe))
            print("  done: " + "  ".join(rows[-1].cells()), file=sys.stderr, flush=True)
        return rows, runs.describe(), diagnosis


def run_all(args: argparse.Namespace) -> list[str]:
    started = time.perf_counter()
    if args.jobs > 1:   # federations are independent: one process each, at most --jobs at a time
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(run_federation, [args] * len(args.federations), args.federations))
    else:
        done = [run_federation(args, federation) for federation in args.federations]
    rows = [row for federation_rows, _, _ in done for row in federation_rows]
    described = [line for _, line, _ in done]
    diagnosis = [line for _, _, lines in done for line in lines]
    mnist = [federation for federation in args.federations if federation.alpha is not None]
    photo = [federation for federation in args.federations if federation.alpha is None]
    data = []
    with tempfile.TemporaryDirectory(prefix="convergence-") as scratch:
        if mnist:   # the header's data source, common test set and recipes
            runs = MnistRuns(args, Path(scratch), mnist[0])
            data.append(f"data: {runs.pool.source}; {args.per_site:,} training images per site on average "
                        f"(Dirichlet shares make sizes unequal); common test set: {len(runs.common):,} images; "
                        f"teacher and student: {args.sample_dir / 'generic'} (teacher.pt, student.py)")
            data.append("recipes: " + "; ".join(f"{name}: {describe(runs.settings(name))}" for name in args.recipes))
        if photo:
            runs = PhotoRuns(args, Path(scratch), photo[0])
            images = ", ".join(f"{key} {value}" for key, value in runs.files.items() if key not in MNIST_KEYS)
            data.append(f"photo sample: {args.photo_sample} (python -m scripts.make_photo_sample): its own teacher "
                        f"and student (generic/), {images}; common test set: all its sites' {runs.test_images:,} "
                        "test photos; fewer recipes (a dearer run): "
                        + "; ".join(f"{name}: {describe(runs.settings(name))}" for name in args.photo_recipes))
    target = [row for row in rows if row.recipe == TARGET_RECIPE] or rows
    scope = f"'{TARGET_RECIPE}'" if target[0].recipe == TARGET_RECIPE else "(no defaults rows run:) all"
    gap = max(100 * (row.central - row.kd) for row in target)
    worst = min(100 * (row.kd - row.baseline) for row in target)
    within = all(row.kd - row.baseline >= -row.margin for row in target)
    defaults = KDConfig()
    header = [
        f"Convergence at equal local epochs, {datetime.datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, "
        f"{time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f} at the end",
        *data,
        f"seed {args.seed}; {args.jobs} process(es) of {args.threads} thread(s)",
        f"app defaults now: server_optimizer {defaults.server_optimizer}, server_learning_rate "
        f"{defaults.server_learning_rate:g}, server_momentum {defaults.server_momentum:g}, lr_schedule "
        f"{defaults.lr_schedule}, lr_warmup {defaults.lr_warmup:g}",
        "KD: federated KD student; no KD: the federation's baseline (hard labels only); central: distill() on the "
        "pooled images for rounds x local epochs; differences in points; 2SE: two standard errors of KD - no KD",
        "teachers, and the share of the hard-label term in the loss gradient at the initial student (norms w.r.t. "
        "the logits, common test set; alpha alone would say 1 - alpha):",
        *(f"  {line}" for line in diagnosis), "training images per class of each site:", *described, ""]
    columns = ["federation", "recipe", "KD", "no KD", "central", "KD-central", "KD-noKD", "2SE", "seconds"]
    summary = [
        "",
        f"over the {scope} rows: federated KD at most {gap:.2f} points below central "
        f"(target <= 2: {'met' if gap <= 2 else 'NOT met'}); KD - no KD at worst {worst:+.2f} points "
        f"({'never' if within else 'SOMEWHERE'} below the baseline by more than 2SE)",
        f"max_gap_to_central_pp={gap:.2f} worst_kd_minus_baseline_pp={worst:.2f}"]
    return header + table(columns, [row.cells() for row in rows], labels=2) + summary


def label_share(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float, alpha: float, kind: str) -> float:
    """(1 - alpha)·|∇CE| / (alpha·|∇distill| + (1 - alpha)·|∇CE|), mean per-image gradient norms w.r.t.
    the student's logits: the weight the labels really get (the T² factor scales the distillation term)."""
    def norm(loss) -> float:
        logits = student_logits.clone().requires_grad_(True)
        gradient, = torch.autograd.grad(loss(logits), logits)
        return float(gradient.norm(dim=1).mean())
    distill_norm = alpha * norm(lambda s: distillation_loss(s, teacher_logits, temperature, kind))
    label_norm = (1 - alpha) * norm(lambda s: F.cross_entropy(s, labels))
    return label_norm / (distill_norm + label_norm)


def describe(settings: dict) -> str:
    config = KDConfig.model_validate(settings)
    server = config.server_optimizer
    if server == "fedavgm":
        server += f" (server lr {config.server_learning_rate:g}, momentum {config.server_momentum:g})"
    elif server != "fedavg":
        server += f" (server lr {config.server_learning_rate:g})"
    schedule = config.lr_schedule + (f" + warm-up {config.lr_warmup:g}" if config.lr_warmup else "")
    return (f"{config.max_iter}x{config.local_epochs} epochs, batch {config.batch_size}, lr {config.learning_rate:g} "
            f"{schedule}, T {config.temperature:g}, alpha {config.alpha:g}, {server}")


# --------------------------------------------------------------------------- main

def federations(text: str) -> list[Federation]:
    """``0.5:3,0.1:5,photo`` → Dirichlet alpha and number of sites of each MNIST federation, and the photo sample."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        found = [Federation(None) if part == PHOTO else Federation(float(part.split(":")[0]), int(part.split(":")[1]))
                 for part in parts]
    except (ValueError, IndexError):
        found = []
    if not found or any(f.alpha is not None and (f.alpha <= 0 or f.sites < 1) for f in found):
        raise argparse.ArgumentTypeError(f"must be ALPHA:SITES pairs or '{PHOTO}' separated by commas (e.g. "
                                         f"0.5:3,0.1:5,{PHOTO}), got {text!r}")
    return found


def recipes(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in RECIPES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown recipe(s) {unknown or text!r}; choose from: {', '.join(RECIPES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer images (1,000 per site), 3-site federations, recipes 'seed defaults' and "
                             "'defaults' only")
    parser.add_argument("--federations", type=federations, default=None,
                        help=f"ALPHA:SITES pairs, and '{PHOTO}' for the photo sample (default "
                             f"0.5:3,0.1:3,0.5:5,0.1:5,{PHOTO})")
    parser.add_argument("--recipes", type=recipes, default=None,
                        help=f"comma-separated, on the MNIST federations (default all: {', '.join(RECIPES)})")
    parser.add_argument("--photo-recipes", type=recipes, default=PHOTO_RECIPES,
                        help=f"comma-separated, on the photo sample (default {','.join(PHOTO_RECIPES)})")
    parser.add_argument("--photo-sample", type=Path, default=DEFAULT_PHOTO_SAMPLE,
                        help="the folder scripts.make_photo_sample wrote (default photo_sample/)")
    parser.add_argument("--per-site", type=positive_int, default=None,
                        help="training images per site on average (default 2000)")
    parser.add_argument("--per-site-test", type=positive_int, default=100,
                        help="test images per site, for the sites' own round logs only (default 100)")
    parser.add_argument("--test-images", type=positive_int, default=10_000,
                        help="images of the common test set, from MNIST t10k (default all 10,000)")
    parser.add_argument("--max-rounds", type=positive_int, default=None,
                        help="cap every recipe's max_iter (for smoke tests)")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch.set_num_threads of each process (default 2)")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="federations run at the same time, one process each (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and the training (default 0)")
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help=f"folder with the MNIST IDX files (default {DEFAULT_MNIST})")
    parser.add_argument("--sample-dir", type=Path, default=SAMPLE,
                        help="its generic/ gives teacher, student and the sample's settings (default sample_data/)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed lines are also written to (default "
                             "bench/results/convergence.txt)")
    args = parser.parse_args(argv)
    args.federations = args.federations or federations("0.5:3,0.1:3" if args.quick else
                                                       f"0.5:3,0.1:3,0.5:5,0.1:5,{PHOTO}")
    args.recipes = args.recipes or (QUICK_RECIPES if args.quick else DEFAULT_RECIPES)
    if any(federation.alpha is None for federation in args.federations):
        photo_sites(args.photo_sample)   # before any run: the fix if it is missing
    args.per_site = args.per_site or (1000 if args.quick else 2000)
    return args


def main(argv: list[str] | None = None) -> None:
    run_script(run_all, parse_args(argv))


if __name__ == "__main__":
    main()
