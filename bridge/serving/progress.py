"""Working notices: a compute server tells each client whose request it holds that it is
working on it, so that a client's ``timeout_s`` measures the service's silence, not how
long a legitimate forward pass takes.

Every ``tick_s`` a compute server whose MPC transport is healthy (its heartbeats run, it
has not failed, and every peer is heard: ``PeerTransport.healthy``) sends ``{"op":
"working", "id": rid}`` on the connection of each request it holds.  The client
(``bridge.serving.client``) keeps waiting past ``timeout_s`` only while every server it
waits for sends them; a stalled server sends none (nor does one that finds a peer
stalled), so a client is still told within ``timeout_s`` of the silence.  A notice
carries nothing but the request's id, which the client chose.
"""

from __future__ import annotations

from typing import Any, Protocol

from bridge.serving.channel import ConnectionLost


class _Node(Protocol):
    role: str
    tick_s: float
    _transport: Any
    _pending: Any
    _cond: Any
    _stopping: Any


def notify_working(node: _Node) -> None:
    """The loop of a compute server's notice thread (until the node stops)."""
    if node.role == "dealer":
        return  # the dealer holds no requests
    while not node._stopping.wait(node.tick_s):
        healthy = getattr(node._transport, "healthy", None)
        if healthy is None or not healthy():
            continue  # not formed, failed, or a peer is silent: say nothing, the client's timeout runs
        with node._cond:
            held = [(r.conn, r.rid) for r in node._pending.values()]
        for conn, rid in held:
            try:
                conn.send({"op": "working", "id": rid})
            except (ConnectionLost, OSError):
                continue  # its client left; its answer will be dropped
