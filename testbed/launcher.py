"""Starting and stopping the clients of a local federation.

The controller only needs the seam below: start a client (which gives the URL of
its FeatureCloud API), ask whether it still runs, read its log, stop it. The
local launcher here runs each client as its own process group; ``docker.py``'s
runs each in a container (its API URL then points at the container's nginx port).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


# The engine's waits (platform defaults 1 s, 10 s and 0.1 s), shortened for local client processes.
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
    """Starts clients; every client it started must be stopped with `stop_all`."""

    def start(self, spec: ClientSpec) -> ClientHandle:
        ...


def page_url(handle: ClientHandle) -> str | None:
    """Where a browser finds the client's page, None if nowhere."""
    return None if handle.web_url is None else handle.web_url.rstrip("/") + "/"


def stop_all(handles: list[ClientHandle], grace: float) -> None:
    """Terminate every client, give them `grace` seconds together, then kill whatever is left and reap it."""
    for handle in handles:
        handle.terminate()
    deadline = time.monotonic() + grace
    for handle in handles:
        handle.wait(max(0.0, deadline - time.monotonic()))
    for handle in handles:
        handle.kill()   # also reaches helper processes a client may have left in its group
        handle.wait(grace)


class LocalClient:
    """A client running as a local process, leader of its own process group."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path):
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
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass   # the group is gone already


class LocalProcessLauncher:
    """Runs `python <entry> serve --port P --input-dir IN --output-dir OUT` per client, with the engine's
    waits shortened (`engine_waits`, environment variables the entry applies; a spec's env wins)."""

    def __init__(self, entry: Path, python: str = sys.executable,
                 engine_waits: dict[str, str] | None = None):
        self.entry = entry.resolve()
        self.python = python
        self.engine_waits = SHORT_ENGINE_WAITS if engine_waits is None else engine_waits
        self._ports: set[int] = set()

    def start(self, spec: ClientSpec) -> LocalClient:
        port = self._free_port()
        # The client runs in the app's folder, not the caller's: its folders go to it resolved.
        command = [self.python, str(self.entry), "serve", "--port", str(port),
                   "--input-dir", str(spec.input_dir.resolve()), "--output-dir", str(spec.output_dir.resolve())]
        with open(spec.log_path, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, **self.engine_waits, **spec.env}, cwd=self.entry.parent,
                                       start_new_session=True, preexec_fn=die_with_parent())
        return LocalClient(process, port, spec.log_path)

    def _free_port(self) -> int:
        """A port nothing listens on now and that this launcher has not handed out yet."""
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in self._ports:
                self._ports.add(port)
                return port


PR_SET_PDEATHSIG = 1


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def die_with_parent():
    """On Linux, a function making the child receive SIGKILL when the controller dies without cleaning
    up (e.g. killed with SIGKILL), so no client outlives it; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up before fork: the child only calls it
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
