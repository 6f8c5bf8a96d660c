"""Float against int8 ONNX for the model zoo's students: size on disk and onnxruntime latency.

Each student (untrained, seed 0: weights do not change size or speed) is exported to ONNX and
quantized by the app's own code (``app.exports.export_onnx``, ``app.quantization.export_int8``:
static QDQ, per-channel int8 weights, calibrated on 256 random [0, 1] images), the way every site
does after the last round. Latencies are onnxruntime's (one thread, timed in its CPU time),
fastest of repeated runs, float and int8 taking turns (``app.profile.onnx_latency``). Accuracy
is not measured here: it needs a trained student; every run's report.md has it.

    python -m bench.int8 [--students mnist_cnn_student.py,mnist_mlp_student.py] [--results FILE]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from app import exports, quantization
from app.model_files import build_model
from app.profile import parameter_count
from bench.output import save

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DEFAULT_STUDENTS = ("mnist_cnn_student.py", "mnist_mlp_student.py", "cifar_cnn_student.py", "hinton_student.py")
DEFAULT_RESULTS = ROOT / "bench" / "results" / "int8.txt"
INPUTS = {"cifar": (3, 32, 32)}   # by file-name prefix; MNIST shape otherwise


def measure(student: str, folder: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(MODELS / student, {}, "student_model").eval()
    shape = next((value for prefix, value in INPUTS.items() if student.startswith(prefix)), (1, 28, 28))
    generator = np.random.default_rng(0)
    images = generator.random((quantization.CALIBRATION_SAMPLES, *shape), dtype=np.float32)
    float_path = folder / f"{Path(student).stem}.onnx"
    check = exports.export_onnx(model, torch.from_numpy(images[:64]), float_path)
    if not check["exported"]:
        raise SystemExit(f"{student}: ONNX export failed: {check['error']}")
    test = [(images[:64], np.zeros(64, dtype=np.int64))]
    started = time.perf_counter()
    int8 = quantization.export_int8(float_path, images, test, folder / f"{Path(student).stem}_int8.onnx")
    seconds = time.perf_counter() - started
    if not int8["exported"]:
        raise SystemExit(f"{student}: int8 failed: {int8['error']}")
    return {"student": student, "parameters": parameter_count(model), "int8": int8, "seconds": seconds}


def table(rows: list[dict]) -> str:
    header = (f"{'student':<22}{'params':>11}{'float':>11}{'int8':>11}{'size':>7}"
              f"{'b1 float':>11}{'b1 int8':>10}{'b1 speed':>9}{'b256 float':>12}{'b256 int8':>11}{'b256 speed':>11}"
              f"{'int8 step':>11}")
    lines = [header]
    for row in rows:
        int8, float_onnx = row["int8"], row["int8"]["float_onnx"]
        lines.append(
            f"{row['student']:<22}{row['parameters']:>11,}{float_onnx['size_bytes']:>11,}{int8['size_bytes']:>11,}"
            f"{int8['size_bytes'] / float_onnx['size_bytes']:>7.2f}"
            f"{float_onnx['latency_ms_batch1']:>11.4f}{int8['latency_ms_batch1']:>10.4f}"
            f"{float_onnx['latency_ms_batch1'] / int8['latency_ms_batch1']:>9.2f}"
            f"{float_onnx['latency_ms_per_sample']:>12.4f}{int8['latency_ms_per_sample']:>11.4f}"
            f"{float_onnx['latency_ms_per_sample'] / int8['latency_ms_per_sample']:>11.2f}"
            f"{row['seconds']:>10.2f}s")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", default=",".join(DEFAULT_STUDENTS),
                        help="comma-separated file names in models/")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the export)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    students = [name.strip() for name in args.students.split(",") if name.strip()]
    missing = [name for name in students if not (MODELS / name).is_file()]
    if missing:
        print(f"no such student in {MODELS}: {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(student, Path(folder)) for student in students]
    text = (table(rows) + "\n\nsizes in bytes; latency in ms per image (onnxruntime, one thread, its CPU time, "
            "fastest of repeated runs, float and int8 taking turns); size: int8 / float; speed: float / int8 "
            "(> 1: int8 faster); "
            "int8 step: quantization, test check and latency measurement, as at the end of a run\n"
            + " ".join(f"size_ratio_{Path(row['student']).stem}="
                       f"{row['int8']['size_bytes'] / row['int8']['float_onnx']['size_bytes']:.2f}" for row in rows))
    save(text.split("\n"), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
