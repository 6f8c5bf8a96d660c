"""HTTP calls of the FeatureCloud controller protocol, made against one client's API.

`POST /setup`, `GET /status`, `GET /data` and `POST /data?client=&memo=` as the
engine's `http_ctrl.py` serves them. Proxies are never used: clients are local.
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RequestFailed(Exception):
    """A request to a client did not get a usable answer."""


class Unreachable(RequestFailed):
    """No answer at all: refused, reset or timed out."""


class BadAnswer(RequestFailed):
    """The client answered, but with an HTTP error or something that is not the protocol."""


@dataclass(frozen=True)
class Status:
    """One answer of `GET /status`."""

    available: bool = False
    finished: bool = False
    message: str | None = None
    progress: float | None = None
    state: str | None = None
    destination: str | None = None
    smpc: dict | None = None
    dp: dict | None = None
    memo: str | None = None

    @property
    def failed(self) -> bool:
        return self.state == "error"


class ClientApi:
    """The FeatureCloud API of one client, at base_url (e.g. http://127.0.0.1:5000/api)."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")

    def setup(self, client_id: str, coordinator: bool, clients: list[str], coordinator_id: str,
              timeout: float) -> None:
        body = json.dumps({"id": client_id, "coordinator": coordinator, "clients": clients,
                           "coordinatorID": coordinator_id}).encode()
        self._request("POST", "/setup", body, timeout, {"Content-Type": "application/json"})

    def status(self, timeout: float) -> Status:
        """The engine answers a dict when it has nothing queued, and the queued item's status,
        itself a JSON string, when it has; both arrive here as a JSON object (or a JSON string of one)."""
        raw = self._get("/status", timeout)
        try:
            value: Any = json.loads(raw)
            if isinstance(value, str):
                value = json.loads(value)
        except ValueError as error:
            raise BadAnswer(f"GET /status answered something that is not JSON: {raw[:80]!r}") from error
        if not isinstance(value, dict):
            raise BadAnswer(f"GET /status answered {value!r} instead of a status object")
        known = Status.__dataclass_fields__
        return Status(**{key: item for key, item in value.items() if key in known})

    def pull(self, timeout: float) -> bytes:
        """The next outgoing item (whose status the last `status()` returned)."""
        return self._get("/data", timeout)

    def push(self, body: bytes, sender: str, memo: str | None, timeout: float) -> None:
        query = {"client": sender} if memo is None else {"client": sender, "memo": memo}
        self._request("POST", "/data?" + urllib.parse.urlencode(query), body, timeout)

    def _get(self, path: str, timeout: float) -> bytes:
        """GET /status or /data. The engine never answers them with an empty body (a status is JSON, an item a
        pickle or JSON): an empty one is an answer cut off by the client's end, no answer, not a wrong one."""
        body = self._request("GET", path, None, timeout)
        if not body:
            raise Unreachable(f"GET {path} failed: the answer ended before its body")
        return body

    def _request(self, method: str, path: str, body: bytes | None, timeout: float,
                 headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers or {})
        what = f"{method} {path.split('?')[0]}"
        try:
            with _OPENER.open(request, timeout=timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as error:
            raise BadAnswer(f"{what} answered HTTP {error.code}") from error
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {timeout:.1f} s"
            raise Unreachable(f"{what} failed: {reason}") from error


def web_state(web_url: str | None, timeout: float) -> str | None:
    """The engine's current state name, None if unavailable: the `state` of the site's
    `status.json` where its page publishes one (this app's does), else the engine's default
    page (`State: <name>`)."""
    if web_url is None:
        return None
    base = web_url.rstrip("/")
    published = _get(base + "/status.json", timeout)
    if published is not None:
        try:
            state = json.loads(published).get("state")
        except (ValueError, AttributeError):
            state = None
        if isinstance(state, str):
            return state
    text = _get(base + "/", timeout) or ""
    prefix = "State: "
    return text[len(prefix):].strip() if text.startswith(prefix) else None


def _get(url: str, timeout: float) -> str | None:
    try:
        with _OPENER.open(url, timeout=timeout) as answer:
            return answer.read().decode(errors="replace")
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return None
