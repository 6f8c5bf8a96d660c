"""The local controller: runs a whole federation on this machine, as the FeatureCloud controller would.

One client per site is started through a launcher, set up with `POST /setup` (the
first site coordinates), then polled: one `GET /status` per client and cycle, one
`GET /data` when it has an item queued, delivered as `POST /data` to the clients
the routing rules name. The run succeeds once every client reports `finished`; it
fails as soon as a client reports an error, exits, stops answering, or the run
exceeds its time limit. Whatever ends the run, every client is stopped.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from testbed.client_api import BadAnswer, ClientApi, RequestFailed, Status, Unreachable, web_state
from testbed.launcher import (ClientHandle, ClientSpec, Launcher, LaunchError, LocalProcessLauncher, page_url,
                              stop_all)
from testbed.logs import error_from_log, tail
from testbed.routing import Delivery, Post, Router, RoutingError
from testbed.sites import ClientFolders, UsageError, check_arguments, prepare_sites, unwritable

SETUP_SLEEP = 1.0   # the engine's POST /setup handler sleeps this long before answering
WEB_TIMEOUT = 1.0   # the state name in failure messages is a nicety: never wait long for it
# Until a container's app listens, nginx logs one "connect() failed" line per poll: a few are plenty.
# A launcher may ask for another interval (``start_poll``): a forked local client listens within ~0.1 s.
START_POLL = 0.25
# A container's output reaches `docker logs` through supervisord, sometimes after its status says error:
# wait this long for the app's own message before falling back to the engine's exception name.
LOG_GRACE = 5.0


@dataclass(frozen=True)
class Timeouts:
    """How long the controller waits for clients (seconds)."""

    request: float = 5.0        # one GET /status or POST /setup
    unresponsive: float = 20.0  # a client silent this long has failed; also bounds GET/POST /data
    start: float = 60.0         # from starting the clients until all of them answer
    run: float | None = None    # the whole run; None = no limit
    stop_grace: float = 3.0     # between asking the clients to stop and killing them
    exit_notice: float = 2.0    # a dropped connection usually means the client died: time for its exit to show


@dataclass
class FederationResult:
    """How a run ended. On failure `message` says which site failed and why (`failed_site` is None when
    no single site is to blame: interruption, run time limit), `outputs` are the `<id>.failed` folders and
    `logs` the `<id>.failed.log` files."""

    ok: bool
    message: str
    failed_site: str | None
    coordinator: str
    outputs: dict[str, Path]
    logs: dict[str, Path]
    traffic: dict[str, list[Delivery]]   # per recipient, in delivery order
    elapsed: float


class SiteFailure(Exception):
    """The run failed, because of `site` when one is to blame."""

    def __init__(self, site: str | None, message: str):
        if site is not None:
            # The app's messages often name their site already: "site c2: site c2's config.yml ..."
            # or "site c2's config.yml ..." both become "site c2: config.yml ...".
            prefix, possessive = f"site {site}: ", f"site {site}'s "
            message = message.removeprefix(prefix)
            message = prefix + (message[len(possessive):] if message.startswith(possessive) else message)
        super().__init__(message)
        self.site = site


Hold = Callable[[dict[str, str]], None]   # gets {client id: page URL}


# Seconds between polls of each client. Every message waits for the next poll, and a round has two hops (the
# sites' updates to the coordinator, the global model back): at 0.1 s they were 0.14 s of a 1-s round of the
# sample. A poll costs about 0.8 ms of CPU (0.5 in the client's engine, 0.3 here), so at 0.05 s two sites
# spend 3% of one core on polling, 32 sites half of one. The platform's controller polls every 1-2 s.
DEFAULT_QUERY_INTERVAL = 0.05


class Interrupted(BaseException):
    """SIGTERM arrived during the run (Ctrl-C arrives as KeyboardInterrupt)."""


def run_federation(client_dirs: list[Path], generic_dir: Path | None, output_root: Path, entry: Path | None = None,
                   *, query_interval: float = DEFAULT_QUERY_INTERVAL, dp_seed: int = 0,
                   env: dict[str, str] | None = None,
                   timeouts: Timeouts | None = None, launcher: Launcher | None = None,
                   out: TextIO | None = None, hold: Hold | None = None) -> FederationResult:
    """Run the app (`entry`, or whatever `launcher` starts) as one client per client dir and return how it
    ended. Outputs go to `<output_root>/<client id>/` on success and to `<output_root>/<client id>.failed/`
    on failure; logs to `<output_root>/<client id>.log` (success) or `<client id>.failed.log` (failure, leaving
    an earlier run's `<client id>.log` alone). After a successful run, `hold` (if given) is called with every
    client's page URL while the clients still run; they are stopped when it returns. Raises UsageError for
    unusable arguments."""
    started = time.monotonic()
    if query_interval <= 0:
        raise UsageError(f"query interval must be positive, got {query_interval}. Fix --query-interval.")
    if timeouts is not None and timeouts.run is not None and timeouts.run <= 0:
        raise UsageError(f"run time limit must be positive, got {timeouts.run:g}. Fix --timeout.")
    check_arguments(client_dirs, generic_dir, output_root)
    if launcher is None:
        if entry is None or not entry.is_file():
            raise UsageError(f"app entry script '{entry}' does not exist. Pass the app's main.py.")
        launcher = LocalProcessLauncher(entry)
    out = out or sys.stdout
    try:
        output_root.mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix=".testbed-", dir=output_root))
    except OSError as error:
        raise unwritable(output_root, error) from error
    try:
        sites = prepare_sites(client_dirs, generic_dir, output_root, work_dir)
        router = Router([s.id for s in sites], sites[0].id, dp_seed)
        federation = _Federation(sites, launcher, router, query_interval, timeouts or Timeouts(), out)
        try:
            _set_aside_earlier_logs(sites, work_dir)
        except OSError as error:
            raise unwritable(output_root, error) from error
        ok = False
        try:
            failure = federation.run(client_env(len(sites), env), started, hold)
            ok = failure is None
        finally:
            logs = _keep_logs(sites, work_dir, ok)
        outputs = _keep_outputs(sites, output_root, ok, logs, out)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    elapsed = (federation.ended or time.monotonic()) - started
    if failure is None:
        message = f"federation of {len(sites)} clients finished in {elapsed:.1f} s"
        print(f"[testbed] {message}", file=out, flush=True)
    else:
        message = _in_user_folders(str(failure), sites, client_dirs, generic_dir)
        for site in sites:
            message = message.replace(str(site.log_path), str(logs[site.id]))
    return FederationResult(ok=ok, message=message, failed_site=failure.site if failure else None,
                            coordinator=sites[0].id, outputs=outputs, logs=logs,
                            traffic=federation.traffic, elapsed=elapsed)


def _in_user_folders(message: str, sites: list[ClientFolders], client_dirs: list[Path],
                     generic_dir: Path | None) -> str:
    """``message`` with the clients' temporary input folders (gone once the run ends) replaced by the
    client folders the user gave, and a word on where a site's input comes from."""
    for site in sites:   # where its outputs are now
        for path in {str(site.output_dir.resolve()), str(site.output_dir)}:
            message = message.replace(path, str(site.log_path.with_name(f"{site.id}.failed")))
    for site, client_dir in zip(sites, client_dirs):
        temporary = {str(site.input_dir.resolve()), str(site.input_dir)}
        if any(path in message for path in temporary):
            for path in temporary:
                message = message.replace(path, str(client_dir))
            generic = f" with the generic folder {generic_dir}'s files linked in" if generic_dir else ""
            message += f" (site {site.id}'s input folder is {client_dir}{generic})"
    return message


def client_env(n_clients: int, extra: dict[str, str] | None) -> dict[str, str]:
    """Environment of every client, whatever runs it: a fair share of the CPU cores."""
    threads = max(1, (os.cpu_count() or 1) // n_clients)
    return {"KD_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **(extra or {})}


@dataclass
class _Client:
    site: ClientFolders
    handle: ClientHandle
    api: ClientApi
    last_answer: float
    shown: Status | None = None
    engine_state: str | None = None
    finished: bool = False

    @property
    def id(self) -> str:
        return self.site.id


class _Federation:
    """One run: start, set up and poll the clients, always stopping them at the end."""

    def __init__(self, sites: list[ClientFolders], launcher: Launcher, router: Router, query_interval: float,
                 timeouts: Timeouts, out: TextIO):
        self.sites = sites
        self.launcher = launcher
        self.router = router
        self.query_interval = query_interval
        self.timeouts = timeouts
        self.out = out
        self.clients: dict[str, _Client] = {}
        self.handles: list[ClientHandle] = []
        self.traffic: dict[str, list[Delivery]] = {site.id: [] for site in sites}
        self.started = 0.0
        self.ended: float | None = None   # when the run itself ended (a hold may follow)
        self.id_width = max(len(site.id) for site in sites)

    def run(self, env: dict[str, str], started: float, hold: Hold | None = None) -> SiteFailure | None:
        self.started = started
        finished = False
        try:
            failure = self._run(env)
            self.ended = time.monotonic()
            finished = failure is None
            if finished and hold is not None:
                hold({client.id: page_url(client.handle) for client in self.clients.values()})
            return failure
        finally:
            # A second Ctrl-C must not leave clients behind.
            with _signal_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}):
                stop_all(self.handles, self.timeouts.stop_grace, finished=finished)
                self.launcher.close()

    def _run(self, env: dict[str, str]) -> SiteFailure | None:
        try:
            with _signal_handlers({signal.SIGTERM: _raise_interrupted}):
                self._start(env)
                self._setup()
                self._drive()
            return None
        except SiteFailure as failure:
            return failure
        except KeyboardInterrupt:
            return SiteFailure(None, "interrupted (Ctrl-C)")
        except Interrupted:
            return SiteFailure(None, "interrupted (SIGTERM)")

    def _start(self, env: dict[str, str]) -> None:
        # The launcher begins them side by side (prepare); `start` completes them one after the other, from
        # this thread: launchers start helper processes that die with the thread that started them
        # (PR_SET_PDEATHSIG), so a worker thread would take them along.
        roles = ", ".join(f"{s.id} (coordinator)" if s.coordinator else s.id for s in self.sites)
        self._say(f"starting {roles}; logs: {', '.join(str(site.log_path) for site in self.sites)}")
        specs = [ClientSpec(site.id, site.input_dir, site.output_dir, site.log_path, env, site.sources)
                 for site in self.sites]
        self.launcher.prepare(specs)
        for site, spec in zip(self.sites, specs):
            try:
                handle = self.launcher.start(spec)
            except LaunchError as error:
                raise SiteFailure(site.id, str(error)) from error
            self.handles.append(handle)
            if page_url(handle):
                self._say(f"live page: {page_url(handle)}", site.id)
            self.clients[site.id] = _Client(site, handle, ClientApi(handle.api_url), 0.0)
        for client in self.clients.values():
            self._wait_until_answering(client)

    def _wait_until_answering(self, client: _Client) -> None:
        deadline = self.started + self.timeouts.start
        while True:
            code = client.handle.exit_code()
            if code is not None:
                raise SiteFailure(client.id, f"{client.handle.describe_exit(code)} during start-up; "
                                             f"last lines of {client.site.log_path}:\n{tail(client.handle.log_text())}")
            try:
                client.api.status(timeout=min(self.timeouts.request, 1.0))
                client.last_answer = time.monotonic()
                return
            except Unreachable:
                pass
            except BadAnswer as error:
                if not _proxy_waiting_for_app(error):
                    raise SiteFailure(client.id, f"{error} during start-up; see {client.site.log_path}") from error
            if time.monotonic() > deadline:
                raise SiteFailure(client.id, f"did not answer GET /status within {self.timeouts.start:g} s "
                                             f"of starting; last lines of {client.site.log_path}:\n"
                                             f"{tail(client.handle.log_text())}")
            time.sleep(getattr(self.launcher, "start_poll", START_POLL))

    def _setup(self) -> None:
        """POST /setup to all clients at once (each answer takes the engine a second)."""
        ids = list(self.clients)
        coordinator = self.router.coordinator
        timeout = self.timeouts.request + SETUP_SLEEP
        with ThreadPoolExecutor(len(ids)) as pool:
            calls = {c.id: pool.submit(c.api.setup, c.id, c.site.coordinator, ids, coordinator, timeout)
                     for c in self.clients.values()}
        for site_id, call in calls.items():
            try:
                call.result()
            except RequestFailed as error:
                client = self.clients[site_id]
                self._check_running(client)
                raise SiteFailure(site_id, f"setup failed: {_failure_reason(client, str(error))}") from error
            self.clients[site_id].last_answer = time.monotonic()

    def _drive(self) -> None:
        while True:
            cycle = time.monotonic()
            for client in self.clients.values():
                if not client.finished:
                    self._poll(client)
            if all(client.finished for client in self.clients.values()):
                return
            self._check_run_time()
            time.sleep(max(0.0, self.query_interval - (time.monotonic() - cycle)))

    def _poll(self, client: _Client) -> None:
        """One GET /status and, if an item is queued, one GET /data and its deliveries."""
        self._check_running(client)
        status = self._status(client)
        if status is None:
            return
        self._show(client, status)
        if status.failed:
            raise SiteFailure(client.id, _failure_reason(client, f"failed with {status.message}"))
        if status.available:
            body = self._transfer(client, client.api.pull)
            try:
                posts = self.router.route(client.id, status, body)
            except RoutingError as error:
                raise SiteFailure(client.id, str(error)) from error
            for post in posts:
                self._deliver(post)
        elif status.finished:
            client.finished = True

    def _status(self, client: _Client) -> Status | None:
        """The client's status; None while it has been silent for less than the unresponsive timeout."""
        silent_for = time.monotonic() - client.last_answer
        timeout = max(0.1, min(self.timeouts.request, self.timeouts.unresponsive - silent_for))
        try:
            status = client.api.status(timeout)
        except Unreachable as error:
            self._check_running(client)
            silent_for = time.monotonic() - client.last_answer
            if silent_for >= self.timeouts.unresponsive:
                raise SiteFailure(client.id, f"unresponsive: no answer for {silent_for:.1f} s "
                                             f"({error}) {self._where(client)}") from error
            return None
        except BadAnswer as error:
            raise SiteFailure(client.id, f"{error} {self._where(client)}") from error
        client.last_answer = time.monotonic()
        return status

    def _deliver(self, post: Post) -> None:
        recipient = self.clients[post.recipient]
        self._transfer(recipient, recipient.api.push, post.body, post.delivery.sender, post.delivery.memo)
        self.traffic[post.recipient].append(post.delivery)

    def _transfer(self, client: _Client, call: Callable, *args) -> bytes:
        """GET or POST /data: not retried, since a lost answer may have moved the item already."""
        try:
            answer = call(*args, timeout=self.timeouts.unresponsive)
        except RequestFailed as error:
            # The reset often arrives before `docker wait` reports the exit; the exit is the better message.
            client.handle.wait(self.timeouts.exit_notice)
            self._check_running(client)
            raise SiteFailure(client.id, f"{error} {self._where(client)}") from error
        client.last_answer = time.monotonic()
        return answer

    def _check_running(self, client: _Client) -> None:
        code = client.handle.exit_code()
        if code is None:
            return
        reason = error_from_log(client.handle.log_text())
        raise SiteFailure(client.id, f"{client.handle.describe_exit(code)} {self._where(client)}"
                                     + (f"; last error in its log: {reason}" if reason else ""))

    def _check_run_time(self) -> None:
        limit = self.timeouts.run
        if limit is None or time.monotonic() - self.started < limit:
            return
        waiting = "; ".join(f"{c.id} {self._where(c)}" for c in self.clients.values() if not c.finished)
        raise SiteFailure(None, f"the run did not finish within {limit:g} s; still running: {waiting}")

    def _show(self, client: _Client, status: Status) -> None:
        """Print a line when what the client reports changes."""
        if client.shown is not None and _summary(client.shown) == _summary(status):
            return
        client.shown = status
        client.engine_state = web_state(client.handle.web_url, WEB_TIMEOUT) or client.engine_state
        if status.message == client.engine_state != "terminal":
            return   # the engine's placeholder message between two states; the app's own follows at once
        self._say(_summary(status), client.id)

    def _where(self, client: _Client) -> str:
        state = f"while in state '{client.engine_state}'" if client.engine_state else "before its first state"
        return state + (f" (last status: {' '.join(_summary(client.shown).split())})" if client.shown else "")

    def _say(self, line: str, site: str = "testbed") -> None:
        print(f"[{site:<{self.id_width}}] {line}", file=self.out, flush=True)


def _proxy_waiting_for_app(error: BadAnswer) -> bool:
    """A proxy in front of the client (nginx in the app's container) answers 502-504 until the app listens."""
    cause = error.__cause__
    return isinstance(cause, urllib.error.HTTPError) and cause.code in (502, 503, 504)


def _summary(status: Status) -> str:
    """`40%  round 4/10 distilling`, plus the state when it is not plain running."""
    percent = "   -" if status.progress is None else f"{status.progress * 100:3.0f}%"
    state = "" if status.state in (None, "running") else f"  [{status.state}]"
    return f"{percent}  {status.message or ''}{state}"


def _failure_reason(client: _Client, fallback: str) -> str:
    """The failed site's own message from its log, waiting up to LOG_GRACE for it to arrive."""
    deadline = time.monotonic() + LOG_GRACE
    while True:
        reason = error_from_log(client.handle.log_text())
        if reason or time.monotonic() > deadline:
            return reason or fallback
        time.sleep(START_POLL)


def _set_aside_earlier_logs(sites: list[ClientFolders], work_dir: Path) -> None:
    """Move an earlier run's `<id>.log` out of the way: this run logs there, so it can be followed live."""
    for site in sites:
        if site.log_path.is_file():
            site.log_path.replace(work_dir / site.log_path.name)


def _keep_logs(sites: list[ClientFolders], work_dir: Path, ok: bool) -> dict[str, Path]:
    """Each site's log: `<id>.log` after a success; after a failure `<id>.failed.log`, and the earlier
    run's `<id>.log` (if any) goes back where it was, like its outputs."""
    if ok:
        return {site.id: site.log_path for site in sites}
    logs = {}
    for site in sites:
        logs[site.id] = site.log_path.with_name(f"{site.id}.failed.log")
        if site.log_path.is_file():
            site.log_path.replace(logs[site.id])
        earlier = work_dir / site.log_path.name
        if earlier.is_file():
            earlier.replace(site.log_path)
    return logs


def _keep_outputs(sites: list[ClientFolders], output_root: Path, ok: bool, logs: dict[str, Path],
                  out: TextIO) -> dict[str, Path]:
    """Move each site's outputs to `<id>/` (success) or `<id>.failed/` (failure, leaving `<id>/` alone)."""
    kept = {}
    for site in sites:
        target = output_root / (site.id if ok else f"{site.id}.failed")
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(site.output_dir, target)
        kept[site.id] = target
    if not ok:
        earlier = [str(output_root / site.id) for site in sites if (output_root / site.id).is_dir()]
        untouched = f"; earlier results in {', '.join(earlier)} were left untouched" if earlier else ""
        print(f"[testbed] partial outputs of this failed run: {', '.join(map(str, kept.values()))}; "
              f"its logs: {', '.join(map(str, logs.values()))}{untouched}", file=out, flush=True)
    return kept


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted()


@contextmanager
def _signal_handlers(handlers: dict[signal.Signals, Callable | int]):
    """Install signal handlers for the duration of the block (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
