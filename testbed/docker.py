"""Running each client of a test-bed federation as a container of the app's Docker image.

`DockerLauncher(image)` implements the launcher seam: one container per client, named
`fc-kd-<run id>-<site>`, its prepared input folder (links) mounted read-only at `/mnt/input`,
the user's folders those links point into read-only at `/mnt/sources/<name>`, a fresh
output folder at `/mnt/output`, nginx's ports 9000 (API) and 9001 (web UI) published on
127.0.0.1 only, at ports Docker picks. The controller then drives it exactly like a local
process. Images are never pulled. Every container carries the labels
`fc-knowledge-distillation.testbed=<run id>`, `...testbed.site=<site>` and
`...testbed.controller-pid=<pid>`, so what a crashed controller left behind is found and
removed with

    docker rm -f $(docker ps -aq --filter label=fc-knowledge-distillation.testbed)

No engine waits are passed in: the app in a container runs as on the platform (only the CPU share,
KD_NUM_THREADS, is set).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from testbed.launcher import ClientSpec, LaunchError, die_with_parent
from testbed.sites import UsageError

LABEL = "fc-knowledge-distillation.testbed"
API_PORT, WEB_PORT = 9000, 9001
SOURCES = "/mnt/sources"   # the input's links point into ../sources/<name>: the user's folders, mounted here
CALL_TIMEOUT = 30.0   # one docker CLI call (inspect, logs, kill, rm); `docker run` gets the start timeout
KILLED = 137          # docker's exit code of a container killed with SIGKILL, as `docker rm -f` does


def check_docker(image: str) -> None:
    """Raise UsageError (one line) unless the docker CLI, a daemon answering it and the image are all here."""
    if shutil.which("docker") is None:
        raise UsageError("docker not found on PATH: --image runs every client in a container. "
                         "Install Docker (e.g. apt-get install docker.io) or run without --image.")
    info = _docker("info", "--format", "{{.ServerVersion}}")
    if info.returncode != 0 or not info.stdout.strip():
        raise UsageError(f"the Docker daemon does not answer (`docker info`: {_last_line(info.stderr)}). "
                         "Start it (e.g. `dockerd &` as root) or run without --image.")
    if _docker("image", "inspect", image).returncode != 0:
        raise UsageError(_missing_image(image))


class ContainerClient:
    """A client running in a container; its log follows `docker logs` into the site's log file."""

    def __init__(self, name: str, spec: ClientSpec, launcher: DockerLauncher):
        self.name = name
        self.log_path = spec.log_path
        self.output_dir = spec.output_dir
        self.launcher = launcher
        self.api_port = _host_port(name, API_PORT)
        self.web_port = _host_port(name, WEB_PORT)
        self._exit_code: int | None = None
        self._removed = False
        helper = {"stdin": subprocess.DEVNULL, "start_new_session": True, "preexec_fn": die_with_parent()}
        # `docker wait` prints the exit code once the container stops: no polling of `docker inspect`.
        self._waiter = subprocess.Popen(["docker", "wait", name], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, **helper)
        with open(self.log_path, "wb") as log:
            self._follower = subprocess.Popen(["docker", "logs", "--follow", name], stdout=log,
                                              stderr=subprocess.STDOUT, **helper)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def web_url(self) -> str | None:
        return f"http://127.0.0.1:{self.web_port}"

    def exit_code(self) -> int | None:
        if self._exit_code is None and self._waiter.poll() is not None:
            printed = self._waiter.stdout.read().strip() if self._waiter.stdout else ""
            self._exit_code = int(printed) if printed.lstrip("-").isdigit() else self._inspect_exit_code()
        return self._exit_code

    def describe_exit(self, code: int) -> str:
        if code == KILLED:
            return f"container killed (exit code {KILLED})"
        return f"container exited with code {code}"

    def log_text(self) -> str:
        if not self._removed:
            logs = _docker("logs", self.name)
            if logs.returncode == 0:
                return logs.stdout + logs.stderr   # supervisord sends everything to stdout; stderr is kept anyway
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        # supervisord (PID 1) stops nginx and the app on SIGTERM.
        _docker("kill", "--signal", "TERM", self.name)

    def kill(self) -> None:
        """Save the complete log, remove the container, and hand its outputs to the controller's user."""
        if self._removed:
            return
        _end(self._follower, 0.0)   # its copy of the log may lag: the complete log replaces it
        log = self.log_text()
        if log:
            self.log_path.write_text(log)
        removed = _docker("rm", "--force", self.name)
        self._removed = removed.returncode == 0 or "No such container" in removed.stderr
        if not self._removed:
            print(f"warning: could not remove container {self.name}: {_last_line(removed.stderr)}; "
                  f"remove it with `docker rm -f {self.name}`", file=sys.stderr)
            return
        _end(self._waiter, 2.0)   # it prints the exit code once the container is gone
        self.launcher.hand_over(self.output_dir)

    def wait(self, timeout: float) -> bool:
        if self._removed:
            return True
        try:
            self._waiter.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _inspect_exit_code(self) -> int | None:
        """The exit code when `docker wait` itself failed; KILLED for a container removed from outside."""
        state = _docker("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.name)
        if state.returncode != 0:
            return KILLED
        running, code = state.stdout.split()
        return None if running == "true" else int(code)


class DockerLauncher:
    """Starts each client as a container of `image`; the containers of one run share the label LABEL=<run id>."""

    def __init__(self, image: str, *, start_timeout: float = 60.0, owner: tuple[int, int] | None = None):
        """`owner` (uid, gid) gets the files the containers write as root (default: the controller's user)."""
        check_docker(image)
        self.image = image
        self.start_timeout = start_timeout
        self.owner = owner if owner is not None else (os.getuid(), os.getgid())
        self.run_id = secrets.token_hex(4)
        self._runs: dict[str, Future[str]] = {}   # client id -> its `docker run` begun by prepare()

    @property
    def label(self) -> str:
        """`docker ps -a --filter label=<this>` lists the containers of this run."""
        return f"{LABEL}={self.run_id}"

    def prepare(self, specs: list[ClientSpec]) -> None:
        """Run the clients' containers side by side: `docker run` takes about half a second each."""
        if not specs:
            return
        pool = ThreadPoolExecutor(len(specs), thread_name_prefix="docker run")
        self._runs.update({spec.id: pool.submit(self._run, spec) for spec in specs})
        pool.shutdown(wait=False)

    def start(self, spec: ClientSpec) -> ContainerClient:
        run = self._runs.pop(spec.id, None)
        name = run.result() if run is not None else self._run(spec)
        try:
            return ContainerClient(name, spec, self)
        except BaseException:
            _docker("rm", "--force", name)   # running, but not handed to the controller: nobody else would remove it
            raise

    def close(self) -> None:
        """Remove the containers prepared but never started (the run failed before it reached them)."""
        for run in self._runs.values():
            try:
                name = run.result()
            except BaseException:  # noqa: BLE001 — its `docker run` failed, and _run removed what it left
                continue
            _docker("rm", "--force", name)
        self._runs.clear()

    def _run(self, spec: ClientSpec) -> str:
        """`docker run` one client's container; its name."""
        name = f"fc-kd-{self.run_id}-{re.sub(r'[^A-Za-z0-9_.-]', '-', spec.id)}"
        environment = [arg for key, value in spec.env.items() for arg in ("--env", f"{key}={value}")]
        command = ["run", "--detach", "--pull", "never", "--name", name,
                   "--label", self.label, "--label", f"{LABEL}.site={spec.id}",
                   "--label", f"{LABEL}.controller-pid={os.getpid()}",
                   "--publish", f"127.0.0.1::{API_PORT}", "--publish", f"127.0.0.1::{WEB_PORT}",
                   "--volume", f"{spec.input_dir.resolve()}:/mnt/input:ro",
                   *[arg for name, source in spec.sources.items()
                     for arg in ("--volume", f"{source}:{SOURCES}/{name}:ro")],
                   "--volume", f"{spec.output_dir.resolve()}:/mnt/output", *environment, self.image]
        try:
            started = _docker(*command, timeout=self.start_timeout)
            if started.returncode != 0:
                if "No such image" in started.stderr:
                    raise UsageError(_missing_image(self.image))
                raise LaunchError(f"docker run failed: {_last_line(started.stderr)}")
            return name
        except BaseException:
            # `docker run` half done (or failed after creating it): nobody else would remove it.
            _docker("rm", "--force", name)
            raise

    def hand_over(self, output_dir: Path) -> None:
        """Give the files a container wrote (as root) to the owner, so the controller can move and delete them."""
        uid, gid = self.owner
        if uid == 0:
            return
        # A throw-away container does it: the controller's user may not chown root's files itself.
        chown = _docker("run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "chown",
                        "--volume", f"{output_dir.resolve()}:/mnt/output", self.image, "-R", f"{uid}:{gid}",
                        "/mnt/output")
        if chown.returncode != 0:
            print(f"warning: the container wrote {output_dir} as root and handing it to uid {uid} failed "
                  f"({_last_line(chown.stderr)}); moving or deleting these outputs may fail: "
                  f"run `sudo chown -R {uid}:{gid} <output dir>`", file=sys.stderr)


def _host_port(name: str, port: int) -> int:
    """The 127.0.0.1 port Docker published the container's port on."""
    mapping = _docker("port", name, f"{port}/tcp")
    found = re.search(r"^127\.0\.0\.1:(\d+)$", mapping.stdout, re.MULTILINE)
    if found is None:
        raise LaunchError(f"container {name}: port {port} is not published on 127.0.0.1 "
                          f"(`docker port`: {_last_line(mapping.stderr or mapping.stdout)})")
    return int(found.group(1))


def _end(helper: subprocess.Popen, grace: float) -> None:
    """Reap a helper process (`docker wait` / `docker logs -f`), killing it after grace seconds."""
    try:
        helper.wait(grace)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


def _docker(*args: str, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one docker CLI command to its end; returncode -1 if it did not end within timeout.

    It runs in its own session, so Ctrl-C reaches only the controller, and an interrupt
    (Ctrl-C, SIGTERM) lets the command finish before it propagates: a `docker run` cut
    short could create a container after the controller has stopped looking."""
    process = subprocess.Popen(["docker", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return subprocess.CompletedProcess(process.args, -1, out, f"{err}docker {args[0]} did not end within "
                                                                  f"{timeout:g} s")
    except BaseException:
        try:
            process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _missing_image(image: str) -> str:
    return (f"image '{image}' is not in the local Docker engine (the test-bed never pulls images). "
            f"Build it in the app's folder with `docker build -t {image} .`")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
