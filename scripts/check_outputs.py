"""Check the outputs of a finished federation (used by CI after the sample federation).

    python scripts/check_outputs.py OUTPUT_DIR [--min-accuracy 0.95] [--min-compression 10]

Every site folder in OUTPUT_DIR must hold the expected files, the same student.pt
as every other site, one metrics.json round entry per configured round, and a student
at least as accurate and as much smaller as asked. Exits 1 listing every problem.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXPECTED = ("student.pt", "student_torchscript.pt", "student.onnx", "metrics.json", "rounds.csv",
            "accuracy.png", "loss.png", "confusion_matrix.png", "report.md", "config.yml", "log.txt",
            "checkpoint.pt")


def problems(output_dir: Path, min_accuracy: float, min_compression: float) -> list[str]:
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
    students = {(site / "student.pt").read_bytes() for site in sites if (site / "student.pt").is_file()}
    if len(students) > 1:
        found.append("the sites' student.pt files differ; every site must end with the same global student")
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--min-compression", type=float, default=10.0)
    args = parser.parse_args(argv)
    found = problems(args.output_dir, args.min_accuracy, args.min_compression)
    for problem in found:
        print(f"FAIL {problem}", file=sys.stderr)
    if not found:
        print(f"OK: every site in {args.output_dir} has its outputs and the same student")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
