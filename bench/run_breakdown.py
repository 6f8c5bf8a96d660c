"""Where the sample federation's wall time goes, against a plain loop doing the same work.

    python -m bench.run_breakdown [--repeats 3] [--sample-dir sample_data] [--query-interval 0.05] [--results FILE]

Runs, taking turns, ``--repeats`` times each (a lone run of either varied by a fifth from one run to
the next on an idle 2-core VM, so one pair cannot carry a ratio):

  1. the README's quick start, ``python main.py simulate`` on the sample federation (two local
     processes on the real engine, driven over HTTP by the test-bed), timed from launching the
     command to its exit. Each site's ``metrics.json`` ``timings`` say where its time went:
     process start (launch to the site's first state: the test-bed, the fork server's imports,
     POST /setup), initial, teacher (what the teacher still had to do: a frozen one runs from the moment
     the input is read, before POST /setup), each round (training / evaluation / exchange and waiting),
     writing results; shutdown is what remains until the command exits.
  2. ``python -m bench.plain_loop``: the same work in one process without any framework (sites
     one after the other, same data, models, seed and rounds, teacher logits cached, FedAvg
     in-process, ``student.pt`` saved), timed the same way.

Prints every run's wall time, the breakdown of the federation run with the median wall time, then
the ratios (the medians' ratio for the wall). The last line is

    wall_vs_plain_loop=<x> round_overhead_share=<y> write_results_share=<z>

``round_overhead_share`` is the part of the rounds that is neither local training nor evaluation
(mean over the sites); ``write_results_share`` is the coordinator's writing results over the wall.
Targets (issue 15): x <= 1.0 (stretch 0.8), y <= 0.15, z <= 0.08.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.output import save
from testbed.controller import DEFAULT_QUERY_INTERVAL
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "results" / "run_breakdown.txt"
TARGETS = {"wall_vs_plain_loop": 1.0, "round_overhead_share": 0.15, "write_results_share": 0.08}


def timed(command: list[str]) -> tuple[float, str]:
    """Seconds from launching ``command`` (in the repository) to its exit, and what it printed."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"run_breakdown: `{' '.join(command)}` failed with exit code {done.returncode}:\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout


def federation(sample_dir: Path, out: Path, query_interval: float,
               options: tuple[str, ...] = ()) -> tuple[float, float, dict[str, dict]]:
    """Run the quick start (with more `simulate` options, if given); returns its launch time (epoch), its wall
    seconds and each site's timings."""
    sites = sorted(path for path in sample_dir.iterdir() if path.is_dir() and path.name != "generic")
    launched = time.time()
    wall, _ = timed([sys.executable, "main.py", "simulate", "--client-dirs", ",".join(map(str, sites)),
                     "--generic-dir", str(sample_dir / "generic"), "--output-dir", str(out),
                     "--query-interval", str(query_interval), *options])
    timings = {site.name: json.loads((out / site.name / "metrics.json").read_text())["timings"] for site in sites}
    return launched, wall, timings


def site_rows(launched: float, wall: float, timings: dict) -> dict[str, float]:
    """One site's timeline as phases that add up to the wall time."""
    rows = {"process start": timings["start"] - launched, "initial": timings["initial"],
            "teacher": timings["teacher"]}
    for record in timings["rounds"]:
        for part in ("training", "evaluation", "exchange"):
            rows[f"round {record['round']} {part}"] = record[part]
    rows["write results"] = timings["write_results"]
    rows["shutdown"] = wall - sum(rows.values())
    return rows


def overhead_share(timings: dict) -> float:
    rounds = timings["rounds"]
    total = sum(r["training"] + r["evaluation"] + r["exchange"] for r in rounds)
    return sum(r["exchange"] for r in rounds) / total if total else 0.0


