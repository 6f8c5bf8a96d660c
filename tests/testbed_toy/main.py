"""A tiny FeatureCloud app on the real engine, to test the local test-bed (testbed).

    python tests/testbed_toy/main.py serve --port P --input-dir IN --output-dir OUT

the same command line as the real app's main.py. What the clients do is chosen by
`config.yml` in the input dir (see toy_states.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bottle import Bottle

import FeatureCloud.app.engine.app as engine
from FeatureCloud.app.api.http_ctrl import api_server
from FeatureCloud.app.api.http_web import web_server

import toy_states

ENGINE_WAITS = {"FC_TRANSITION_WAIT": "TRANSITION_WAIT", "FC_TERMINAL_WAIT": "TERMINAL_WAIT",
                "FC_DATA_POLL_INTERVAL": "DATA_POLL_INTERVAL"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="toy main.py")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--input-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    for variable, name in ENGINE_WAITS.items():
        if variable in os.environ:
            setattr(engine, name, float(os.environ[variable]))
    toy_states.FOLDERS.update(input=args.input_dir, output=args.output_dir)
    engine.app.register()
    server = Bottle()
    server.mount("/api", api_server)
    server.mount("/web", web_server)
    server.run(host="127.0.0.1", port=args.port, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
