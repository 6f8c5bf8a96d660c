"""FeatureCloud's NumPy files as input, unchanged: each upstream layout, written here with numpy exactly
as the upstream app's code writes it (FeatureCloud/fc-cross-validation, branch Numpy, utils.save_numpy and
WriteResults; fc-data-distributor's WriteResults; fc-image-loader's WriteResults; fc-image-normalization's
WriteResults), gives a site the same data and the same student as this app's own .npz of the same arrays.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from app.data import LabelsFile, load_dataset
from app.errors import ConfigError, DataError
from app.site import Site
from tests.conftest import SAMPLE, generic_dir

N_TRAIN, N_TEST = 96, 48


def mnist(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLE / "c1" / f"{split}.npz") as archive:
        return archive["images"][:count], archive["labels"][:count]


def frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """The DataFrame Cross-Validation and Data Distributor hold a NumPy dataset in (read_data, load_dataset)."""
    return pd.DataFrame({"features": list(images), "label": labels})


# Each writer saves (images, labels) under the stem and returns the dataset's file name, the labels
# file's name (or None) and the image_shape the site needs (or None).
Writer = Callable[[Path, str, np.ndarray, np.ndarray], tuple[str, str | None, list | None]]


def cross_validation_npz(folder, stem, images, labels):
    # CV's WriteResults npz_lambda (and Data Distributor's WriteResults): an object array of images
    df = frame(images, labels)
    np.savez_compressed(folder / f"{stem}.npz", data=df.features.values, targets=df.label.values)
    return f"{stem}.npz", None, None


def same_sep_npy(folder, stem, images, labels):
    # save_numpy(file_name, df.iloc[:, 0].to_numpy(), df.iloc[:, 1].to_numpy(), "same-sep")
    df = frame(images, labels)
    features, targets = df.iloc[:, 0].to_numpy(), df.iloc[:, 1].to_numpy()
    np.save(folder / f"{stem}.npy", np.array([features, targets]))
    return f"{stem}.npy", None, None


def same_last_npy(folder, stem, images, labels):
    # save_numpy(..., "same-last"): np.append flattens each image and widens it to the label's type
    df = frame(images, labels)
    features, targets = df.iloc[:, 0].to_numpy(), df.iloc[:, 1].to_numpy()
    samples = [np.append(features[i], targets[i]) for i in range(features.shape[0])]
    np.save(folder / f"{stem}.npy", samples)
    return f"{stem}.npy", None, [1, 28, 28]


def same_last_pairs_npy(folder, stem, images, labels):
    # same-last as Cross-Validation's README draws it: dataset = [sample, sample], sample = [features, label]
    pairs = np.empty((len(labels), 2), dtype=object)
    for index, (image, label) in enumerate(zip(images, labels)):
        pairs[index, 0], pairs[index, 1] = image, label
    np.save(folder / f"{stem}.npy", pairs)
    return f"{stem}.npy", None, None


def labels_file_npy(folder, stem, images, labels):
    # save_numpy(file_name, features, labels, "<stem>_labels.npy")
    df = frame(images, labels)
    features, targets = df.iloc[:, 0].to_numpy(), df.iloc[:, 1].to_numpy()
    np.save(folder / f"{stem}.npy", features)
    np.save(folder / f"{stem}_labels.npy", targets)
    return f"{stem}.npy", f"{stem}_labels.npy", None


def labels_file_npz(folder, stem, images, labels):
    # save_numpy(file_name, features, labels, "<stem>_labels.npz"): np.savez_compressed names each array arr_0
    df = frame(images, labels)
    features, targets = df.iloc[:, 0].to_numpy(), df.iloc[:, 1].to_numpy()
    np.savez_compressed(folder / f"{stem}.npz", features)
    np.savez_compressed(folder / f"{stem}_labels.npz", targets)
    return f"{stem}.npz", f"{stem}_labels.npz", None


def image_loader_npy(folder, stem, images, labels):
    # Image Loader's WriteResults: np.save(path, [samples, labels]), samples from PIL images, labels the
    # class folders' names. numpy < 1.24 (current when the app was written) made that ragged list an object
    # array by itself; numpy >= 1.24 refuses ragged lists, so the dtype is spelled out here.
    samples = [np.asarray(Image.fromarray(image)) for image in images]
    names = [str(label) for label in labels]
    np.save(folder / f"{stem}.npy", np.array([samples, names], dtype=object))
    return f"{stem}.npy", None, None


def image_normalization_npy(folder, stem, images, labels):
    # Image Normalization's WriteResults: normalised images and labels as Python lists, then same-sep
    # (the same numpy < 1.24 note as Image Loader's)
    normalised = (images.astype(np.float64) - 33.3) / 78.6
    np.save(folder / f"{stem}.npy", np.array([normalised.tolist(), labels.tolist()], dtype=object))
    return f"{stem}.npy", None, None


WRITERS: list[Writer] = [cross_validation_npz, same_sep_npy, same_last_npy, same_last_pairs_npy, labels_file_npy,
                         labels_file_npz, image_loader_npy, image_normalization_npy]


def own_npz(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray, writer: Writer) -> None:
    """This app's .npz of the arrays the upstream app saved (Image Normalization saves normalised floats)."""
    if writer is image_normalization_npy:
        images = (images.astype(np.float64) - 33.3) / 78.6
    np.savez(folder / f"{stem}.npz", images=images, labels=labels)