def report(launched: float, wall: float, timings: dict[str, dict], plain: float, plain_output: str,
           coordinator: str, header: list[str]) -> list[str]:
    rows = {site: site_rows(launched, wall, t) for site, t in timings.items()}
    names = list(rows)
    lines = [*header, "", f"{'phase (seconds)':<28}" + "".join(f"{n:>10}" for n in names)]
    summed = compact(rows)
    for phase in summed[names[0]]:
        lines.append(f"{phase:<28}" + "".join(f"{summed[n][phase]:>10.2f}" for n in names))
    parts = {n: sum(rows[n].values()) - rows[n]["shutdown"] for n in names}
    lines.append(f"{'sum of the parts':<28}" + "".join(f"{parts[n]:>10.2f}" for n in names) + "   (without shutdown)")
    lines.append(f"{'wall (launch to exit)':<28}" + "".join(f"{wall:>10.2f}" for _ in names))
    rounds = [t["rounds"] for t in timings.values()]
    per_round = [sum(r["training"] + r["evaluation"] + r["exchange"] for r in site) / len(site) for site in rounds]
    lines += ["", f"rounds: {len(rounds[0])}, {sum(per_round) / len(per_round):.2f} s each on average; "
                  f"per round and site: training {_mean(rounds, 'training'):.2f} s, evaluation "
                  f"{_mean(rounds, 'evaluation'):.2f} s, exchange and waiting {_mean(rounds, 'exchange'):.2f} s",
              f"plain loop (python -m bench.plain_loop, launch to exit): {plain:.2f} s; "
              f"its own figures: {plain_output.strip()}",
              f"federation (python main.py simulate, launch to exit): {wall:.2f} s"]
    ratios = {"wall_vs_plain_loop": wall / plain,
              "round_overhead_share": sum(overhead_share(t) for t in timings.values()) / len(timings),
              "write_results_share": timings[coordinator]["write_results"] / wall}
    for name, value in ratios.items():
        verdict = "ok" if value <= TARGETS[name] else "MISSED"
        lines.append(f"{name} = {value:.3f} (target <= {TARGETS[name]}: {verdict})")
    lines.append(" ".join(f"{name}={value:.3f}" for name, value in ratios.items()))
    return lines


def compact(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The rounds' parts summed over all rounds, next to the phases."""
    compact = {}
    for site, phases in rows.items():
        out: dict[str, float] = {}
        for phase, seconds in phases.items():
            match = re.fullmatch(r"round \d+ (\w+)", phase)
            key = f"rounds: {match.group(1)}" if match else phase
            out[key] = out.get(key, 0.0) + seconds
        compact[site] = out
    return compact


def _mean(rounds: list[list[dict]], part: str) -> float:
    values = [record[part] for site in rounds for record in site]
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each, taking turns; medians are reported (default 3)")
    parser.add_argument("--sample-dir", type=Path, default=ROOT / "sample_data",
                        help="the federation: generic/ and one folder per site (default sample_data/)")
    parser.add_argument("--query-interval", type=float, default=DEFAULT_QUERY_INTERVAL,
                        help=f"the test-bed's seconds between polls (default {DEFAULT_QUERY_INTERVAL}, as simulate's)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/run_breakdown.txt)")
    args = parser.parse_args(argv)
    plains, runs = [], []
    with tempfile.TemporaryDirectory(prefix="run-breakdown-") as scratch:
        scratch = Path(scratch)
        for repeat in range(args.repeats):
            plains.append(timed([sys.executable, "-m", "bench.plain_loop", "--sample-dir", str(args.sample_dir),
                                 "--out", str(scratch / f"plain-{repeat}")]))
            runs.append(federation(args.sample_dir, scratch / f"federation-{repeat}", args.query_interval))
        launched, wall, timings = sorted(runs, key=lambda run: run[1])[len(runs) // 2]
        plain, plain_output = sorted(plains)[len(plains) // 2]
        coordinator = sorted(timings)[0]
        same = ((scratch / "plain-0" / "student.pt").read_bytes()
                == (scratch / "federation-0" / coordinator / "student.pt").read_bytes())
    load = os.getloadavg()[0]
    header = [f"Run breakdown of the sample federation, {datetime.datetime.now():%Y-%m-%d %H:%M}, torch "
              f"{torch.__version__}, {os.cpu_count()} cores, load average {load:.2f} when done",
              f"sites: {', '.join(timings)} (coordinator {coordinator}); query interval {args.query_interval:g} s; "
              f"plain loop's student.pt {'identical to' if same else 'differs from'} the federation's",
              f"{args.repeats} runs each, taking turns; wall s: plain loop "
              + ", ".join(f"{seconds:.2f}" for seconds, _ in plains) + "; federation "
              + ", ".join(f"{run[1]:.2f}" for run in runs) + " (medians below)"]
    lines = report(launched, wall, timings, plain, plain_output, coordinator, header)
    save(lines, args.results)


if __name__ == "__main__":
    main()
