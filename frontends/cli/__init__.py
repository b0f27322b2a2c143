"""The ``privacy-bridge`` command line.

It lives beside the front ends, not in ``bridge``: it reads Keras models and
starts backends, and ``bridge`` imports neither.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _cmd_backends(args: argparse.Namespace) -> int:
    from bridge.registry import available_backends, get_backend

    for name in available_backends():
        try:
            caps = get_backend(name).capabilities()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            print(f"{name:12s} (failed to load: {exc})")
            continue
        modes = ", ".join(sorted(m.value for m in caps.privacy_modes))
        print(f"{name:12s} modes: {modes}")
        print(f"{'':12s} ops:   {', '.join(sorted(caps.ops))}")
        if caps.description:
            print(f"{'':12s} {caps.description}")
    return 0


def _load_keras(path: str):
    import keras

    return keras.models.load_model(path, compile=False)


def _program_for(path: str):
    """A Program from a .keras file, or from a directory written by ``export``."""
    from bridge.ir import load_program

    if os.path.isdir(path):
        return load_program(path)
    from frontends.keras.importer import to_ir

    return to_ir(_load_keras(path))


def _cmd_inspect(args: argparse.Namespace) -> int:
    from frontends.cli.inspect import summary

    program, weights = _program_for(args.model)
    print(summary(program, weights))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from bridge.ir import save_program

    program, weights = _program_for(args.model)
    out = save_program(args.out, program, weights)
    from frontends.cli.inspect import counts

    print(f"wrote {out / 'program.json'} and {out / 'weights.npz'} "
          f"({counts(program)} as in inspect; {sum(w.size for w in weights.values())} parameters)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from frontends.cli.bench import run_bench

    run_bench(args.backend or None, args.workload or None, quick=args.quick, as_json=args.json,
              kernels=args.kernels, recalibrate=args.recalibrate, zoo=args.zoo, models=args.model)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from frontends.cli.demo import run_demo

    return run_demo(backend=args.backend, all_backends=args.all_backends, quick=args.quick, plot=args.plot)


def _cmd_party(args: argparse.Namespace) -> int:
    from bridge.launch import run_party

    return run_party(args.cluster, args.name, args.script)


def _cmd_launch(args: argparse.Namespace) -> int:
    from bridge.launch import launch

    return launch(args.cluster, args.script, timeout_s=args.timeout, grace_s=args.grace)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bridge.cluster import load_cluster
    from bridge.security.keys import default_keys_dir, keygen, pin_keys_dir

    config = load_cluster(args.cluster)
    out = Path(args.out).resolve() if args.out else default_keys_dir(args.cluster, config)
    names = args.party or list(config.names)
    unknown = [n for n in names if n not in config.names]
    if unknown:
        raise ValueError(f"--party {unknown} not in the cluster; it has parties {list(config.names)}")
    keygen(names, out, force=args.force)
    print(f"wrote a private key (<party>.key, mode 0600) and a certificate (<party>.crt) for "
          f"{', '.join(names)} in {out}")
    if config.keys is None:
        value = pin_keys_dir(args.cluster, out)
        print(f"added keys = {value!r} to {args.cluster}: it now pins these certificates")
    elif Path(config.keys).resolve() != out:
        print(f"note: {args.cluster} pins the certificates in {config.keys}, not {out}; "
              "edit its keys line or copy them there")
    print("Give every host all the .crt files and each party only its own .key.")
    if config.insecure:
        print(f"note: {args.cluster} still says insecure = true (cleartext); remove that line to use the keys")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privacy-bridge", description="Run Keras models privately.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("backends", help="installed backends and what each supports").set_defaults(fn=_cmd_backends)

    p = sub.add_parser("inspect", help="print a model's IR as a table")
    p.add_argument("model", help="a .keras file, or a directory written by 'export'")
    p.set_defaults(fn=_cmd_inspect)

    p = sub.add_parser("export", help="write a model's IR (program.json + weights.npz)")
    p.add_argument("model")
    p.add_argument("out")
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("bench", help="measure the benchmark workloads on each backend")
    p.add_argument("--backend", action="append", help="backend to measure (repeatable; default: all MPC)")
    p.add_argument("--workload", action="append", help="workload to run (repeatable; default: all)")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per row on stdout (the text tables go to stderr)")
    p.add_argument("--kernels", action="store_true",
                   help="the exact matmul paths each backend timed on this host, and the one it chose")
    p.add_argument("--recalibrate", action="store_true", help="with --kernels: forget the cached choices first")
    p.add_argument("--zoo", action="store_true",
                   help="keras.applications models at 224x224 served encrypted (bridge.bench.zoo): time, MB, peak RSS")
    p.add_argument("--model", action="append", help="with --zoo: model to run (repeatable; default: resnet50, mobilenetv2)")
    p.set_defaults(fn=_cmd_bench)

    p = sub.add_parser("demo", help="load_digits in plaintext and every privacy mode, one table")
    p.add_argument("--backend", default=None, help="backend (default: configuration, then torch-spdz)")
    p.add_argument("--all-backends", action="store_true", help="run on every MPC backend")
    p.add_argument("--quick", action="store_true", help="a reduced run (for tests)")
    p.add_argument("--plot", default="privacy_bridge_demo.png", help="learning-curve PNG path")
    p.set_defaults(fn=_cmd_demo)

    p = sub.add_parser("party", help="run one party of a cluster file")
    p.add_argument("--cluster", required=True, metavar="FILE",
                   help="the cluster file (TOML): every party's name, roles and address")
    p.add_argument("--name", required=True, help="which party of the file this process is")
    p.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    p.set_defaults(fn=_cmd_party)

    p = sub.add_parser("keygen", help="make a cluster's keys: a key pair and certificate per party")
    p.add_argument("--cluster", required=True, help="the cluster file; gains keys = DIR if it has none")
    p.add_argument("--out", default=None, help="directory for the keys (default: the file's keys, else keys/ beside it)")
    p.add_argument("--party", action="append", help="only this party (repeatable; default: every party)")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(fn=_cmd_keygen)

    p = sub.add_parser("launch", help="start every party of a cluster file on this host")
    p.add_argument("--cluster", required=True, metavar="FILE",
                   help="the cluster file (TOML): every party's name, roles and loopback address")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="stop every party if the run takes longer (default 600); launch then exits 124")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds the other parties may run on after the first one fails (default 5); raise it "
                        "for federated runs, which finish without a dead client")
    p.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    p.set_defaults(fn=_cmd_launch)

    from frontends.cli.serve import add_serving_commands

    add_serving_commands(sub)  # serve, deploy, predict, status, loadtest, admit
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "script") and args.script and args.script[0] == "--":
        args.script = args.script[1:]
    try:
        return int(args.fn(args) or 0)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"privacy-bridge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
