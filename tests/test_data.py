"""Tests of app.data: every dataset format, normalisation, error messages and batching."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets import FakeData
from torchvision.transforms.functional import pil_to_tensor

from app.data import LazyData, TensorData, as_data, check_compatible, load_dataset
from app.errors import DataError
from scripts.devdata.idx import read_idx

MNIST_DIR = Path("/work/shared/datasets/mnist")


def random_uint8(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def random_labels(n: int, classes: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n, dtype=np.int64)


def load_error(path: Path, key: str = "train_dataset") -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, key)
    message = str(info.value)
    assert key in message and path.name in message, message
    return message


def write_npz(tmp_path: Path, images: np.ndarray, labels: np.ndarray, name: str = "data.npz") -> Path:
    path = tmp_path / name
    np.savez(path, images=images, labels=labels)
    return path


class ArrayDataset(Dataset):
    """A plain map-style Dataset yielding channels-last uint8 arrays (or PIL images of them)
    and numpy integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, as_pil: bool = False) -> None:
        self.images, self.labels, self.as_pil = images, labels, as_pil

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray | Image.Image, np.int64]:
        image = self.images[index]
        return (Image.fromarray(image) if self.as_pil else image), self.labels[index]


# ---------------------------------------------------------------- formats round-trip

@pytest.mark.parametrize("suffix", [".pt", ".pth"])
@pytest.mark.parametrize("image_key, label_key", [("images", "labels"), ("x", "y")])
def test_pt_dict_round_trips(tmp_path, suffix, image_key, label_key):
    images = torch.rand(6, 3, 5, 4)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    path = tmp_path / f"train{suffix}"
    torch.save({image_key: images, label_key: labels}, path)
    data = load_dataset(path, "train_dataset")
    assert isinstance(data, TensorData)
    assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
    assert data.sample_shape == (3, 5, 4) and len(data) == 6 and data.num_classes_seen == 3


@pytest.mark.parametrize("container", [tuple, list])
def test_pt_pair_round_trips(tmp_path, container):
    images, labels = torch.rand(4, 1, 3, 3), torch.tensor([3, 0, 1, 2])
    torch.save(container((images, labels)), tmp_path / "pair.pt")
    data = load_dataset(tmp_path / "pair.pt", "test_dataset")
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels)


@pytest.mark.parametrize("image_key, label_key", [("images", "labels"), ("x", "y")])
def test_npz_round_trips(tmp_path, image_key, label_key):
    images = np.random.default_rng(2).random((5, 2, 6, 7), dtype=np.float32)
    labels = np.array([1, 0, 4, 2, 3], dtype=np.int32)
    np.savez(tmp_path / "d.npz", **{image_key: images, label_key: labels})
    data = load_dataset(tmp_path / "d.npz", "train_dataset")
    assert data.images.dtype == torch.float32 and data.labels.dtype == torch.int64
    assert np.array_equal(data.images.numpy(), images) and np.array_equal(data.labels.numpy(), labels)


def test_pickled_tensor_dataset_in_pth(tmp_path):
    images, labels = torch.rand(7, 1, 4, 4), torch.arange(7) % 3
    torch.save(TensorDataset(images, labels), tmp_path / "train_dataset.pth")
    data = load_dataset(tmp_path / "train_dataset.pth", "train_dataset")
    assert isinstance(data, TensorData)
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels)


def test_pickled_torchvision_dataset_of_pil_images_is_materialised(tmp_path):
    fake = FakeData(size=5, image_size=(3, 6, 6), num_classes=4)
    torch.save(fake, tmp_path / "fake.pth")
    data = load_dataset(tmp_path / "fake.pth", "train_dataset")
    expected = torch.stack([pil_to_tensor(fake[i][0]) for i in range(5)]).float() / 255
    assert data.images.shape == (5, 3, 6, 6)
    assert torch.allclose(data.float_images(), expected)
    assert data.labels.tolist() == [fake[i][1] for i in range(5)]


def test_pickled_plain_dataset_of_channels_last_arrays_is_materialised(tmp_path):
    images, labels = random_uint8(4, 5, 6, 3), random_labels(4)
    torch.save(ArrayDataset(images, labels), tmp_path / "arrays.pth")
    data = load_dataset(tmp_path / "arrays.pth", "train_dataset")
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(data.float_images(), expected) and data.labels.tolist() == labels.tolist()


def test_pickled_dataset_of_rgba_pil_images_becomes_rgb(tmp_path):
    images, labels = random_uint8(3, 5, 6, 4), random_labels(3)
    torch.save(ArrayDataset(images, labels, as_pil=True), tmp_path / "rgba.pth")
    data = load_dataset(tmp_path / "rgba.pth", "train_dataset")
    rgb = np.stack([np.asarray(Image.fromarray(image).convert("RGB")) for image in images])
    assert torch.equal(data.float_images(), torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255)


