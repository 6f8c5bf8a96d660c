"""The fork server of the local launcher: imports the app's heavy modules once, then forks one client per site.

    python forkserver.py ENTRY

imports ENTRY as a module (not as `__main__`, so it only defines things) and then the
modules its `PRELOAD` names, if any, with ENTRY's folder as working folder and
first import path (as `python ENTRY` would have); freezes what it imported out of the
garbage collector's reach (so the children's collections do not copy those pages); writes
`ready`; and then reads one JSON request per line on stdin:

    {"argv": [...], "env": {...}, "log": "/path/c1.log"}   ->  started <pid>

Each client is a fork that starts a new session, dies with the server, writes stdout and
stderr to its log and runs ENTRY as `__main__` with that argv and environment, exactly
like `python ENTRY ARGV...`. When a client ends, the server writes `exited <pid> <code>`
(negative: killed by that signal, like subprocess). It exits when stdin closes.

What this buys, measured on the sample federation (README, "Speed"): the clients share
the pages of torch and the other preloaded modules instead of each holding its own
copy (torch alone is 280 MB of private memory per process with PyPI's CUDA build),
and a client starts in milliseconds instead of the seconds those imports take.
A fork copies only the thread that forks: the server starts none itself, and the
modules it preloads must not either (numpy's OpenBLAS threads are restarted after a
fork by OpenBLAS itself).
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import json
import os
import runpy
import select
import signal
import sys
import traceback
from pathlib import Path

PR_SET_PDEATHSIG = 1


def main(entry: Path) -> None:
    # The preloaded modules create some 400,000 objects and next to no garbage (under a hundred
    # objects): the collections that many allocations trigger were a fifth of the imports' time,
    # and a last collection before the freeze found nothing worth its 0.3 s. Clients collect again.
    gc.disable()
    os.chdir(entry.parent)
    sys.path[0] = str(entry.parent)
    for module in _preload(entry):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 — the client imports it again and reports the failure in its own log
            pass
    gc.freeze()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)   # only to be woken up through wake_write
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    pending = b""
    while True:
        readable, _, _ = select.select([0, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 512)
            _report_exits(out)
        if 0 in readable:
            chunk = os.read(0, 65536)
            if not chunk:   # no more clients: exit without tearing down torch's modules (0.3-0.6 s)
                out.flush()
                os._exit(0)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                pid = os.fork()
                if pid == 0:
                    _client(entry, json.loads(line), [wake_read, wake_write])
                out.write(f"started {pid}\n")
                out.flush()
            _report_exits(out)


def _preload(entry: Path) -> list[str]:
    """The modules the entry script names in PRELOAD (none if it cannot even be imported)."""
    spec = importlib.util.spec_from_file_location("_testbed_entry", entry)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException:  # noqa: BLE001 — a broken entry fails in the client, with its own log
        return []
    return list(getattr(module, "PRELOAD", ()))


def _report_exits(out) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.write(f"exited {pid} {code}\n")
        out.flush()


def _client(entry: Path, request: dict, server_fds: list[int]) -> None:
    """In the fork: become the client the request describes; never returns."""
    code = 1
    try:
        gc.enable()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in server_fds:
            os.close(fd)
        os.setsid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.environ.update(request["env"])
        sys.argv = [str(entry), *request["argv"]]
        try:
            runpy.run_path(str(entry), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):
                print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 — whatever ends the client is its exit, as in a fresh interpreter
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
