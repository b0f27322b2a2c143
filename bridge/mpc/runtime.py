"""Run every party of a protocol in one process: one thread per party, isolated state.

Each party has its own ``PartyContext`` (its shares, its seeds, its messenger) and
talks to the others only through the in-memory network.  If one party raises,
the network is aborted so that the others stop waiting, and the first real error
is re-raised in the caller with the party's name.  The others learn only which
party failed and the error's kind, as over a process transport: its message may
quote that party's private values, so only the failing party's own error (which
the caller, who runs every party here, receives) carries it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from bridge.ir import Numerics
from bridge.mpc.comm import CommStats, InMemoryNetwork, Messenger, PeerError, Transport
from bridge.mpc.kernels import RingKernels
from bridge.mpc.party import PartyContext

R = TypeVar("R")


class PartyFailure(RuntimeError):
    """A party raised during a protocol run."""

    def __init__(self, party: str, error: BaseException) -> None:
        super().__init__(f"party {party!r} failed: {type(error).__name__}: {error}")
        self.party = party
        self.error = error


def make_contexts(
    transports: Mapping[str, Transport],
    kernels: RingKernels,
    numerics: Numerics,
    compute: tuple[str, str],
    dealer: str,
    stats: CommStats,
) -> dict[str, PartyContext]:
    return {
        name: PartyContext(name, kernels, numerics, Messenger(t, stats), compute, dealer)
        for name, t in transports.items()
    }


class PartyRunner(Protocol):
    """Runs an SPMD function in the parties hosted here: all of them (embedded) or one (distributed).

    ``run`` returns the results of the local parties only; ``stats`` counts the
    traffic of the local parties.
    """

    contexts: dict[str, PartyContext]
    stats: CommStats

    def run(self, fn: Callable[[PartyContext], R], parties: tuple[str, ...] | None = None) -> dict[str, R]: ...


class ThreadedParties:
    """All parties in threads over one in-memory network, reusable across runs."""

    def __init__(
        self,
        parties: tuple[str, ...],
        kernels: RingKernels,
        numerics: Numerics,
        compute: tuple[str, str],
        dealer: str,
        timeout_s: float = 30.0,
    ) -> None:
        self.network = InMemoryNetwork(parties, timeout_s)
        self.stats = CommStats()
        self.contexts = make_contexts(
            {p: self.network.transport(p) for p in parties}, kernels, numerics, compute, dealer, self.stats
        )

    def run(self, fn: Callable[[PartyContext], R], parties: tuple[str, ...] | None = None) -> dict[str, R]:
        """Run ``fn(ctx)`` in every party at once; returns each party's result."""
        names = parties or tuple(self.contexts)
        results: dict[str, R] = {}
        errors: dict[str, BaseException] = {}
        self.network.reset()
        for ctx in self.contexts.values():
            ctx.begin_run()

        def body(name: str) -> None:
            self.network.bind(name)  # its liveness: a party whose thread runs and does not wait is working
            try:
                results[name] = fn(self.contexts[name])
            except BaseException as exc:  # noqa: BLE001 - re-raised below with the party's name
                errors[name] = exc
                # the kind, never the message: the other parties must not read this party's values
                self.network.abort(f"party {name!r} failed: {type(exc).__name__} (the error's message "
                                   f"stays with party {name!r})")

        threads = [threading.Thread(target=body, args=(n,), name=f"party-{n}", daemon=True) for n in names]
        busy = sum(1 for n in names if self.contexts[n].in_protocol)
        with next(iter(self.contexts.values())).kernels.parallel_parties(busy):  # no oversubscribed cores
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            root = {n: e for n, e in errors.items() if not isinstance(e, PeerError)} or errors
            party, error = next(iter(root.items()))
            if isinstance(error, (ValueError, TypeError, KeyError)) and not isinstance(error, PeerError):
                raise error
            raise PartyFailure(party, error) from error
        return results