def test_pt_dict_of_numpy_arrays(tmp_path):
    images, labels = random_uint8(3, 4, 4), random_labels(3)
    torch.save({"x": images, "y": labels}, tmp_path / "numpy.pt")
    data = load_dataset(tmp_path / "numpy.pt", "train_dataset")
    assert torch.equal(data.float_images(), torch.from_numpy(images).unsqueeze(1).float() / 255)


# ---------------------------------------------------------------- normalisation

def test_uint8_images_stay_uint8_in_memory_and_are_scaled_to_unit_range_per_batch(tmp_path):
    images = np.array([[[0, 128], [255, 51]]], dtype=np.uint8)
    data = load_dataset(write_npz(tmp_path, images, np.array([0])), "train_dataset")
    assert data.images.dtype == torch.uint8   # a quarter of the memory of float32
    _, batch, _ = next(data.batches(1))
    assert batch.dtype == torch.float32 and batch.flatten().tolist() == pytest.approx([0.0, 128 / 255, 1.0, 0.2])


def test_float_images_keep_their_values():
    images = torch.tensor([[[[-2.5, 0.0], [3.0, 1e4]]]], dtype=torch.float64)
    data = TensorData(images, torch.tensor([1]))
    assert data.images.dtype == torch.float32 and data.images.flatten().tolist() == [-2.5, 0.0, 3.0, 1e4]


@pytest.mark.parametrize("shape, expected", [
    ((4, 5, 6), (1, 5, 6)),           # [N,H,W] gains a channel
    ((4, 1, 5, 6), (1, 5, 6)),
    ((4, 3, 5, 6), (3, 5, 6)),
    ((4, 5, 6, 3), (3, 5, 6)),        # channels-last, as CIFAR arrays are stored
    ((4, 5, 6, 1), (1, 5, 6)),
    ((4, 3, 5, 4), (3, 5, 4)),        # last dim 4 but dim 1 is a channel count: already channels-first
])
def test_channel_layouts(shape, expected):
    images = random_uint8(*shape)
    data = TensorData(images, random_labels(4))
    assert data.sample_shape == expected and data.images.is_contiguous()
    if len(shape) == 3:
        assert torch.equal(data.float_images()[:, 0], torch.from_numpy(images).float() / 255)
    elif shape[1:] != expected:
        assert torch.equal(data.float_images(), torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)


def test_labels_as_whole_floats_and_column_become_int64():
    data = TensorData(torch.rand(3, 1, 2, 2), np.array([[2.0], [0.0], [1.0]]))
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [2, 0, 1]


def test_big_endian_and_non_contiguous_inputs_are_normalised():
    images = np.arange(2 * 3 * 3, dtype=">f4").reshape(2, 3, 3)
    data = TensorData(images, np.array([1, 0], dtype=">i8"))
    assert data.images.flatten().tolist() == list(range(18)) and data.labels.tolist() == [1, 0]
    strided = torch.rand(3, 4, 4, 1).transpose(1, 2)
    assert TensorData(strided, [0, 1, 2]).images.is_contiguous()


# ---------------------------------------------------------------- error messages

def test_missing_file_says_where_it_looked(tmp_path):
    (tmp_path / "other.npz").touch()
    message = load_error(tmp_path / "train.npz")
    assert str(tmp_path / "train.npz") in message and "other.npz" in message


def test_unknown_extension_lists_supported_ones(tmp_path):
    (tmp_path / "train.csv").write_text("1,2,3\n")
    message = load_error(tmp_path / "train.csv")
    assert "unsupported file type '.csv'" in message and ".npz" in message and ".pth" in message


def test_truncated_npz_is_reported(tmp_path):
    path = write_npz(tmp_path, random_uint8(20, 8, 8), random_labels(20))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "corrupt, truncated" in load_error(path)


def test_garbage_pt_is_reported(tmp_path):
    path = tmp_path / "train.pt"
    path.write_bytes(b"\x00not a torch file" * 10)
    assert "not a file written by torch.save" in load_error(path)


