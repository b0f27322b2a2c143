"""The service's client side, protocol-neutral: predictions, deployment, status.

A prediction: the client encodes its input in fixed point (NaN, inf and out-of-range
values are refused here, before anything is sent), splits it into two additive shares
with the OS CSPRNG, and sends one to each compute server.  Each server answers with
its share of this client's output rows only; the client adds them.  No server sees
the input or the output; both see the request's shape and timing.

A ``ServingClient`` is thread-safe: many threads may predict at once over its two
connections (replies are matched by request id).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bridge.ir import Numerics, Program
from bridge.ir.tokens import described_specs, one_hot_request
from bridge.mpc import wire
from bridge.mpc.fixedpoint import FixedPointError, decode
from bridge.mpc.range_check import FixedPointOverflowError
from bridge.serving.channel import (
    Connection,
    ConnectionLost,
    Message,
    OperatorOnlyError,
    ServiceUnavailableError,
    ServingError,
    client_credentials,
    open_connection,
)
from bridge.serving.config import Service, load_service
from bridge.serving.model import service_program, share_input, share_parameters


class PartyStalledError(ServiceUnavailableError):
    """A party did not answer within the timeout (dead, stalled or overloaded)."""


#: error kinds a party may report, raised here as these classes (anything else: ServingError)
_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "FixedPointError": FixedPointError,
    "FixedPointOverflowError": FixedPointOverflowError,
    "ServiceUnavailableError": ServiceUnavailableError,
    "OperatorOnlyError": OperatorOnlyError,
}


class _Link:
    """One connection to a party, with a reader thread that hands replies to their waiters."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.party = conn.peer
        self._waiting: dict[str, list[Any]] = {}
        #: when this party last said it works on a request we wait for (bridge.serving.progress)
        self.working: dict[str, float] = {}
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._reader = threading.Thread(target=self._read, name=f"serving-client-{conn.peer}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                message = self.conn.read()
                if message.header.get("op") == "working":  # a sign of work, not the answer
                    with self._lock:
                        if str(message.header.get("id")) in self._waiting:
                            self.working[str(message.header.get("id"))] = time.monotonic()
                    continue
                with self._lock:
                    slot = self._waiting.get(str(message.header.get("id")))
                if slot is not None:
                    slot[1] = message
                    slot[0].set()
        except ConnectionLost as exc:
            with self._lock:
                self._lost = str(exc)
                for slot in self._waiting.values():
                    slot[0].set()

    def ask(self, header: dict[str, Any], frames: list[bytes] = ()) -> "_Pending":  # type: ignore[assignment]
        rid = header["id"]
        slot: list[Any] = [threading.Event(), None]
        with self._lock:
            if self._lost is not None:
                raise ServiceUnavailableError(f"the connection to {self.party!r} is lost ({self._lost}); connect again")
            self._waiting[rid] = slot
        try:
            self.conn.send(header, list(frames))
        except ConnectionLost as exc:
            self.forget(rid)
            raise ServiceUnavailableError(f"the connection to {self.party!r} is lost ({exc}); connect again") \
                from exc
        return _Pending(self, rid, slot)

    def forget(self, rid: str) -> None:
        with self._lock:
            self._waiting.pop(rid, None)
            self.working.pop(rid, None)

    @property
    def lost(self) -> str | None:
        return self._lost

    def close(self) -> None:
        self.conn.close()


class _Pending:
    def __init__(self, link: _Link, rid: str, slot: list[Any]) -> None:
        self.link, self.rid, self.slot = link, rid, slot

    def wait(self, deadline: float) -> Message:
        party = self.link.party
        try:
            if not self.slot[0].wait(max(deadline - time.monotonic(), 0)):
                raise PartyStalledError(
                    f"party {party!r} did not answer within the cluster's timeout_s: it is dead, stalled or "
                    "overloaded. Nothing was revealed; retry later."
                )
            message = self.slot[1]
            if message is None:
                raise ServiceUnavailableError(f"the connection to {party!r} closed before it answered "
                                              f"({self.link.lost}); retry when the service is back")
        finally:
            self.link.forget(self.rid)
        if message.header.get("op") == "error":
            kind = str(message.header.get("kind"))
            text = str(message.header.get("message"))
            raise _ERRORS.get(kind, ServingError)(text if text.startswith(f"{party}:") else f"{party}: {text}")
        return message


def _wait_all(pending: list[_Pending], deadline: float, timeout_s: float) -> list[Message]:
    """Every party's reply. An error from one party is raised as soon as it comes (it names
    what failed, often a stalled peer), not after waiting for the other; at the deadline the
    error names every party that has not answered.  Past the deadline it keeps waiting
    while every party it waits for has said, within ``window`` (at most ``timeout_s``), that
    it works on this request (``bridge.serving.progress``): a long forward pass is waited
    for, a silent party is named ``window`` after its last word."""
    window = min(timeout_s, max(timeout_s / 2, 3 * min(1.0, timeout_s / 4)))
    try:
        while True:
            waiting = [p for p in pending if not p.slot[0].is_set()]
            for p in pending:
                if p.slot[0].is_set() and (p.slot[1] is None or p.slot[1].header.get("op") == "error"):
                    p.wait(deadline)  # raises that party's error
            if not waiting:
                return [p.wait(deadline) for p in pending]
            left = deadline - time.monotonic()
            now = time.monotonic()
            if left <= 0 and all(now - p.link.working.get(p.rid, -window) < window for p in waiting):
                left = 0.05  # every party still works on it: slow is not silent
            if left <= 0:
                names = " and ".join(repr(p.link.party) for p in waiting)
                raise PartyStalledError(
                    f"{'party' if len(waiting) == 1 else 'parties'} {names} did not answer within the cluster's "
                    f"timeout_s ({timeout_s:g} s): a party is dead, stalled or overloaded (a compute server waiting "
                    "for a stalled peer does not answer either; the operator's `privacy-bridge status` names the "
                    "one that is down). Nothing was revealed; retry later."
                )
            waiting[0].slot[0].wait(min(left, 0.05))
    finally:
        for p in pending:
            p.link.forget(p.rid)


class ServingClient:
    """A connection to a service as one admitted identity."""

    def __init__(self, service: Service | str | Path, identity: str | Path, timeout_s: float | None = None,
                 parties: tuple[str, ...] | None = None) -> None:
        self.service = service if isinstance(service, Service) else load_service(service)
        self.credentials = client_credentials(self.service, identity)
        self.identity = self.credentials.party
        self.timeout_s = float(timeout_s if timeout_s is not None else self.service.cluster.timeout_s)
        self._links: dict[str, _Link] = {}
        try:
            for party in parties or self.service.compute:
                self._links[party] = self._open(party)
        except BaseException:
            self.close()
            raise
        self._spec: dict[str, Any] | None = None

    def _open(self, party: str) -> _Link:
        link = _Link(open_connection(self.service, self.credentials, party, self.timeout_s))
        # TLS 1.3 tells a client that its certificate was refused only at its first read
        try:
            link.ask({"op": "hello", "id": "hello"}).wait(time.monotonic() + self.timeout_s)
        except ServiceUnavailableError as exc:
            link.close()
            if isinstance(exc, PartyStalledError):
                raise
            raise ServingError(
                f"party {party!r} refused identity {self.identity!r} ({exc}). The deployment admits only the "
                f"certificates in {self.service.clients_dir}: run `privacy-bridge admit --cluster "
                f"{self.service.path} --name {self.identity}` on the deployment and use the key it makes."
            ) from None
        return link

    def _link(self, party: str) -> _Link:
        if party not in self._links:
            self._links[party] = self._open(party)
        return self._links[party]

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the model takes ------------------------------------------------------------------
    def hello(self, party: str | None = None) -> dict[str, Any]:
        message = self._link(party or self.service.leader).ask({"op": "hello", "id": "hello"})
        return message.wait(time.monotonic() + self.timeout_s).header

    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            spec = self.hello()
            if spec.get("model") is None:
                raise ServiceUnavailableError("no model is deployed on this service yet; the model owner runs "
                                              "privacy-bridge deploy")
            self._spec = spec
        return self._spec

    def _inputs(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.spec()
        names = list(spec["inputs"])
        arrays = dict(x) if isinstance(x, Mapping) else {names[0]: x} if len(names) == 1 else None
        if arrays is None or sorted(arrays) != sorted(names):
            raise ValueError(f"the model takes inputs {names}; pass a dict with exactly these keys"
                             + ("" if len(names) > 1 else " or one array"))
        # token ids are checked and one-hot encoded here, by the client that holds them (bridge.ir.tokens)
        arrays = one_hot_request(described_specs(spec["inputs"], spec.get("input_dtypes")), arrays)
        rows = None
        out = {}
        for name in names:
            value = np.asarray(arrays[name], dtype=np.float64)
            expected = tuple(spec["inputs"][name])
            if value.ndim == len(expected):
                value = value[None]
            if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected:
                raise ValueError(f"input {name!r} must have shape (batch, {', '.join(map(str, expected))}), "
                                 f"received {tuple(np.shape(arrays[name]))}. Reshape the data to match the model's "
                                 "input.")
            if rows is not None and value.shape[0] != rows:
                raise ValueError(f"inputs have different batch sizes: {rows} and {value.shape[0]}")
            rows = value.shape[0]
            out[name] = value
        if not 1 <= int(rows or 0) <= int(spec["max_request_rows"]):
            raise ValueError(f"a request carries 1 to {spec['max_request_rows']} rows (max_request_rows); "
                             f"received {rows}. Split the batch.")
        return out

    # -- predictions ---------------------------------------------------------------------------
    def predict_raw(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the model for ``x``, by name."""
        spec = self.spec()
        numerics = Numerics.model_validate(spec["numerics"])
        arrays = self._inputs(x)
        shares: dict[str, list[bytes]] = {p: [] for p in self.service.compute}
        for name, value in arrays.items():  # encode (and so check) every input before sending anything
            first, second = share_input(value, numerics, name)
            shares[self.service.compute[0]].append(wire.encode_frame(first))
            shares[self.service.compute[1]].append(wire.encode_frame(second))
        rid = os.urandom(12).hex()
        header = {"op": "predict", "id": rid, "inputs": list(arrays)}
        pending = [self._link(p).ask(header, shares[p]) for p in self.service.compute]
        replies = _wait_all(pending, time.monotonic() + self.timeout_s, self.timeout_s)
        outputs = {}
        names = replies[0].header.get("outputs")
        if not isinstance(names, list) or names != replies[1].header.get("outputs"):
            raise ServingError("the two servers answered with different outputs; the service is inconsistent")
        parts = [r.arrays() for r in replies]
        for i, name in enumerate(names):
            a, b = parts[0][i], parts[1][i]
            if a.shape != b.shape:
                raise ServingError(f"the two servers' shares of {name!r} differ in shape: {a.shape} and {b.shape}")
            with np.errstate(over="ignore"):
                outputs[name] = decode(a + b, numerics)
        return outputs

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """What ``model.predict(x)`` returns: one array for a single-output model."""
        outputs = self.predict_raw(x)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def status(self, party: str) -> dict[str, Any]:
        return self._link(party).ask({"op": "status", "id": os.urandom(6).hex()}).wait(
            time.monotonic() + self.timeout_s).header


def deploy(service: Service | str | Path, program: Program, weights: Mapping[str, np.ndarray],
           identity: str | Path, timeout_s: float | None = None) -> str:
    """Share ``weights`` between the two servers once and give the dealer the program;
    every party stores its part. Returns the model's digest."""
    svc = service if isinstance(service, Service) else load_service(service)
    placed = service_program(program, svc)
    program_json = placed.model_dump_json().encode()
    first, second = share_parameters(placed, weights)
    parties = (*svc.compute, svc.dealer)
    client = ServingClient(svc, identity, timeout_s, parties=parties)
    try:
        pending = []
        for party in parties:
            frames = [wire.encode_bytes(program_json)]
            header: dict[str, Any] = {"op": "deploy", "id": os.urandom(6).hex()}
            if party != svc.dealer:
                share = first if party == svc.compute[0] else second
                names = sorted(share)
                header["parameters"] = names
                frames += [wire.encode_frame(share[n]) for n in names]
            pending.append(client._link(party).ask(header, frames))
        deadline = time.monotonic() + client.timeout_s
        digests = {p.wait(deadline).header.get("model") for p in pending}
    finally:
        client.close()
    if len(digests) != 1:
        raise ServingError(f"the parties stored different models: {digests}")
    return digests.pop()
