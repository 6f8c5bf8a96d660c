"""Shared fixtures: small real-MNIST sites cut from the committed sample federation."""
from __future__ import annotations

import functools
import shutil
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from app import idle

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SECTION = "fc_knowledge_distillation"


def in_background(call, *args, **kwargs) -> Future:
    """``call(*args, **kwargs)`` in a daemon thread (``app.idle.in_background``): a run that a failing test
    leaves behind does not keep pytest alive."""
    return idle.in_background(functools.partial(call, *args, **kwargs), f"test: {getattr(call, '__name__', 'call')}")


def sample_config() -> dict:
    return yaml.safe_load((SAMPLE / "generic" / "config.yml").read_text())[SECTION]


def write_config(folder: Path, settings: dict) -> Path:
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump({SECTION: settings}, sort_keys=False))
    return path


def cut_site(source: str, folder: Path, n_train: int, n_test: int, part: int = 0) -> Path:
    """A site folder holding the part-th slice of n_train/n_test samples of sample_data/<source>."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.npz", n_train), ("test.npz", n_test)):
        chosen = slice(part * count, (part + 1) * count)
        with np.load(SAMPLE / source / name) as archive:
            np.savez(folder / name, images=archive["images"][chosen], labels=archive["labels"][chosen])
    return folder


def generic_dir(folder: Path, **overrides) -> Path:
    """The sample generic folder (models, teacher weights) with config overrides."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in (SAMPLE / "generic").iterdir():
        shutil.copy(item, folder / item.name)
    write_config(folder, {**sample_config(), **overrides})
    return folder


def site_input(folder: Path, source: str = "c1", n_train: int = 600, n_test: int = 200, **overrides) -> Path:
    """One merged input folder (generic files + a site's data), as a client sees /mnt/input."""
    generic_dir(folder, **overrides)
    return cut_site(source, folder, n_train, n_test)


def make_federation(root: Path, sites: int = 2, n_train: int = 600, n_test: int = 200,
                    **overrides) -> tuple[Path, list[Path]]:
    """root/generic/ and root/site1/, site2/, ... cut alternately from the sample's c1 and c2."""
    generic = generic_dir(root / "generic", **overrides)
    clients = [cut_site(f"c{1 + i % 2}", root / f"site{i + 1}", n_train, n_test, part=i // 2)
               for i in range(sites)]
    return generic, clients


@pytest.fixture
def small_federation(tmp_path):
    """generic/, site1/, site2/, ... with 600 training and 200 test images of real MNIST per site."""
    def make(sites: int = 2, n_train: int = 600, n_test: int = 200, **overrides) -> tuple[Path, list[Path]]:
        return make_federation(tmp_path, sites, n_train, n_test, **overrides)
    return make


def image_folders(folder: Path, source: str = "c1", n_train: int = 300, n_test: int = 100, part: int = 0,
                  lacking: tuple[int, ...] = (), suffix: str = ".png") -> Path:
    """``folder``/train and ``folder``/test with one sub-folder per digit of image files made from a
    slice of sample_data/<source>'s real MNIST arrays; the digits in ``lacking`` get no folder."""
    for split, count in (("train", n_train), ("test", n_test)):
        with np.load(SAMPLE / source / f"{split}.npz") as archive:
            chosen = slice(part * count, (part + 1) * count)
            images, labels = archive["images"][chosen], archive["labels"][chosen]
        for index, (pixels, label) in enumerate(zip(images, labels)):
            if int(label) in lacking:
                continue
            target = folder / split / str(int(label))
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target / f"{index:05}{suffix}")
    return folder


def folder_federation(root: Path, sites: list[dict], **overrides) -> tuple[Path, list[Path]]:
    """generic/ (sample models and teacher, config reading train/ and test/ folders) and one client
    folder per entry of ``sites`` (keyword arguments of ``image_folders``)."""
    generic = generic_dir(root / "generic", train_dataset="train", test_dataset="test", **overrides)
    clients = [image_folders(root / f"site{number}", **site) for number, site in enumerate(sites, start=1)]
    return generic, clients