def test_truncated_pt_is_reported(tmp_path):
    path = tmp_path / "train.pt"
    torch.save({"images": torch.rand(20, 1, 8, 8), "labels": torch.zeros(20)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "corrupt, truncated" in load_error(path)


def test_dict_without_expected_keys_lists_the_keys_found(tmp_path):
    torch.save({"features": torch.rand(2, 2, 2), "classes": torch.zeros(2)}, tmp_path / "train.pt")
    message = load_error(tmp_path / "train.pt")
    assert "'features'" in message and "'classes'" in message and "'images'" in message and "'targets'" in message


def test_empty_dataset(tmp_path):
    path = write_npz(tmp_path, np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
    assert "empty" in load_error(path)


def test_images_and_labels_of_different_lengths(tmp_path):
    path = write_npz(tmp_path, random_uint8(5, 4, 4), random_labels(4))
    assert "5 images but 4 labels" in load_error(path)


def test_non_integer_label_shows_value_and_index(tmp_path):
    path = write_npz(tmp_path, random_uint8(4, 4, 4), np.array([0.0, 1.0, 2.5, 1.0]))
    assert "found 2.5 at index 2" in load_error(path)


def test_nan_label_is_not_an_integer(tmp_path):
    path = write_npz(tmp_path, random_uint8(3, 4, 4), np.array([0.0, np.nan, 1.0]))
    assert "found nan at index 1" in load_error(path)


def test_negative_label_shows_value_and_index(tmp_path):
    path = write_npz(tmp_path, random_uint8(4, 4, 4), np.array([0, 1, -3, 1]))
    assert "found -3 at index 2" in load_error(path, "test_dataset")


@pytest.mark.parametrize("labels, problem", [
    (np.array([True, False, True]), "dtype bool"),
    (np.zeros((3, 2), np.int64), "shape (3, 2)"),
])
def test_labels_of_wrong_kind(tmp_path, labels, problem):
    assert problem in load_error(write_npz(tmp_path, random_uint8(3, 4, 4), labels))


def test_non_finite_images_are_counted(tmp_path):
    images = np.zeros((3, 1, 4, 4), np.float32)
    images[0, 0, 0, 0], images[2, 0, 1, 1], images[2, 0, 3, 3] = np.nan, np.inf, -np.inf
    assert "3 NaN or infinite values" in load_error(write_npz(tmp_path, images, np.array([0, 1, 2])))


def test_images_must_be_3d_or_4d(tmp_path):
    shape = (2, 1, 1, 4, 4)
    message = load_error(write_npz(tmp_path, np.zeros(shape, np.float32), np.zeros(shape[0], np.int64)))
    assert f"shape {shape}" in message and "[N, C, H, W]" in message


def test_flat_images_need_their_shape(tmp_path):
    message = load_error(write_npz(tmp_path, np.zeros((4, 16), np.float32), np.zeros(4, np.int64)))
    assert "flat vectors of 16 values" in message and "Set image_shape" in message and "[4, 4]" in message


def test_bool_images_are_not_numeric(tmp_path):
    path = write_npz(tmp_path, np.zeros((2, 3, 3), bool), np.array([0, 1]))
    assert "dtype bool" in load_error(path)


def test_object_images_must_be_arrays_of_numbers(tmp_path):
    images = np.empty(2, dtype=object)
    images[:] = [np.zeros((3, 3)), "not an image"]
    torch.save({"images": images, "labels": np.array([0, 1])}, tmp_path / "train.pth")
    assert "image 1 is the text 'not an image', not an array of pixel values" in load_error(tmp_path / "train.pth")


def test_check_compatible_shows_both_shapes():
    train = TensorData(torch.rand(2, 1, 28, 28), [0, 1], name="train_dataset 'a.npz'")
    test = TensorData(torch.rand(2, 3, 32, 32), [0, 1], name="test_dataset 'b.npz'")
    check_compatible(train, train.subset([1]))
    with pytest.raises(DataError) as info:
        check_compatible(train, test)
    message = str(info.value)
    for part in ("train_dataset 'a.npz'", "test_dataset 'b.npz'", "(1, 28, 28)", "(3, 32, 32)"):
        assert part in message


# ---------------------------------------------------------------- batching

@pytest.fixture
def ten() -> TensorData:
    return TensorData(torch.rand(10, 1, 3, 3), torch.arange(10) % 4)


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_index_once_per_epoch_with_matching_rows(ten, shuffle):
    batches = list(ten.batches(4, shuffle=shuffle, generator=torch.Generator().manual_seed(0)))
    assert [len(indices) for indices, _, _ in batches] == [4, 4, 2]
    seen = torch.cat([indices for indices, _, _ in batches])
    assert sorted(seen.tolist()) == list(range(10)) and seen.dtype == torch.int64
    for indices, images, labels in batches:
        assert torch.equal(images, ten.images[indices]) and torch.equal(labels, ten.labels[indices])
    assert (seen.tolist() != list(range(10))) == shuffle


def test_shuffle_is_reproducible_per_seed(ten):
    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([indices for indices, _, _ in ten.batches(3, shuffle=True, generator=generator)]).tolist()
    assert order(7) == order(7)
    assert order(7) != order(8)


def test_unshuffled_batches_are_views(ten):
    storage = ten.images.untyped_storage().data_ptr()
    for _, images, labels in ten.batches(3):
        assert images.untyped_storage().data_ptr() == storage
        assert labels.untyped_storage().data_ptr() == ten.labels.untyped_storage().data_ptr()


def test_batch_size_must_be_positive(ten):
    with pytest.raises(ValueError, match="batch_size"):
        next(ten.batches(0))


def test_subset_picks_rows_and_keeps_name(ten):
    part = TensorData(ten.images, ten.labels, name="train_dataset 'x.pt'").subset(np.array([7, 2]))
    assert torch.equal(part.images, ten.images[[7, 2]]) and part.labels.tolist() == [3, 2]
    assert part.name == "train_dataset 'x.pt'" and part.num_classes_seen == 4


# ---------------------------------------------------------------- folders of images (more in test_images.py)

def write_image_folder(root: Path, mode: str, size: tuple[int, int] = (7, 6)) -> tuple[np.ndarray, list[int]]:
    """Two classes of PNGs under ``root``; returns the pixels they must decode to."""
    arrays, labels = [], []
    for label, class_name in enumerate(["cat", "dog"]):
        (root / class_name).mkdir(parents=True)
        for number in range(3):
            channels = () if mode == "L" else (len(mode),)
            pixels = random_uint8(size[1], size[0], *channels, seed=10 * label + number)
            Image.fromarray(pixels).save(root / class_name / f"{number:02}.png")
            if mode == "RGBA":   # composited on white
                pixels = np.asarray(Image.alpha_composite(Image.new("RGBA", size, (255,) * 4),
                                                          Image.fromarray(pixels)).convert("RGB"))
            arrays.append(pixels)
            labels.append(label)
    return np.stack(arrays), labels


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3), ("RGBA", 3)])
def test_image_folder_is_decoded_once_into_uint8_like_the_same_arrays(tmp_path, mode, channels):
    arrays, labels = write_image_folder(tmp_path / "images", mode)
    data = load_dataset(tmp_path / "images", "train_dataset")
    eager = TensorData(arrays, labels)
    assert isinstance(data, TensorData) and data.images.dtype == torch.uint8
    assert len(data) == 6 and data.sample_shape == (channels, 6, 7) == eager.sample_shape
    assert data.num_classes_seen == 2
    assert torch.equal(data.images, eager.images) and torch.equal(data.labels, eager.labels)
    batches = list(data.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3)))
    for indices, images, batch_labels in batches:
        assert images.dtype == torch.float32 and batch_labels.dtype == torch.int64
        assert torch.equal(images, eager.float_images()[indices])


