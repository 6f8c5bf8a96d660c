"""The bad-input matrix: every user mistake, run through the local test-bed with 2 real sites,
ends the run within 30 s, blames the site that has the mistake, and says what and how to fix.

Each case breaks one thing at one site (the participant `site2`, or the coordinator `site1`)
of a tiny real-MNIST federation (64 training and 32 test images per site, one round), so a
case costs little more than starting the two client processes.
"""
from __future__ import annotations

import io
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.make_sample_data import write_folds
from testbed.controller import Timeouts, run_federation
from tests.conftest import REPO, SAMPLE, cut_site, generic_dir, image_folders, sample_config, write_config
from tests.test_images import bomb_png, save, truncated_jpeg

pytestmark = pytest.mark.slow

LIMIT = 30.0   # seconds a bad input may take to stop the whole federation
N_TRAIN, N_TEST = 64, 32
BASE = {**sample_config(), "max_iter": 1}
CODE_RAN = "code-ran"   # a file the pickled payload would create if it were ever unpickled


@dataclass(frozen=True)
class Sites:
    """The folders of one test federation; `bad` belongs to the site given the bad input."""

    generic: Path
    bad: Path
    good: Path


@dataclass(frozen=True)
class Case:
    id: str
    breaks: Callable[[Sites], None]
    expected: tuple[str, ...]   # substrings of the message, which starts "site <site>: "
    site: str = "site2"


# --------------------------------------------------------------------------- ways to break a site

def config(**overrides) -> Callable[[Sites], None]:
    """The bad site's own config.yml: the shared settings with ``overrides``."""
    return lambda sites: write_config(sites.bad, {**BASE, **overrides})


def config_bytes(content: bytes) -> Callable[[Sites], None]:
    return file_bytes("config.yml", content)


def file_bytes(name: str, content: bytes) -> Callable[[Sites], None]:
    return lambda sites: (sites.bad / name).write_bytes(content)


def model_file(name: str, source: str) -> Callable[[Sites], None]:
    """The bad site's own model file, replacing the generic one of the same name."""
    return lambda sites: (sites.bad / name).write_text("import torch\nfrom torch import nn\n\n" + source)


def student_with(**defaults) -> str:
    """The sample student's source with other default constructor arguments."""
    source = (SAMPLE / "generic" / "student.py").read_text()
    old = "def __init__(self, num_classes: int = 10, channels: int = 8):"
    assert old in source
    arguments = {"num_classes": 10, "channels": 8, **defaults}
    return source.replace(old, f"def __init__(self, num_classes: int = {arguments['num_classes']}, "
                               f"channels: int = {arguments['channels']}):")


def dataset(name: str, edit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
            ) -> Callable[[Sites], None]:
    """The bad site's dataset file ``name`` rewritten as ``edit(images, labels)``."""
    def breaks(sites: Sites) -> None:
        path = sites.bad / name
        with np.load(path) as archive:
            images, labels = edit(archive["images"], archive["labels"])
        np.savez(path, images=images, labels=labels)
    return breaks


def set_at(array: np.ndarray, index: int, value: float) -> np.ndarray:
    changed = array.copy()
    changed[index] = value
    return changed


def truncated(name: str) -> Callable[[Sites], None]:
    def breaks(sites: Sites) -> None:
        path = sites.bad / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return breaks


def object_array_of_records(sites: Sites) -> None:
    """An object array of dicts, as a user's own script might save it: not a FeatureCloud layout."""
    records = np.empty(N_TRAIN, dtype=object)
    records[:] = [{"image": np.zeros((28, 28), np.uint8), "label": 0}] * N_TRAIN
    np.save(sites.bad / "train.npy", records)
    write_config(sites.bad, {**BASE, "train_dataset": "train.npy"})


