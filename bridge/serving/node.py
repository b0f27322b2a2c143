"""One party of a long-running service: a compute server (the leader or the follower)
or the dealer.

Two halves per process:

* the **client side**: a TLS 1.3 listener (``bridge.serving.channel``) that admits
  only the deployment's identities.  A client sends each compute server its own
  additive share of its input; a server checks the share's shape and queues it.  The
  model owner deploys here: each server stores its parameter share (``store``) and
  the dealer the program.
* the **MPC side**: the three parties run the secure forward pass together over the
  backend's own transport (gloo or gRPC, authenticated and encrypted), through the
  same ``DistributedParty`` runner, protocol code and range check as
  ``SecureExecutable``.  The runs are lock-step: every *step* is one protocol run in
  all three processes.  In each, the leader proposes a batch (requests of any clients,
  stacked by rows up to ``max_batch``, waiting at most ``max_delay_ms`` after the
  first), the follower says which of them it holds, and the batch is what both hold.
  With nothing to do the leader proposes an empty batch every ``tick_s``, so that
  the parties' liveness checks stay quiet and a dead party is noticed.

Only the client opens its outputs: each server sends its share of that client's rows
to that client, on that client's connection, and nothing is revealed to anyone else.
The servers (and the dealer) learn shapes, timing, and the range check's flags.

Faults.  A flagged batch (the range check: a value left the fixed-point range) is
rerun request by request with fresh randomness; a request flagged alone twice is
refused with ``FixedPointOverflowError`` naming the layer, the others are answered.
A client that leaves mid-request changes nothing for the others (its reply is
dropped).  A party that dies or stalls makes the run fail in every party: each
waiting request gets an error naming it, and the parties form the cluster again
(``setup`` from the stored shares) as soon as it is back.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.ir import Program
from bridge.mpc import wire
from bridge.mpc.backend import SecureBackend
from bridge.mpc.comm import PeerError
from bridge.mpc.distributed import DistributedParty
from bridge.mpc.offline import PartyOffline, SlotCounter
from bridge.mpc.layers import masked_parameter_names, secure_parameter_specs
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Shared, mask_operand
from bridge.mpc.range_check import DEFAULT_SERVING_BOUND, reveal_flags, serving_check_plan
from bridge.serving import store
from bridge.serving.channel import (
    HANDSHAKE_TIMEOUT_S,
    Connection,
    ConnectionLost,
    Message,
    OperatorOnlyError,
    ServingError,
    party_credentials,
    server_context,
)
from bridge.serving.config import Service
from bridge.serving.model import service_program
from bridge.serving.offline import party_offline
from bridge.serving.progress import notify_working
from bridge.serving.stats import ServiceStats

CONTROL_LABEL = "serving/control"
#: how long the follower waits for a share the leader already holds (the client sends both at once)
MISSING_WAIT_S = 0.5
#: follower's answers to a proposal
MISSING, HAVE, MISMATCH = 0, 1, 2
#: flagged requests are refused after this many flagged attempts (one rerun, as SecureExecutable)
MAX_ATTEMPTS = 2
RID_MAX = 64


@dataclass
class Request:
    client: str
    rid: str
    rows: int
    shares: dict[str, np.ndarray]
    conn: Connection
    arrived: float = field(default_factory=time.monotonic)
    #: flagged runs this request was part of
    attempts: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.client, self.rid)


class ServingNode:
    """``party`` of ``service`` on ``backend``; ``start`` returns once the listener is up."""

    def __init__(self, service: Service, party: str, backend: SecureBackend, log: Callable[[str], None] = print,
                 overflow_bound: float = DEFAULT_SERVING_BOUND, expected_program: Program | None = None) -> None:
        """``expected_program``: the architecture this party's operator agreed to serve; a
        deployment of any other is refused (the weights still come from the model owner)."""
        if party not in service.serving.listen:
            raise ServingError(f"party {party!r} does not serve: [serving.listen] names {list(service.serving.listen)}")
        self.service, self.party, self.backend, self.log = service, party, backend, log
        self.overflow_bound = overflow_bound
        self.expected = None if expected_program is None else service_program(expected_program, service)
        cluster = service.cluster
        self.timeout_s = cluster.timeout_s
        self.tick_s = max(0.05, min(1.0, self.timeout_s / 4))
        self.role = "leader" if party == service.leader else "dealer" if party == service.dealer else "follower"
        self.state_dir = service.party_state(party)
        self.deployment = store.load(self.state_dir)
        self.stats = ServiceStats()
        self._pending: OrderedDict[tuple[str, str], Request] = OrderedDict()
        #: the connections of the leader's last two batches (whom a batch waits for: _take_batch)
        self._recent: deque[list[Connection]] = deque(maxlen=2)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._ready = False
        self._model_changed = threading.Event()
        self._transport = None
        self._kernels = None  # made by the MPC thread: importing a framework may take long, the listener need not wait
        self._credentials = party_credentials(service, party)
        self._context = server_context(self._credentials)
        self._admitted = self._admission_stamp()
        self._admission_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        #: this formation's offline phase (pool of precomputed material) and slot counts
        self._offline: PartyOffline | None = None
        self._slots = SlotCounter()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        host, port = self.service.listen_address(self.party)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family)
        for target, name in ((self._accept, "accept"), (self._mpc_loop, "mpc"),
                             (lambda: notify_working(self), "working")):  # bridge.serving.progress
            t = threading.Thread(target=target, name=f"serving-{self.party}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        model = f"model {self.deployment.digest[:12]}" if self.deployment else "no model yet (waiting for deploy)"
        self.log(f"{self.party}: serving clients at {host}:{port} as the {self.role}; {model}")

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, frees the port
            except OSError:
                pass
            try:
                self._listener.close()
            except OSError:
                pass
        transport = self._transport
        if transport is not None:
            transport.close()

    def wait(self) -> None:
        while not self._stopping.wait(0.5):
            pass

    @property
    def ready(self) -> bool:
        return self._ready

    # -- the client side --------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                raw, where = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_connection, args=(raw, where), daemon=True).start()

    def _admission_stamp(self) -> tuple:
        folder = self.service.clients_dir
        if not folder.is_dir():
            return ()
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.crt")))

    def _current_context(self) -> ssl.SSLContext:
        """The TLS context, rebuilt when the admitted certificates changed (``admit`` needs no restart)."""
        with self._admission_lock:
            stamp = self._admission_stamp()
            if stamp != self._admitted:
                self._credentials = party_credentials(self.service, self.party)
                self._context = server_context(self._credentials)
                self._admitted = stamp
            return self._context

    def _serve_connection(self, raw: socket.socket, where: tuple) -> None:
        raw.settimeout(HANDSHAKE_TIMEOUT_S)
        context = self._current_context()
        try:
            tls = context.wrap_socket(raw, server_side=True)
            der = tls.getpeercert(binary_form=True)
            name = self._credentials.party_of_certificate(der) if der else None
            if name is None or name in self.service.cluster.names:
                raise ssl.SSLError("a certificate the deployment does not admit")
        except (ssl.SSLError, OSError) as exc:
            self.stats.count("refused_connections")
            self.log(f"{self.party}: refused a connection from {where[0]}:{where[1]} ({exc})")
            raw.close()
            return
        tls.settimeout(None)
        conn = Connection(tls, name, self.service.cluster.max_message_bytes)
        try:
            while not self._stopping.is_set():
                message = conn.read()
                self._handle(conn, message)
        except ConnectionLost:
            pass
        finally:
            conn.close()

    def _reply_error(self, conn: Connection, rid: Any, exc: BaseException | str, kind: str | None = None) -> None:
        kind = kind or type(exc).__name__
        self.stats.count("errors")
        self.stats.count(f"errors:{kind}")  # by kind, for the operator: refused inputs, overflows, lost parties
        try:
            conn.send({"op": "error", "id": rid, "kind": kind, "message": str(exc)})
        except ConnectionLost:
            pass

    def _handle(self, conn: Connection, message: Message) -> None:
        op = message.header.get("op")
        rid = message.header.get("id")
        try:
            if op == "hello":
                conn.send({**self._hello(), "id": rid})
            elif op == "status":
                if conn.peer not in self.service.operators:
                    raise OperatorOnlyError(
                        f"{self.party}: identity {conn.peer!r} may predict but not read the operator counters (they "
                        "show every client's traffic and timing). Use an operator's identity, or list this one in "
                        f"[serving] operators of {self.service.path.name} and restart the parties; health without "
                        "counters: `hello` (ServingClient.hello)")
                conn.send({"op": "status", "id": rid, "party": self.party, "role": self.role,
                           "ready": self._ready, "model": self.deployment.digest if self.deployment else None,
                           "pending": len(self._pending), **self.stats.snapshot(),
                           "pool": self._pool_snapshot()})
            elif op == "predict":
                self._accept_request(conn, message)
            elif op == "deploy":
                self._deploy(conn, message)
            else:
                raise ValueError(f"unknown operation {op!r}; expected hello, status, predict or deploy")
        except (ValueError, ServingError, store.StoreError, wire.WireError) as exc:
            self._reply_error(conn, rid, exc)

    def _pool_snapshot(self) -> dict[str, Any] | None:
        """The offline pool of this formation: its level, capacity and counts (None: not formed)."""
        offline = self._offline
        return offline.pool.snapshot() if offline is not None else None

    def _hello(self) -> dict[str, Any]:
        d = self.deployment
        out: dict[str, Any] = {"op": "hello", "party": self.party, "role": self.role, "ready": self._ready,
                               "model": d.digest if d else None,
                               "max_request_rows": self.service.serving.max_request_rows}
        if d is not None:
            out["numerics"] = d.program.numerics.model_dump(mode="json")
            out["inputs"] = {n: list(s.feature_shape) for n, s in d.program.graph.inputs.items()}
            out["input_dtypes"] = {n: s.dtype for n, s in d.program.graph.inputs.items()}  # int32: token ids
            out["outputs"] = {n: list(s.feature_shape) for n, s in d.program.graph.outputs.items()}
        return out

    def _accept_request(self, conn: Connection, message: Message) -> None:
        rid = message.header.get("id")
        if not isinstance(rid, str) or not 0 < len(rid) <= RID_MAX:
            raise ValueError(f"a request id is a string of 1 to {RID_MAX} characters")
        if self.role == "dealer":
            raise ValueError("the dealer holds no shares of inputs; send predictions to the compute servers")
        d = self.deployment
        if d is None:
            raise ServingError("no model is deployed on this service yet; the model owner runs privacy-bridge deploy")
        inputs = d.program.graph.inputs
        names = message.header.get("inputs")
        if names != list(inputs) or len(message.frames) != len(inputs):
            raise ValueError(f"a request carries one share per model input, in the order {list(inputs)}; "
                             f"received {names!r} with {len(message.frames)} tensors")
        shares, rows = {}, None
        for name, frame in zip(inputs, message.frames, strict=True):
            value = wire.decode_frame(frame)
            expected = inputs[name].feature_shape
            if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != tuple(expected):
                raise ValueError(f"input {name!r} must have shape (batch, {', '.join(map(str, expected))}), "
                                 f"received {tuple(value.shape)}. Reshape the data to match the model's input.")
            if rows is not None and value.shape[0] != rows:
                raise ValueError(f"inputs have different batch sizes: {rows} and {value.shape[0]}")
            rows = int(value.shape[0])
            shares[name] = value
        assert rows is not None
        limit = self.service.serving.max_request_rows
        if not 1 <= rows <= limit:
            raise ValueError(f"a request carries 1 to {limit} rows (max_request_rows); received {rows}. "
                             "Split the batch.")
        request = Request(conn.peer, rid, rows, shares, conn)
        with self._cond:
            if request.key in self._pending:
                raise ValueError(f"request id {rid!r} is already pending for {conn.peer!r}; use a fresh id")
            self._pending[request.key] = request
            self._cond.notify_all()
        self.stats.count("requests")

    def _deploy(self, conn: Connection, message: Message) -> None:
        rid = message.header.get("id")
        if conn.peer != self.service.serving.model_owner:
            raise ServingError(f"only the model owner ({self.service.serving.model_owner!r}) may deploy; "
                               f"{conn.peer!r} may only predict")
        if self.deployment is not None:
            raise ServingError(
                f"a model is already deployed here ({self.deployment.digest[:12]}); it stays until the service "
                f"is stopped and {self.state_dir} removed on every party"
            )
        if not message.frames:
            raise ValueError("a deployment carries the program and, for a compute server, its share")
        program_json = wire.decode_bytes(message.frames[0])
        program = store.parse_program(program_json)
        if program.model_dump_json() != service_program(program, self.service).model_dump_json():
            raise ValueError("the program's placement is not this service's; deploy with privacy-bridge deploy")
        if self.expected is not None and self.expected.graph != program.graph:
            raise ValueError("the deployed model's architecture is not the one this party serves (serve --model); "
                             "deploy that model, or restart this party with the new one")
        share = None
        if self.role != "dealer":
            names = message.header.get("parameters")
            if not isinstance(names, list) or len(names) != len(message.frames) - 1:
                raise ValueError("a compute server's deployment lists its parameters, one tensor each")
            share = store.check_share(program, {str(n): wire.decode_frame(f)
                                                for n, f in zip(names, message.frames[1:], strict=True)})
        deployment = store.Deployment(program, program_json, share)
        store.save(self.state_dir, deployment)
        self.deployment = deployment
        self._model_changed.set()
        self.log(f"{self.party}: model {deployment.digest[:12]} deployed by {conn.peer!r} and stored in "
                 f"{self.state_dir}")
        conn.send({"op": "deployed", "id": rid, "model": deployment.digest})

    # -- the MPC side ----------------------------------------------------------------------------------
    def _mpc_loop(self) -> None:
        """Form the cluster, set up from the stored shares, serve steps until a party fails; again."""
        if self._kernels is None:
            self._kernels = self.backend.make_kernels()
        while not self._stopping.is_set():
            if self.deployment is None:
                self._model_changed.wait(0.5)
                continue
            try:
                transport = self.backend.make_transport(self.service.cluster, self.party)
            except Exception as exc:  # noqa: BLE001 - the others are not up yet: try again
                if not self._stopping.is_set():
                    self.log(f"{self.party}: waiting for the other parties ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})")
                    time.sleep(0.5)
                continue
            self._transport = transport
            program = self.deployment.program
            compute, dealer = self.service.compute, self.service.dealer
            runner = DistributedParty(transport, self._kernels, program.numerics, compute, dealer)
            try:
                t0 = time.perf_counter()
                params = runner.run(self._setup)[self.party]
                self.stats.set("setup_s", time.perf_counter() - t0)
                self._slots = SlotCounter()  # fresh seeds: the slots of this formation start again
                self._offline = party_offline(runner.contexts[self.party], program, params, self.overflow_bound,
                                              self.service.serving)
                self._ready = True
                self.log(f"{self.party}: ready (cluster formed, model {self.deployment.digest[:12]} set up)")
                step = {"leader": self._lead, "follower": self._follow, "dealer": self._deal}[self.role]
                while not self._stopping.is_set():
                    runner.run(lambda ctx: step(ctx, params))  # noqa: B023 - params of this formation
            except Exception as exc:  # noqa: BLE001 - a party failed: tell the waiting clients, form again
                self._ready = False
                if self._stopping.is_set():
                    break
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.stats.count("cluster_failures")
                self.log(f"{self.party}: the cluster failed ({type(exc).__name__}: {reason}); forming it again")
                if not isinstance(exc, (ServingError, PeerError)):
                    traceback.print_exc()
                self._fail_pending(f"the service lost a party while serving: {reason}")
            finally:
                self._ready = False
                self._transport = None
                if self._offline is not None:
                    self._offline.pool.stop()  # made from this formation's seeds: never used again
                    self._offline = None
                try:
                    transport.close()
                except Exception:  # noqa: BLE001, S110 - it failed already
                    pass

    def _fail_pending(self, reason: str) -> None:
        with self._cond:
            requests = list(self._pending.values())
            self._pending.clear()
        for r in requests:
            self._reply_error(r.conn, r.rid, f"{self.party}: {reason}. Retry when the service is back.",
                              kind="ServiceUnavailableError")

    def _setup(self, ctx: PartyContext) -> dict[str, Any]:
        """Seeds from the dealer, this party's stored shares, the weights masked once."""
        assert self.deployment is not None
        ctx.setup_seeds()
        digest = self.deployment.digest.encode()
        with ctx.messenger.label("setup"):
            if ctx.name == self.service.leader:
                for peer in (ctx.compute[1], ctx.dealer):
                    ctx.messenger.send_bytes(peer, digest)
            elif ctx.messenger.recv_bytes(self.service.leader) != digest:
                raise ServingError(f"{self.party} holds model {digest[:12].decode()}, the leader another: deploy "
                                   "the same model to every party")
        k = ctx.kernels
        specs = secure_parameter_specs(self.deployment.program)
        share = self.deployment.share
        params: dict[str, Any] = {}
        for name in sorted(specs):
            value = share[name] if share is not None else np.zeros(specs[name], dtype=np.int64)
            params[name] = Shared(k.from_numpy(value) if ctx.is_compute else k.zeros(specs[name]))
        for name in masked_parameter_names(self.deployment.program):
            params[name] = mask_operand(ctx, params[name])
        return params

    # -- one step, per role ------------------------------------------------------------------------------
    def _take_batch(self) -> list[Request]:
        """The next batch: a request to rerun alone, or those that came within max_delay of
        the first (up to max_batch rows); [] after ``tick_s`` with nothing to do."""
        serving = self.service.serving
        with self._cond:
            deadline = time.monotonic() + self.tick_s
            while True:
                for key, r in list(self._pending.items()):
                    if r.conn.closed:  # its client left: nobody to answer
                        del self._pending[key]
                        self.stats.count("abandoned")
                live = list(self._pending.values())
                retry = next((r for r in live if r.attempts > 0), None)
                if retry is not None:
                    return [retry]
                if live or self._stopping.is_set():
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    return []
            first = live[0]
            until = first.arrived + serving.max_delay_ms / 1000
            # the clients of the last two batches send again just after their answers: waiting for them
            # (at most max_delay) stacks a steady stream into one run instead of alternating halves
            until_back = time.monotonic() + serving.max_delay_ms / 1000
            recent = {id(c): c for batch in self._recent for c in batch if not c.closed}
            while sum(r.rows for r in self._pending.values()) < serving.max_batch and not self._stopping.is_set():
                missing = recent.keys() - {id(r.conn) for r in self._pending.values()}
                if recent and not missing:
                    break
                left = (until_back if missing else until) - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, rows = [], 0
            for r in self._pending.values():
                if r.attempts:
                    continue
                if batch and rows + r.rows > serving.max_batch:
                    break
                batch.append(r)
                rows += r.rows
            self._recent.append([r.conn for r in batch])
            return batch

    def _lead(self, ctx: PartyContext, params: dict[str, Any]) -> None:
        batch = self._take_batch()
        final = len(batch) == 1 and batch[0].attempts + 1 >= MAX_ATTEMPTS
        proposal = {"batch": [[r.client, r.rid, r.rows] for r in batch], "final": final}
        follower = ctx.compute[1]
        with ctx.messenger.label(CONTROL_LABEL):
            ctx.messenger.send_bytes(follower, json.dumps(proposal).encode())
            codes = json.loads(ctx.messenger.recv_bytes(follower)) if batch else []
            chosen = [r for r, c in zip(batch, codes, strict=True) if c == HAVE]
            ctx.messenger.send_bytes(ctx.dealer, json.dumps([r.rows for r in chosen]).encode())
        now = time.monotonic()
        for r, c in zip(batch, codes, strict=True):
            if c == MISMATCH:
                self._drop(r, "the shares sent to the two servers have different shapes; send the same request "
                              "to both (frontends.keras.connect does)")
            elif c == MISSING and now - r.arrived > self.timeout_s:
                self._drop(r, f"server {follower!r} never received its share of this request within "
                              f"{self.timeout_s:g} s; send it again")
        if chosen:
            self._compute(ctx, params, chosen, final)

    def _follow(self, ctx: PartyContext, params: dict[str, Any]) -> None:
        leader = self.service.leader
        with ctx.messenger.label(CONTROL_LABEL):
            proposal = json.loads(ctx.messenger.recv_bytes(leader))
            codes, chosen = [], []
            deadline = time.monotonic() + MISSING_WAIT_S
            with self._cond:
                for client, rid, rows in proposal["batch"]:
                    r = self._pending.get((client, rid))
                    while r is None and time.monotonic() < deadline:
                        self._cond.wait(max(deadline - time.monotonic(), 0.001))
                        r = self._pending.get((client, rid))
                    if r is None:
                        codes.append(MISSING)
                    elif r.rows != rows:
                        codes.append(MISMATCH)
                    else:
                        codes.append(HAVE)
                        chosen.append(r)
                self._expire()
            if proposal["batch"]:
                ctx.messenger.send_bytes(leader, json.dumps(codes).encode())
        for (client, rid, _), c in zip(proposal["batch"], codes, strict=True):
            if c == MISMATCH:
                self._drop(self._pending[(client, rid)], "the shares sent to the two servers have different shapes")
        if chosen:
            self._compute(ctx, params, chosen, bool(proposal["final"]))

    def _expire(self) -> None:
        """Drop requests the leader never proposed (their client gave up long ago)."""
        now = time.monotonic()
        for key, r in list(self._pending.items()):
            if now - r.arrived > 4 * self.timeout_s:
                del self._pending[key]
                self.stats.count("expired")

    def _deal(self, ctx: PartyContext, params: dict[str, Any]) -> None:
        with ctx.messenger.label(CONTROL_LABEL):
            rows = json.loads(ctx.messenger.recv_bytes(self.service.leader))
        if rows:
            self._compute(ctx, params, [int(n) for n in rows], False)

    def _drop(self, r: Request, why: str, kind: str = "ValueError") -> None:
        with self._cond:
            self._pending.pop(r.key, None)
        self._reply_error(r.conn, r.rid, why, kind=kind)

    def _compute(self, ctx: PartyContext, params: dict[str, Any], chosen: list, final: bool) -> None:
        """The secure forward pass on the stacked rows, the range check, and each compute
        server's output shares sent to their clients."""
        assert self.deployment is not None
        program = self.deployment.program
        graph, k = program.graph, ctx.kernels
        t0 = time.perf_counter()
        total = sum(r if isinstance(r, int) else r.rows for r in chosen)
        values: dict[str, Shared] = {}
        for name, spec in graph.inputs.items():
            shape = (total, *spec.feature_shape)
            if ctx.is_compute:
                values[name] = Shared(k.from_numpy(np.concatenate([r.shares[name] for r in chosen], axis=0)))
            else:
                values[name] = Shared(k.zeros(shape))
        assert self._offline is not None
        key = self._slots.next(total)  # every party counts every batch it computes, in the runs' order
        out, outcome = self._offline.run(key, values)
        flags = None
        if out is not None:
            computed, flags = out
            values.update(computed)
        plan = serving_check_plan(program)
        flagged: list[str] = []
        if plan.entries:
            seen = reveal_flags(ctx, flags, (*ctx.compute, ctx.dealer))
            assert seen is not None
            flagged = [layer for layer, f in zip(plan.layers, seen, strict=True) if f]
        online = time.perf_counter() - t0
        self.stats.batch(total, online, flagged=bool(flagged), precomputed=outcome.precomputed)
        if not ctx.is_compute:
            return
        if flagged:
            for r in chosen:
                r.attempts += 1
                if final:
                    self._drop(r, _overflow_message(flagged, r.attempts, self.overflow_bound,
                                                    program.numerics.frac_bits), kind="FixedPointOverflowError")
                else:
                    self.stats.count("reruns")
            return
        at = 0
        for r in chosen:
            frames = [wire.encode_frame(k.to_numpy(values[name].share)[at:at + r.rows]) for name in graph.outputs]
            at += r.rows
            with self._cond:
                self._pending.pop(r.key, None)
            try:
                r.conn.send({"op": "result", "id": r.rid, "outputs": list(graph.outputs)}, frames)
                self.stats.answered(time.monotonic() - r.arrived)
            except ConnectionLost:
                self.stats.count("abandoned")


def _overflow_message(layers: list[str], attempts: int, bound: float, frac_bits: int) -> str:
    later = f" (and after it in {layers[1:]})" if len(layers) > 1 else ""
    return (
        f"fixed-point overflow in layer {layers[0]!r}{later}: some |value| exceeded the bound {bound:g} in "
        f"{attempts} attempts with fresh randomness, so it is not a rare truncation error: this input drives the "
        "model out of the fixed-point range. No output was revealed. Scale the input as the model expects (e.g. "
        f"the training data's normalisation); the service's bound is below 2^{62 - 2 * frac_bits}."
    )
