"""Augmentation with cached teacher views, against online teaching and against no augmentation (issue 12).

On the photo sample (``scripts.make_photo_sample``: class folders of photo-like MNIST digits), built
scarce: about 200 training images per site, at image_size 64, with a ResNet-18 teacher trained from
scratch on 4,000 other digits drawn the same way (as a user's teacher is trained before the run, on
images no site holds) and the zoo's GAP student with 5 stages, whose 63-px receptive field spans the
image (the builder picks the stages from image_size).

1. Throughput, on the first seed's site 1 training images (decoded and normalized as the app does),
   measured first and alone (no other federation running): epochs of the student taught from cached
   views (a) and by the teacher on every freshly augmented batch (b), taking turns so both see the
   same machine load. (a) is charged for drawing the views and caching the teacher's logits once,
   spread over the run's rounds × local_epochs epochs; the per-epoch figures are printed too.
2. Accuracy, for every seed of ``--seeds``: three federations of all sites with the app's ``Site``
   objects (training, payloads, aggregation and the federated normalization are the app's own; only
   the HTTP transport is skipped), the same rounds, seed and initial student: (c) augmentation with
   cached views, (d) no augmentation, (e) augmentation with online teaching; for the first seed only,
   when the sample's student has more than the zoo's default 4 stages, (f) no augmentation with 4
   stages (31-px receptive field): what the student of the first run of this bench was. For each:
   the final global student's accuracy over every site's test images, the first round at which that
   pooled accuracy exceeded 50%, and the students' training accuracy (on their views) in the last
   round. The targets are judged on the means over the seeds: mean(c - d) above two standard errors
   of the test set sqrt(p(1 - p) / n) at mean(c), and |mean(c - e)| within two; the paired
   differences' seed-to-seed standard error (sample sd / sqrt(seeds)) says whether a gain stands out
   from the seed's variation.

Why several seeds, and why the app's defaults for learning_rate and lr_schedule (0.008, constant:
KDConfig's; --learning-rate and --lr-schedule override them) instead of the sample's 0.004 with a
cosine schedule, tuned for its 5-round quick start: under those, on 200 photos per site the student
sits at chance for 8-13 rounds, a plateau whose length depends on the seed, and the cosine schedule
has decayed the rate by the time it leaves it, so a run that leaves late ends undertrained. One seed
made c - d a lottery (seeds 0/1/2: -10.3/+1.4/+4.9 points; at seed 0 (c) fit only 58% of its own
views). At the defaults, seed 0 gave (c) 82.2% against (d) 78.3%, (c) still rising at round 30 and
(d) flat since round 20, fitting 92% of its training images: the overfitting augmentation addresses.

    python -m scripts.make_photo_sample --out photos64 --image-size 64 --train-per-client 200 \\
        --test-per-client 1000 --teacher-arch resnet18 --teacher-samples 4000 --teacher-epochs 2
    python -m bench.augment --photos photos64 [--rounds 30] [--local-epochs 2] [--views 4] \\
        [--seeds 0 1 2 3 4] [--jobs 2] [--threads 1]

The build takes about 6 minutes of CPU, most of it training the teacher (94% of 500 other MNIST
test photos). A federation of the bench takes at 1 thread, two at a time on 2 idle cores, about 60 s
for (c), 50 s for (d) and 150 s for (e): the 5 default seeds at --jobs 2 took 12 minutes. 30 rounds of
2 local epochs by default, because the student needs them: at seed 0 (c) is still rising at round 30.

The last line: ``views_vs_online=<a/b> augment_gain_pp=<mean c-d> views_vs_online_pp=<mean c-e>``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import multiprocessing
import os
import statistics
import shutil
import sys
import tempfile
import time
import typing
from concurrent.futures import ProcessPoolExecutor
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
# The app's defaults, not the photo sample's (tuned for its 5-round quick start): see the docstring.
DEFAULTS = {key: KDConfig.model_fields[key].default for key in ("learning_rate", "lr_schedule")}


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


def outcome(sites: list[Site], seconds: float) -> dict:
    """What the report needs of one federation, as plain data (a worker process returns it): the global
    student's accuracy over every site's test images after each round, the first round above 50%, the
    students' training accuracy in the last round (both weighted by the sites' image counts)."""
    tests = [site.evaluations["student"].samples for site in sites]
    trains = [len(site.train) for site in sites]

    def pooled(index: int, key: str, weights: list[int]) -> float:
        return sum(site.rounds[index][key] * n for site, n in zip(sites, weights)) / sum(weights)

    curve = [pooled(index, "accuracy", tests) for index in range(len(sites[0].rounds))]
    return {"accuracy": curve[-1], "tested": sum(tests), "seconds": seconds,
            "above_half": next((r for r, accuracy in enumerate(curve, 1) if accuracy > 0.5), None),
            "train_accuracy": pooled(-1, "train_accuracy", trains)}


def federation_outcome(args: argparse.Namespace, task: tuple[int, str, dict]) -> tuple[int, str, dict]:
    """One federation (seed, run name, settings) in a scratch folder; for the worker processes of --jobs."""
    torch.set_num_threads(args.threads)   # again: a spawned worker starts with torch's default
    seed, name, settings = task
    with tempfile.TemporaryDirectory(prefix="augment-") as scratch:
        done = outcome(*run_federation(args.photos, Path(scratch), settings))
    announce(seed, name, done)
    return seed, name, done


def announce(seed: int, name: str, done: dict) -> None:
    print(f"  done: seed {seed} federation ({name}), accuracy {done['accuracy']:.4f} ({done['seconds']:.0f}s)",
          file=sys.stderr, flush=True)


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


def tasks_of(args: argparse.Namespace) -> list[tuple[int, str, dict]]:
    """(seed, run name, settings) of every federation, the first seed's (c) first."""
    generic = yaml.safe_load((args.photos / "generic" / "config.yml").read_text())[SECTION]
    base = {**generic, "max_iter": args.rounds, "local_epochs": args.local_epochs, "baseline": False,
            "learning_rate": args.learning_rate, "lr_schedule": args.lr_schedule}
    runs = {"c": {"augment": args.augment, "teacher_views": args.views},
            "d": {},
            "e": {"augment": args.augment, "teacher_views": 0}}
    tasks = [(seed, name, {**base, **overrides, "seed": seed})
             for seed in args.seeds for name, overrides in runs.items()]
    student_args = args.student_args = generic.get("student_args") or {}
    if student_args.get("stages", ZOO_STAGES) > ZOO_STAGES:
        smaller = {"student_args": {**student_args, "stages": ZOO_STAGES}}
        tasks.append((args.seeds[0], "f", {**base, **smaller, "seed": args.seeds[0]}))
    return tasks


