"""How the local test-bed scales with the number of sites: wall time and peak memory for 2, 8 and 32 sites.

    python -m bench.many_sites [--sites 2,8,32] [--per-site 500] [--rounds 3] [--mnist-dir DIR]

Each federation is the sample's (its teacher, student and settings, ``--rounds`` rounds) on
``--per-site`` real MNIST training images per site (IID, from the MNIST training images the
sample teacher never saw) and 200 test images per site, run by the test-bed as
``python main.py simulate`` would: one local process per site, forked by the fork server.
While it runs, the memory of every client and of the fork server is sampled every 0.2 s
(``bench/procmem.py``): the peak of their total PSS (what the federation holds of the
machine's memory) and the largest private memory of any one client.

The last line is ``sites=<n,...> wall_s=<s,...> peak_pss_mb=<mb,...> max_client_private_mb=<mb>``.
"""
from __future__ import annotations

import argparse
import datetime
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import yaml

from bench.output import save
from bench.procmem import Sampler
from scripts.devdata.idx import DEFAULT_MNIST, MNIST_FILES, idx_file, read_idx
from scripts.devdata.partition import site_indices
from testbed.controller import Timeouts, run_federation
from testbed.launcher import ClientSpec, LocalClient, LocalProcessLauncher

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
DEFAULT_RESULTS = ROOT / "bench" / "results" / "many_sites.txt"
SECTION = "fc_knowledge_distillation"
TEACHER_SAMPLES = 30_000   # make_sample_data trained the sample teacher on the first 30,000 of its permutation
TEST_PER_SITE = 200
# Dozens of clients on two cores answer the controller slowly while they train: wait for them longer.
PATIENT = Timeouts(request=30.0, unresponsive=180.0, start=300.0)


class RecordingLauncher(LocalProcessLauncher):
    """The local launcher, naming the processes it runs: its clients and its fork server."""

    def __init__(self) -> None:
        super().__init__(ROOT / "main.py")
        self.clients: list[LocalClient] = []
        self.servers: list[int] = []   # kept after close(), which forgets the server

    def start(self, spec: ClientSpec) -> LocalClient:
        client = super().start(spec)
        self.clients.append(client)
        if self._server is not None and self._server.process.pid not in self.servers:
            self.servers.append(self._server.process.pid)
        return client

    def pids(self) -> list[int]:
        return self.servers + [client.pid for client in self.clients]


def make_sites(folder: Path, sites: int, per_site: int, rounds: int, mnist_dir: Path) -> tuple[Path, list[Path]]:
    """generic/ (the sample's models and teacher, linked, with ``rounds``) and site1..siteN of real MNIST."""
    files = [idx_file(mnist_dir, stem) for stem in MNIST_FILES]
    if None in files:
        raise SystemExit(f"many_sites: the MNIST IDX files are not all in {mnist_dir}; pass --mnist-dir.")
    x_train, y_train, x_test, y_test = (read_idx(path) for path in files)
    pool = np.random.default_rng(0).permutation(len(y_train))[TEACHER_SAMPLES:]
    train_parts, test_parts = site_indices("iid", y_train[pool].astype(np.int64), y_test.astype(np.int64), sites,
                                           per_site, TEST_PER_SITE, 0.5, 0)
    generic = folder / "generic"
    generic.mkdir(parents=True)
    for name in ("teacher.py", "student.py", "teacher.pt"):
        (generic / name).symlink_to(SAMPLE / "generic" / name)
    settings = yaml.safe_load((SAMPLE / "generic" / "config.yml").read_text())[SECTION]
    (generic / "config.yml").write_text(yaml.safe_dump({SECTION: {**settings, "max_iter": rounds}}))
    clients = []
    for index in range(sites):
        client = folder / f"site{index + 1}"
        client.mkdir()
        train = pool[train_parts[index]]
        np.savez(client / "train.npz", images=x_train[train], labels=y_train[train].astype(np.int64))
        np.savez(client / "test.npz", images=x_test[test_parts[index]],
                 labels=y_test[test_parts[index]].astype(np.int64))
        clients.append(client)
    return generic, clients


def measure(sites: int, per_site: int, rounds: int, mnist_dir: Path) -> tuple[float, int, int]:
    """Wall seconds, peak total PSS and the largest private memory of a client (bytes) of one federation."""
    with tempfile.TemporaryDirectory(prefix="many-sites-") as scratch:
        generic, clients = make_sites(Path(scratch) / "data", sites, per_site, rounds, mnist_dir)
        launcher = RecordingLauncher()
        with Sampler(launcher.pids) as sampler:
            result = run_federation(clients, generic, Path(scratch) / "out", launcher=launcher,
                                    timeouts=PATIENT, out=io.StringIO())
        if not result.ok:
            raise SystemExit(f"many_sites: the federation of {sites} sites failed: {result.message}")
        clients_private = [value for pid, value in sampler.peaks.private.items() if pid not in launcher.servers]
        return result.elapsed, sampler.peaks.total_pss, max(clients_private)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="2,8,32", help="numbers of sites, comma-separated (default 2,8,32)")
    parser.add_argument("--per-site", type=int, default=500, help="training images per site (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST,
                        help=f"folder with the four MNIST IDX files (default {DEFAULT_MNIST})")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="text file the printed table is also written to (default bench/results/many_sites.txt)")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.sites.split(",")]
    lines = [f"Many sites in the local test-bed, {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30:.0f} GiB",
             f"each site: {args.per_site} MNIST training and {TEST_PER_SITE} test images; the sample's teacher, "
             f"student and settings, {args.rounds} rounds", "",
             f"{'sites':>5} {'wall s':>8} {'peak PSS MB':>12} {'PSS/site MB':>12} {'max client private MB':>22}"]
    results = []
    for sites in counts:
        wall, pss, private = measure(sites, args.per_site, args.rounds, args.mnist_dir)
        results.append((sites, wall, pss, private))
        lines.append(f"{sites:>5} {wall:>8.1f} {pss / 2 ** 20:>12.0f} {pss / sites / 2 ** 20:>12.0f} "
                     f"{private / 2 ** 20:>22.0f}")
        print(lines[-1], flush=True)
    lines += ["", f"load average when done: {os.getloadavg()[0]:.2f}",
              f"sites={','.join(str(r[0]) for r in results)} wall_s={','.join(f'{r[1]:.1f}' for r in results)} "
              f"peak_pss_mb={','.join(f'{r[2] / 2 ** 20:.0f}' for r in results)} "
              f"max_client_private_mb={max(r[3] for r in results) / 2 ** 20:.0f}"]
    save(lines, args.results)


if __name__ == "__main__":
    main()
