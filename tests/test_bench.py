"""Smoke tests of bench.kd_throughput, bench.int8 and bench.decode, run as subprocesses with tiny settings.

They check the script's contract (last line, results file, data fallback, clear failure),
never the size of the measured figures: wall-clock numbers are not asserted anywhere.
"""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.devdata.idx import DEFAULT_MNIST

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^speedup_vs_seed_loop=(\d+\.\d\d) speedup_amortized=(\d+\.\d\d) kd_vs_plain=(\d+\.\d\d)$")
TINY = ["--epochs", "1", "--threads", "1"]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.kd_throughput", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def write_site(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.savez(folder / "train.npz", images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
             labels=rng.integers(0, 10, n))


def test_last_line_reports_three_positive_ratios_and_the_table_is_saved(tmp_path):
    results = tmp_path / "out" / "table.txt"
    done = run_bench("--samples", "512", *TINY, "--results", str(results))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert all(float(ratio) > 0 for ratio in match.groups())
    assert any(line.startswith("(a) KD, cached") for line in lines)
    assert any(line.startswith("teacher logit caching") for line in lines)
    steady, amortized, _ = (float(ratio) for ratio in match.groups())
    assert amortized < steady   # the caching is paid once, so the whole run gains less than an epoch
    assert "amortized over a default run (10 epochs" in done.stdout
    assert results.read_text() == done.stdout


def test_without_mnist_it_falls_back_to_the_sample_sites(tmp_path):
    samples = tmp_path / "sample_data"
    write_site(samples / "c1", 40, seed=1)
    write_site(samples / "c2", 30, seed=2)
    done = run_bench("--samples", "1000", "--batch-size", "16", "--warmup", "0", *TINY,
                     "--mnist-dir", str(tmp_path / "no_mnist"), "--sample-dir", str(samples),
                     "--results", str(tmp_path / "table.txt"))
    assert done.returncode == 0, done.stderr
    assert "data: 70 images [1, 28, 28] (1,000 requested): sample data c1/train.npz, c2/train.npz" in done.stdout
    assert LAST_LINE.match(done.stdout.splitlines()[-1])


def test_zero_epochs_are_refused():
    done = run_bench("--epochs", "0")
    assert done.returncode == 2
    assert "argument --epochs: must be at least 1, got 0" in done.stderr


def test_no_data_anywhere_fails_with_a_message_naming_both_places(tmp_path):
    done = run_bench(*TINY, "--mnist-dir", str(tmp_path / "no_mnist"), "--sample-dir", str(tmp_path / "none"),
                     "--results", str(tmp_path / "table.txt"))
    assert done.returncode == 1
    message = done.stderr.strip()
    assert f"no MNIST training set in {tmp_path / 'no_mnist'}" in message
    assert f"{tmp_path / 'none'}/c*/train.npz" in message and "Pass --mnist-dir" in message
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "table.txt").exists()


def test_int8_bench_prints_a_row_per_student_and_the_size_ratios(tmp_path):
    results = tmp_path / "int8.txt"
    done = subprocess.run([sys.executable, "-m", "bench.int8", "--students", "mnist_mlp_student.py",
                           "--results", str(results)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    row = next(line for line in lines if line.startswith("mnist_mlp_student.py")).split()
    float_size, int8_size = (int(cell.replace(",", "")) for cell in row[2:4])
    assert row[1] == "50,890" and float(row[4]) == round(int8_size / float_size, 2) <= 0.35
    assert re.fullmatch(r"size_ratio_mnist_mlp_student=(\d\.\d\d)", lines[-1]).group(1) == row[4]
    assert results.read_text() == done.stdout


def test_int8_bench_names_an_unknown_student():
    done = subprocess.run([sys.executable, "-m", "bench.int8", "--students", "nope.py"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "no such student in" in done.stderr and "nope.py" in done.stderr


@pytest.mark.skipif(not DEFAULT_MNIST.is_dir(), reason=f"no MNIST IDX files in {DEFAULT_MNIST}")
def test_decode_bench_compares_the_app_with_the_plain_loop_and_measures_a_sites_memory(tmp_path):
    results = tmp_path / "decode.txt"
    done = subprocess.run([sys.executable, "-m", "bench.decode", "--images", "64", "--repeats", "1", "--results",
                           str(results)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    last = re.fullmatch(r"app_vs_plain=(\d+\.\d\d) app_images_per_s=(\d+) memory_above_idle_mb=(-?\d+)", lines[-1])
    assert last, lines[-1]
    rows = {line[:3]: line.split() for line in lines if line.startswith(("(a)", "(b)"))}
    app, plain = (float(rows[key][-3].replace(",", "")) for key in ("(a)", "(b)"))
    assert round(app) == int(last[2]) and float(last[1]) == pytest.approx(app / plain, abs=0.06)
    assert "mean absolute difference of (a) and (b): 0.00 of 255" in done.stdout   # the same pixels
    assert "site loading 64 images at image_size 64:" in done.stdout
    assert results.read_text() == done.stdout


def test_decode_bench_names_the_missing_mnist_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.decode", "--mnist-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: MNIST files not found in {tmp_path}") and "--mnist-dir" in done.stderr
