"""Starting and stopping the clients of a local federation.

The controller only needs the seam below: start a client (which gives the URL of
its FeatureCloud API), ask whether it still runs, read its log, stop it. The
local launcher here runs each client as its own process group, forked by a fork
server (``forkserver.py``); ``docker.py``'s runs each in a container (its API URL
then points at the container's nginx port).
"""
from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


# The engine's waits (platform defaults 1 s, 10 s and 0.1 s), shortened for local client processes of an entry
# that reads them (the tests' toy app does; this app runs its own, main.APP_ENGINE_WAITS, everywhere).
SHORT_ENGINE_WAITS = {"FC_TRANSITION_WAIT": "0.05", "FC_TERMINAL_WAIT": "0.1", "FC_DATA_POLL_INTERVAL": "0.02"}


class LaunchError(Exception):
    """A client could not be started; the message says why."""


@dataclass(frozen=True)
class ClientSpec:
    """What a client needs to start: its id, folders, log file and extra environment variables. Its input
    folder holds relative links into ``<input_dir>/../sources/<name>``, standing for the folders ``sources``
    names (for a local process that path links to them; a container mounts them there)."""

    id: str
    input_dir: Path
    output_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)


class ClientHandle(Protocol):
    """A started client."""

    @property
    def api_url(self) -> str:
        """Base URL of the client's FeatureCloud API (the URL `/setup`, `/status`, `/data` hang off)."""

    @property
    def web_url(self) -> str | None:
        """Base URL of the client's web UI (its page is `<web_url>/`), None if not reachable."""

    def exit_code(self) -> int | None:
        """None while the client runs, else its exit code (negative: killed by that signal)."""

    def describe_exit(self, code: int) -> str:
        """How the client ended, in words, e.g. `process killed by SIGKILL`."""

    def log_text(self) -> str:
        """Everything the client printed so far."""

    def terminate(self) -> None:
        """Ask the client to stop (returns at once)."""

    def kill(self) -> None:
        """Stop the client at once (returns at once)."""

    def wait(self, timeout: float) -> bool:
        """Wait up to timeout seconds for the client to be gone; True if it is."""


class Launcher(Protocol):
    """Starts clients; every client it started must be stopped with `stop_all`, then the launcher closed."""

    def prepare(self, specs: list[ClientSpec]) -> None:
        """Begin starting these clients side by side, if the launcher can; `start` then completes each one."""

    def start(self, spec: ClientSpec) -> ClientHandle:
        ...

    def close(self) -> None:
        """Release what the launcher holds for its clients (they are stopped already), including clients
        prepared but never started."""


def page_url(handle: ClientHandle) -> str | None:
    """Where a browser finds the client's page, None if nowhere."""
    return None if handle.web_url is None else handle.web_url.rstrip("/") + "/"


def stop_all(handles: list[ClientHandle], grace: float, *, finished: bool = False) -> None:
    """Terminate every client, give them `grace` seconds together, then kill whatever is left and reap it.
    Clients that have all `finished` (their outputs are written, their last messages delivered) are
    killed at once: nothing of theirs is left to save, and a container's own shutdown after a SIGTERM
    takes up to two seconds (supervisord stops its programs on a one-second tick).
    The clients are stopped side by side: stopping a container takes a few docker calls."""
    if not handles:
        return
    with ThreadPoolExecutor(len(handles)) as pool:
        if not finished:
            list(pool.map(lambda handle: handle.terminate(), handles))
            deadline = time.monotonic() + grace
            list(pool.map(lambda handle: handle.wait(max(0.0, deadline - time.monotonic())), handles))
        # kill() also reaches helper processes a client may have left in its group
        list(pool.map(lambda handle: (handle.kill(), handle.wait(grace)), handles))


class LocalClient:
    """A client running as a local process (forked by the launcher's fork server), leader of its own
    process group."""

    def __init__(self, process: ForkedProcess, port: int, log_path: Path):
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def web_url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}/web"

    def exit_code(self) -> int | None:
        return self.process.poll()

    def describe_exit(self, code: int) -> str:
        if code < 0:
            return f"process killed by {_signal_name(-code)}"
        return f"process exited with code {code}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        # SIGCONT too: a stopped process only acts on SIGTERM once it runs again.
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def wait(self, timeout: float) -> bool:
        return self.process.wait(timeout)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process.poll() is not None:
            return   # reaped: its process group id may belong to another process by now
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass   # the group is gone already


