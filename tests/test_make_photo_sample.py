"""scripts.make_photo_sample: photo-like image folders from the MNIST IDX files, seeded, mixed formats,
modes and sizes, EXIF-turned JPEGs, a site without one class, a config for image_size and federated
normalization."""
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import yaml
from PIL import Image

from app.images import decode_file
from app.model_files import build_model
from app.weights import load_weights
from scripts.devdata.idx import DEFAULT_MNIST
from scripts.devdata.photos import EXIF_ORIENTATION, render, turned_file
from tests.conftest import REPO, SECTION

TINY = ["--train-per-client", "60", "--test-per-client", "50", "--teacher-samples", "40", "--teacher-epochs", "1",
        "--image-size", "20"]
needs_mnist = pytest.mark.skipif(not DEFAULT_MNIST.is_dir(), reason=f"no MNIST IDX files in {DEFAULT_MNIST}")


def make(out, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.make_photo_sample", "--out", str(out), *TINY, *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


@needs_mnist
def test_the_same_arguments_give_the_same_photo_folders_of_mixed_formats_modes_and_sizes(tmp_path):
    for run in ("a", "b"):
        done = make(tmp_path / run, "--missing-class", "7")
        assert done.returncode == 0, done.stderr
    files = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()}
    again = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in sorted((tmp_path / "b").rglob("*")) if p.is_file()}
    assert files == again   # names and bytes, the trained teacher included

    photos = [tmp_path / "a" / path for path in files if path.parts[0] != "generic"]
    opened = [Image.open(path) for path in photos]
    assert Counter(path.suffix for path in photos).keys() == {".jpg", ".JPG", ".png"}
    assert {(image.format, image.mode) for image in opened} == {
        ("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P")}
    sizes = [image.size for image in opened]
    assert all(40 <= side <= 120 for size in sizes for side in size)
    assert all(width != height for width, height in sizes) and len(set(sizes)) > len(sizes) / 3
    colourful = [image for image in opened if image.mode == "RGB"][:20]
    colours = [np.unique(np.asarray(image).reshape(-1, 3), axis=0) for image in colourful]
    assert all(len(distinct) > 50 for distinct in colours)   # shaded, noisy backgrounds, not flat
    turned = [image.getexif().get(EXIF_ORIENTATION) for image in opened if image.format == "JPEG"]
    assert {3, 6, 8} <= set(turned) and turned.count(None) > len(turned) / 2

    def classes(site, split):
        return {p.name for p in (tmp_path / "a" / site / split).iterdir()}
    assert classes("c1", "train") == classes("c1", "test") == {str(d) for d in range(10)}
    assert classes("c2", "train") == classes("c2", "test") == {str(d) for d in range(10)} - {"7"}
    assert sum(path.parts[:2] == ("c1", "train") for path in files) == 60

    generic = tmp_path / "a" / "generic"
    config = yaml.safe_load((generic / "config.yml").read_text())[SECTION]
    assert config["image_size"] == 20 and config["normalize"] == "federated"
    assert (config["train_dataset"], config["test_dataset"]) == ("train", "test")
    teacher = build_model(generic / config["teacher_model"], config["teacher_args"], "teacher_model")
    load_weights(teacher, generic / config["teacher_weights"])
    zoo = (REPO / "models" / "gap_cnn_student.py").read_text()
    assert (generic / config["student_model"]).read_text() == (generic / config["teacher_model"]).read_text() == zoo
    assert config["teacher_args"] == {"width": 32} and config["max_iter"] == 5


@needs_mnist
def test_a_torchvision_teacher_and_a_student_that_sees_the_whole_64_pixel_image(tmp_path):
    """--teacher-arch: the zoo's torchvision teacher, trained and loadable; at image_size 64 the GAP student
    gets 5 stages (a 63-px receptive field), the 4 of the default would see 31 px of it."""
    done = make(tmp_path / "a", "--image-size", "64", "--teacher-arch", "resnet18", "--clients", "1",
                "--train-per-client", "10", "--test-per-client", "10", "--teacher-samples", "20")
    assert done.returncode == 0, done.stderr
    generic = tmp_path / "a" / "generic"
    config = yaml.safe_load((generic / "config.yml").read_text())[SECTION]
    assert config["image_size"] == 64 and config["student_args"] == {"stages": 5}
    assert config["teacher_args"] == {"arch": "resnet18", "num_classes": 10}
    assert (generic / config["teacher_model"]).read_text() == (REPO / "models" / "torchvision_teacher.py").read_text()
    assert "--teacher-arch resnet18" in (generic / "config.yml").read_text()   # the recipe rebuilds it
    teacher = build_model(generic / config["teacher_model"], config["teacher_args"], "teacher_model")
    load_weights(teacher, generic / config["teacher_weights"])
    student = build_model(generic / config["student_model"], config["student_args"], "student_model")
    assert student.classifier.in_features == 256


def test_a_turned_jpeg_decodes_upright(tmp_path):
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[4:24, 12:16] = 255   # a "1": turned by 90 degrees it would lie flat
    upright = render(digit, np.random.default_rng(0), sizes=(50, 90))
    for orientation in (3, 6, 8):
        path = tmp_path / f"{orientation}.jpg"
        path.write_bytes(turned_file(upright, orientation, quality=95))
        with Image.open(path) as stored:
            assert stored.getexif()[EXIF_ORIENTATION] == orientation
            assert stored.size == (upright.size if orientation == 3 else upright.size[::-1])
        decoded = decode_file(path, (upright.height, upright.width), 3, resize=False).astype(int)
        assert np.abs(decoded - np.asarray(upright, dtype=int)).mean() < 6   # JPEG's loss only


def test_an_existing_output_folder_is_left_alone(tmp_path):
    (tmp_path / "c1").mkdir()
    done = make(tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: {tmp_path} already exists and is not empty. Remove it or pass another --out.\n"
    assert [p.name for p in tmp_path.iterdir()] == ["c1"]
