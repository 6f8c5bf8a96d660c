"""Training throughput of distillation with cached teacher logits, against the seed apps' loop.

Measures training samples per second on MNIST-shaped data, all in one run:

  (a) our KD epochs in steady state: ``train_local`` reading teacher logits cached once
      by ``compute_logits`` (the caching is timed separately);
  (b) the loop of the original FeatureCloud apps: a shuffled ``DataLoader`` over a
      ``TensorDataset``, the teacher run on every batch, same KD loss and optimizer;
  (c) plain training of the student on hard labels with our batching (``train_local``).

(a) and (b) are compared at steady state, epoch against epoch. The one-time caching of the
teacher's logits is timed and printed apart, and so is what it costs over a whole run: the
ratio with caching amortized over the config's default rounds (``max_iter`` x ``local_epochs``
of KDConfig: 10 epochs), ``R·b / (caching + R·a)``.

The last line is ``speedup_vs_seed_loop=<a/b> speedup_amortized=<over R epochs> kd_vs_plain=<a/c>``.
See bench/README.md.

    python -m bench.kd_throughput [--samples 10000] [--epochs 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from app.config import KDConfig
from app.data import TensorData
from app.losses import kd_loss
from app.model_files import build_model
from app.profile import parameter_count
from app.training import compute_logits, train_local
from bench.output import save
from scripts.devdata.args import positive_int
from scripts.devdata.idx import DEFAULT_MNIST, idx_file, read_idx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "kd_throughput.txt"
TEACHER_FILE = ROOT / "models" / "mnist_cnn_teacher.py"
STUDENT_FILE = ROOT / "models" / "mnist_cnn_student.py"
TARGET_SPEEDUP = 3.0       # a/b
TARGET_KD_VS_PLAIN = 0.8   # a/c
DRY_RUN_BATCH = 8
NOISY_SPREAD = 1.5         # slowest / fastest timed epoch of one loop beyond which the run is flagged

Epoch = Callable[[int], None]   # runs one training epoch; its argument numbers the epoch


@dataclass(frozen=True)
class Measurement:
    label: str
    seconds: list[float]   # one entry per timed epoch

    def samples_per_second(self, samples: int) -> list[float]:
        return [samples / s for s in self.seconds]

    def median_rate(self, samples: int) -> float:
        return statistics.median(self.samples_per_second(samples))


# --------------------------------------------------------------------------- data

def load_mnist(mnist_dir: Path, sample_dir: Path, samples: int) -> tuple[TensorData, str]:
    """The first ``samples`` MNIST training images and a description of where they came from.

    Falls back to the sample federation's ``c*/train.npz`` when ``mnist_dir`` lacks MNIST.
    """
    images_file = idx_file(mnist_dir, "train-images-idx3-ubyte")
    labels_file = idx_file(mnist_dir, "train-labels-idx1-ubyte")
    if images_file and labels_file:
        images, labels = read_idx(images_file)[:samples], read_idx(labels_file)[:samples]
        source = f"real MNIST training images from {mnist_dir}"
    else:
        site_files = sorted(sample_dir.glob("c*/train.npz"))
        if not site_files:
            raise SystemExit(
                f"kd_throughput: no MNIST training set in {mnist_dir} (looked for "
                f"train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]) and no sample data "
                f"{sample_dir}/c*/train.npz. Pass --mnist-dir with the folder holding the MNIST IDX files, "
                f"or create the sample data first.")
        arrays = [np.load(f) for f in site_files]
        images = np.concatenate([a["images"] for a in arrays])[:samples]
        labels = np.concatenate([a["labels"] for a in arrays])[:samples]
        source = f"sample data {', '.join(str(f.relative_to(sample_dir)) for f in site_files)} in {sample_dir} " \
                 f"(no MNIST in {mnist_dir})"
    return TensorData(images, labels, name="benchmark data"), source


# --------------------------------------------------------------------------- the three loops

def cached_kd_epoch(student: nn.Module, data: TensorData, settings: KDConfig,
                    teacher_logits: torch.Tensor) -> Epoch:
    """(a) our distillation epoch: batches sliced from tensors, teacher logits from the cache."""
    return lambda epoch: train_local(student, data, settings, epochs=1, teacher_logits=teacher_logits,
                                     round_index=epoch)


def seed_loop_epoch(student: nn.Module, teacher: nn.Module, data: TensorData, settings: KDConfig) -> Epoch:
    """(b) the original apps' loop, written plainly: DataLoader, teacher on every batch."""
    loader = DataLoader(TensorDataset(data.float_images(), data.labels), batch_size=settings.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.learning_rate)
    teacher.eval()

    def run(epoch: int) -> None:
        student.train()
        running_loss = 0.0
        for images, labels in loader:
            with torch.no_grad():
                teacher_logits = teacher(images)
            student_logits = student(images)
            loss = kd_loss(student_logits, teacher_logits, labels, settings.temperature, settings.alpha,
                           settings.loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * len(labels)
    return run


def plain_epoch(student: nn.Module, data: TensorData, settings: KDConfig) -> Epoch:
    """(c) the student alone on hard labels, with our batching."""
    return lambda epoch: train_local(student, data, settings, epochs=1, round_index=epoch)


def time_interleaved(epochs: dict[str, Epoch], warmup: int, timed: int) -> dict[str, list[float]]:
    """Seconds per timed epoch of each loop.

    The loops take turns epoch by epoch, so a change in the machine's load (it is shared)
    slows all of them alike instead of skewing one; warm-up epochs are not kept.
    """
    seconds: dict[str, list[float]] = {name: [] for name in epochs}
    for epoch in range(warmup + timed):
        for name, run in epochs.items():
            started = time.perf_counter()
            run(epoch)
            if epoch >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def time_caching(teacher: nn.Module, data: TensorData) -> tuple[torch.Tensor, float]:
    """Teacher logits on the whole training set and the seconds ``compute_logits`` took.

    One small batch goes through the teacher first, as the app's dry run does before
    caching, so the figure is the caching itself and not first-call allocation.
    """
    with torch.inference_mode():
        teacher.eval()
        teacher(next(data.batches(DRY_RUN_BATCH))[1])
    started = time.perf_counter()
    logits = compute_logits(teacher, data)
    return logits, time.perf_counter() - started


# --------------------------------------------------------------------------- report

def default_epochs() -> int:
    """Training epochs of a run with the config's defaults: rounds x local epochs."""
    defaults = KDConfig.model_fields
    return defaults["max_iter"].default * defaults["local_epochs"].default


def amortized(kd_epoch: float, seed_epoch: float, caching: float, epochs: int) -> float:
    """How much faster a whole run's training is than the seed loop's, caching included."""
    return epochs * seed_epoch / (caching + epochs * kd_epoch)


def report(measurements: list[Measurement], samples: int, caching_seconds: float,
           teacher_params: int, student_params: int, header: list[str]) -> list[str]:
    """The table, any WARNING lines, and the final ratio line."""
    a, b, c = (m.median_rate(samples) for m in measurements)
    kd_epoch_seconds = statistics.median(measurements[0].seconds)
    seed_epoch_seconds = statistics.median(measurements[1].seconds)
    epochs = default_epochs()
    whole_run = amortized(kd_epoch_seconds, seed_epoch_seconds, caching_seconds, epochs)
    lines = [*header, "",
             f"{'measurement':<58}{'samples/s':>11}{'min..max':>18}{'s/epoch':>9}"]
    for m in measurements:
        rates = m.samples_per_second(samples)
        lines.append(f"{m.label:<58}{m.median_rate(samples):>11,.0f}"
                     f"{f'{min(rates):,.0f}..{max(rates):,.0f}':>18}{statistics.median(m.seconds):>9.3f}")
    lines += ["",
              f"teacher logit caching (compute_logits, once per site): {caching_seconds:.3f} s "
              f"= {caching_seconds / seed_epoch_seconds:.2f} of one (b) epoch",
              f"parameters: teacher {teacher_params:,}, student {student_params:,}, "
              f"ratio {teacher_params / student_params:.1f}x",
              f"a/b = {a / b:.2f} at steady state (target >= {TARGET_SPEEDUP}), a/c = {a / c:.2f} "
              f"(target >= {TARGET_KD_VS_PLAIN})",
              f"with the caching amortized over a default run ({epochs} epochs: max_iter x local_epochs), "
              f"(a) is {whole_run:.2f}x as fast as (b): {epochs} x {seed_epoch_seconds:.3f} s against "
              f"{caching_seconds:.3f} + {epochs} x {kd_epoch_seconds:.3f} s"]
    noisy = [m.label[:3] for m in measurements if max(m.seconds) > NOISY_SPREAD * min(m.seconds)]
    if noisy:
        lines.append(f"NOTE: epoch times of {', '.join(noisy)} vary by more than {NOISY_SPREAD}x: the machine was "
                     "busy with other work during the run; run again (or with more --epochs) for steadier ratios.")
    if a / b < TARGET_SPEEDUP:
        lines.append(f"WARNING: a/b = {a / b:.2f} misses the target {TARGET_SPEEDUP}: cached KD epochs are "
                     "not that much faster than the seed loop here.")
    if a / c < TARGET_KD_VS_PLAIN:
        lines.append(f"WARNING: a/c = {a / c:.2f} misses the target {TARGET_KD_VS_PLAIN}: cached KD epochs "
                     "cost noticeably more than plain student epochs.")
    lines.append(f"speedup_vs_seed_loop={a / b:.2f} speedup_amortized={whole_run:.2f} kd_vs_plain={a / c:.2f}")
    return lines


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=positive_int, default=10_000, help="training images used (default 10000)")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="batch size of all loops (default 256)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="timed epochs per loop (default 3)")
    parser.add_argument("--warmup", type=int, default=1, choices=range(0, 10), metavar="N",
                        help="untimed warm-up epochs per loop (default 1)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models' initial weights (default 0)")
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help=f"folder with the MNIST IDX files (default {DEFAULT_MNIST})")
    parser.add_argument("--sample-dir", type=Path, default=ROOT / "sample_data",
                        help="fallback when --mnist-dir has no MNIST: its c*/train.npz (default sample_data/)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/kd_throughput.txt)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data, source = load_mnist(args.mnist_dir, args.sample_dir, args.samples)
    settings = KDConfig(batch_size=args.batch_size)
    torch.manual_seed(args.seed)
    teacher = build_model(TEACHER_FILE, {}, "teacher_model")
    student = build_model(STUDENT_FILE, {}, "student_model")

    logits, caching_seconds = time_caching(teacher, data)
    labels = {"a": "(a) KD, cached teacher logits (train_local)",
              "b": "(b) seed loop: DataLoader, teacher on every batch",
              "c": "(c) plain student on hard labels (train_local)"}
    # Every loop trains its own copy of the same initial student.
    seconds = time_interleaved({
        "a": cached_kd_epoch(copy.deepcopy(student), data, settings, logits),
        "b": seed_loop_epoch(copy.deepcopy(student), teacher, data, settings),
        "c": plain_epoch(copy.deepcopy(student), data, settings),
    }, warmup=args.warmup, timed=args.epochs)

    requested = "" if len(data) == args.samples else f" ({args.samples:,} requested)"
    header = [f"KD training throughput, {datetime.datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s)",
              f"data: {len(data):,} images {list(data.sample_shape)}{requested}: {source}",
              f"batch size {settings.batch_size}, Adam lr {settings.learning_rate:g}, KD loss {settings.loss} "
              f"T={settings.temperature:g} alpha={settings.alpha:g}; median of {args.epochs} epoch(s) per loop "
              f"after {args.warmup} warm-up epoch(s), loops interleaved epoch by epoch",
              f"teacher {TEACHER_FILE.name}, student {STUDENT_FILE.name}"]
    lines = report([Measurement(labels[k], seconds[k]) for k in "abc"], len(data), caching_seconds,
                   parameter_count(teacher), parameter_count(student), header)
    save(lines, args.results)


if __name__ == "__main__":
    main()