class LocalProcessLauncher:
    """Runs `python <entry> serve --port P --input-dir IN --output-dir OUT` per client, with the engine's
    waits shortened (`engine_waits`, environment variables the entry applies; a spec's env wins).

    The clients are forked by a fork server (forkserver.py) that has imported the modules the entry's
    `PRELOAD` names once for all of them: they share those pages, and start in milliseconds.
    Variables read only when an interpreter starts (PYTHON*, MALLOC_*) take the controller's values."""

    start_poll = 0.02   # seconds between the controller's GET /status until a client answers (it forks in ms)

    def __init__(self, entry: Path, python: str = sys.executable,
                 engine_waits: dict[str, str] | None = None):
        self.entry = entry.resolve()
        self.python = python
        self.engine_waits = SHORT_ENGINE_WAITS if engine_waits is None else engine_waits
        self._ports: set[int] = set()
        self._server: ForkServer | None = None
        self._lock = threading.Lock()

    def prepare(self, specs: list[ClientSpec]) -> None:
        """Nothing to begin: a fork takes milliseconds once the fork server runs (the first `start` starts it)."""

    def start(self, spec: ClientSpec) -> LocalClient:
        with self._lock:
            port = self._free_port()
            if self._server is None or not self._server.running():
                self._server = ForkServer(self.python, self.entry)
            server = self._server
        # The client runs in the app's folder (the fork server's), not the caller's: its folders go to it resolved.
        process = server.fork(["serve", "--port", str(port), "--input-dir", str(spec.input_dir.resolve()),
                               "--output-dir", str(spec.output_dir.resolve())], {**self.engine_waits, **spec.env},
                              spec.log_path)
        return LocalClient(process, port, spec.log_path)

    def close(self) -> None:
        """Stop the fork server (the clients are stopped already); the next start() starts another."""
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None

    def _free_port(self) -> int:
        """A port nothing listens on now and that this launcher has not handed out yet."""
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in self._ports:
                self._ports.add(port)
                return port


class ForkedProcess:
    """A client the fork server forked: its exit as the server reported it (like Popen's poll and wait)."""

    def __init__(self, pid: int):
        self.pid = pid
        self._code: int | None = None
        self._ended = threading.Event()

    def ended(self, code: int) -> None:
        self._code = code
        self._ended.set()

    def poll(self) -> int | None:
        return self._code

    def wait(self, timeout: float) -> bool:
        return self._ended.wait(timeout)


class ForkServer:
    """A running forkserver.py for one entry script: forks clients and hears about their exits."""

    SCRIPT = Path(__file__).resolve().with_name("forkserver.py")
    ANSWER_TIMEOUT = 30.0   # for `started <pid>` once the server is ready

    def __init__(self, python: str, entry: Path):
        self._errors = tempfile.TemporaryFile()
        self.process = subprocess.Popen([python, str(self.SCRIPT), str(entry)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._errors, cwd=entry.parent,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                                        preexec_fn=die_with_parent())
        self._clients: dict[int, ForkedProcess] = {}
        self._lock = threading.Lock()
        self._started: queue.Queue[int] = queue.Queue()
        if self.process.stdout.readline() != b"ready\n":   # it imports the preloaded modules first
            raise LaunchError(f"the test-bed's fork server for {entry.name} did not start: "
                              f"{self._error_text() or 'no message'}")
        threading.Thread(target=self._listen, name="fork server", daemon=True).start()

    def running(self) -> bool:
        return self.process.poll() is None

    def fork(self, argv: list[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        # The server and its clients run in the entry's folder: a path relative to the caller's would miss.
        request = json.dumps({"argv": argv, "env": env, "log": str(log_path.resolve())}) + "\n"
        with self._lock:
            try:
                self.process.stdin.write(request.encode())
                self.process.stdin.flush()
                pid = self._started.get(timeout=self.ANSWER_TIMEOUT)
            except (OSError, queue.Empty) as error:
                raise LaunchError(f"the test-bed's fork server did not start the client: "
                                  f"{self._error_text() or repr(error)}") from error
            return self._clients.setdefault(pid, ForkedProcess(pid))

    def close(self) -> None:
        try:
            self.process.stdin.close()   # the server exits when its requests end
        except OSError:
            pass
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._errors.close()

    def _listen(self) -> None:
        for line in self.process.stdout:
            kind, pid, *code = line.decode().split()
            if kind == "started":
                self._started.put(int(pid))
            elif kind == "exited":
                self._clients.setdefault(int(pid), ForkedProcess(int(pid))).ended(int(code[0]))
        # The server is gone, and its clients with it (they die with their parent).
        for client in list(self._clients.values()):
            if client.poll() is None:
                client.ended(-signal.SIGKILL)

    def _error_text(self) -> str:
        self._errors.seek(0)
        lines = self._errors.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


PR_SET_PDEATHSIG = 1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def die_with_parent():
    """On Linux, a function making the child receive SIGKILL when the controller dies without cleaning
    up (e.g. killed with SIGKILL), so no client outlives it; None elsewhere. Linux sends it when the
    *thread* that started the child ends, so start such children from the controller's main thread."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up before fork: the child only calls it
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