def site(folder: Path, name: str, **settings) -> Site:
    generic_dir(folder, max_iter=1, batch_size=32, **settings)
    return Site.load(folder, folder.parent / f"out_{name}", name, log=lambda message: None)


def trained_student(site_: Site) -> dict[str, torch.Tensor]:
    site_.adopt_plan(site_.make_plan())
    site_.prepare_teacher()
    site_.train_round()
    return site_.student.state_dict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A site reading this app's own .npz, and the student one round trains there."""
    folder = tmp_path_factory.mktemp("own")
    for stem, count in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = mnist(stem, count)
        np.savez(folder / f"{stem}.npz", images=images, labels=labels)
    own = site(folder, "own", train_dataset="train.npz", test_dataset="test.npz")
    return own, trained_student(own)


@pytest.mark.parametrize("writer", WRITERS, ids=[writer.__name__ for writer in WRITERS])
def test_each_upstream_layout_gives_the_same_data_and_student_as_the_apps_own_npz(tmp_path, writer, reference):
    folder = tmp_path / "in"
    folder.mkdir()
    keys = {}
    for stem, count in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = mnist(stem, count)
        dataset, labels_file, shape = writer(folder, stem, images, labels)
        keys.update({f"{stem}_dataset": dataset, f"{stem}_labels": labels_file, "image_shape": shape})
    upstream = site(folder, "upstream", **keys)
    if writer is image_normalization_npy:   # floats: compared with this app's .npz of the same floats
        own_folder = tmp_path / "own"
        own_folder.mkdir()
        for stem, count in (("train", N_TRAIN), ("test", N_TEST)):
            own_npz(own_folder, stem, *mnist(stem, count), writer)
        own = site(own_folder, "own", train_dataset="train.npz", test_dataset="test.npz")
        own_student = trained_student(own)
    else:
        own, own_student = reference
    student = trained_student(upstream)   # the site's data is ready once it adopted the plan
    for role in ("train", "test"):
        mine, theirs = getattr(upstream, role), getattr(own, role)
        assert torch.equal(mine.images, theirs.images) and mine.images.dtype == theirs.images.dtype
        assert torch.equal(mine.float_images(), theirs.float_images())
        assert torch.equal(mine.labels, theirs.labels)
    assert all(torch.equal(student[key], value) for key, value in own_student.items())


# --------------------------------------------------------------------------- what they must not do

def error_of(path: Path, **options) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, "train_dataset", **options)
    return str(info.value)


def test_an_object_array_whose_entries_are_not_image_label_pairs_is_named(tmp_path):
    records = np.empty(3, dtype=object)
    records[:] = [{"image": np.zeros((2, 2)), "label": 0}] * 3
    np.save(tmp_path / "train.npy", records)
    message = error_of(tmp_path / "train.npy")
    assert message.startswith("train_dataset 'train.npy': an object array of shape (3,) whose entries are not "
                              "image/label pairs (entry 0 is a dict)"), message
    assert "same-sep ([images, labels])" in message and "same-last" in message