def run_all(args: argparse.Namespace) -> list[str]:
    first, *rest = tasks_of(args)
    args.load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="augment-") as scratch:   # alone: the throughput needs its site 1
        sites, seconds = run_federation(args.photos, Path(scratch), first[2])
        outcomes = {first[:2]: outcome(sites, seconds)}
        announce(*first[:2], outcomes[first[:2]])
        site = sites[0]
        speed = throughput(site, site.config, args.timed_epochs)
        print(f"  done: throughput ({speed['cached']:.1f}s, {speed['online']:.1f}s per epoch)", file=sys.stderr,
              flush=True)
        shape = tuple(site.train.sample_shape)
        costs = (multiply_adds(site.teacher, shape), multiply_adds(site.student, shape))
        teacher_accuracy = sum(s.teacher_evaluation.accuracy * s.teacher_evaluation.samples
                               for s in sites) / sum(s.teacher_evaluation.samples for s in sites)
        train_sizes = [len(s.train) for s in sites]
    if args.jobs > 1:   # the federations are independent: one process each, at most --jobs at a time
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(federation_outcome, [args] * len(rest), rest))
    else:
        done = [federation_outcome(args, task) for task in rest]
    outcomes.update({(seed, name): result for seed, name, result in done})
    return report(args, outcomes, speed, costs, shape, teacher_accuracy, train_sizes)


def seed_error(values: list[float]) -> float:
    """The standard error of the mean of ``values`` over the seeds: sample sd / sqrt(n)."""
    return statistics.stdev(values) / math.sqrt(len(values))