def same_last_rows_with_a_wrong_image_shape(sites: Sites) -> None:
    """The site's training set as Cross-Validation's same-last rows (flat image, then label), and an
    image_shape that does not fit them."""
    with np.load(sites.bad / "train.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    np.save(sites.bad / "train.npy", [np.append(image, label) for image, label in zip(images, labels)])
    write_config(sites.bad, {**BASE, "train_dataset": "train.npy", "image_shape": [1, 32, 32]})


def as_folds(sites: Sites, lacking: tuple[str, str] | None = None) -> None:
    """Both sites' data as 3 Cross-Validation folds (data/0..2/train.npy, test.npy), read in directory
    mode; ``lacking``: the (fold, file) the bad site lacks, "*" for the whole fold."""
    for folder in (sites.bad, sites.good):
        with np.load(folder / "train.npz") as archive:
            write_folds(folder / "data", archive["images"], archive["labels"], 3, seed=0)
    write_config(sites.generic, {**BASE, "train_dataset": "train.npy", "test_dataset": "test.npy",
                                 "logic": {"mode": "directory", "dir": "data"}})
    if lacking is None:
        return
    fold, file = lacking
    if file == "*":
        shutil.rmtree(sites.bad / "data" / fold)
    else:
        (sites.bad / "data" / fold / file).unlink()


def config_only_at_the_good_site(sites: Sites) -> None:
    (sites.generic / "config.yml").unlink()
    write_config(sites.good, BASE)


def config_folder(sites: Sites) -> None:
    (sites.bad / "config.yml").mkdir()


def teacher_weights_of_another_network(sites: Sites) -> None:
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 26 * 26, 10))
    torch.save(other.state_dict(), sites.bad / "teacher.pt")


class _RunsACommand:
    """Unpickling this runs a shell command: what a weights file from a stranger may hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def weights_running_a_command(sites: Sites) -> None:
    torch.save({"state_dict": _RunsACommand(sites.generic.parent / CODE_RAN)}, sites.bad / "teacher.pt")


def diverging_training(sites: Sites) -> None:
    """sgd at the highest allowed learning rate on raw-logit MSE: the loss is NaN by the 4th batch.

    The shared settings are in the generic config, but only site2 can diverge: site1 gets one
    batch per round, whose loss is computed before any step is taken."""
    write_config(sites.generic, {**BASE, "optimizer": "sgd", "learning_rate": 10, "momentum": 0.9,
                                 "loss": "mse", "batch_size": 32})
    cut_site("c1", sites.good, 32, N_TEST)
    cut_site("c2", sites.bad, 256, N_TEST)


def photos(edit: Callable[[Path], object] = lambda train: None, **settings) -> Callable[[Sites], None]:
    """Both sites read train/ and test/ class folders of PNG files (their MNIST slices) with the shared
    ``settings``; ``edit`` then spoils the bad site's train/ folder."""
    def breaks(sites: Sites) -> None:
        write_config(sites.generic, {**BASE, "train_dataset": "train", "test_dataset": "test", **settings})
        for folder in (sites.bad, sites.good):
            image_folders(folder, source="c" + folder.name[-1], n_train=N_TRAIN, n_test=N_TEST)
        edit(sites.bad / "train")
    return breaks


def enlarge_test_images(train: Path) -> None:
    """Every test image 32×32, every training image still 28×28: each folder has one size."""
    for path in (train.parent / "test").glob("*/*.png"):
        with Image.open(path) as image:
            resized = image.resize((32, 32))
        resized.save(path)


def emptied(train: Path) -> None:
    for image in train.glob("*/*"):
        image.unlink()


# --------------------------------------------------------------------------- model files

NO_MODEL = """class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""
NOT_A_MODULE = """class Model:
    def __init__(self, num_classes=10):
        self.num_classes = num_classes
"""
CONSTRUCTOR_RAISES = """class Model(nn.Module):
    def __init__(self, num_classes=10, channels=8):
        super().__init__()
        raise RuntimeError("pretrained weights not downloaded")