def test_flat_vectors_that_do_not_fit_image_shape_are_reported_with_the_likely_shape(tmp_path):
    rows = np.concatenate([np.zeros((4, 784), np.int64), np.arange(4)[:, None]], axis=1)
    np.save(tmp_path / "train.npy", rows)
    message = error_of(tmp_path / "train.npy", image_shape=[3, 28, 28])
    assert ("flat vectors of 784 values, which do not fit image_shape [3, 28, 28] (2352 values). Set image_shape "
            "to the shape they were flattened from, e.g. [28, 28]") in message, message
    assert "the last value of each row is its label" in message
    assert "Set image_shape in config.yml" in error_of(tmp_path / "train.npy")   # none given
    assert load_dataset(tmp_path / "train.npy", "train_dataset", image_shape=[28, 28]).sample_shape == (1, 28, 28)


def test_image_shape_never_rearranges_images_that_already_have_a_shape(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 28, 28, 3), np.uint8), labels=[0, 1])
    message = error_of(tmp_path / "train.npz", image_shape=[3, 28, 28])
    assert "the images have shape [28, 28, 3], not image_shape [3, 28, 28]" in message, message


def test_labels_written_as_class_names_are_not_guessed_into_numbers(tmp_path):
    images = [np.zeros((4, 4), np.uint8)] * 2
    np.save(tmp_path / "train.npy", np.array([images, ["cat", "dog"]], dtype=object))
    assert "the labels are class names ('cat', 'dog'), not class numbers" in error_of(tmp_path / "train.npy")


def test_images_alone_without_a_labels_file_ask_for_one(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros((3, 4, 4), np.uint8))
    message = error_of(tmp_path / "train.npy")
    assert "holds 3 images of shape (4, 4) but no labels" in message and "train_labels" in message
    np.save(tmp_path / "y.npy", np.array([0, 1, 2]))
    loaded = load_dataset(tmp_path / "train.npy", "train_dataset", LabelsFile(tmp_path / "y.npy", "train_labels"))
    assert loaded.labels.tolist() == [0, 1, 2]
    message = error_of(tmp_path / "train.npy", labels=LabelsFile(tmp_path / "missing.npy", "train_labels"))
    assert "train_labels 'missing.npy': no such file" in message


def test_a_labels_file_for_a_format_with_its_own_labels_is_refused(tmp_path):
    np.savez(tmp_path / "y.npz", labels=[0])
    torch.save({"images": torch.zeros(1, 1, 4, 4), "labels": torch.zeros(1)}, tmp_path / "train.pt")
    message = error_of(tmp_path / "train.pt", labels=LabelsFile(tmp_path / "y.npz", "train_labels"))
    assert "train_labels: 'y.npz' is set, but train_dataset 'train.pt' is a .pt/.pth file" in message


def test_numeric_files_are_never_unpickled(tmp_path, monkeypatch):
    """Only files holding object arrays go through the unpickler."""
    calls = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *args, **kwargs: calls.append(kwargs["allow_pickle"])
                        or real_load(*args, **kwargs))
    np.savez(tmp_path / "train.npz", data=np.zeros((2, 4, 4), np.uint8), targets=[0, 1])
    load_dataset(tmp_path / "train.npz", "train_dataset")
    assert calls == [False]
    cross_validation_npz(tmp_path, "cv", np.zeros((2, 4, 4), np.uint8), np.array([0, 1]))
    load_dataset(tmp_path / "cv.npz", "train_dataset")
    assert calls == [False, False, True]


@pytest.mark.parametrize("value, expected", [
    ([28], "image_shape: [28] — must be a list of 2 or 3 whole numbers ≥ 1"),
    ([1, 0, 28], "image_shape: [1, 0, 28] — must be a list of 2 or 3 whole numbers ≥ 1"),
    ("28x28", "image_shape: '28x28' — must be a list of 2 or 3 whole numbers ≥ 1"),
])
def test_image_shape_must_be_a_shape(tmp_path, value, expected):
    generic_dir(tmp_path, image_shape=value)
    with pytest.raises(ConfigError) as info:
        Site.load(tmp_path, tmp_path / "out", "c1")
    assert expected in str(info.value)