def report(args: argparse.Namespace, outcomes: dict, speed: dict, costs: tuple[int, int], shape: tuple[int, ...],
           teacher_accuracy: float, train_sizes: list[int]) -> list[str]:
    epochs = args.rounds * args.local_epochs
    samples = speed["samples"]
    per_epoch = {name: samples / speed[name] for name in ("cached", "online", "plain")}
    a = samples * epochs / (speed["caching"] + epochs * speed["cached"])   # caching charged to the run
    b = per_epoch["online"]
    runs = {name: [outcomes[seed, name] for seed in args.seeds] for name in "cde"}
    accuracy = {name: [run["accuracy"] for run in done] for name, done in runs.items()}
    gains = [c - d for c, d in zip(accuracy["c"], accuracy["d"])]
    gaps = [c - e for c, e in zip(accuracy["c"], accuracy["e"])]
    c, d, e, gain, gap = map(statistics.fmean, (accuracy["c"], accuracy["d"], accuracy["e"], gains, gaps))
    tested = runs["c"][0]["tested"]
    error = standard_error(c, tested)
    several = len(args.seeds) > 1

    def spread(differences: list[float]) -> str:
        return (f"seed-to-seed standard error {100 * seed_error(differences):.2f}" if several
                else "one seed: no seed-to-seed error")

    def row(seed: int, index: int) -> str:
        done = [runs[name][index] for name in "cde"]
        above = "/".join(str(run["above_half"] or "-") for run in done)
        trained = "/".join(f"{100 * run['train_accuracy']:.0f}" for run in done)
        return (f"  {seed:>4}  " + "".join(f"{100 * run['accuracy']:>8.2f}" for run in done)
                + f"  {100 * gains[index]:>+7.2f}  {100 * gaps[index]:>+7.2f}  {above:>16}  {trained:>15}")

    smaller = []
    if (args.seeds[0], "f") in outcomes:
        f = outcomes[args.seeds[0], "f"]
        smaller = [f"  (f) seed {args.seeds[0]}, no augmentation, the zoo's default {ZOO_STAGES} stages (31-px "
                   f"receptive field): {100 * f['accuracy']:.2f}%, first round > 50%: {f['above_half'] or '-'} "
                   f"({f['seconds']:.0f}s)"]
    augment = ", ".join(args.augment)
    seconds = ", ".join(f"({name}) {statistics.fmean(run['seconds'] for run in done):.0f}s"
                        for name, done in runs.items())
    lines = [
        f"bench/augment.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads per process, {args.jobs} jobs; "
        f"load average (1 min) {args.load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        f"photo sample {shown(args.photos)}: {len(train_sizes)} sites with {', '.join(map(str, train_sizes))} "
        f"training images, {tested:,} test images; images {list(shape)}",
        f"teacher {costs[0]:,} multiply-adds per image, student {costs[1]:,} (student_args {args.student_args}): "
        f"{costs[0] / costs[1]:.0f}x "
        f"(at least {MIN_TEACHER_COST}x asked); teacher accuracy {teacher_accuracy:.4f}",
        f"augment: {augment}; {args.rounds} rounds x {args.local_epochs} local epochs = {epochs} epochs; "
        f"learning_rate {args.learning_rate}, lr_schedule {args.lr_schedule} (the app's defaults: "
        f"{DEFAULTS['learning_rate']}, {DEFAULTS['lr_schedule']}); seeds {' '.join(map(str, args.seeds))}",
        "",
        f"throughput on site 1 of seed {args.seeds[0]} ({samples} images; {args.timed_epochs} timed epochs each, "
        "taking turns, median; alone, before the other federations):",
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
        "accuracy (%) of the final global student over every site's test images; each seed's federations have the "
        "same rounds and initial student:",
        f"  (c) {augment}, cached views ({args.views}); (d) no augmentation; (e) {augment}, online teaching",
        f"  {'seed':>4}  {'c':>8}{'d':>8}{'e':>8}  {'c - d':>7}  {'c - e':>7}  {'round >50% c/d/e':>16}  "
        f"{'train % c/d/e':>15}",
        *(row(seed, index) for index, seed in enumerate(args.seeds)),
        f"  {'mean':>4}  {100 * c:>8.2f}{100 * d:>8.2f}{100 * e:>8.2f}  {100 * gain:>+7.2f}  {100 * gap:>+7.2f}",
        f"  test set: {tested:,} images, standard error at mean (c) {100 * error:.2f} points",
        f"  c - d: mean {100 * gain:+.2f} points, {gain / error:+.1f} test-set standard errors (target > 2); "
        f"{spread(gains)}",
        f"  c - e: mean {100 * gap:+.2f} points, {gap / error:+.1f} test-set standard errors (target within 2); "
        f"{spread(gaps)}",
        f"  seconds per federation, mean: {seconds} (seed {args.seeds[0]}'s (c) alone, the others {args.jobs} "
        "at a time)",
        *smaller,
    ]
    if costs[0] < MIN_TEACHER_COST * costs[1]:
        lines.append(f"WARNING: the teacher costs only {costs[0] / costs[1]:.1f}x the student's multiply-adds.")
    if a / b < TARGET_SPEEDUP:
        lines.append(f"WARNING: a/b = {a / b:.2f} misses the target {TARGET_SPEEDUP}.")
    if gain <= 2 * error:
        lines.append("WARNING: augmentation with cached views does not beat no augmentation by two standard errors "
                     "of the test set, on the mean over the seeds.")
    if several and seed_error(gains) > gain:
        lines.append(f"WARNING: the seed-to-seed standard error of c - d ({100 * seed_error(gains):.2f} points) "
                     f"exceeds its mean ({100 * gain:+.2f}): the gain is not distinguishable from seed variation.")
    if abs(gap) > 2 * error:
        lines.append("WARNING: cached views and online teaching differ by more than two standard errors of the "
                     "test set, on the mean over the seeds.")
    lines.append(f"views_vs_online={a / b:.2f} augment_gain_pp={100 * gain:.2f} views_vs_online_pp={100 * gap:.2f}")
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="a federation (c), (d) and (e) for each; (f) and the throughput on the first "
                             "(default 0 1 2 3 4)")
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"],
                        help=f"learning_rate of every federation (default the app's, {DEFAULTS['learning_rate']})")
    parser.add_argument("--lr-schedule", choices=typing.get_args(KDConfig.model_fields["lr_schedule"].annotation),
                        default=DEFAULTS["lr_schedule"],
                        help=f"lr_schedule of every federation (default the app's, {DEFAULTS['lr_schedule']})")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="federations run at the same time after the throughput, one process each (default 2)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch.set_num_threads of each process (default 1)")
    parser.add_argument("--output", type=Path, default=DEFAULT_RESULTS,
                        help=f"where the report is written too (default {shown(DEFAULT_RESULTS)})")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):   # a repeated seed repeats its runs and shrinks the seeds' spread
        parser.error(f"--seeds: each seed once, got {' '.join(map(str, args.seeds))}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = run_all(args)
    save(lines, args.output)


if __name__ == "__main__":
    main()
