"""Regenerate sample_data/ from the MNIST IDX files.

    python -m scripts.make_sample_data [--clients 2] [--split iid|dirichlet] [--dirichlet-alpha 0.5] [--folds K]

Writes, from real MNIST:
  generic/  config.yml, teacher.py, student.py (copies of the model zoo's MNIST pair)
            and teacher.pt, the teacher trained here on MNIST training images that no
            client receives (as if it had been pretrained elsewhere)
  c1/, c2/, ...  train.npz and test.npz (uint8 images [N,28,28], int64 labels), disjoint;
            with --folds K instead each site's images (training and test together) as FeatureCloud's
            Cross-Validation app leaves them for the next app of a Workflow: data/0/ ... data/K-1/,
            each with train.npy and test.npy in the same-sep layout, and a config.yml that reads
            them in directory mode

Everything is seeded: the same arguments give the same files.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.config import KDConfig
from app.data import TensorData
from app.model_files import build_model
from app.profile import parameter_count
from app.training import evaluate, train_local
from scripts.devdata.idx import DEFAULT_MNIST, read_mnist_or_exit
from scripts.devdata.partition import site_indices

REPO = Path(__file__).resolve().parents[1]
DIGITS = 10

TEACHER_FILE = REPO / "models" / "mnist_cnn_teacher.py"
STUDENT_FILE = REPO / "models" / "mnist_cnn_student.py"

CONFIG = """\
# Sample federation: real MNIST split over {clients} sites ({split}).
# Regenerate with: python -m scripts.make_sample_data {arguments}
# Every key is explained in the config.yml at the top of the repository.
{other_apps}fc_knowledge_distillation:
  teacher_model: teacher.py
  student_model: student.py
  teacher_weights: teacher.pt
{data}  max_iter: 6
  local_epochs: 1
  batch_size: 32
  learning_rate: 0.004
  temperature: 4.0
  alpha: 0.8
  loss: kl
  seed: 0
"""


FILES = """\
  train_dataset: train.npz
  test_dataset: test.npz
"""
FOLDS = """\
  train_dataset: train.npy       # in every fold folder, as Cross-Validation's result names them
  test_dataset: test.npy
  logic:                         # fc-deep-learning's convention: one sub-folder of data/ per fold
    mode: directory
    dir: data
