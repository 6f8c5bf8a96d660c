"""Build a sample federation of photo-like image folders from the MNIST IDX files.

    python -m scripts.make_photo_sample [--out photo_sample] [--clients 2] [--image-size 32]

Writes, from real MNIST digits drawn as photos (scripts/devdata/photos.py):
  c1/, c2/, ...  train/ and test/ with one folder per digit (0 ... 9) of JPEG and PNG files of random
                 non-square sizes (--photo-sizes, 40-120 px): colour digits on shaded backgrounds, some
                 files grayscale, RGBA or palette, some JPEGs stored turned with the EXIF orientation
                 that shows them upright; the last site has no folder for --missing-class
  generic/       config.yml (image_size, normalize: federated), teacher.py and student.py (both the model
                 zoo's gap_cnn_student.py, the teacher at width 32, with as many stages as --image-size
                 needs; or with --teacher-arch the zoo's torchvision_teacher.py) and teacher.pt, the
                 teacher trained here on MNIST digits no site receives, drawn the same way and decoded
                 by the app's decoder at --image-size

Everything is seeded: the same arguments give the same files. The output folder must not exist yet.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from app.data import TensorData
from app.images import decode_files
from app.model_files import build_model
from app.normalization import channel_sums, pooled
from scripts.devdata.args import positive_int
from scripts.devdata.idx import DEFAULT_MNIST, read_mnist_or_exit
from scripts.devdata.partition import split_iid
from scripts.devdata.photos import photo_file, random_kind
from scripts.make_sample_data import DIGITS, fit_teacher

REPO = Path(__file__).resolve().parents[1]
# Teacher and student are the model zoo's any-size GAP CNN, the teacher twice as wide (4 times the
# multiply-adds). A torchvision teacher (models/torchvision_teacher.py) is what real photos at 160-224 px
# with ImageNet weights call for; trained from scratch on these small digits it learns far slower
# (ResNet-18 at 20 px: 50% after 4 epochs of 1,500 photos, where the 99k-parameter student alone
# reaches 81%).
TEACHER_FILE = STUDENT_FILE = REPO / "models" / "gap_cnn_student.py"
TORCHVISION_TEACHER_FILE = REPO / "models" / "torchvision_teacher.py"
TEACHER_WIDTH = 32
ZOO_STAGES = 4   # gap_cnn_student's default: a receptive field of 31 px
TEACHER_LEARNING_RATE = 0.004
# Adam at 0.004 left a ResNet-18 at 73% of the MNIST test photos after 2 epochs of 4,000 photos at 64 px,
# at 0.001 at 94% (python -m bench.augment's build, in its docstring).
TORCHVISION_TEACHER_LEARNING_RATE = 0.001
TEACHER_TEST_IMAGES = 500   # at most: MNIST test digits no site receives, for the teacher's accuracy
SPLITS = ("train", "test")

CONFIG = """\
# Sample federation of photo-like image folders: MNIST digits drawn as JPEG and PNG files of
# many sizes and modes, {clients} sites; site c{clients} has no images of digit {missing}.
# Regenerate with: python -m scripts.make_photo_sample {arguments}
# Every key is explained in the config.yml at the top of the repository.
fc_knowledge_distillation:
  teacher_model: teacher.py
  teacher_args: {teacher_args}
  teacher_weights: teacher.pt
  student_model: student.py{student_args}
  train_dataset: train
  test_dataset: test
  image_size: {image_size}
  channels: 3
  normalize: federated
  max_iter: {rounds}
  local_epochs: 2
  batch_size: 32
  learning_rate: 0.004
  lr_schedule: cosine
  temperature: 4.0
  alpha: 0.8
  loss: kl
  seed: {seed}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help="folder with the four MNIST IDX files, gzipped or not (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "photo_sample",
                        help="new folder for generic/ and c1/, c2/, ... (default: %(default)s)")
    parser.add_argument("--clients", type=positive_int, default=2, help="number of sites (default: %(default)s)")
    parser.add_argument("--train-per-client", type=positive_int, default=3000,
                        help="training images per site before the missing class is left out (default: %(default)s)")
    parser.add_argument("--test-per-client", type=positive_int, default=500,
                        help="test images per site before the missing class is left out (default: %(default)s)")
    parser.add_argument("--missing-class", type=int, choices=range(DIGITS), default=3, metavar="DIGIT",
                        help="the digit the last site has no folder for (default: %(default)s)")
    parser.add_argument("--photo-sizes", type=positive_int, nargs=2, default=(40, 120), metavar=("MIN", "MAX"),
                        help="the photos' sides are drawn from MIN to MAX pixels (default: 40 120)")
    parser.add_argument("--image-size", type=positive_int, default=32,
                        help="image_size of the config and of the teacher's training (default: %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="max_iter of the config (default: %(default)s)")
    parser.add_argument("--teacher-samples", type=positive_int, default=12000,
                        help="MNIST training digits drawn only to train the teacher (default: %(default)s)")
    parser.add_argument("--teacher-epochs", type=positive_int, default=5,
                        help="epochs of teacher training (default: %(default)s)")
    parser.add_argument("--teacher-arch", metavar="ARCH",
                        help="a torchvision architecture (e.g. resnet18) as the teacher, models/torchvision_teacher.py "
                             "trained from scratch here, instead of the zoo's GAP CNN at width 32: a teacher many "
                             "times the student's cost, learning far slower on small images")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the drawing and the teacher "
                                                            "(default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} already exists and is not empty. Remove it or pass another --out.",
              file=sys.stderr)
        return 2
    x_train, y_train, x_test, y_test = read_mnist_or_exit(args.mnist_dir)

    order = np.random.default_rng(args.seed).permutation(len(y_train))
    teacher_idx, client_pool = order[:args.teacher_samples], order[args.teacher_samples:]
    train_parts = split_iid(y_train[client_pool], args.clients, args.train_per_client, args.seed)
    test_parts = split_iid(y_test, args.clients, args.test_per_client, args.seed + 1)
    sources = {"train": (x_train, y_train), "test": (x_test, y_test)}
    for site in range(args.clients):
        left_out = args.missing_class if site == args.clients - 1 else None
        for split, indices in (("train", client_pool[train_parts[site]]), ("test", test_parts[site])):
            images, labels = sources[split]
            kept = indices[labels[indices] != left_out]
            write_photos(args.out / f"c{site + 1}" / split, images[kept], labels[kept],
                         np.random.default_rng([args.seed, site, SPLITS.index(split)]), args.photo_sizes)
        note = f", no digit {left_out}" if left_out is not None else ""
        print(f"c{site + 1}: {count_files(args.out / f'c{site + 1}' / 'train')} train, "
              f"{count_files(args.out / f'c{site + 1}' / 'test')} test photos{note}")

    generic = args.out / "generic"
    generic.mkdir(parents=True)
    teacher_file, teacher_args = teacher_of(args)
    stages = stages_for(args.image_size)
    shutil.copyfile(teacher_file, generic / "teacher.py")
    shutil.copyfile(STUDENT_FILE, generic / "student.py")
    (generic / "config.yml").write_text(CONFIG.format(
        clients=args.clients, missing=args.missing_class, arguments=recipe(args),
        teacher_args=flow(teacher_args), image_size=args.image_size, rounds=args.rounds, seed=args.seed,
        student_args="" if stages == ZOO_STAGES else f"\n  student_args: {flow({'stages': stages})}"))

    unused_test = np.setdiff1d(np.arange(len(y_test)), np.concatenate(test_parts))
    unused_test = unused_test[:min(TEACHER_TEST_IMAGES, args.teacher_samples)]
    train_teacher(args, x_train[teacher_idx], y_train[teacher_idx], x_test[unused_test], y_test[unused_test],
                  generic / "teacher.pt")
    return 0


