"""Entry point of fc-knowledge-distillation.

    python main.py                 serve the FeatureCloud API on 127.0.0.1:5000 (what the container runs)
    python main.py serve --port P --input-dir IN --output-dir OUT
                                   one client on a chosen port and folders (used by the local test-bed)
    python main.py simulate --client-dirs A,B --generic-dir G --output-dir OUT
                                   run a whole federation on this machine
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
from pathlib import Path

# featurecloud 0.1.0's waits are plain sleeps (1 s after every state, 10 s up to three times at the end,
# 0.1 s between checks for incoming data). None protects anything this app needs: its finished status
# is queued behind all of its outgoing data (README, "Platform waits"). So the app runs with these, in the
# container and locally alike. TRANSITION_WAIT is also the pause of the engine's loop at `terminal` that
# waits for queued data to leave; it cannot spin, because the last state returns only once its data left
# (KDState.wait_until_sent).
APP_ENGINE_WAITS = {"TRANSITION_WAIT": 0.0, "TERMINAL_WAIT": 0.0, "DATA_POLL_INTERVAL": 0.005}
# What a site imports during a run besides what serving needs: torch._dynamo (with sympy, 900 modules, 70 MB)
# is what torch.optim imports on its first optimizer; the exports and the TensorBoard writer import the rest
# when the outputs are written. The local test-bed's fork server imports these once and forks every client
# from it, so the clients share them (torch alone is 280 MB of private memory per process with PyPI's CUDA
# build) and start at once. A container imports them while it waits for the controller (`serve`). Not
# onnxruntime: importing it starts a thread, which a fork would not copy (numpy's OpenBLAS threads restart
# after one).
PRELOAD = ("states", "web.server", "FeatureCloud.app.api.http_ctrl", "bottle", "torch._dynamo",
           "torch.onnx", "onnx", "torch.utils.tensorboard", "PIL.PngImagePlugin")


def serve(host: str, port: int, input_dir: Path | None = None, output_dir: Path | None = None) -> None:
    """Serve the FeatureCloud API (/api) and the site's live page (/web) until the process ends; the site's
    folders are the container's (/mnt/input, /mnt/output) unless given."""
    import gc

    # Importing torch and the app makes a few hundred thousand objects and almost no garbage: collecting
    # during the imports is a fifth of their time. The preload turns the collector back on once it is done.
    gc.disable()

    from bottle import Bottle
    from FeatureCloud.app.api.http_ctrl import api_server
    import FeatureCloud.app.engine.app as engine

    from app.early_start import EarlyStart
    from states import Folders, register_states
    from web.server import ThreadedServer, serialized, web_app
    from web.status import StatusBoard

    for name, seconds in APP_ENGINE_WAITS.items():
        setattr(engine, name, seconds)
    if "KD_NUM_THREADS" in os.environ:
        import torch
        torch.set_num_threads(int(os.environ["KD_NUM_THREADS"]))
    container = Folders()
    folders = Folders(input_dir or container.input_dir, output_dir or container.output_dir)
    board = StatusBoard()   # what this site's /web page shows
    early = EarlyStart(folders.input_dir, folders.output_dir)
    register_states(engine.app, folders, board, early)
    engine.app.register()
    early.start(after=_preload_before_first_state(engine.app))
    server = Bottle()
    server.mount("/api", serialized(api_server, threading.Lock()))
    server.mount("/web", web_app(board).wsgi)   # also answers /web without the slash
    server.run(server=ThreadedServer(host=host, port=port), quiet=True)


def _preload_before_first_state(app) -> threading.Thread:
    """Import PRELOAD in the background from now on (the thread that does, returned), and start the state
    machine (which the controller's POST /setup starts) only once that is done.

    In a container nothing else is imported before it: torch._dynamo alone took 2-6 s there, in the first
    round, while the other sites waited for this one's update. Imported now, it overlaps the wait for the
    controller's POST /setup and that handler's own one-second sleep. The first state waits for it rather
    than importing beside it: two threads importing the same modules at once can deadlock. A client forked
    by the local test-bed has all of them already, and a failed import is left to the state that needs the
    module, which reports it. The garbage collector, off for the imports, runs again from then on."""
    import gc
    import time

    def preload() -> None:
        started = time.monotonic()
        try:
            for module in PRELOAD:
                try:
                    importlib.import_module(module)
                except Exception:  # noqa: BLE001 — imported again where it is used, and reported there
                    pass
        finally:
            gc.enable()   # off since serve() began importing
        timings["imported"] = time.monotonic() - started

    def run_after_preload() -> None:
        waited = time.monotonic()
        loading.join()
        waited = time.monotonic() - waited
        if timings["imported"] > 0.5:   # a container (a forked local client has them: nothing to say)
            print(f"[KD] start-up imports took {timings['imported']:.1f} s in the background; the first state "
                  f"waited {waited:.1f} s for them", flush=True)
        state_machine()

    timings = {"imported": 0.0}
    loading = threading.Thread(target=preload, name="preload", daemon=True)
    loading.start()
    # handle_setup starts its thread on `app.guarded_run`, looked up at that moment.
    state_machine = app.guarded_run
    app.guarded_run = run_after_preload
    return loading


def main(argv: list[str]) -> int:
    if not argv:
        serve("localhost", 5000)
        return 0
    if argv[0] == "simulate":
        from app.report import print_summary
        from testbed.cli import main as simulate
        return simulate(argv[1:], summary=print_summary)
    if argv[0] == "serve":
        parser = argparse.ArgumentParser(prog="main.py serve", description="Serve one client of the app.")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=5000)
        parser.add_argument("--input-dir", type=Path, required=True)
        parser.add_argument("--output-dir", type=Path, required=True)
        args = parser.parse_args(argv[1:])
        serve(args.host, args.port, args.input_dir.resolve(), args.output_dir.resolve())
        return 0
    if argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
