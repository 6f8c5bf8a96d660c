"""scripts.make_sample_data: a sample federation from the MNIST IDX files, seeded, IID or skewed."""
import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from app.folds import Folds
from app.model_files import build_model
from app.weights import load_weights
from scripts.devdata.idx import DEFAULT_MNIST
from tests.conftest import REPO, SECTION

MNIST = DEFAULT_MNIST
TINY = ["--train-per-client", "60", "--test-per-client", "20", "--teacher-samples", "300", "--teacher-epochs", "1"]
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason=f"no MNIST IDX files in {MNIST}")


def make(out, *args, mnist=MNIST) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.make_sample_data", "--mnist-dir", str(mnist),
                           "--out", str(out), *TINY, *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def site_arrays(folder) -> dict[str, np.ndarray]:
    arrays = {}
    for part in ("train", "test"):
        with np.load(folder / f"{part}.npz") as data:
            arrays[f"{part}_images"], arrays[f"{part}_labels"] = data["images"], data["labels"]
    return arrays


@needs_mnist
def test_iid_sites_are_disjoint_real_mnist_and_the_same_for_the_same_seed(tmp_path):
    for run in ("a", "b"):
        done = make(tmp_path / run, "--clients", "3")
        assert done.returncode == 0, done.stderr
    sites = [site_arrays(tmp_path / "a" / f"c{i}") for i in (1, 2, 3)]
    for i, site in enumerate(sites, start=1):
        assert site["train_images"].shape == (60, 28, 28) and site["train_images"].dtype == np.uint8
        assert site["test_images"].shape == (20, 28, 28)
        assert site["train_labels"].dtype == np.int64 and set(site["train_labels"]) <= set(range(10))
        again = site_arrays(tmp_path / "b" / f"c{i}")
        assert all(np.array_equal(site[key], again[key]) for key in site)
    digests = [{hashlib.sha1(image.tobytes()).hexdigest() for image in site["train_images"]} for site in sites]
    assert sum(map(len, digests)) == len(set.union(*digests)) == 180   # no image at two sites
    generic = tmp_path / "a" / "generic"
    assert {p.name for p in generic.iterdir()} >= {"config.yml", "teacher.py", "student.py", "teacher.pt"}
    load_weights(build_model(generic / "teacher.py", {}, "teacher_model"), generic / "teacher.pt")


@needs_mnist
def test_a_dirichlet_split_leaves_sites_with_very_different_class_mixes(tmp_path):
    done = make(tmp_path, "--clients", "3", "--split", "dirichlet", "--dirichlet-alpha", "0.1")
    assert done.returncode == 0, done.stderr
    counts = np.array([np.bincount(site_arrays(tmp_path / f"c{i}")["train_labels"], minlength=10)
                       for i in (1, 2, 3)])
    assert (counts == 0).any()   # alpha 0.1: some site never sees some class
    assert "dirichlet" in (tmp_path / "generic" / "config.yml").read_text().lower()


def test_missing_mnist_files_are_named_in_one_line(tmp_path):
    done = make(tmp_path / "out", mnist=tmp_path / "nowhere")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: MNIST files not found in {tmp_path / 'nowhere'}: train-images-idx3-ubyte")
    assert "--mnist-dir" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@needs_mnist
def test_folds_are_cross_validation_output_that_the_app_reads_in_directory_mode(tmp_path):
    done = make(tmp_path, "--folds", "3")
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load((tmp_path / "generic" / "config.yml").read_text())
    assert document["fc_cross_validation"]["n_splits"] == 3   # the upstream app's section, as in a Workflow
    assert document[SECTION]["logic"] == {"mode": "directory", "dir": "data"}
    for site in ("c1", "c2"):
        assert sorted(path.name for path in (tmp_path / site).iterdir()) == ["data"]
        tested = []
        for fold in ("0", "1", "2"):
            train, test = (np.load(tmp_path / site / "data" / fold / f"{part}.npy", allow_pickle=True)
                           for part in ("train", "test"))
            assert train.dtype == object and train.shape[0] == 2   # same-sep: [images, labels]
            assert train[0][0].shape == (28, 28) and train[0][0].dtype == np.uint8
            digests = [{hashlib.sha1(image.tobytes()).hexdigest() for image in part[0]} for part in (train, test)]
            assert not digests[0] & digests[1] and len(digests[0]) + len(digests[1]) == 80   # 60 + 20 images
            tested.append(digests[1])
        assert sum(map(len, tested)) == len(set.union(*tested)) == 80   # every image tested in exactly one fold
    merged = tmp_path / "merged"
    shutil.copytree(tmp_path / "generic", merged)
    shutil.copytree(tmp_path / "c1", merged, dirs_exist_ok=True)
    folds = Folds.load(merged, tmp_path / "out", "c1", log=lambda message: None)
    assert list(folds.sites) == ["0", "1", "2"] and len(folds.sites["0"].test) in (26, 27)


def test_one_fold_is_refused(tmp_path):
    done = make(tmp_path, "--folds", "1")
    assert done.returncode == 2 and "--folds 1: cross-validation needs at least 2 folds" in done.stderr
