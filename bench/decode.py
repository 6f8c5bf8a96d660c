"""Decoding image folders: the app's decoder against a plain per-image Pillow loop, and its peak memory.

A folder of JPEGs of about 100 px (MNIST digits drawn as colour photos by scripts/devdata/photos.py,
80-120 px per side, in class folders 0 ... 9) is decoded and resized to ``--image-size`` twice per
repeat, taking turns:

  (a) app.images.decode_files, what a site runs: threads on every core, each file opened, oriented
      by EXIF, converted and resized (cover, centre crop) once, written into one uint8 tensor;
  (b) the plain loop a script would write: for each file in turn Image.open, ImageOps.exif_transpose,
      convert("RGB"), ImageOps.fit (resize to cover, centre crop), np.asarray, stacked at the end.

Then, in a fresh process, a site's load of the same folder (app.data.open_dataset and decode_folders
at ``--memory-size``, kept in memory) and its peak resident memory (Linux's VmHWM, reset once
everything a site imports is imported) above its resident memory at that point.

    python -m bench.decode [--images 10000] [--image-size 64] [--repeats 3] [--results FILE]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from app.images import decode_files, worker_count
from bench.output import save
from scripts.devdata.args import positive_int
from scripts.devdata.idx import DEFAULT_MNIST, read_mnist
from scripts.devdata.photos import KINDS, photo_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "decode.txt"
JPEG = next(kind for kind in KINDS if kind.name == "rgb-jpeg")
SIZES = (80, 120)              # pixels per side of the JPEGs: about 100
TARGET_IMAGES_PER_S = 1500     # issue 11, on 2 cores
TARGET_MEMORY_MB = 1024        # issue 11: peak above an idle site for 10,000 images at image_size 64


def write_jpegs(folder: Path, count: int, mnist_dir: Path, seed: int) -> list[Path]:
    """``count`` colour JPEGs of MNIST training digits in ``folder/<digit>/``, sorted like the app lists them."""
    images, labels, _, _ = read_mnist(mnist_dir)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), size=count, replace=count > len(labels))
    for number, index in enumerate(chosen):
        path = folder / str(labels[index]) / f"{number:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_file(images[index], rng, JPEG, SIZES))
    return sorted(folder.rglob("*.jpg"))


def plain_loop(files: list[Path], size: int) -> np.ndarray:
    """(b): one file after another, as a script without the app would decode them."""
    decoded = []
    for path in files:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB")
            decoded.append(np.asarray(ImageOps.fit(upright, (size, size), Image.Resampling.BILINEAR)))
    return np.stack(decoded).transpose(0, 3, 1, 2)


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def site_memory(folder: Path, size: int) -> dict:
    """Peak resident memory of a fresh process loading ``folder`` as a site does, and its memory before."""
    done = subprocess.run([sys.executable, "-m", "bench.decode", "--memory-of", str(folder), "--memory-size",
                           str(size)], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the memory measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_memory(folder: Path, size: int) -> None:
    """In the fresh process: import what a site imports, then load the folder; print the figures (MB)."""
    import app.site  # noqa: F401  (an idle site has all of this imported)
    from app.data import Decoding, decode_folders, open_dataset
    # The peak starts again from here: importing took more than the process keeps (ru_maxrss would
    # even carry the parent's peak over, through fork and exec).
    Path("/proc/self/clear_refs").write_text("5")
    idle = memory_mb("VmRSS")
    source = open_dataset(folder, "train_dataset")
    data = decode_folders({"train": source}, Decoding(source.classes, channels=3, size=(size, size)))["train"]
    print(json.dumps({"idle_mb": idle, "peak_mb": memory_mb("VmHWM"), "images": len(data),
                      "pixels_mb": data.images.numel() / 2 ** 20}))


def memory_mb(field: str) -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM) in MB, from Linux's /proc."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields[field].split()[0]) / 1024


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=10000, help="JPEGs to decode (default: %(default)s)")
    parser.add_argument("--image-size", type=positive_int, default=64,
                        help="side the images are resized to in the timing (default: %(default)s)")
    parser.add_argument("--memory-size", type=positive_int, default=64,
                        help="image_size of the memory measurement (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed runs of each, taking turns; the fastest counts (default: %(default)s)")
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help="folder with the four MNIST IDX files (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the drawn JPEGs (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--memory-of", type=Path, help=argparse.SUPPRESS)   # the fresh process's part
    args = parser.parse_args(argv)
    if args.memory_of is not None:
        measure_memory(args.memory_of, args.memory_size)
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        try:
            files = write_jpegs(Path(scratch), args.images, args.mnist_dir, args.seed)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        ours = decode_files(files, (args.image_size, args.image_size), 3)
        plain = plain_loop(files, args.image_size)   # also warms the page cache for both
        differ = float(np.abs(ours.numpy().astype(np.int16) - plain).mean())
        times = {"app": [], "plain": []}
        for _ in range(args.repeats):
            times["app"].append(timed(lambda: decode_files(files, (args.image_size, args.image_size), 3)))
            times["plain"].append(timed(lambda: plain_loop(files, args.image_size)))
        memory = site_memory(Path(scratch), args.memory_size)

    rate = {name: len(files) / min(seconds) for name, seconds in times.items()}
    ratio = rate["app"] / rate["plain"]
    above_idle = memory["peak_mb"] - memory["idle_mb"]
    lines = [
        f"{'decoder':<52}{'images/s':>10}{'fastest s':>11}{'slowest s':>11}",
        *(f"{label:<52}{rate[name]:>10,.0f}{min(times[name]):>11.2f}{max(times[name]):>11.2f}"
          for name, label in (("app", f"(a) app.images.decode_files, {worker_count()} threads"),
                              ("plain", "(b) plain Pillow loop, one image after another"))),
        "",
        f"{len(files):,} JPEGs of {SIZES[0]}-{SIZES[1]} px resized to {args.image_size}x{args.image_size}, "
        f"{args.repeats} run(s) each taking turns; mean absolute difference of (a) and (b): {differ:.2f} of 255",
        f"site loading {memory['images']:,} images at image_size {args.memory_size}: peak {memory['peak_mb']:,.0f} MB, "
        f"{above_idle:,.0f} MB above the same process before (pixels kept: {memory['pixels_mb']:,.0f} MB)",
    ]
    if rate["app"] < TARGET_IMAGES_PER_S:
        lines.append(f"WARNING: (a) decoded {rate['app']:,.0f} images/s, below the target of {TARGET_IMAGES_PER_S:,} "
                     "(issue 11, on 2 otherwise idle cores)")
    if above_idle > TARGET_MEMORY_MB:
        lines.append(f"WARNING: {above_idle:,.0f} MB above idle, more than the target of {TARGET_MEMORY_MB:,} MB")
    lines.append(f"app_vs_plain={ratio:.2f} app_images_per_s={rate['app']:.0f} memory_above_idle_mb={above_idle:.0f}")
    save(lines, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
