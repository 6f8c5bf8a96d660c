"""The sample federation in containers against local processes, at the platform's query intervals.

    python -m bench.containers [--image fc-knowledge-distillation:ci] [--query-intervals 1,2]

For each query interval, runs ``python main.py simulate`` on the sample federation twice, with
local processes and with ``--image`` (one container per site), timed from launch to exit, the
two taking turns. The app shortens the engine's waits in the container as locally (README,
"Platform waits"), so what is left between the two is the containers' own cost: ``docker run``,
nginx, each container importing torch itself, removing the containers. Issue 15's target: the
container run within 4 s of the local one.

The last line is ``container_minus_local_s=<at the first interval>,<at the second>,...``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

from bench.output import save
from bench.run_breakdown import timed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "containers.txt"


def simulate(sample_dir: Path, out: Path, query_interval: float, image: str | None) -> float:
    sites = sorted(path for path in sample_dir.iterdir() if path.is_dir() and path.name != "generic")
    command = [sys.executable, "main.py", "simulate", "--client-dirs", ",".join(map(str, sites)),
               "--generic-dir", str(sample_dir / "generic"), "--output-dir", str(out),
               "--query-interval", str(query_interval)]
    seconds, _ = timed(command + (["--image", image] if image else []))
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="fc-knowledge-distillation:ci", help="the app's image (never pulled)")
    parser.add_argument("--query-intervals", default="1,2", help="controller query intervals in seconds (default 1,2)")
    parser.add_argument("--sample-dir", type=Path, default=ROOT / "sample_data",
                        help="the federation: generic/ and one folder per site (default sample_data/)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/containers.txt)")
    args = parser.parse_args(argv)
    intervals = [float(part) for part in args.query_intervals.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="containers-") as scratch:
        for interval in intervals:
            local = simulate(args.sample_dir, Path(scratch) / f"local-{interval:g}", interval, None)
            container = simulate(args.sample_dir, Path(scratch) / f"containers-{interval:g}", interval, args.image)
            rows.append((interval, local, container))
    lines = [f"The sample federation in containers and locally, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
             f"image {args.image}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} when done", "",
             f"{'query interval s':>16} {'local s':>9} {'containers s':>13} {'difference s':>13}"]
    lines += [f"{interval:>16g} {local:>9.1f} {container:>13.1f} {container - local:>+13.1f}"
              for interval, local, container in rows]
    lines += ["", "container_minus_local_s=" + ",".join(f"{container - local:.1f}" for _, local, container in rows)]
    save(lines, args.results)


if __name__ == "__main__":
    main()