"""
FORWARD_RAISES = """class Model(nn.Module):
    def __init__(self, num_classes=10, channels=8):
        super().__init__()
        self.fc = nn.Linear(32 * 32, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""
FORWARD_RETURNS_A_TUPLE = """class Model(nn.Module):
    def __init__(self, num_classes=10, channels=8):
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x):
        features = x.flatten(1)
        return self.fc(features), features
"""
SYNTAX_ERROR = """class Model(nn.Module)
    pass
"""


# --------------------------------------------------------------------------- the matrix

CASES = [
    # config.yml
    Case("config-missing", config_only_at_the_good_site,
         ("config.yml: not found at", "Put a config.yml with a 'fc_knowledge_distillation:' section")),
    Case("config-is-a-folder", config_folder, ("config.yml", "Put a config.yml")),
    Case("config-not-utf8", config_bytes(b"fc_knowledge_distillation:\n  alpha: 0.5 \xff\xfe\n"),
         ("config.yml: cannot be read", "can't decode byte 0xff", "Save it as a UTF-8 text file")),
    Case("config-yaml-syntax-error", config_bytes(b"fc_knowledge_distillation:\n  alpha: [0.5\n  seed: 0\n"),
         ("config.yml: YAML syntax error at line", "Check indentation"), site="site1"),
    Case("config-empty", config_bytes(b""), ("config.yml: the file is empty", "Add a 'fc_knowledge_distillation:'")),
    Case("config-other-apps-section-only", config_bytes(b"fc_federated_svm:\n  kernel: rbf\n  c: 1.0\n"),
         ("config.yml: no 'fc_knowledge_distillation' section (found: fc_federated_svm)",
          "Add a 'fc_knowledge_distillation:' section")),
    Case("config-unknown-key", config(temprature=3.0),
         ("config.yml: temprature: unknown key — did you mean 'temperature'?",)),
    Case("config-wrong-type", config(batch_size="large"),
         ("config.yml: batch_size: 'large' — must be a whole number",)),
    Case("alpha-above-1", config(alpha=1.5), ("config.yml: alpha: 1.5 — must be a number between 0 and 1",),
         site="site1"),
    Case("temperature-zero", config(temperature=0), ("config.yml: temperature: 0 — must be a number > 0",)),
    Case("batch-size-zero", config(batch_size=0), ("config.yml: batch_size: 0 — must be a whole number ≥ 1",)),
    Case("learning-rate-too-high", config(learning_rate=100),
         ("config.yml: learning_rate: 100 — must be a number > 0 and ≤ 10",)),
    Case("rounds-zero", config(max_iter=0),
         ("config.yml: max_iter: 0 — must be a whole number of communication rounds",)),
    Case("no-teacher-source", config(teacher_weights=None),
         ("teacher_weights: not set", "name a weights file in teacher_weights")),
    Case("dataset-path-leaves-input-folder", config(train_dataset="../x.npz"),
         ("train_dataset: '../x.npz' — must name a file inside the input folder", "use a plain file name")),
    # model files
    Case("teacher-model-missing", config(teacher_model="resnet_teacher.py"),
         ("teacher_model 'resnet_teacher.py': file not found", "fix the name in teacher_model")),
    Case("student-syntax-error", model_file("student.py", SYNTAX_ERROR),
         ("student_model 'student.py': syntax error in student.py line 4", "Fix that line"), site="site1"),
    Case("teacher-without-Model", model_file("teacher.py", NO_MODEL),
         ("teacher_model 'teacher.py': no class `Model` found", "Rename `Net` to `Model`")),
    Case("Model-not-a-Module", model_file("student.py", NOT_A_MODULE),
         ("student_model 'student.py': class `Model` must subclass torch.nn.Module",
          "Declare it as `class Model(nn.Module)`")),
    Case("constructor-raises", model_file("student.py", CONSTRUCTOR_RAISES),
         ("student_model 'student.py': Model(**{}) raised RuntimeError: pretrained weights not downloaded",
          "student.py line 7", "Fix Model.__init__ in student.py")),
    Case("constructor-argument-unknown", config(teacher_args={"depth": 50}),
         ("teacher_model 'teacher.py': Model(**{'depth': 50}) raised TypeError",
          "Make teacher_args in config.yml match the constructor Model(num_classes: int = 10")),
    Case("forward-raises", model_file("student.py", FORWARD_RAISES),
         ("student_model 'student.py': the forward pass failed on a batch of shape [4, 1, 28, 28]",
          "Make Model accept images of shape [batch, 1, 28, 28]")),
    Case("forward-returns-a-tuple", model_file("student.py", FORWARD_RETURNS_A_TUPLE),
         ("student_model 'student.py': forward returned a tuple", "Return only the logits tensor")),
    Case("student-outputs-fewer-classes-than-labels", model_file("student.py", student_with(num_classes=5)),
         ("student_model 'student.py': outputs 5 classes, but the labels go up to 9",
          "Change the output size of student.py", "to 10")),
    Case("student-and-teacher-classes-differ", model_file("student.py", student_with(num_classes=12)),
         ("student_model 'student.py' outputs 12 classes but teacher_model 'teacher.py' outputs 10",
          "Change the output size of student.py")),
    Case("student-architecture-differs-between-sites", model_file("student.py", student_with(channels=4)),
         ("site site2: student (student.py) differs from the coordinator's",
          "Every site must use the same student_model file and student_args")),
    # teacher weights
    Case("teacher-weights-do-not-fit", teacher_weights_of_another_network,
         ("teacher_weights 'teacher.pt': the weights do not fit the teacher's Model from teacher.py",
          "Use the teacher_model file and teacher_args they were trained with")),
    Case("teacher-weights-missing", config(teacher_weights="teacher_v2.pt"),
         ("teacher_weights 'teacher_v2.pt': file not found", "fix the name in teacher_weights")),
    Case("teacher-weights-garbage", file_bytes("teacher.pt", b"\x00garbage, not a torch file" * 40),
         ("teacher_weights 'teacher.pt': cannot be read as PyTorch weights",
          "torch.save(model.state_dict(), 'teacher.pt')")),
    Case("teacher-weights-pickle-runs-a-command", weights_running_a_command,
         ("teacher_weights 'teacher.pt': the file pickles Python objects that cannot be loaded safely: posix.system",
          "Save the weights with torch.save(model.state_dict(), 'teacher.pt')")),
    # dataset files
    Case("train-dataset-missing", lambda sites: (sites.bad / "train.npz").unlink(),
         ("train_dataset 'train.npz': no such file or folder", "test.npz",
          "Put the dataset there or set train_dataset to the right name")),
    Case("test-dataset-empty", dataset("test.npz", lambda x, y: (x[:0], y[:0])),
         ("test_dataset 'test.npz': the dataset is empty (0 images)", "Provide at least one image")),
    Case("train-dataset-garbage", file_bytes("train.npz", os.urandom(4096)),
         ("train_dataset 'train.npz': cannot read the file, it is corrupt", "it is not a zip archive",
          "Write it again")),
    Case("train-dataset-truncated", truncated("train.npz"),
         ("train_dataset 'train.npz': cannot read the file, it is corrupt, truncated", "Write it again")),
    Case("train-dataset-wrong-array-names",
         lambda sites: np.savez(sites.bad / "train.npz", data=np.zeros((4, 28, 28)), target=np.zeros(4)),
         ("train_dataset 'train.npz': expected keys 'images' (or 'x') and 'labels' (or 'y'), or FeatureCloud's "
          "'data' and 'targets', found keys: 'data', 'target'", "Save the arrays under those names")),
    Case("object-array-not-image-label-pairs", object_array_of_records,
         (f"train_dataset 'train.npy': an object array of shape ({N_TRAIN},) whose entries are not image/label "
          "pairs (entry 0 is a dict)", "FeatureCloud's same-sep ([images, labels]) or same-last")),
    Case("flat-vectors-do-not-fit-image-shape", same_last_rows_with_a_wrong_image_shape,
         ("train_dataset 'train.npy': the images are flat vectors of 784 values, which do not fit image_shape "
          "[1, 32, 32] (1024 values)", "Set image_shape to the shape they were flattened from, e.g. [28, 28]"),
         site="site1"),
    Case("labels-negative", dataset("train.npz", lambda x, y: (x, set_at(y.astype(np.int64), 5, -1))),
         ("train_dataset 'train.npz': labels must be integers 0..K-1, found -1 at index 5",
          "Fix the labels array"), site="site1"),
    Case("labels-not-integers", dataset("test.npz", lambda x, y: (x, set_at(y.astype(np.float32), 3, 2.5))),
         ("test_dataset 'test.npz': labels must be integers 0..K-1, found 2.5 at index 3", "Fix the labels array")),
    Case("labels-beyond-the-model-outputs", dataset("test.npz", lambda x, y: (x, set_at(y, 7, 12))),
         ("teacher_model 'teacher.py': outputs 10 classes, but the labels go up to 12",
          "If label 12 is a mistake instead, fix the labels in train_dataset and test_dataset")),
    Case("images-and-labels-differ-in-length", dataset("train.npz", lambda x, y: (x, y[:-3])),
         (f"train_dataset 'train.npz': {N_TRAIN} images but {N_TRAIN - 3} labels",
          "Save exactly one label per image")),
    Case("train-and-test-shapes-differ", dataset("test.npz", lambda x, y: (np.pad(x, ((0, 0), (2, 2), (2, 2))), y)),
         ("train_dataset 'train.npz' has images of shape (1, 28, 28)", "test_dataset 'test.npz' has (1, 32, 32)",
          "must hold images of the same size")),
    Case("nan-in-images", dataset("train.npz", lambda x, y: (set_at(x.astype(np.float32) / 255, 9, np.nan), y)),
         ("train_dataset 'train.npz': images contain 784 NaN or infinite values, the first in image 9",
          "Replace them with finite numbers"), site="site1"),
    # cross-validation folds
    Case("folds-differ-between-sites", lambda sites: as_folds(sites, lacking=("2", "*")),
         ("site site2: folds in data/ (0, 1) differ from the coordinator's (0, 1, 2): fold '2' of the coordinator "
          "is missing here", "Every site needs the same folds")),
    Case("fold-without-training-file", lambda sites: as_folds(sites, lacking=("1", "train.npy")),
         ("site site1: fold '1' has no training file: train_dataset 'data/1/train.npy' does not exist "
          "(data/1/ holds: test.npy)", "Every fold folder needs the training and test files under the same names"),
         site="site1"),
    # image folders
    Case("image-truncated-jpeg", photos(lambda train: truncated_jpeg(train / "3" / "scan.jpg")),
         ("train_dataset 'train': cannot decode 'train/3/scan.jpg'", "truncated or corrupt",
          "Replace it with a good copy or delete it")),
    Case("image-folder-holds-a-text-file", photos(lambda train: (train / "7" / "notes.txt").write_text("ok")),
         ("train_dataset 'train': 'train/7/notes.txt' is not an image file",
          "Delete it or move it out of the class folder"), site="site1"),
    Case("image-folder-has-no-images", photos(emptied),
         ("train_dataset 'train': no images found in", "only empty class folders (0, 1, 2",
          "Put each class's images in its own sub-folder")),
    Case("image-decompression-bomb", photos(lambda train: bomb_png(train / "3" / "huge.png")),
         ("train_dataset 'train': 'train/3/huge.png' is a decompression bomb by PIL's limit",
          "Replace it with a smaller image")),
    Case("image-class-folder-not-in-classes",
         photos(lambda train: save(Image.new("L", (28, 28)), train / "10" / "x.png"), classes=list(range(10))),
         ("train_dataset 'train': class folder '10' is not in classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)",
          "Add '10' to classes in config.yml, or move that folder out of train/")),
    Case("image-sizes-differ-without-image-size",
         photos(lambda train: save(Image.new("L", (40, 28)), train / "5" / "wide.png")),
         ("train_dataset 'train': 'train/5/wide.png' is 28×40 pixels (height×width) but 'train/0/",
          "Set image_size in config.yml (e.g. image_size: 28)")),
    Case("image-train-and-test-sizes-differ-without-image-size", photos(enlarge_test_images),
         ("train_dataset 'train' has images of shape (1, 28, 28) (C, H, W) but test_dataset 'test' has (1, 32, 32)",
          "Set image_size in config.yml (e.g. image_size: 28) to resize every image file to one size")),
    Case("image-size-zero", config(image_size=0),
         ("config.yml: image_size: 0 — must be a whole number of pixels from 1 to 4096",)),
    Case("image-size-above-4096", config(image_size=[28, 5000]),
         ("config.yml: image_size: [28, 5000] — must be a whole number of pixels from 1 to 4096",)),
    # training
    Case("learning-rate-diverges", diverging_training,
         ("training the student diverged: the loss became nan", "with learning_rate 10",
          "Lower learning_rate in config.yml (e.g. to 1)")),
]


def make_sites(tmp_path: Path, bad_site: str) -> tuple[list[Path], Sites]:
    generic = generic_dir(tmp_path / "generic", **BASE)
    folders = [cut_site(f"c{i}", tmp_path / f"site{i}", N_TRAIN, N_TEST) for i in (1, 2)]
    bad, good = (folders[1], folders[0]) if bad_site == "site2" else (folders[0], folders[1])
    return folders, Sites(generic, bad, good)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_stops_the_federation_naming_the_site_the_mistake_and_the_fix(tmp_path, case):
    folders, sites = make_sites(tmp_path, case.site)
    case.breaks(sites)
    started = time.monotonic()
    result = run_federation(folders, sites.generic, tmp_path / "out", REPO / "main.py", out=io.StringIO(),
                            timeouts=Timeouts(run=LIMIT))
    elapsed = time.monotonic() - started
    assert not result.ok
    assert elapsed < LIMIT, result.message
    assert result.failed_site == case.site, result.message
    assert result.message.startswith(f"site {case.site}: "), result.message
    for expected in case.expected:
        assert expected in result.message, result.message
    # a user mistake, reported as such by the app (not a crash the test-bed dug out of a traceback)
    assert "KD-ERROR" in result.logs[case.site].read_text()
    assert not (tmp_path / CODE_RAN).exists()
