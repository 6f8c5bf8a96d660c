"""The site's HTTP server: the FeatureCloud API on /api and the live page on /web.

The engine's example runs Bottle's default server, which answers one request at a time:
a browser holding a connection to /web open (or a phone on a slow link) would then hold up
the controller's /api/status polls. Here every connection gets its own thread, the /api
requests still reach the engine one after another (its GET /status and GET /data pair
relies on that), and the /web handlers only return bytes the states published.

/web serves exactly these: ``/`` (the page), ``status.json``, ``report.html`` and
``files/<name>`` for the images of the published report, all from memory. No request path
is ever turned into a file path, so ``..``, encoded slashes or absolute paths find nothing.
"""
from __future__ import annotations

import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from bottle import Bottle, HTTPResponse, ServerAdapter

from web.status import StatusBoard

PAGE = (Path(__file__).parent / "page.html").read_bytes()
# The page needs nothing from anywhere else: scripts and styles are inline, data comes from this site.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'self'; frame-ancestors *",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def web_app(board: StatusBoard) -> Bottle:
    """The /web application: reads ``board``, never the file system."""
    app = Bottle()

    def answer(body: bytes | None, content_type: str) -> HTTPResponse:
        if body is None:
            return HTTPResponse(b"not available yet\n", status=404, **SECURITY_HEADERS,
                                **{"Content-Type": "text/plain; charset=utf-8"})
        return HTTPResponse(body, **SECURITY_HEADERS, **{"Content-Type": content_type})

    @app.get("/")
    def page() -> HTTPResponse:
        return answer(PAGE, "text/html; charset=utf-8")

    @app.get("/status.json")
    def status() -> HTTPResponse:
        return answer(board.status_json, "application/json")

    @app.get("/report.html")
    def report() -> HTTPResponse:
        return answer(board.report_html, "text/html; charset=utf-8")

    @app.get("/files/<name>")
    def image(name: str) -> HTTPResponse:
        return answer(board.images.get(name), "image/png")

    @app.error(404)
    @app.error(405)
    def nothing(error) -> bytes:
        return b"not found\n"

    return app


def serialized(wsgi_app: Callable, lock: threading.Lock) -> Callable:
    """``wsgi_app`` answering one request at a time (the response body is read inside the lock)."""
    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        with lock:
            return list(wsgi_app(environ, start_response))
    return application


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # a connection left open never keeps the process alive
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:
        pass   # no access-log line per controller poll

    def address_string(self) -> str:
        return self.client_address[0]   # no reverse DNS look-up per request


class ThreadedServer(ServerAdapter):
    """Bottle's wsgiref server with one thread per connection."""

    def run(self, handler: Callable) -> None:
        from wsgiref.simple_server import make_server
        server = make_server(self.host, self.port, handler, _ThreadingServer, _QuietHandler)
        server.serve_forever()
