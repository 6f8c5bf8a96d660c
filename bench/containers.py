"""The sample federation in containers against local processes, at the platform's query intervals.

    python -m bench.containers [--image fc-knowledge-distillation:ci] [--query-intervals 1,2]

For each query interval, runs ``python main.py simulate`` on the sample federation twice, with
local processes and with ``--image`` (one container per site), timed from launch to exit, the
two taking turns. The app shortens the engine's waits in the container as locally (README,
"Platform waits"), so what is left between the two is the containers' own cost: ``docker run``,
supervisord and nginx, each container importing torch itself, removing the containers.
Issue 15's target: the container run within 4 s of the local one.

Where the difference lies, from the coordinator's ``metrics.json`` timings (as in
``bench.run_breakdown``): start-up (launch to its first state), each phase, and shutdown (its
last phase to the command's exit). Local training is the same computation in both runs, so the
containers' training time over the local one says whether both got the same CPU: on a busy
machine with cgroup v1, Docker puts all containers under one CPU weight that competes with every
other process on the machine (README, "Platform waits").

The last line is ``container_minus_local_s=<at the first interval>,<at the second>,...``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import tempfile
from pathlib import Path

from bench.output import save
from bench.run_breakdown import compact, federation, site_rows

# main.py's line in a container's log (a forked local client has nothing left to import and says nothing)
PRELOAD_LINE = re.compile(r"start-up imports took ([\d.]+) s in the background; the first state waited ([\d.]+) s")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "containers.txt"
PHASES = {"process start": "start-up (launch to 1st state)", "initial": "initial", "teacher": "teacher",
          "rounds: training": "rounds: training", "rounds: evaluation": "rounds: evaluation",
          "rounds: exchange": "rounds: exchange and waiting", "write results": "write results",
          "shutdown": "shutdown (to exit)"}


def timeline(sample_dir: Path, out: Path, query_interval: float, image: str | None) -> dict[str, float]:
    """The coordinator's phases of one run, in seconds, adding up to the run's wall time (`wall`); in a
    container also how long its late imports took and how long its first state waited for them."""
    launched, wall, timings = federation(sample_dir, out, query_interval, ("--image", image) if image else ())
    coordinator = sorted(timings)[0]
    rows = compact({coordinator: site_rows(launched, wall, timings[coordinator])})[coordinator]
    preload = PRELOAD_LINE.search((out / f"{coordinator}.log").read_text(errors="replace"))
    return {**rows, "wall": wall, **({"preload": float(preload[1]), "waited": float(preload[2])} if preload else {})}


def report(runs: list[tuple[float, dict, dict]], header: list[str]) -> list[str]:
    lines = [*header, "", f"{'seconds (coordinator)':<32}" + "".join(
        f"{f'local {q:g}s':>10}{f'cont. {q:g}s':>10}{'diff':>8}" for q, _, _ in runs)]
    for key, name in [*PHASES.items(), ("wall", "wall (launch to exit)")]:
        lines.append(f"{name:<32}" + "".join(f"{local[key]:>10.1f}{container[key]:>10.1f}"
                                             f"{container[key] - local[key]:>+8.1f}" for _, local, container in runs))
    lines.append("")
    for interval, local, container in runs:
        lines.append(f"query interval {interval:g} s: containers' training took "
                     f"{container['rounds: training'] / local['rounds: training']:.2f}x the local training "
                     f"(the same computation: above 1, the containers got less CPU)")
        if "preload" in container:
            lines.append(f"  the coordinator's container imported what a run imports late in "
                         f"{container['preload']:.1f} s from answering /status; its first state waited "
                         f"{container['waited']:.1f} s for it after POST /setup")
    lines += ["", "container_minus_local_s=" + ",".join(f"{c['wall'] - loc['wall']:.1f}" for _, loc, c in runs)]
    return lines


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
    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="containers-") as scratch:
        for interval in intervals:
            local = timeline(args.sample_dir, Path(scratch) / f"local-{interval:g}", interval, None)
            container = timeline(args.sample_dir, Path(scratch) / f"containers-{interval:g}", interval, args.image)
            runs.append((interval, local, container))
    header = [f"The sample federation in containers and locally, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
              f"image {args.image}, {os.cpu_count()} cores, load average {load_before:.2f} at the start, "
              f"{os.getloadavg()[0]:.2f} when done"]
    save(report(runs, header), args.results)


if __name__ == "__main__":
    main()
