"""Check the outputs of a finished federation (used by CI after the sample federation).

    python scripts/check_outputs.py OUTPUT_DIR [--min-accuracy 0.95] [--min-compression 10] [--min-int8-agreement 0.98]

Every site folder in OUTPUT_DIR must hold the expected files, the same student.pt
as every other site, one metrics.json round entry per configured round, a student
at least as accurate and as much smaller as asked and, with quantize on, a student_int8.onnx
predicting like the float student on at least the asked share of the site's test images.
Exits 1 listing every problem.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXPECTED = ("student.pt", "student_torchscript.pt", "student.onnx", "metrics.json", "rounds.csv",
            "accuracy.png", "loss.png", "confusion_matrix.png", "report.md", "config.yml", "log.txt",
            "checkpoint.pt")


def problems(output_dir: Path, min_accuracy: float, min_compression: float,
             min_int8_agreement: float = 0.98) -> list[str]:
    sites = sorted(path for path in output_dir.iterdir()
                   if path.is_dir() and not path.name.endswith(".failed") and (path / "metrics.json").exists())
    if not sites:
        return [f"{output_dir}: no site folder with a metrics.json"]
    found = []
    for site in sites:
        found += [f"{site.name}: {name} is missing or empty" for name in EXPECTED
                  if not (site / name).is_file() or (site / name).stat().st_size == 0]
        metrics = json.loads((site / "metrics.json").read_text())
        accuracy, ratio = metrics["student"]["accuracy"], metrics["compression"]["parameters_ratio"]
        rounds = [row["round"] for row in metrics["rounds"]]
        if rounds != list(range(metrics["first_round"], metrics["config"]["max_iter"] + 1)):
            found.append(f"{site.name}: rounds {rounds} do not match max_iter {metrics['config']['max_iter']}")
        if accuracy < min_accuracy:
            found.append(f"{site.name}: student accuracy {accuracy:.4f} < {min_accuracy}")
        if ratio < min_compression:
            found.append(f"{site.name}: student only {ratio:.1f}x smaller than the teacher (< {min_compression}x)")
        print(f"{site.name}: student accuracy {accuracy:.4f}, {ratio:.1f}x fewer parameters than the teacher")
        if metrics["config"].get("quantize", False):   # (outputs of versions before int8 lack the key)
            found += int8_problems(site, metrics.get("int8", {}), min_int8_agreement)
    students = {(site / "student.pt").read_bytes() for site in sites if (site / "student.pt").is_file()}
    if len(students) > 1:
        found.append("the sites' student.pt files differ; every site must end with the same global student")
    return found


def int8_problems(site: Path, int8: dict, min_agreement: float) -> list[str]:
    if not int8.get("exported"):
        return [f"{site.name}: no student_int8.onnx although quantize is on ({int8.get('error', 'no int8 entry')})"]
    print(f"{site.name}: int8 student accuracy {int8['accuracy']:.4f} (float {int8['float_onnx']['accuracy']:.4f}), "
          f"same prediction on {int8['agreement']:.4f} of the test images, "
          f"{int8['size_bytes'] / int8['float_onnx']['size_bytes']:.2f} of the float file's size")
    found = [] if (site / "student_int8.onnx").is_file() else [f"{site.name}: student_int8.onnx is missing"]
    if int8["agreement"] < min_agreement:
        found.append(f"{site.name}: the int8 student predicts like the float one on only {int8['agreement']:.4f} "
                     f"of the test images (< {min_agreement})")
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--min-compression", type=float, default=10.0)
    parser.add_argument("--min-int8-agreement", type=float, default=0.98)
    args = parser.parse_args(argv)
    found = problems(args.output_dir, args.min_accuracy, args.min_compression, args.min_int8_agreement)
    for problem in found:
        print(f"FAIL {problem}", file=sys.stderr)
    if not found:
        print(f"OK: every site in {args.output_dir} has its outputs and the same student")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
