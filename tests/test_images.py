"""Image folders: listing, decoding every kind of file, resizing, the class list, lazy loading."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from app.agreement import agree_channels, agree_classes
from app.data import Decoding, LazyFiles, TensorData, as_train_and_test, decode_folders, load_dataset, open_dataset
from app.errors import DataError, FederationError
from app.images import decode_files, has_colour, list_class_folders, order_classes
from tests.conftest import SAMPLE, image_folders


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def decode_one(path: Path, size=None, channels=3) -> np.ndarray:
    """The file decoded as [H, W] (1 channel) or [H, W, 3]."""
    pixels = decode_files([path], size, channels)[0]
    return pixels[0].numpy() if channels == 1 else pixels.permute(1, 2, 0).numpy()


def quadrants(height: int = 40, width: int = 60) -> Image.Image:
    """Upright test card: a white top-left quadrant on black."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[: height // 2, : width // 2] = 255
    return Image.fromarray(pixels).convert("RGB")


# ------------------------------------------------------------------ file kinds that must work

def test_an_exif_rotated_jpeg_is_decoded_upright(tmp_path):
    upright = quadrants()
    stored = upright.transpose(Image.Transpose.ROTATE_270)   # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 8   # orientation 8: turn the stored pixels 90° counter-clockwise to display them
    path = save(stored, tmp_path / "photo.jpg", exif=exif, quality=95)
    assert Image.open(path).size == (40, 60)   # stored sideways: 40 wide, 60 high
    displayed = np.asarray(ImageOps.exif_transpose(Image.open(path)), dtype=np.int64)   # what a viewer shows
    assert np.abs(displayed - np.asarray(upright, dtype=np.int64)).max() < 60
    for size in (None, (20, 30)):
        pixels = decode_one(path, size).mean(axis=2)
        height, width = pixels.shape
        assert (height, width) == ((40, 60) if size is None else size)
        top_left = pixels[: height // 2 - 2, : width // 2 - 2]
        others = [pixels[: height // 2 - 2, width // 2 + 2:], pixels[height // 2 + 2:, :]]
        assert top_left.min() > 200 and all(part.max() < 55 for part in others)


def test_a_16_bit_png_is_scaled_into_0_to_255(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    expected = (values.astype(np.int64) * 255 + 32767) // 65535
    assert decode_one(path, channels=1).tolist() == expected.tolist() == [[0, 1, 4, 128, 255]]
    assert np.array_equal(decode_one(path, channels=3), np.repeat(expected[..., None], 3, axis=2))


def test_a_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "print.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    assert np.array_equal(decode_one(path), np.asarray(Image.open(path).convert("RGB")))
    assert has_colour([path], "x")


def test_palette_pngs_become_rgb_and_a_gray_palette_is_not_colour(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    colour = save(Image.fromarray(rgb).convert("P"), tmp_path / "colour.png")
    gray = save(Image.fromarray(rgb).convert("L").convert("P"), tmp_path / "gray.png")
    assert Image.open(colour).mode == Image.open(gray).mode == "P"
    assert np.array_equal(decode_one(colour), np.asarray(Image.open(colour).convert("RGB")))
    assert np.array_equal(decode_one(gray, channels=1), np.asarray(Image.fromarray(rgb).convert("L")))
    assert has_colour([colour], "x") and not has_colour([gray], "x")


def test_transparent_pixels_are_composited_on_white_and_colour_becomes_luminance(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)    # opaque red
    rgba[0, 1] = (0, 0, 255, 0)      # fully transparent blue: white
    rgba[1, :] = (0, 0, 0, 128)      # half-transparent black: mid gray
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "logo.png")
    pixels = decode_one(path)
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[0, 1].tolist() == [255, 255, 255]
    assert all(126 <= value <= 128 for value in pixels[1].ravel())
    assert decode_one(path, channels=1)[0, 0] == 76   # ITU-R 601-2 luminance of pure red


def test_resizing_keeps_the_aspect_ratio_and_crops_the_centre(tmp_path):
    pixels = np.full((20, 40, 3), 100, np.uint8)   # height 20, width 40
    pixels[:, :10] = (255, 0, 0)                   # outer quarters: cropped away by a square target
    pixels[:, 30:] = (0, 0, 255)
    path = save(Image.fromarray(pixels), tmp_path / "wide.png")
    square = decode_one(path, (10, 10))   # the edge columns blend in a little of the cropped stripes
    assert square.shape == (10, 10, 3) and np.all(square[:, 1:-1] == 100) and np.all(square[:, 0, 0] > square[:, 0, 2])
    wide = decode_one(path, (5, 20))   # same aspect ratio: nothing cropped, the stripes stay
    assert wide.shape == (5, 20, 3) and wide[:, 0].tolist() == [[255, 0, 0]] * 5 and wide[:, -1, 2].min() == 255


def test_parallel_decoding_equals_one_thread_and_reports_progress(tmp_path):
    image_folders(tmp_path, n_train=150, n_test=0, suffix=".jpg")
    files = list_class_folders(tmp_path / "train", "train").files
    seen = []
    parallel = decode_files(files, (20, 24), 3, workers=2,
                            progress=lambda done, total: seen.append((done, total)))
    assert torch.equal(parallel, decode_files(files, (20, 24), 3, workers=1))
    assert parallel.shape == (150, 3, 20, 24) and parallel.dtype == torch.uint8
    assert seen[-1] == (150, 150) and [done for done, _ in seen] == sorted(done for done, _ in seen)


# ------------------------------------------------------------------ folders and class lists

def test_hidden_and_system_files_are_skipped_and_empty_class_folders_reported(tmp_path):
    image_folders(tmp_path, n_train=30, n_test=0)
    train = tmp_path / "train"
    for junk in (".DS_Store", "Thumbs.db", "._0.png", "desktop.ini"):
        (train / "3" / junk).write_bytes(b"\x00junk")
    (train / ".hidden_class").mkdir()
    (train / "empty").mkdir()
    (train / "labels.csv").write_text("not a class")
    folders = list_class_folders(train, "train_dataset 'train'")
    assert folders.empty == ["empty"] and folders.loose_files == ["labels.csv"]
    assert len(folders.files) == 30 and not any(path.name.startswith(".") for path in folders.files)
    assert "empty" not in folders.classes


def test_a_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"train_dataset 'train': no images found in .*only empty class folders "
                                        r"\(cat, dog\). Put each class's images in its own sub-folder"):
        open_dataset(tmp_path / "train", "train_dataset")
    save(Image.new("L", (3, 3)), tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class folders, only the files a.png"):
        open_dataset(tmp_path / "flat", "train_dataset")


def test_folders_0_to_11_are_ordered_numerically_and_names_alphabetically():
    assert order_classes({str(number) for number in range(12)}) == [str(number) for number in range(12)]
    assert order_classes({"dog", "cat", "10", "2"}) == ["10", "2", "cat", "dog"]


def test_numbered_folders_get_their_numeric_index(tmp_path):
    for number in (0, 1, 2, 10, 11):
        save(Image.new("L", (4, 4), color=number * 20), tmp_path / "train" / str(number) / "x.png")
    data = load_dataset(tmp_path / "train", "train_dataset")
    label_of_folder = {int(image.max()) // 20: int(label) for image, label in zip(data.images, data.labels)}
    assert label_of_folder == {0: 0, 1: 1, 2: 2, 10: 3, 11: 4}


def survey(site, classes=None, arrays=False, colour=None):
    return {"site": site, "classes": classes, "arrays": arrays, "colour": colour}


def test_the_class_list_is_the_union_or_the_configured_one():
    surveys = [survey("a", ["0", "1", "2", "10"], colour=False), survey("b", ["0", "2", "11"], colour=True)]
    assert agree_classes(surveys, None) == ["0", "1", "2", "10", "11"]
    assert agree_classes(surveys, ["11", "10", "2", "1", "0"]) == ["11", "10", "2", "1", "0"]
    assert agree_channels(surveys, None) == 3 and agree_channels(surveys, 1) == 1
    assert agree_channels([survey("a", ["x"], colour=False)], None) == 1
    assert agree_classes([survey("a", arrays=True)], None) is None and agree_channels([survey("a")], None) is None
    with pytest.raises(FederationError, match="site b has class folder '11', which is not in classes"):
        agree_classes(surveys, ["0", "1", "2", "10"])
    with pytest.raises(FederationError, match="site a reads image folders.*site c reads arrays.*Set classes"):
        agree_classes(surveys + [survey("c", arrays=True)], None)


@pytest.mark.parametrize("theirs", ["01", "Cat", "cat "])
def test_one_class_spelled_two_ways_is_refused_not_split_in_two(theirs):
    ours = "1" if theirs == "01" else "cat"
    surveys = [survey("a", [ours, "dog"]), survey("b", [theirs, "dog"])]
    with pytest.raises(FederationError, match=f"site a has class folder '{ours}' and site b has '{theirs}'.*Rename"):
        agree_classes(surveys, None)
    distinct = [survey("a", ["1", "10", "dog"]), survey("b", ["1", "Dog2"])]
    assert agree_classes(distinct, None) == ["1", "10", "Dog2", "dog"]


def test_train_and_test_folders_share_one_class_list(tmp_path):
    image_folders(tmp_path, n_train=60, n_test=40, lacking=(3,))
    save(Image.new("L", (28, 28)), tmp_path / "train" / "3" / "x.png")   # only the training set has a 3
    train, test = as_train_and_test(tmp_path / "train", str(tmp_path / "test"))   # as distill() opens them
    assert 3 in train.labels.tolist() and 3 not in test.labels.tolist()
    assert test.labels.max() == 9 and train.sample_shape == (1, 28, 28)


def test_real_mnist_pngs_decode_to_the_arrays_they_were_made_from(tmp_path):
    image_folders(tmp_path, n_train=50, n_test=0)
    data = load_dataset(tmp_path / "train", "train_dataset")
    with np.load(SAMPLE / "c1" / "train.npz") as archive:
        images, labels = archive["images"][:50], archive["labels"][:50]
    order = np.argsort(labels, kind="stable")   # the folders list digit by digit
    assert torch.equal(data.images[:, 0], torch.from_numpy(images[order]))
    assert data.labels.tolist() == labels[order].tolist()


# ------------------------------------------------------------------ memory bound, channels per batch

def opened(folder: Path) -> dict:
    return {key: open_dataset(folder / split, key)
            for key, split in (("train_dataset", "train"), ("test_dataset", "test"))}


def test_above_the_memory_bound_images_are_decoded_per_batch_like_in_memory(tmp_path):
    image_folders(tmp_path, n_train=40, n_test=20)
    sources = opened(tmp_path)
    lines = []
    decoding = Decoding([str(digit) for digit in range(10)], 3, size=(16, 16), log=lines.append)
    eager = decode_folders(sources, decoding)
    budget = 40 * 3 * 16 * 16   # the training images fit, the test images no longer do
    lazy = decode_folders(sources, Decoding(decoding.classes, 3, size=(16, 16), memory_bytes=budget,
                                            log=lines.append))
    assert isinstance(lazy["train_dataset"], TensorData) and isinstance(lazy["test_dataset"], LazyFiles)
    assert any("test_dataset 'test': 20 images" in line and "lazily" in line and "image_memory_mb" in line
               for line in lines)
    generator = torch.Generator().manual_seed(0)
    for (index_a, images_a, labels_a), (index_b, images_b, labels_b) in zip(
            eager["test_dataset"].batches(7, shuffle=True, generator=torch.Generator().manual_seed(0)),
            lazy["test_dataset"].batches(7, shuffle=True, generator=generator)):
        assert torch.equal(index_a, index_b) and torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)
    assert lazy["test_dataset"].sample_shape == eager["test_dataset"].sample_shape == (3, 16, 16)


def test_gray_images_are_kept_as_one_channel_and_repeated_per_batch(tmp_path):
    image_folders(tmp_path, n_train=20, n_test=0)
    source = open_dataset(tmp_path / "train", "train_dataset")
    source.colour = has_colour(source.folders.files, source.name)
    assert source.colour is False
    data = decode_folders({"train_dataset": source}, Decoding([str(d) for d in range(10)], 3))["train_dataset"]
    assert data.images.shape == (20, 1, 28, 28) and data.sample_shape == (3, 28, 28)
    _, images, _ = next(data.batches(20))
    assert images.shape == (20, 3, 28, 28) and torch.equal(images[:, 0], images[:, 2])
    assert torch.equal(images[:, 1], data.images[:, 0].float() / 255)


def test_decoding_progress_fits_the_status_line(tmp_path):
    image_folders(tmp_path, n_train=70, n_test=30)
    sources = opened(tmp_path)
    messages = []
    decode_folders(sources, Decoding([str(d) for d in range(10)], 1, status=messages.append))
    assert messages[-1] == "decoding 100/100" and all(len(message) <= 40 for message in messages)
    assert len(f"decoding {10 ** 9:,}/{10 ** 9:,}") <= 40


def test_a_long_decoding_shows_its_progress_in_the_log_too(tmp_path, monkeypatch):
    image_folders(tmp_path, n_train=70, n_test=30)
    quick, slow = [], []
    decode_folders(opened(tmp_path), Decoding([str(d) for d in range(10)], 1, log=quick.append))
    assert not [line for line in quick if line.startswith("decoding")]   # a short one: its last line only
    monkeypatch.setattr("app.data.PROGRESS_LOG_SECONDS", 0.0)   # as if every chunk took that long
    decode_folders(opened(tmp_path), Decoding([str(d) for d in range(10)], 1, log=slow.append))
    progress = [line for line in slow if line.startswith("decoding")]
    assert progress[0] == "decoding 32/100" and progress[-1] == "decoding 100/100"
    assert slow[-1].startswith("decoded 100 images in")


# ------------------------------------------------------------------ files that must be refused

def bomb_png(path: Path, side: int = 20_000) -> Path:
    """A tiny PNG whose header claims side × side pixels: PIL refuses it before decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> Path:
    """The first half of a real JPEG: the header reads, the pixels do not."""
    noise = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    whole = save(Image.fromarray(noise), path, quality=95).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda folder: (folder / "3" / "notes.txt").write_text("scanned on monday"),
     ("'train/3/notes.txt' is not an image file", "Delete it or move it out of the class folder")),
    (lambda folder: truncated_jpeg(folder / "3" / "cut.jpg"),
     ("cannot decode 'train/3/cut.jpg'", "truncated or corrupt", "Replace it with a good copy or delete it")),
    (lambda folder: bomb_png(folder / "3" / "huge.png"),
     ("'train/3/huge.png' is a decompression bomb by PIL's limit", "400000000 pixels",
      "Replace it with a smaller image")),
    (lambda folder: save(Image.new("L", (30, 28)), folder / "3" / "wider.png"),
     ("'train/3/wider.png' is 28×30 pixels (height×width) but 'train/0/", "is 28×28",
      "Set image_size in config.yml (e.g. image_size: 28)")),
], ids=["not-an-image", "truncated-jpeg", "decompression-bomb", "mixed-sizes"])
def test_a_bad_file_is_named_with_its_fix(tmp_path, make, expected):
    image_folders(tmp_path, n_train=40, n_test=0)
    make(tmp_path / "train")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "train", "train_dataset")
    message = str(info.value)
    assert message.startswith("train_dataset 'train': ")
    for part in expected:
        assert part in message, message
