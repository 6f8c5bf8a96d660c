"""A client that dies the way a killed container does: its connection drops before its exit is visible.

It speaks just enough of the controller protocol to have an item queued; `GET /data`
resets the connection, and the process exits with code 7 half a second later.
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
    def do_POST(self):
        self._answer(b"{}")

    def do_GET(self):
        if self.path.startswith("/api/status"):
            self._answer(json.dumps({"available": True, "state": "running", "message": "sending"}).encode())
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
