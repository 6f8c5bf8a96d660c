"""The local test-bed (testbed) driving real client processes of a toy FeatureCloud app over real HTTP.

The toy app (tests/testbed_toy) runs on the real engine: each client sends a
number per round, the coordinator sums, everyone receives the sum; config.yml
chooses plain, SMPC or DP transport and which fault to inject. The pure parts
(routing, SMPC sum, DP noise, log parsing, input folders) are tested directly too.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from testbed import FederationResult, LocalProcessLauncher, Timeouts, run_federation
from testbed.cli import main as simulate
from testbed.client_api import Status
from testbed.launcher import ClientSpec, LocalClient
from testbed.logs import error_from_log
from testbed.privacy import PayloadError, clip, dp_noise, gauss_sigma, smpc_sum
from testbed.routing import Delivery, Router, RoutingError
from testbed.sites import client_ids, prepare_sites
from tests.conftest import in_background

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "testbed_toy" / "main.py"
DROPPER = REPO / "tests" / "testbed_dropper" / "main.py"
GENERIC_NUMBER = 100.0
FAILURE_BUDGET = 30.0   # seconds from a fault until the run has ended and every client is gone


class RecordingLauncher(LocalProcessLauncher):
    """The real local launcher, remembering its clients so tests can signal them and check they are gone."""

    def __init__(self):
        super().__init__(TOY)
        self.clients: dict[str, LocalClient] = {}

    def start(self, spec: ClientSpec) -> LocalClient:
        client = super().start(spec)
        self.clients[spec.id] = client
        return client


@dataclass
class Federation:
    generic: Path
    clients: list[Path]
    output: Path
    pid_dir: Path
    config: dict

    def run(self, launcher: RecordingLauncher | None = None, **options) -> FederationResult:
        return run_federation(self.clients, self.generic, self.output, TOY, launcher=launcher, **options)

    def own_config(self, client: int, **changes) -> None:
        """Give one client its own config.yml (it wins over the generic one)."""
        (self.clients[client] / "config.yml").write_text(yaml.safe_dump({**self.config, **changes}))

    def round_started(self, site: str, r: int) -> Path:
        return self.pid_dir / f"{site}-round{r}.pid"


def make_federation(tmp_path: Path, numbers: list[float | None], **config) -> Federation:
    """generic/ (config.yml, number.txt = 100, shared/note.txt) and c1, c2, ... with their own number.txt."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir(parents=True)
    config = {"rounds": 3, "pid_dir": str(pid_dir), **config}
    generic = tmp_path / "generic"
    (generic / "shared").mkdir(parents=True)
    (generic / "config.yml").write_text(yaml.safe_dump(config))
    (generic / "number.txt").write_text(str(GENERIC_NUMBER))
    (generic / "shared" / "note.txt").write_text("for every site")
    clients = []
    for index, number in enumerate(numbers, start=1):
        client = tmp_path / f"c{index}"
        client.mkdir()
        if number is not None:
            (client / "number.txt").write_text(str(number))
        clients.append(client)
    return Federation(generic, clients, tmp_path / "results", pid_dir, config)


def read_round(folder: Path, r: int):
    return json.loads((folder / f"round{r}.json").read_text())


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


def assert_all_gone(launcher: RecordingLauncher) -> None:
    """Every client process has exited and been reaped (a zombie would still accept signal 0)."""
    assert launcher.clients
    for site, client in launcher.clients.items():
        with pytest.raises(ProcessLookupError):
            os.kill(client.pid, 0)


