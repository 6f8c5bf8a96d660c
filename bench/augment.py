"""Augmentation with cached teacher views, against online teaching and against no augmentation (issue 12).

On the photo sample (``scripts.make_photo_sample``: class folders of photo-like MNIST digits), built
scarce: about 200 training images per site, at image_size 64, with a ResNet-18 teacher trained from
scratch on 4,000 other digits drawn the same way (as a user's teacher is trained before the run, on
images no site holds) and the zoo's GAP student with 5 stages, whose 63-px receptive field spans the
image (the builder picks the stages from image_size).

1. Throughput, on site 1's training images (decoded and normalized as the app does): epochs of
   the student taught from cached views (a) and by the teacher on every freshly augmented batch
   (b), taking turns so both see the same machine load. (a) is charged for drawing the views and
   caching the teacher's logits once, spread over the run's rounds × local_epochs epochs; the
   per-epoch figures are printed too.
2. Accuracy: three federations of all sites, in this process with the app's ``Site`` objects
   (training, payloads, aggregation and the federated normalization are the app's own; only the
   HTTP transport is skipped), the same rounds, seed and initial student: (c) augmentation with
   cached views, (d) no augmentation, (e) augmentation with online teaching; and, when the sample's
   student has more than the zoo's default 4 stages, (f) no augmentation with 4 stages (31-px
   receptive field): what the student of the first run of this bench was. Accuracy of the final
   global student over every site's test images, with its standard error sqrt(p(1 - p) / n).

    python -m scripts.make_photo_sample --out photos64 --image-size 64 --train-per-client 200 \\
        --test-per-client 1000 --teacher-arch resnet18 --teacher-samples 4000 --teacher-epochs 2
    python -m bench.augment --photos photos64 [--rounds 30] [--local-epochs 2] [--views 4]

The build takes about 6 minutes of CPU, most of it training the teacher (94% of 500 other MNIST
test photos); the bench about 11 minutes of CPU with --threads 2. 60 epochs,
because the student needs them: after 20 it is still near chance on 200 photos per site.

The last line: ``views_vs_online=<a/b> augment_gain_pp=<c-d> views_vs_online_pp=<c-e>``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from app.config import SECTION, KDConfig
from app.federation import federate
from app.site import Site
from app.training import prepare_teaching, train_local
from bench.noniid import shown
from bench.output import save
from scripts.devdata.args import positive_int

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "augment.txt"
TARGET_SPEEDUP = 3.0      # a / b
MIN_TEACHER_COST = 10     # the teacher's multiply-adds per image over the student's
# Digits: a mirrored 2 is no 2 the test set holds, so the default leaves flip out (README, Augmentation).
DEFAULT_AUGMENT = ["crop", "color"]
ZOO_STAGES = 4   # gap_cnn_student's default stages: a receptive field of 31 px


def site_inputs(photos: Path, workdir: Path, settings: dict) -> list[Path]:
    """One input folder per site of the photo sample, as the platform assembles it: the generic
    files, ``settings`` as its config.yml, its train/ and test/ folders (linked, not copied)."""
    folders = []
    for client in sorted(path for path in photos.iterdir() if path.name != "generic" and (path / "train").is_dir()):
        folder = workdir / client.name
        folder.mkdir(parents=True)
        for item in (photos / "generic").iterdir():
            if item.is_file() and item.name != "config.yml":
                shutil.copy(item, folder / item.name)
        (folder / "config.yml").write_text(yaml.safe_dump({SECTION: settings}, sort_keys=False))
        for split in ("train", "test"):
            (folder / split).symlink_to((client / split).resolve(), target_is_directory=True)
        folders.append(folder)
    if not folders:
        raise SystemExit(f"augment: no sites (folders with train/ beside generic/) in {photos}. Build the photo "
                         "sample with python -m scripts.make_photo_sample (see this script's docstring).")
    return folders


def run_federation(photos: Path, workdir: Path, settings: dict) -> tuple[list[Site], float]:
    """The federation of every site of ``photos`` with ``settings``; its sites and seconds."""
    started = time.perf_counter()
    sites = [Site.load(folder, workdir / "out" / folder.name, folder.name, log=lambda message: None)
             for folder in site_inputs(photos, workdir, settings)]
    federate(sites)
    return sites, time.perf_counter() - started


def pooled_accuracy(sites: list[Site]) -> tuple[float, int]:
    """The final student's accuracy over every site's test images, and their number."""
    evaluations = [site.evaluations["student"] for site in sites]
    samples = sum(e.samples for e in evaluations)
    return sum(e.accuracy * e.samples for e in evaluations) / samples, samples


def standard_error(accuracy: float, samples: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / samples)


def multiply_adds(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of one image through the model (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def throughput(site: Site, config: KDConfig, timed: int) -> dict:
    """Seconds of student epochs taught from cached views, online and (for the views' own cost) from
    logits cached without augmentation, taking turns, on ``site``'s training images with its teacher;
    and the seconds of drawing the views and caching the teacher's logits on them."""
    data, teacher = site.train, site.teacher
    cached_config = config.model_copy(update={"teacher_views": config.teacher_views or 4})
    online_config = config.model_copy(update={"teacher_views": 0})
    started = time.perf_counter()
    cached = prepare_teaching(teacher, data, cached_config, site.device)
    caching_seconds = time.perf_counter() - started
    online = prepare_teaching(teacher, data, online_config, site.device)
    plain_config = config.model_copy(update={"augment": [], "teacher_views": None})
    plain = prepare_teaching(teacher, data, plain_config, site.device)
    students = {name: copy.deepcopy(site.student) for name in ("cached", "online", "plain")}
    teachings = {"cached": (cached, cached_config), "online": (online, online_config), "plain": (plain, plain_config)}
    seconds: dict[str, list[float]] = {name: [] for name in students}
    for epoch in range(timed + 1):   # epoch 0 warms up (allocator, kernel choice)
        for name, student in students.items():
            teaching, settings = teachings[name]
            started = time.perf_counter()
            train_local(student, data, settings, epochs=1, **teaching.targets(), views=teaching.views,
                        round_index=epoch, device=site.device)
            if epoch:
                seconds[name].append(time.perf_counter() - started)
    return {"samples": len(data), "caching": caching_seconds, "description": cached.description,
            **{name: sorted(values)[len(values) // 2] for name, values in seconds.items()},
            "spread": {name: (min(values), max(values)) for name, values in seconds.items()}}


def breakeven(speed: dict) -> str:
    """From how many epochs of a run on cached views a/b (caching charged to the run) reaches the target:
    E · online ≥ target · (caching + E · cached)."""
    margin = speed["online"] - TARGET_SPEEDUP * speed["cached"]
    if margin <= 0:
        return f"a/b stays below {TARGET_SPEEDUP} however long the run"
    epochs = math.ceil(TARGET_SPEEDUP * speed["caching"] / margin)
    return f"a/b reaches {TARGET_SPEEDUP} in runs of {epochs} epochs or more"


def run_all(args: argparse.Namespace) -> list[str]:
    generic = yaml.safe_load((args.photos / "generic" / "config.yml").read_text())[SECTION]
    base = {**generic, "max_iter": args.rounds, "local_epochs": args.local_epochs, "seed": args.seed,
            "baseline": False}
    runs = {"c": {"augment": args.augment, "teacher_views": args.views},
            "d": {},
            "e": {"augment": args.augment, "teacher_views": 0}}
    student_args = args.student_args = generic.get("student_args") or {}
    if student_args.get("stages", ZOO_STAGES) > ZOO_STAGES:
        runs["f"] = {"student_args": {**student_args, "stages": ZOO_STAGES}}
    outcomes = {}
    args.load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="augment-") as scratch:
        for name, overrides in runs.items():
            sites, seconds = run_federation(args.photos, Path(scratch) / name, {**base, **overrides})
            outcomes[name] = (*pooled_accuracy(sites), seconds)
            print(f"  done: federation ({name}), accuracy {outcomes[name][0]:.4f} ({seconds:.0f}s)", file=sys.stderr)
            if name == "c":
                site = sites[0]
                speed = throughput(site, site.config, args.timed_epochs)
                print(f"  done: throughput ({speed['cached']:.1f}s, {speed['online']:.1f}s per epoch)",
                      file=sys.stderr)
                shape = tuple(site.train.sample_shape)
                costs = (multiply_adds(site.teacher, shape), multiply_adds(site.student, shape))
                teacher_accuracy = sum(s.teacher_evaluation.accuracy * s.teacher_evaluation.samples
                                       for s in sites) / sum(s.teacher_evaluation.samples for s in sites)
                train_sizes = [len(s.train) for s in sites]
    return report(args, outcomes, speed, costs, shape, teacher_accuracy, train_sizes)


def report(args: argparse.Namespace, outcomes: dict, speed: dict, costs: tuple[int, int], shape: tuple[int, ...],
           teacher_accuracy: float, train_sizes: list[int]) -> list[str]:
    epochs = args.rounds * args.local_epochs
    samples = speed["samples"]
    per_epoch = {name: samples / speed[name] for name in ("cached", "online", "plain")}
    a = samples * epochs / (speed["caching"] + epochs * speed["cached"])   # caching charged to the run
    b = per_epoch["online"]
    (c, tested, _), (d, _, _), (e, _, _) = outcomes["c"], outcomes["d"], outcomes["e"]
    error = standard_error(c, tested)
    smaller = ([f"  (f) no augmentation, the zoo's default {ZOO_STAGES} stages (31-px receptive field): "
                f"{outcomes['f'][0]:.4f} ({outcomes['f'][2]:.0f}s)"] if "f" in outcomes else [])
    augment = ", ".join(args.augment)
    lines = [
        f"bench/augment.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average (1 min) {args.load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after",
        f"photo sample {shown(args.photos)}: {len(train_sizes)} sites with {', '.join(map(str, train_sizes))} "
        f"training images, {tested:,} test images; images {list(shape)}",
        f"teacher {costs[0]:,} multiply-adds per image, student {costs[1]:,} (student_args {args.student_args}): "
        f"{costs[0] / costs[1]:.0f}x "
        f"(at least {MIN_TEACHER_COST}x asked); teacher accuracy {teacher_accuracy:.4f}",
        f"augment: {augment}; {args.rounds} rounds x {args.local_epochs} local epochs = {epochs} epochs; "
        f"seed {args.seed}",
        "",
        f"throughput on site 1 ({samples} images; {args.timed_epochs} timed epochs each, taking turns, median):",
        f"  (a) cached views, {args.views} per image: {per_epoch['cached']:,.0f} samples/s per epoch; drawing the "
        f"views and caching the teacher's logits once took {speed['caching']:.2f}s; over the run's {epochs} epochs: "
        f"{a:,.0f} samples/s",
        f"  (b) online teaching: {b:,.0f} samples/s",
        f"  cache: {speed['description'].split('; ', 1)[-1]}",
        f"  without augmentation (logits cached once per image): {per_epoch['plain']:,.0f} samples/s per epoch; "
        f"re-making the views costs {100 * (speed['cached'] / speed['plain'] - 1):+.0f}% of an epoch",
        f"  a/b = {a / b:.2f} (target >= {TARGET_SPEEDUP}), the caching charged to the run's {epochs} epochs; "
        f"per epoch alone {per_epoch['cached'] / b:.2f}; {breakeven(speed)}",
        "",
        "accuracy of the final global student over every site's test images (same rounds, seed, initial student):",
        f"  (c) {augment}, cached views ({args.views}): {c:.4f} (standard error {error:.4f}; "
        f"{outcomes['c'][2]:.0f}s)",
        f"  (d) no augmentation:           {d:.4f} ({outcomes['d'][2]:.0f}s)",
        f"  (e) {augment}, online teaching: {e:.4f} ({outcomes['e'][2]:.0f}s)",
        *smaller,
        f"  c - d = {100 * (c - d):+.2f} points ({(c - d) / error:+.1f} standard errors; target > 2); "
        f"c - e = {100 * (c - e):+.2f} points ({(c - e) / error:+.1f} standard errors; target within noise)",
    ]
    if costs[0] < MIN_TEACHER_COST * costs[1]:
        lines.append(f"WARNING: the teacher costs only {costs[0] / costs[1]:.1f}x the student's multiply-adds.")
    if a / b < TARGET_SPEEDUP:
        lines.append(f"WARNING: a/b = {a / b:.2f} misses the target {TARGET_SPEEDUP}.")
    if c - d <= 2 * error:
        lines.append("WARNING: augmentation with cached views does not beat no augmentation by two standard errors.")
    if abs(c - e) > 2 * error:
        lines.append("WARNING: cached views and online teaching differ by more than two standard errors.")
    lines.append(f"views_vs_online={a / b:.2f} augment_gain_pp={100 * (c - d):.2f} "
                 f"views_vs_online_pp={100 * (c - e):.2f}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True,
                        help="a photo sample built by scripts.make_photo_sample (generic/, c1/, c2/, ...)")
    parser.add_argument("--rounds", type=positive_int, default=30, help="federated rounds (default 30)")
    parser.add_argument("--local-epochs", type=positive_int, default=2, help="local epochs per round (default 2)")
    parser.add_argument("--views", type=positive_int, default=4, help="teacher_views of (a) and (c) (default 4)")
    parser.add_argument("--augment", nargs="+", choices=("flip", "crop", "color"), default=DEFAULT_AUGMENT,
                        help=f"operations (default: {' '.join(DEFAULT_AUGMENT)})")
    parser.add_argument("--timed-epochs", type=positive_int, default=3,
                        help="timed epochs of each kind of teaching for the throughput (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_RESULTS,
                        help=f"where the report is written too (default {shown(DEFAULT_RESULTS)})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = run_all(args)
    save(lines, args.output)


if __name__ == "__main__":
    main()
