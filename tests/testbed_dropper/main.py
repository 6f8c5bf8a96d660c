"""A client that dies the way a killed client does: its answer is cut off before its exit is visible.

It speaks just enough of the controller protocol to have an item queued; `GET /data`
resets the connection (a killed container's vanished network), and the process exits with code 7
half a second later. With DROPPER_AT=status (every `GET /status` after `POST /setup`) or
DROPPER_AT=data (`GET /data`), the answer is cut off after its headers instead, as a process
killed while it answers: the body arrives empty.
"""
import argparse
import json
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXIT_CODE = 7
EXIT_DELAY = 0.5


class Handler(BaseHTTPRequestHandler):
    set_up = False

    def do_POST(self):
        Handler.set_up = Handler.set_up or self.path.startswith("/api/setup")
        self._answer(b"{}")

    def do_GET(self):
        cut = os.environ.get("DROPPER_AT")
        if (cut == "status" and self.path.startswith("/api/status") and Handler.set_up
                or cut == "data" and self.path.startswith("/api/data")):
            self.send_response(200)   # no length: the body is whatever arrives before the connection closes
            self.end_headers()
            self.close_connection = True
            threading.Thread(target=_exit_soon, daemon=True).start()
        elif self.path.startswith("/api/status"):
            status = {"available": True, "state": "running", "message": "sending"}
            if cut == "data":   # an SMPC item: an empty body delivered as one would fail as "not JSON"
                status["smpc"] = {"operation": "add", "exponent": 8}
            self._answer(json.dumps(status).encode())
        elif self.path.startswith("/api/data"):
            # SO_LINGER with a zero timeout makes close() send a reset, as a vanished network namespace does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            threading.Thread(target=_exit_soon, daemon=True).start()
        else:
            self._answer(b"State: send")

    def _answer(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _exit_soon():
    time.sleep(EXIT_DELAY)
    os._exit(EXIT_CODE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--input-dir")
    parser.add_argument("--output-dir")
    ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), Handler).serve_forever()