def stages_for(image_size: int) -> int:
    """The GAP CNN's stages whose receptive field (2^(stages + 1) - 1 px) spans the image: with fewer,
    every pooled feature sees a part of the digit only and the network learns far slower."""
    stages = ZOO_STAGES
    while 2 ** (stages + 1) < image_size:
        stages += 1
    return stages


def teacher_of(args: argparse.Namespace) -> tuple[Path, dict]:
    """The teacher's model file and teacher_args."""
    if args.teacher_arch:
        return TORCHVISION_TEACHER_FILE, {"arch": args.teacher_arch, "num_classes": DIGITS}
    stages = stages_for(args.image_size)
    return TEACHER_FILE, {"width": TEACHER_WIDTH, **({"stages": stages} if stages != ZOO_STAGES else {})}


def flow(mapping: dict) -> str:
    """A YAML flow mapping, as config.yml's template writes them: {width: 32}."""
    return "{" + ", ".join(f"{key}: {value}" for key, value in mapping.items()) + "}"


def recipe(args: argparse.Namespace) -> str:
    """The arguments that decide the files (all but where MNIST is read from and the output goes)."""
    def shown(value: object) -> str:
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return " ".join(f"--{key.replace('_', '-')} {shown(value)}" for key, value in vars(args).items()
                    if key not in ("mnist_dir", "out") and value is not None)


def write_photos(folder: Path, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 sizes: tuple[int, int]) -> None:
    """One photo file per image in ``folder/<label>/``."""
    for number, (digit, label) in enumerate(zip(images, labels)):
        kind = random_kind(rng)
        path = folder / str(label) / f"{number:05d}{kind.suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_file(digit, rng, kind, tuple(sizes)))


def count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def train_teacher(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                  test_labels: np.ndarray, path: Path) -> None:
    """Train the teacher on ``images`` drawn as photos and decoded by the app's own decoder, normalized as
    `normalize: federated` will normalize the sites' photos (by the statistics of its own training photos,
    which are drawn the same way)."""
    started = time.perf_counter()
    rng = np.random.default_rng([args.seed, args.clients, len(SPLITS)])
    with tempfile.TemporaryDirectory() as scratch:
        train = decoded(Path(scratch) / "train", images, labels, args, rng, "teacher training photos")
        test = decoded(Path(scratch) / "test", test_images, test_labels, args, rng, "MNIST test photos")
    train.normalization = test.normalization = pooled(channel_sums(train))
    print(f"teacher: {len(train) + len(test)} photos drawn and decoded at {args.image_size} px "
          f"({time.perf_counter() - started:.0f}s)")
    torch.manual_seed(args.seed)
    teacher = build_model(*teacher_of(args), "teacher_model")
    fit_teacher(teacher, train, test, args.teacher_epochs, args.seed, path, batch_size=64,
                learning_rate=TORCHVISION_TEACHER_LEARNING_RATE if args.teacher_arch else TEACHER_LEARNING_RATE)


def decoded(folder: Path, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
            rng: np.random.Generator, name: str) -> TensorData:
    """``images`` written as photo files into ``folder`` and read back as a site reads them (RGB, resized
    to --image-size and centre-cropped)."""
    write_photos(folder, images, labels, rng, args.photo_sizes)
    files = sorted(folder.rglob("*.*"))
    pixels = decode_files(files, (args.image_size, args.image_size), 3, name=name)
    return TensorData(pixels, torch.tensor([int(file.parent.name) for file in files]), name=name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
