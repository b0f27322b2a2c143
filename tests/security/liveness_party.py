"""One party of the liveness tests: a counter passed around a ring over a process transport.

    liveness_party.py ENGINE CLUSTER_TOML PARTY ROUNDS

It imports first, prints ``imported`` and waits for a line on stdin, so that the
parties open their transports together whatever their import times (the tests use
timeouts of a few seconds).  Then the cluster's first party starts each round (a tenth of a second
apart) with ``100 * round``, every other party adds one and passes it on, and the first party
checks what comes back.  It prints ``round R`` after each round, ``OK <total>`` at the
end (the first party's total of what came back), or ``ERROR <kind>: <message>`` and
exits 1 after telling the peers, as ``DistributedParty.run`` does, printing ``closed <n>``
once its transport is closed (n: its receiving threads still alive then).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ENGINE, CLUSTER, PARTY, ROUNDS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if ENGINE == "gloo":
    import torch  # noqa: F401 - before anything else, as everywhere in this project

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bridge.cluster import load_cluster  # noqa: E402
from bridge.mpc.distributed import abort_notice  # noqa: E402

if ENGINE == "gloo":
    from backends.torch_spdz.transport import GlooTransport as Transport
else:
    from backends.tf_pond.transport import GrpcTransport as Transport


def _receivers_alive(transport: object) -> int:
    """How many of the transport's receiving threads outlived ``close()`` (gloo's; gRPC's
    receives are served by its own server threads)."""
    return sum(t.is_alive() for t in getattr(transport, "_threads", ()))


def main() -> int:
    print("imported", flush=True)
    sys.stdin.readline()
    config = load_cluster(CLUSTER)
    names = list(config.names)
    me = names.index(PARTY)
    after, before = names[(me + 1) % len(names)], names[me - 1]
    transport = Transport(config, PARTY)
    total = 0
    try:
        for r in range(ROUNDS):
            if me == 0:
                time.sleep(0.1)  # rounds a tenth of a second apart, so a test can pause a party mid-run
                transport.send(after, str(100 * r).encode())
                back = int(transport.recv(before))
                if back != 100 * r + len(names) - 1:
                    raise AssertionError(f"round {r}: {back} came back, expected {100 * r + len(names) - 1}")
                total += back
            else:
                transport.send(after, str(int(transport.recv(before)) + 1).encode())
            print(f"round {r}", flush=True)
        print(f"OK {total}", flush=True)
    except Exception as exc:  # noqa: BLE001 - reported to the test on stdout
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        transport.abort(abort_notice(exc))
        transport.close()
        print(f"closed {_receivers_alive(transport)}", flush=True)
        return 1
    transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