# --- whole federations ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("numbers", [[3, 5], [3, 5, None]], ids=["2 clients", "3 clients"])
def test_plain_federation_every_client_gets_every_round_sum(tmp_path, numbers):
    federation = make_federation(tmp_path, numbers)
    launcher = RecordingLauncher()
    result = federation.run(launcher, env={"TOY_MARK": "extra", "FC_TERMINAL_WAIT": "0.5"})

    assert result.ok, result.message
    ids = [f"c{i}" for i in range(1, len(numbers) + 1)]
    total = sum(GENERIC_NUMBER if n is None else n for n in numbers)   # c3 has no number.txt: the generic one
    for site in ids:
        assert result.outputs[site] == federation.output / site
        assert [read_round(federation.output / site, r) for r in (1, 2, 3)] == [total, 2 * total, 3 * total]
        inputs = (federation.output / site / "input_files.txt").read_text().splitlines()
        assert {"config.yml", "number.txt", "shared/note.txt"} <= set(inputs)
        assert json.loads((federation.output / site / "environment.json").read_text()) == {
            "FC_TRANSITION_WAIT": "0.05", "FC_TERMINAL_WAIT": "0.5", "FC_DATA_POLL_INTERVAL": "0.02",
            "KD_NUM_THREADS": str(max(1, os.cpu_count() // len(numbers))), "TOY_MARK": "extra", "gc_enabled": True}
        assert result.logs[site] == federation.output / f"{site}.log"
        assert "[CTRL] POST /setup" in result.logs[site].read_text()
    participants = ids[1:]
    up = Counter((d.memo, d.sender, d.kind) for d in result.traffic["c1"])
    assert up == Counter((memo, p, "to_coordinator") for memo in ("r1_up", "r2_up", "r3_up", "done")
                         for p in participants)
    for site in participants:   # the coordinator's own copy of a broadcast never goes through the controller
        assert result.traffic[site] == [Delivery(f"r{r}_sum", "c1", None, "broadcast") for r in (1, 2, 3)]
    assert not list(federation.output.glob(".testbed-*")), "the run's working folder was left behind"
    assert_all_gone(launcher)


@pytest.mark.slow
def test_smpc_coordinator_gets_only_the_fixed_point_sum(tmp_path):
    numbers = [3, 5, 11]
    federation = make_federation(tmp_path, numbers, exchange="smpc", smpc_exponent=3, rounds=2)
    result = federation.run()

    assert result.ok, result.message
    for r in (1, 2):
        sent = [[n * r / 7, n * r] for n in numbers]
        fixed_point = [sum(int(x * 1000) for x in column) / 1000 for column in zip(*sent)]
        float_sum = [sum(column) for column in zip(*sent)]
        received = read_round(federation.output / "c1", r)
        assert received == fixed_point
        assert received[0] != float_sum[0]   # truncated at 3 digits: the controller's encoding was used
        assert all(abs(a - b) < len(numbers) * 1e-3 for a, b in zip(received, float_sum))
        assert [d for d in result.traffic["c1"] if d.memo == f"r{r}_up"] == [
            Delivery(f"r{r}_up", "c1", None, "smpc_sum")]
    assert all(d.memo.endswith("_sum") for site in ("c2", "c3") for d in result.traffic[site])


@pytest.mark.slow
def test_dp_noise_is_clipped_and_reproducible_per_seed(tmp_path):
    clipping = 1.0
    config = {"exchange": "dp", "rounds": 2, "dp": {"epsilon": 1.0e4, "delta": 1.0e-5, "clipping": clipping}}
    runs = {}
    for name, seed in (("first", 1), ("again", 1), ("other", 2)):
        federation = make_federation(tmp_path / name, [3, 5], **config)
        result = federation.run(dp_seed=seed)
        assert result.ok, result.message
        runs[name] = [read_round(federation.output / site, r) for site in ("c1", "c2") for r in (1, 2)]

    assert runs["first"] == runs["again"]
    assert runs["first"] != runs["other"]
    for received in runs["first"]:
        assert set(received) == {"c1", "c2"}
        for vector in received.values():   # sent (3v, 4v) with norm 5v >= 15: clipped to L2 norm 1, tiny noise
            assert math.hypot(*vector) == pytest.approx(clipping, abs=0.02)
            assert vector == pytest.approx([0.6, 0.8], abs=0.02)
    assert Delivery("r1_up", "c1", "c1", "direct", noised=True) in result.traffic["c1"]
    assert Delivery("r1_up", "c2", None, "to_coordinator", noised=True) in result.traffic["c1"]


@pytest.mark.slow
def test_user_error_fails_run_and_keeps_earlier_results(tmp_path, capsys):
    federation = make_federation(tmp_path, [3, 5])
    argv = ["--client-dirs", ",".join(map(str, federation.clients)), "--generic-dir", str(federation.generic),
            "--output-dir", str(federation.output)]
    summaries = []
    assert simulate(argv, entry=TOY, summary=summaries.append) == 0
    assert summaries == [{"c1": federation.output / "c1", "c2": federation.output / "c2"}]
    earlier = {p: p.read_bytes() for p in federation.output.glob("c[12]/*")}
    earlier_logs = {p: p.read_text() for p in federation.output.glob("c[12].log")}
    assert len(earlier_logs) == 2
    stale = federation.output / "c1.failed" / "stale.txt"
    stale.parent.mkdir()
    stale.write_text("from an older failed run")
    federation.own_config(1, fault="user_error", fault_round=2)
    capsys.readouterr()

    started = time.monotonic()
    code = simulate(argv, entry=TOY, summary=summaries.append)

    assert time.monotonic() - started < FAILURE_BUDGET
    assert code == 1
    error = capsys.readouterr().err
    assert error.splitlines()[0] == "site c2: number.txt cannot be used in round 2. Fix number.txt."
    assert f"log of site c2: {federation.output / 'c2.failed.log'}" in error
    assert "KD-ERROR" in (federation.output / "c2.failed.log").read_text()
    assert len(summaries) == 1
    assert {p: p.read_bytes() for p in federation.output.glob("c[12]/*")} == earlier
    assert {p: p.read_text() for p in federation.output.glob("c[12].log")} == earlier_logs
    for site in ("c1", "c2"):
        partial = federation.output / f"{site}.failed"
        assert (partial / "round1.json").exists() and not (partial / "round3.json").exists()
    assert not stale.exists()


@pytest.mark.slow
def test_exception_without_kd_error_is_reported_by_its_traceback_line(tmp_path):
    federation = make_federation(tmp_path, [3, 5, 7])
    federation.own_config(2, fault="exception", fault_round=1)
    result = federation.run()
    assert not result.ok
    assert result.failed_site == "c3"
    assert result.message == "site c3: LookupError: toy lookup failed in round 1"


@pytest.mark.slow
def test_killed_client_ends_run_naming_it(tmp_path):
    federation = make_federation(tmp_path, [3, 5, 7], rounds=40, round_delay=0.1)
    launcher = RecordingLauncher()
    run = in_background(lambda: federation.run(launcher))
    wait_for(federation.round_started("c2", 2))
    wait_for(federation.round_started("c1", 2))   # so c1 has written round1.json, kept below

    os.kill(launcher.clients["c2"].pid, signal.SIGKILL)
    killed = time.monotonic()
    result = run.result(timeout=FAILURE_BUDGET + 10)

    assert time.monotonic() - killed < FAILURE_BUDGET
    assert not result.ok
    assert result.failed_site == "c2"
    assert result.message.startswith("site c2: process killed by SIGKILL while in state 'round'")
    assert not (federation.output / "c2").exists()
    assert (federation.output / "c1.failed" / "round1.json").exists()
    assert_all_gone(launcher)


def test_a_dropped_connection_is_reported_as_the_exit_that_follows_it(tmp_path):
    """A killed container's connection resets before `docker wait` reports the exit; the exit is the news."""
    federation = make_federation(tmp_path, [3])
    result = run_federation(federation.clients, federation.generic, federation.output, DROPPER)
    assert not result.ok
    assert result.failed_site == "c1"
    assert result.message.startswith("site c1: process exited with code 7 while in state 'send'"), result.message


@pytest.mark.parametrize("request_cut", ["status", "data"])
def test_an_answer_cut_off_is_reported_as_the_exit_that_follows_it(tmp_path, request_cut):
    """A client killed while it answers GET /status or GET /data leaves an empty body, before its exit is
    visible: no answer (never a status, never a payload to deliver), and the exit is the news."""
    federation = make_federation(tmp_path, [3])
    result = run_federation(federation.clients, federation.generic, federation.output, DROPPER,
                            env={"DROPPER_AT": request_cut})
    assert not result.ok
    assert result.failed_site == "c1"
    assert result.message.startswith("site c1: process exited with code 7"), result.message


@pytest.mark.slow
def test_stopped_client_is_detected_as_unresponsive(tmp_path):
    federation = make_federation(tmp_path, [3, 5], rounds=40, round_delay=0.1)
    launcher = RecordingLauncher()
    unresponsive = 2.0
    run = in_background(lambda: federation.run(launcher, timeouts=Timeouts(unresponsive=unresponsive)))
    wait_for(federation.round_started("c2", 2))
    stopped_pid = launcher.clients["c2"].pid
    try:
        os.kill(stopped_pid, signal.SIGSTOP)
        stopped = time.monotonic()
        result = run.result(timeout=FAILURE_BUDGET + 10)
        took = time.monotonic() - stopped
    finally:
        if launcher.clients["c2"].exit_code() is None:   # only if the test-bed failed to stop it
            os.kill(stopped_pid, signal.SIGKILL)

    assert unresponsive - 0.5 <= took < unresponsive + 10   # silence counts from the last answer, just before the stop
    assert not result.ok
    assert result.failed_site == "c2"
    assert result.message.startswith("site c2: unresponsive: no answer for ")
    assert_all_gone(launcher)


@pytest.mark.slow
def test_run_timeout_ends_a_hanging_federation(tmp_path):
    federation = make_federation(tmp_path, [3, 5])
    federation.own_config(1, fault="hang", fault_round=2)
    launcher = RecordingLauncher()
    result = federation.run(launcher, timeouts=Timeouts(run=6.0))
    assert not result.ok
    assert result.failed_site is None
    assert result.message.startswith("the run did not finish within 6 s; still running: c1 while in state 'round'")
    assert "c2 while in state 'round'" in result.message
    assert 6.0 <= result.elapsed < 6.0 + FAILURE_BUDGET
    assert_all_gone(launcher)


@pytest.mark.slow
def test_sigterm_to_the_controller_stops_every_client(tmp_path):
    federation = make_federation(tmp_path, [3, 5])
    federation.own_config(1, fault="hang", fault_round=2)
    command = [sys.executable, "-m", "testbed", "--entry", str(TOY), "--generic-dir", str(federation.generic),
               "--client-dirs", ",".join(map(str, federation.clients)), "--output-dir", str(federation.output)]
    controller = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(federation.round_started("c2", 2))
        pids = [int((federation.pid_dir / f"{site}.pid").read_text()) for site in ("c1", "c2")]
        controller.send_signal(signal.SIGTERM)
        _, error = controller.communicate(timeout=FAILURE_BUDGET)
    finally:
        controller.kill()
    assert controller.returncode == 1
    assert error.strip() == "interrupted (SIGTERM)"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert (federation.output / "c2.failed" / "round1.json").exists()


@pytest.mark.slow
def test_client_dying_at_start_up_is_named_with_its_log_tail(tmp_path):
    broken = tmp_path / "broken_main.py"
    broken.write_text("import sys\nprint('cannot start: no module named toy_missing', file=sys.stderr)\nsys.exit(4)\n")
    federation = make_federation(tmp_path, [3, 5])
    result = run_federation(federation.clients, federation.generic, federation.output, broken)
    assert not result.ok
    assert result.failed_site == "c1"
    first, *log_tail = result.message.splitlines()
    log = federation.output / "c1.failed.log"
    assert first == f"site c1: process exited with code 4 during start-up; last lines of {log}:"
    assert log_tail == ["    cannot start: no module named toy_missing"]


# --- command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    ("missing client", "client dir '{tmp}/nope' does not exist"),
    ("missing generic", "generic dir '{tmp}/nope' does not exist"),
    ("output is a file", "output dir '{tmp}/file.txt' is a file"),
    ("no client", "--client-dirs is empty"),
    ("empty entry", "--client-dirs '{tmp}/c1,,{tmp}/c2' has an empty entry"),
    ("bad interval", "query interval must be positive, got 0.0"),
    ("bad timeout", "run time limit must be positive, got -1. Fix --timeout."),
    ("output over input", "output dir '{tmp}' would overwrite the input folder '{tmp}/c1'"),
])
def test_cli_rejects_bad_arguments_in_one_line(tmp_path, capsys, case, expected):
    for name in ("c1", "c2", "generic"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("")
    clients, generic, output, extra = f"{tmp_path}/c1,{tmp_path}/c2", f"{tmp_path}/generic", f"{tmp_path}/out", []
    if case == "missing client":
        clients = f"{tmp_path}/c1,{tmp_path}/nope"
    elif case == "missing generic":
        generic = f"{tmp_path}/nope"
    elif case == "output is a file":
        output = f"{tmp_path}/file.txt"
    elif case == "no client":
        clients = ","
    elif case == "empty entry":
        clients = f"{tmp_path}/c1,,{tmp_path}/c2"
    elif case == "bad interval":
        extra = ["--query-interval", "0"]
    elif case == "bad timeout":
        extra = ["--timeout", "-1"]
    elif case == "output over input":
        output = str(tmp_path)

    code = simulate(["--client-dirs", clients, "--generic-dir", generic, "--output-dir", output, *extra], entry=TOY)

    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1
    assert error.startswith("error: " + expected.format(tmp=tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare, to mount a full or read-only file system for one command")
@pytest.mark.parametrize("mount_options, error, fix", [
    ("size=1m,nr_inodes=3", "No space left on device", "Free some space on that disk"),
    ("size=1m,ro", "Read-only file system", "Make it writable"),
], ids=["full disk", "read-only"])
def test_an_output_dir_on_a_full_or_read_only_disk_is_one_clear_message(tmp_path, mount_options, error, fix):
    """A real file system, full (3 inodes: the output folder and the test-bed's working folder take the
    last ones) or read-only, mounted for the one command in its own mount namespace."""
    federation = make_federation(tmp_path, [3, 5])
    disk = tmp_path / "disk"
    disk.mkdir()
    output = disk / "results"
    command = [sys.executable, "-m", "testbed", "--entry", str(TOY), "--client-dirs",
               ",".join(map(str, federation.clients)), "--generic-dir", str(federation.generic),
               "--output-dir", str(output)]
    script = f"mount -t tmpfs -o {mount_options} tmpfs {disk} && exec \"$@\""
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", *command], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: cannot write to output dir '{output}' ({error}). "
                           f"{fix}, or choose another --output-dir.\n")


def test_simulate_itself_never_imports_torch():
    """The sites import torch (in the fork server); `main.py simulate` itself, summary table included,
    must not: it would cost seconds before the first site starts."""
    code = ("import sys, main; from app.report import print_summary; import testbed.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'matplotlib')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli_without_required_options_exits_2(capsys):
    assert simulate(["--output-dir", "x"], entry=TOY) == 2
    assert "the following arguments are required: --client-dirs" in capsys.readouterr().err


# --- pure parts ----------------------------------------------------------------------------------

def test_client_ids_are_folder_names_made_unique(tmp_path, monkeypatch):
    (tmp_path / "site").mkdir()
    assert client_ids([tmp_path / "site", tmp_path / "site", tmp_path / "site"]) == ["site", "site-2", "site-3"]
    monkeypatch.chdir(tmp_path / "site")
    assert client_ids([Path("."), Path(".")]) == ["site", "site-2"]


def input_files(folder: Path) -> dict[str, Path]:
    """Every file a client sees in its input folder (following links, as opening a path does) → the real file."""
    found = {}
    for directory, _, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(directory) / name
            found[str(path.relative_to(folder))] = path.resolve()
    return found


def test_input_folder_links_generic_files_with_the_clients_own_on_top_and_copies_nothing(tmp_path):
    generic, client = tmp_path / "generic", tmp_path / "client"
    (generic / "models" / "layers").mkdir(parents=True)
    (generic / "config.yml").write_text("generic")
    (generic / "models" / "a.py").write_text("generic a")
    (generic / "models" / "layers" / "conv.py").write_text("generic conv")
    (generic / "data").write_text("a file in generic, a folder at the client")
    (generic / "teacher").mkdir()
    (generic / "teacher" / "weights.pt").write_bytes(b"large")
    (client / "models").mkdir(parents=True)
    (client / "data" / "images").mkdir(parents=True)
    (client / "config.yml").write_text("own")
    (client / "models" / "b.py").write_text("own b")
    (client / "data" / "images" / "0.png").write_text("own image")
    output_root = client / "results"   # inside the client dir, as with --client-dirs .
    output_root.mkdir()
    (output_root / "c.log").write_text("an earlier run")

    site, = prepare_sites([client], generic, output_root, tmp_path / "work")

    assert site.id == "client" and site.coordinator
    assert site.sources == {"generic": generic.resolve(), "own": client.resolve()}
    files = input_files(site.input_dir)
    assert files == {"config.yml": client / "config.yml", "models/a.py": generic / "models" / "a.py",
                     "models/b.py": client / "models" / "b.py", "models/layers/conv.py": generic / "models" / "layers"
                     / "conv.py", "data/images/0.png": client / "data" / "images" / "0.png",
                     "teacher/weights.pt": generic / "teacher" / "weights.pt"}
    # links, not copies: a folder only one side has is one link, a folder both have is a real folder whose
    # sub-folders are real too (os.walk from any of them sees every file) and whose files are links
    assert (site.input_dir / "teacher").is_symlink() and (site.input_dir / "data").is_symlink()
    assert not (site.input_dir / "models").is_symlink() and not (site.input_dir / "models" / "layers").is_symlink()
    assert (site.input_dir / "models" / "layers" / "conv.py").is_symlink()
    assert all(not os.readlink(path).startswith("/") for path in site.input_dir.rglob("*") if path.is_symlink())
    assert [path for path in site.input_dir.rglob("*") if path.is_file() and not path.is_symlink()] == []
    assert list(site.output_dir.iterdir()) == []
    assert site.log_path == output_root / "client.log"

    # --client-dirs . --output-dir . : the working folder inside the client dir is not linked into itself
    inside, = prepare_sites([client], None, client, client / ".testbed-run")
    assert (inside.input_dir / "models" / "b.py").exists()
    assert not (inside.input_dir / ".testbed-run").exists()


def test_setting_up_a_site_costs_the_same_whatever_its_data_weigh(tmp_path):
    """Setting up writes links only: a site's large files take no space and no time to set up."""
    client = tmp_path / "client"
    (client / "photos").mkdir(parents=True)
    with open(client / "train.npz", "wb") as handle:
        handle.truncate(2 ** 40)   # 1 TiB, sparse: a copy would fail on this disk
    (client / "photos" / "cat.jpg").write_bytes(b"jpeg")
    site, = prepare_sites([client], None, tmp_path / "out", tmp_path / "out" / "work")
    assert (site.input_dir / "train.npz").stat().st_size == 2 ** 40
    assert (site.input_dir / "train.npz").samefile(client / "train.npz")
    used = sum(path.lstat().st_blocks for path in (tmp_path / "out").rglob("*"))
    assert used * 512 < 2 ** 20


def test_router_routes_like_the_controller():
    router = Router(["c1", "c2", "c3"], "c1", dp_seed=0)

    def recipients(sender: str, **status) -> list[tuple[str, str]]:
        return [(post.recipient, post.delivery.kind)
                for post in router.route(sender, Status(available=True, **status), b"x")]

    assert recipients("c1", memo="m") == [("c2", "broadcast"), ("c3", "broadcast")]
    assert recipients("c2", memo="m") == [("c1", "to_coordinator")]
    assert recipients("c3", memo="m", destination="c2") == [("c2", "direct")]
    assert recipients("c2", memo="m", destination="c2") == [("c2", "direct")]
    with pytest.raises(RoutingError, match="to unknown client 'c9'; the clients are c1, c2, c3"):
        recipients("c2", memo="m", destination="c9")


def test_router_delivers_smpc_sum_once_to_the_coordinator_only():
    router = Router(["c1", "c2", "c3"], "c1", dp_seed=0)
    smpc = {"operation": "add", "exponent": 2, "shards": 0, "serialization": "json"}

    def send(sender: str, payload) -> list:
        return router.route(sender, Status(available=True, smpc=smpc, memo="r1"), json.dumps(payload).encode())

    assert send("c2", [1.239, 2]) == []
    with pytest.raises(RoutingError, match="second SMPC payload with memo 'r1'"):
        send("c2", [1.0, 1])
    assert send("c1", [0.011, 3]) == []
    post, = send("c3", [1.0, 0.5])
    assert post.recipient == "c1"
    assert post.delivery == Delivery("r1", "c1", None, "smpc_sum")
    assert json.loads(post.body) == [2.24, 5.5]   # 123 + 1 + 100 hundredths, 200 + 300 + 50
    assert send("c2", [1.0, 1]) == []               # a new collection once the sum went out


def test_smpc_sum_is_fixed_point_and_keeps_structure():
    assert smpc_sum([[0.1239, 2], [0.1239, 3]], 3) == [0.246, 5.0]
    payloads = [{"w": [[1.5, -0.25]], "n": 10}, {"n": 20, "w": [[0.5, 0.25]]}]   # key order does not matter
    assert smpc_sum(payloads, 8) == {"n": 30.0, "w": [[2.0, 0.0]]}
    with pytest.raises(PayloadError, match="payload 2 has another structure"):
        smpc_sum([[1, 2], [1, [2]]], 3)
    with pytest.raises(PayloadError, match="payload holds 'x'"):
        smpc_sum([["x"], ["y"]], 3)


def test_clip_bounds_l1_and_l2_norms():
    assert clip(np.array([30.0, 40.0]), 5.0, ord=2).tolist() == pytest.approx([3.0, 4.0])
    assert clip(np.array([30.0, -40.0]), 7.0, ord=1).tolist() == pytest.approx([3.0, -4.0])
    assert clip(np.array([0.3, 0.4]), 5.0, ord=2).tolist() == [0.3, 0.4]


def test_dp_noise_scale_follows_the_mechanism():
    zeros = [0.0] * 20000
    gauss = {"noisetype": "gauss", "epsilon": 2.0, "delta": 1e-5, "sensitivity": None, "clippingVal": 1.5}
    noised = np.array(dp_noise(zeros, gauss, np.random.default_rng(0)))
    assert noised.std() == pytest.approx(gauss_sigma(2.0, 1e-5, 2 * 1.5), rel=0.03)
    laplace = {"noisetype": "laplace", "epsilon": 4.0, "delta": 0.0, "sensitivity": 0.5, "clippingVal": 10.0}
    noised = np.array(dp_noise(zeros, laplace, np.random.default_rng(0)))
    assert np.abs(noised).mean() == pytest.approx(0.5 / 4.0, rel=0.03)   # E|Laplace(b)| = b


def test_dp_noise_clips_keeps_structure_and_is_seeded():
    config = {"noisetype": "gauss", "epsilon": 1e6, "delta": 1e-5, "sensitivity": None, "clippingVal": 1.0}
    payload = {"b": [30.0, [40.0]], "a": 0}
    noised = dp_noise(payload, config, np.random.default_rng(7))

    def near(x: float):
        return pytest.approx(x, abs=1e-3)
    assert noised == {"a": near(0), "b": [near(0.6), [near(0.8)]]}
    assert dp_noise(payload, config, np.random.default_rng(7)) == noised
    assert dp_noise(payload, config, np.random.default_rng(8)) != noised
    with pytest.raises(PayloadError, match="Gauss noise needs delta > 0"):
        dp_noise(payload, {**config, "delta": 0}, np.random.default_rng(0))
    with pytest.raises(PayloadError, match="payload holds 'w'"):
        dp_noise({"k": "w"}, config, np.random.default_rng(0))


def test_error_from_log_prefers_the_last_kd_error_then_the_traceback():
    traceback = ("[Time: 22.11.26 08:08:56] [Level: info] Traceback (most recent call last):\n"
                 '  File "app.py", line 1, in run\n    raise ValueError("bad")\n'
                 "127.0.0.1 - - [22/Nov/2026 08:08:56] \"GET /api/status HTTP/1.1\" 200 150\n"
                 "ValueError: bad value 3\n")
    assert error_from_log("start\n" + traceback) == "ValueError: bad value 3"
    kd = 'KD-ERROR "site c1: first"\nother\nKD-ERROR "site c1: config.yml: key \\"x\\" unknown"\n'
    assert error_from_log(kd + traceback) == 'site c1: config.yml: key "x" unknown'
    assert error_from_log("[Time: x] [Level: info] state: initial\n") is None