"""
# In a Workflow one config.yml holds every app's section; this app keeps the others in its output.
CROSS_VALIDATION = """\
# The Cross-Validation app's settings that write this layout (kept, not read, by this app).
fc_cross_validation:
  local_dataset:
    data: data.npy
    target_value: same-sep
  n_splits: {folds}
  shuffle: true
  stratify: false
  random_state: {seed}
  split_dir: data
  result:
    train: train.npy
    test: test.npy
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help="folder with the four MNIST IDX files, gzipped or not (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "sample_data",
                        help="where generic/ and c1/, c2/, ... go (default: the repository's sample_data/)")
    parser.add_argument("--clients", type=int, default=2, help="number of sites (default: %(default)s)")
    parser.add_argument("--split", choices=["iid", "dirichlet"], default="iid",
                        help="iid: random images; dirichlet: each class split by Dir(alpha) (default: %(default)s)")
    parser.add_argument("--dirichlet-alpha", type=float, default=0.5,
                        help="smaller is more skewed; 0.1 leaves sites without some classes (default: %(default)s)")
    parser.add_argument("--train-per-client", type=int, default=5000,
                        help="training images per site, on average for dirichlet (default: %(default)s)")
    parser.add_argument("--test-per-client", type=int, default=1000,
                        help="test images per site, skewed like its training images (default: %(default)s)")
    parser.add_argument("--teacher-samples", type=int, default=30000,
                        help="MNIST training images used only to train the teacher (default: %(default)s)")
    parser.add_argument("--teacher-epochs", type=int, default=3,
                        help="epochs of teacher training (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=0,
                        help="write each site's images as this many cross-validation folds (data/<k>/train.npy, "
                             "test.npy) as FeatureCloud's Cross-Validation app does; 0: train.npz, test.npz "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split and the teacher (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.folds == 1 or args.folds < 0:
        parser.error(f"--folds {args.folds}: cross-validation needs at least 2 folds (0 writes no folds)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x_train, y_train, x_test, y_test = read_mnist_or_exit(args.mnist_dir)

    order = np.random.default_rng(args.seed).permutation(len(y_train))
    teacher_idx, client_pool = order[:args.teacher_samples], order[args.teacher_samples:]
    train_parts, test_parts = site_indices(args.split, y_train[client_pool], y_test, args.clients,
                                           args.train_per_client, args.test_per_client, args.dirichlet_alpha,
                                           args.seed)

    generic = args.out / "generic"
    generic.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEACHER_FILE, generic / "teacher.py")
    shutil.copyfile(STUDENT_FILE, generic / "student.py")
    arguments = " ".join(argv) if argv else "(defaults)"
    other_apps = CROSS_VALIDATION.format(folds=args.folds, seed=args.seed) if args.folds else ""
    (generic / "config.yml").write_text(CONFIG.format(clients=args.clients, split=describe(args),
                                                      arguments=arguments, other_apps=other_apps,
                                                      data=FOLDS if args.folds else FILES))
    for site in range(args.clients):
        folder = args.out / f"c{site + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        train_idx, test_idx = client_pool[train_parts[site]], test_parts[site]
        if args.folds:
            write_folds(folder / "data", np.concatenate([x_train[train_idx], x_test[test_idx]]),
                        np.concatenate([y_train[train_idx], y_test[test_idx]]), args.folds, args.seed + site)
        else:
            save_npz(folder / "train.npz", x_train[train_idx], y_train[train_idx])
            save_npz(folder / "test.npz", x_test[test_idx], y_test[test_idx])
        counts = np.bincount(y_train[train_idx], minlength=DIGITS)
        print(f"c{site + 1}: {len(train_idx)} train, {len(test_idx)} test; train labels per class {counts.tolist()}")

    train_teacher(args, x_train[teacher_idx], y_train[teacher_idx], x_test, y_test, generic / "teacher.pt")
    return 0


def describe(args: argparse.Namespace) -> str:
    return "IID" if args.split == "iid" else f"Dirichlet non-IID, alpha {args.dirichlet_alpha}"


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    np.savez_compressed(path, images=images, labels=labels)


def write_folds(folder: Path, images: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> None:
    """``folds`` shuffled folds of the images: fold k tests on the k-th part and trains on the others,
    saved as Cross-Validation saves .npy files with target_value same-sep."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(labels)), folds)
    for k, test_idx in enumerate(parts):
        train_idx = np.sort(np.concatenate([part for j, part in enumerate(parts) if j != k]))
        (folder / str(k)).mkdir(parents=True, exist_ok=True)
        save_same_sep(folder / str(k) / "train.npy", images[train_idx], labels[train_idx])
        save_same_sep(folder / str(k) / "test.npy", images[np.sort(test_idx)], labels[np.sort(test_idx)])


def save_same_sep(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """What Cross-Validation's save_numpy writes for same-sep: np.array([features, labels]), where
    features is an object array holding each image (its DataFrame column of images)."""
    features = np.empty(len(images), dtype=object)
    for index, image in enumerate(images):
        features[index] = image
    np.save(path, np.array([features, labels]))


def train_teacher(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray,
                  test_images: np.ndarray, test_labels: np.ndarray, path: Path) -> None:
    torch.manual_seed(args.seed)
    teacher = build_model(TEACHER_FILE, {}, "teacher_model")
    train = TensorData(torch.from_numpy(images), torch.from_numpy(labels), name="teacher training set")
    test = TensorData(torch.from_numpy(test_images), torch.from_numpy(test_labels), name="MNIST test set")
    fit_teacher(teacher, train, test, args.teacher_epochs, args.seed, path)


def fit_teacher(teacher: nn.Module, train: TensorData, test: TensorData, epochs: int, seed: int, path: Path,
                batch_size: int = 128, learning_rate: float = 1e-3) -> None:
    """Train ``teacher`` on ``train`` for ``epochs`` (Adam, cross-entropy), report its accuracy on ``test``
    after each, and save its weights to ``path``."""
    settings = KDConfig(batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    started = time.perf_counter()
    for epoch in range(epochs):
        stats = train_local(teacher, train, settings, epochs=1, round_index=epoch, role="teacher")
        accuracy = evaluate(teacher, test, DIGITS).accuracy
        print(f"teacher epoch {epoch + 1}/{epochs}: train loss {stats['train_loss']:.4f}, "
              f"{test.name} accuracy {accuracy:.4f} ({time.perf_counter() - started:.0f}s)")
    # Half precision halves the file; the app loads it into the float32 teacher unchanged in accuracy.
    half = {name: value.half() if value.is_floating_point() else value
            for name, value in teacher.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(half, buffer)
    path.write_bytes(buffer.getvalue())
    print(f"teacher: {parameter_count(teacher)} parameters, {path.stat().st_size} bytes -> {path}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