def test_image_folder_without_class_folders(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("L", (3, 3)).save(tmp_path / "images" / "a.png")
    assert "sub-folder" in load_error(tmp_path / "images")


# ---------------------------------------------------------------- as_data

def test_as_data_accepts_pairs_of_tensors_and_arrays():
    images, labels = random_uint8(3, 4, 4), random_labels(3)
    from_arrays = as_data((images, labels), name="x")
    from_tensors = as_data([torch.from_numpy(images), torch.from_numpy(labels)])
    assert torch.equal(from_arrays.images, from_tensors.images)
    assert from_arrays.sample_shape == (1, 4, 4) and from_arrays.name == "x"


def test_as_data_returns_data_as_is_and_tensor_datasets_in_memory(ten):
    assert as_data(ten) is ten
    data = as_data(TensorDataset(ten.images, ten.labels))
    assert isinstance(data, TensorData) and torch.equal(data.images, ten.images)


def test_as_data_keeps_other_datasets_lazy():
    images, labels = random_uint8(5, 3, 3, 3), random_labels(5)
    data = as_data(ArrayDataset(images, labels), name="mine")
    assert isinstance(data, LazyData) and data.sample_shape == (3, 3, 3) and len(data) == 5
    _, batch_images, batch_labels = next(data.batches(5))
    assert torch.equal(batch_images, TensorData(images, labels).float_images())
    assert data.num_classes_seen == int(labels.max()) + 1


def test_as_data_loads_paths_with_name_as_key(tmp_path):
    path = write_npz(tmp_path, random_uint8(2, 3, 3), np.array([0, 1]))
    assert len(as_data(str(path))) == 2 and len(as_data(path)) == 2
    with pytest.raises(DataError, match="my_data 'gone.npz'"):
        as_data(tmp_path / "gone.npz", name="my_data")


def test_as_data_rejects_other_objects():
    with pytest.raises(DataError, match="got a int"):
        as_data(5, name="data")


# ---------------------------------------------------------------- real MNIST

@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST not available at {MNIST_DIR}")
def test_real_mnist_npz(tmp_path):
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:2000]
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:2000]
    np.savez(tmp_path / "mnist.npz", images=images, labels=labels)
    data = load_dataset(tmp_path / "mnist.npz", "test_dataset")
    assert data.images.shape == (2000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert float(data.float_images().min()) == 0.0 and float(data.float_images().max()) == 1.0
    assert torch.bincount(data.labels).tolist() == np.bincount(labels).tolist()
    assert data.num_classes_seen == 10
