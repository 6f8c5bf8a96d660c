"""Where the controller delivers each item a client sends, and what it does to it on the way.

- no destination, from the coordinator: broadcast to every other client (the engine
  keeps the coordinator's own copy itself);
- no destination, from a participant: to the coordinator;
- a client id: to that client (a client may address itself, which DP sends do);
- SMPC: one payload per client is collected per memo; once all are in, their sum
  alone goes to the coordinator, which never receives a single client's payload;
- DP: the payload is clipped and noised before it is routed. The noise of a send
  depends only on the seed, the sender, the memo and how many DP sends the sender
  made with that memo before, so a run is reproducible however its polls interleave.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

from testbed.client_api import Status
from testbed.privacy import PayloadError, dp_noise, smpc_sum


@dataclass(frozen=True)
class Delivery:
    """One item delivered to a client: its memo, who sent it, the destination the sender asked for
    (None = default routing), how it was routed (`broadcast`, `to_coordinator`, `direct` or
    `smpc_sum`), and whether DP noise was added."""

    memo: str | None
    sender: str
    destination: str | None
    kind: str
    noised: bool = False


@dataclass(frozen=True)
class Post:
    """A delivery still to be made: `POST /data?client=<sender>&memo=<memo>` with body to recipient."""

    recipient: str
    delivery: Delivery
    body: bytes


class RoutingError(Exception):
    """A client sent something the controller cannot deliver; the message says what."""


class Router:
    """Turns each item a client sends into the deliveries the controller makes."""

    def __init__(self, client_ids: list[str], coordinator: str, dp_seed: int):
        self.client_ids = client_ids
        self.coordinator = coordinator
        self.dp_seed = dp_seed
        self._smpc: dict[str | None, dict[str, tuple[object, int]]] = {}
        self._dp_sends: dict[tuple[str, str | None], int] = {}

    def route(self, sender: str, status: Status, body: bytes) -> list[Post]:
        noised = status.dp is not None
        if noised or status.smpc is not None:
            payload = self._json(status, body)
            if noised:
                payload = self._noise(sender, status, payload)
            if status.smpc is not None:
                return self._collect_smpc(sender, status, payload)
            body = json.dumps(payload).encode()
        if status.destination is None and sender == self.coordinator:
            recipients, kind = [c for c in self.client_ids if c != sender], "broadcast"
        elif status.destination is None:
            recipients, kind = [self.coordinator], "to_coordinator"
        elif status.destination in self.client_ids:
            recipients, kind = [status.destination], "direct"
        else:
            raise RoutingError(f"sent data (memo {status.memo!r}) to unknown client {status.destination!r}; "
                               f"the clients are {', '.join(self.client_ids)}")
        delivery = Delivery(status.memo, sender, status.destination, kind, noised)
        return [Post(recipient, delivery, body) for recipient in recipients]

    def _collect_smpc(self, sender: str, status: Status, payload: object) -> list[Post]:
        if status.smpc.get("operation", "add") != "add":
            raise RoutingError(f"asked for SMPC operation {status.smpc.get('operation')!r}; "
                               "the local test-bed sums only ('add')")
        shares = self._smpc.setdefault(status.memo, {})
        if sender in shares:
            raise RoutingError(f"sent a second SMPC payload with memo {status.memo!r} before every client "
                               "had sent its first; use a new memo per round")
        shares[sender] = (payload, int(status.smpc.get("exponent", 8)))
        if len(shares) < len(self.client_ids):
            return []
        del self._smpc[status.memo]
        exponents = {exponent for _, exponent in shares.values()}
        if len(exponents) > 1:
            raise RoutingError(f"SMPC payloads with memo {status.memo!r} use different exponents "
                               f"{sorted(exponents)}; configure_smpc must be the same on every client")
        try:
            total = smpc_sum([shares[c][0] for c in self.client_ids], exponents.pop())
        except PayloadError as error:
            raise RoutingError(f"SMPC payloads with memo {status.memo!r} cannot be summed: {error}") from error
        delivery = Delivery(status.memo, self.coordinator, None, "smpc_sum")
        return [Post(self.coordinator, delivery, json.dumps(total).encode())]

    def _noise(self, sender: str, status: Status, payload: object) -> object:
        key = (sender, status.memo)
        count = self._dp_sends.get(key, 0)
        self._dp_sends[key] = count + 1
        rng = np.random.default_rng([self.dp_seed, _stable_hash(sender), _stable_hash(str(status.memo)), count])
        try:
            return dp_noise(payload, status.dp, rng)
        except PayloadError as error:
            raise RoutingError(f"sent a DP payload (memo {status.memo!r}) that cannot be noised: {error}") from error

    @staticmethod
    def _json(status: Status, body: bytes) -> object:
        try:
            return json.loads(body)
        except ValueError as error:
            raise RoutingError(f"sent an SMPC/DP payload (memo {status.memo!r}) that is not JSON") from error


def _stable_hash(text: str) -> int:
    """A hash that is the same in every Python process (unlike hash())."""
    return zlib.crc32(text.encode())
