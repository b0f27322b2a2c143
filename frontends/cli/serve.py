"""``privacy-bridge serve | deploy | predict | status | loadtest | admit``: encrypted
serving as a long-running service (``bridge.serving``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import numpy as np


def _backend(name: str | None):
    from bridge.ir import PrivacyMode
    from bridge.mpc.backend import SecureBackend
    from bridge.registry import configured_backend

    backend, _ = configured_backend(name, PrivacyMode.ENCRYPTED_SERVING)
    if not isinstance(backend, SecureBackend):
        raise ValueError(f"backend {backend.name!r} cannot serve encrypted; pick torch-spdz or tf-pond")
    return backend


def _identity(args: argparse.Namespace, service) -> str:
    return args.identity or os.environ.get("PRIVACY_BRIDGE_IDENTITY") or service.serving.model_owner


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.serving.config import load_service
    from bridge.serving.node import ServingNode

    service = load_service(args.cluster)
    backend = _backend(args.backend)
    expected = None
    if args.model:
        from frontends.cli import _program_for

        expected, _ = _program_for(args.model)
    node = ServingNode(service, args.name, backend, log=lambda m: print(m, flush=True), expected_program=expected)
    node.start()
    done = threading.Event()

    def stop(*_: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not done.wait(0.5):
        pass
    print(f"{args.name}: stopping", flush=True)
    node.stop()
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from bridge.serving.client import deploy
    from bridge.serving.config import load_service
    from frontends.cli import _program_for

    service = load_service(args.cluster)
    program, weights = _program_for(args.model)
    digest = deploy(service, program, weights, _identity(args, service))
    print(f"deployed model {digest[:12]}: each compute server stored its share of the weights, the dealer the "
          f"program; they serve from now on, also after a restart")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from frontends.keras.client import connect

    x = np.load(args.input, allow_pickle=False)
    with connect(args.cluster, identity=args.identity) as client:
        y = client.predict(x)
    if isinstance(y, dict):
        np.savez(args.output, **y)
    else:
        np.save(args.output, y)
    print(f"wrote {args.output}: {np.shape(y) if not isinstance(y, dict) else list(y)}")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def cmd_status(args: argparse.Namespace) -> int:
    from bridge.serving.channel import OperatorOnlyError
    from bridge.serving.client import ServingClient
    from bridge.serving.config import load_service

    service = load_service(args.cluster)
    parties = args.party or list(service.serving.listen)
    healthy = True
    rows = []
    for party in parties:
        try:
            with ServingClient(service, _identity(args, service), parties=(party,), timeout_s=args.timeout) as c:
                s = c.status(party)
        except OperatorOnlyError:
            raise  # not a party down: this identity may not read the counters (the error says who may)
        except Exception as exc:  # noqa: BLE001 - one party down is a status line, not a crash
            healthy = False
            rows.append({"party": party, "ready": False, "error": str(exc).splitlines()[0]})
            continue
        healthy &= bool(s.get("ready"))
        rows.append(s)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if healthy else 1
    for s in rows:
        if "error" in s:
            print(f"{s['party']:10s} DOWN  {s['error']}")
            continue
        c, lat, onl = s["counts"], s["latency_s"], s["online_s"]
        print(f"{s['party']:10s} {'ready' if s['ready'] else 'NOT READY'}  role={s['role']}  "
              f"model={(s['model'] or '-')[:12]}  up={s['uptime_s']:.0f}s  pending={s['pending']}")
        kinds = ", ".join(f"{k.split(':', 1)[1]} {n}" for k, n in sorted(c.items()) if k.startswith("errors:"))
        print(f"{'':10s} requests={c.get('requests', 0)} answered={c.get('answered', 0)} errors={c.get('errors', 0)}"
              f"{f' ({kinds})' if kinds else ''} "
              f"reruns={c.get('reruns', 0)} batches={c.get('batches', 0)} mean_batch_rows="
              f"{s['mean_batch_rows'] or 0:.2f} cluster_failures={c.get('cluster_failures', 0)} "
              f"refused_connections={c.get('refused_connections', 0)}")
        print(f"{'':10s} latency ms p50={_ms(lat['p50'])} p95={_ms(lat['p95'])} p99={_ms(lat['p99'])}; "
              f"online ms p50={_ms(onl['p50'])} p95={_ms(onl['p95'])} p99={_ms(onl['p99'])}; "
              f"online precomputed ms p50={_ms(s['online_precomputed_s']['p50'])}, "
              f"inline ms p50={_ms(s['online_inline_s']['p50'])}")
        pool = s.get("pool")
        if pool is None:
            print(f"{'':10s} offline pool: not formed yet")
        else:
            level = ", ".join(f"batch {b}: {n}" for b, n in pool["by_batch"].items()) or "empty"
            print(f"{'':10s} offline pool: {pool['ready']}/{pool['capacity']} queries made ahead ({level}); "
                  f"precomputed={pool['precomputed'] + pool['waited']} inline={pool['inline']} made={pool['made']} "
                  f"offline {pool['offline_s']:.3f} s{'; error: ' + pool['error'] if pool['error'] else ''}")
    return 0 if healthy else 1


def cmd_loadtest(args: argparse.Namespace) -> int:
    from bridge.serving.loadtest import run_loadtest

    r = run_loadtest(args.cluster, args.identity or os.environ.get("PRIVACY_BRIDGE_IDENTITY") or "", args.clients, args.requests, args.batch)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['clients']} clients, {r['requests']} requests of batch {r['batch']}: {r['answered']} answered, "
              f"{r['errors']} errors in {r['wall_s']:.2f} s")
        print(f"throughput {r['requests_per_s']:.2f} requests/s ({r['rows_per_s']:.2f} rows/s); latency ms "
              f"p50={_ms(r['p50_s'])} p95={_ms(r['p95_s'])} p99={_ms(r['p99_s'])}")
        if r["errors"]:
            print(f"first error: {r['first_error']}")
    return 0 if r["errors"] == 0 else 1


def cmd_admit(args: argparse.Namespace) -> int:
    from bridge.security.keys import keygen
    from bridge.serving.config import load_service

    service = load_service(args.cluster)
    if args.name in service.cluster.names:
        raise ValueError(f"{args.name!r} is a party of the cluster; a client needs a name of its own")
    keygen([args.name], service.clients_dir, force=args.force)
    print(f"admitted {args.name!r}: wrote {service.clients_dir / (args.name + '.key')} (mode 0600; give it to that "
          f"client only, then remove it here) and {args.name}.crt (stays: it is the admission)")
    return 0


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    def cluster(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cluster", required=True, metavar="FILE", help="the cluster file with a [serving] table")

    def identity(p: argparse.ArgumentParser) -> None:
        p.add_argument("--identity", default=None,
                       help="a name admitted by the deployment (its key in the clients directory) or the path of "
                            "a .key with its .crt beside it (default: $PRIVACY_BRIDGE_IDENTITY, else the model owner)")

    p = sub.add_parser("serve", help="run one party (compute server or dealer) of an encrypted serving service")
    cluster(p)
    p.add_argument("--name", required=True, help="which party of the file this process is")
    p.add_argument("--backend", default=None, help="torch-spdz or tf-pond (default: configuration)")
    p.add_argument("--model", default=None,
                   help="a .keras file or export directory: the architecture this party agrees to serve (a "
                        "deployment of another is refused); the weights always come from deploy, shared")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("deploy", help="secret-share a model's weights to a running service, once")
    cluster(p)
    identity(p)
    p.add_argument("model", help="a .keras file, or a directory written by 'export'")
    p.set_defaults(fn=cmd_deploy)

    p = sub.add_parser("predict", help="predict with a served model: only this client sees the outputs")
    cluster(p)
    identity(p)
    p.add_argument("--input", required=True, help="a .npy file (batch, features...)")
    p.add_argument("--output", required=True, help="where to write the predictions (.npy)")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("status", help="health and counters of each party of a service")
    cluster(p)
    identity(p)
    p.add_argument("--party", action="append", help="only this party (repeatable)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each party")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("loadtest", help="many clients at once against a service: throughput and latency")
    cluster(p)
    identity(p)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200, help="requests in all, spread over the clients")
    p.add_argument("--batch", type=int, default=1, help="rows per request")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_loadtest)

    p = sub.add_parser("admit", help="make a client identity (key + certificate) that the service admits")
    cluster(p)
    p.add_argument("--name", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing identity of that name")
    p.set_defaults(fn=cmd_admit)

