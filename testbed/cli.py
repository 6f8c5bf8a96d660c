"""`simulate`: run a whole federation on this machine, like `featurecloud test start`.

    python main.py simulate --client-dirs A,B[,C] --generic-dir G --output-dir OUT
                            [--query-interval S] [--dp-seed N] [--timeout S] [--image NAME:TAG] [--keep-pages]

With --image every client runs in a container of that (local) image instead of a process.
Each site's live page is printed when it starts; --keep-pages keeps them up after a successful
run until Ctrl-C, so the final reports can be browsed.

Exit code 0 on success, 1 when the run fails (`site <id>: <message>` on stderr),
2 when the command itself is wrong.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from testbed.controller import DEFAULT_QUERY_INTERVAL, Timeouts, run_federation
from testbed.docker import DockerLauncher
from testbed.sites import UsageError

APP_ENTRY = Path(__file__).resolve().parents[1] / "main.py"
# Containers start nginx, then import torch, several at once on a shared machine: give them longer.
CONTAINER_START_TIMEOUT = 120.0

Summary = Callable[[dict[str, Path]], None]


def main(argv: list[str], *, entry: Path = APP_ENTRY, summary: Summary | None = None) -> int:
    """Run `simulate` with argv (without the word `simulate`); `summary` receives each client's output
    folder after a successful run (the app prints its own results table with it)."""
    parser = _parser(entry)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:   # argparse has printed its message
        return int(exit_.code or 0)
    try:
        client_dirs = _client_dirs(args.client_dirs)
        timeouts = Timeouts(run=args.timeout, start=CONTAINER_START_TIMEOUT if args.image else Timeouts.start)
        launcher = DockerLauncher(args.image, start_timeout=timeouts.start) if args.image else None
        result = run_federation(client_dirs, args.generic_dir, args.output_dir, args.entry,
                                query_interval=args.query_interval, dp_seed=args.dp_seed,
                                timeouts=timeouts, launcher=launcher,
                                hold=keep_pages if args.keep_pages else None)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not result.ok:
        print(result.message, file=sys.stderr)
        if result.failed_site is not None:
            print(f"log of site {result.failed_site}: {result.logs[result.failed_site]}", file=sys.stderr)
        return 1
    if summary is not None:
        summary(result.outputs)
    return 0


def keep_pages(pages: dict[str, str]) -> None:
    """--keep-pages: the run is over, its clients (and their pages) stay up until Ctrl-C or SIGTERM."""
    print("[testbed] the run is over; the sites' pages stay up until Ctrl-C:", flush=True)
    for site, url in pages.items():
        print(f"  {site}: {url}", flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[testbed] stopping the clients", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser(entry: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py simulate",
                                     description="Run a whole federation locally, one process (or container) "
                                                 "per client.")
    parser.add_argument("--client-dirs", required=True,
                        help="comma-separated client folders; the first client is the coordinator")
    parser.add_argument("--generic-dir", type=Path, default=None,
                        help="folder whose files every client's input gets, as links (a client's own file of the same "
                             "name wins)")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="each client's outputs go to <output-dir>/<client dir name>/, its log to <name>.log "
                             "(<name>.failed/ and <name>.failed.log when the run fails)")
    parser.add_argument("--query-interval", type=float, default=DEFAULT_QUERY_INTERVAL,
                        help=f"seconds between polls (default {DEFAULT_QUERY_INTERVAL})")
    parser.add_argument("--dp-seed", type=int, default=0, help="seed of the differential-privacy noise (default 0)")
    parser.add_argument("--timeout", type=float, default=None, help="fail the run after this many seconds")
    # The app's entry script, run as '<entry> serve ...' per client; another one only in tests.
    parser.add_argument("--entry", type=Path, default=entry, help=argparse.SUPPRESS)
    parser.add_argument("--image", default=None, metavar="NAME:TAG",
                        help="run each client in a container of this local Docker image (never pulled) instead "
                             "of a process; containers are labelled fc-knowledge-distillation.testbed")
    parser.add_argument("--keep-pages", action="store_true",
                        help="after a successful run keep every site (and its live page) up until Ctrl-C, "
                             "to browse the final reports")
    return parser


def _client_dirs(text: str) -> list[Path]:
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise UsageError("--client-dirs is empty: give at least one client folder, e.g. --client-dirs c1,c2")
    if not all(parts):
        raise UsageError(f"--client-dirs '{text}' has an empty entry; separate folders by single commas")
    return [Path(part) for part in parts]
