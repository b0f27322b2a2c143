"""Start parties: one in this process (``run_party``), or all of a cluster file on this host (``launch``).

``privacy-bridge party --cluster cluster.toml --name server0 -- script.py ARGS``
calls ``run_party``: it sets ``PRIVACY_BRIDGE_CLUSTER`` and ``PRIVACY_BRIDGE_PARTY``
and runs the unchanged user script in this process, so the front end prepares the
model as that one party (``bridge.cluster.cluster_from_environment``).

``privacy-bridge launch --cluster cluster.toml -- script.py ARGS`` calls ``launch``:
every party of the file becomes a subprocess of this one (in its own session, so
that it and anything it starts can be stopped together), each output line is
prefixed with the party's name, and the first party to fail stops the run: the
others get ``grace_s`` to exit with their own error (which names the failed party),
then are killed.  Every child is reaped before ``launch`` returns.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bridge.cluster import CLUSTER_ENV, PARTY_ENV, ClusterError, load_cluster

#: exit code of a launch that ran out of time (as ``timeout(1)``)
TIMEOUT_EXIT = 124


def run_party(cluster_path: str | Path, name: str, script_argv: Sequence[str]) -> int:
    """Run ``script_argv`` (``SCRIPT ARGS...`` or ``-m MODULE ARGS...``) here as party ``name``.

    Returns the script's exit status; the party's connections are closed (goodbyes
    sent) when the script ends.
    """
    config = load_cluster(cluster_path)
    config.party(name)
    if not config.insecure:
        from bridge.security.keys import load_credentials

        load_credentials(config, name)  # missing or mismatched keys: a clear error before the script
    argv = list(script_argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        raise ValueError("no script to run: use privacy-bridge party --cluster FILE --name NAME -- SCRIPT [ARGS...]")
    os.environ[CLUSTER_ENV] = str(Path(cluster_path).resolve())
    os.environ[PARTY_ENV] = name
    saved_argv, saved_path = sys.argv, list(sys.path)
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = Path(argv[0])
            if not script.is_file():
                raise ValueError(f"script {argv[0]!r} does not exist")
            sys.argv = argv
            sys.path.insert(0, str(script.resolve().parent))
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc.code)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        from bridge.mpc.distributed import disconnect_all

        disconnect_all()
    return 0


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


@dataclass
class LaunchReport:
    """How each party's process ended."""

    #: party -> exit status (negative: killed by that signal, as subprocess reports it)
    returncodes: dict[str, int] = field(default_factory=dict)
    #: seconds from the start to each party's exit
    exit_times: dict[str, float] = field(default_factory=dict)
    #: the first party to fail, if any
    first_failure: str | None = None
    #: parties the launcher had to kill (they did not exit by themselves in time)
    killed: list[str] = field(default_factory=list)
    timed_out: bool = False

    @property
    def exit_code(self) -> int:
        if self.timed_out:
            return TIMEOUT_EXIT
        if self.first_failure is None:
            return 0
        code = self.returncodes[self.first_failure]
        return 128 - code if code < 0 else code


def launch(
    cluster_path: str | Path,
    script_argv: Sequence[str],
    timeout_s: float = 600.0,
    *,
    grace_s: float = 5.0,
    stream: TextIO | None = None,
) -> int:
    """Run ``script_argv`` as every party of the cluster, on this host; returns the exit code
    (0, the first failed party's status, or 124 when ``timeout_s`` ran out)."""
    return launch_parties(cluster_path, script_argv, timeout_s, grace_s=grace_s, stream=stream).exit_code


def launch_parties(
    cluster_path: str | Path,
    script_argv: Sequence[str],
    timeout_s: float = 600.0,
    *,
    grace_s: float = 5.0,
    stream: TextIO | None = None,
    env: dict[str, str] | None = None,
) -> LaunchReport:
    """``launch``, returning how each party ended."""
    config = load_cluster(cluster_path)
    remote = [f"{p.name!r} at {p.address}" for p in config.parties if not _is_local(p.host)]
    if remote:
        raise ClusterError(
            f"launch starts every party on this host, but {', '.join(remote)} "
            f"{'is' if len(remote) == 1 else 'are'} elsewhere. Start those with privacy-bridge party "
            "--name ... on their hosts, or use loopback addresses (127.0.0.1) to run all here."
        )
    argv = list(script_argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise ValueError("no script to run: use privacy-bridge launch --cluster FILE -- SCRIPT [ARGS...]")
    out = stream or sys.stdout
    if not config.insecure:
        from bridge.security.keys import load_credentials, make_missing_keys

        made = make_missing_keys(config)  # every party runs here: a fresh checkout gets its keys
        if made:
            out.write(f"[launch] made keys for {', '.join(made)} in {config.keys}\n")
        for party in config.names:
            load_credentials(config, party)
    lock = threading.Lock()
    child_env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    # a party that crashes in native code (SIGSEGV) prints every thread's stack into the output
    child_env.setdefault("PYTHONFAULTHANDLER", "1")
    path = str(Path(cluster_path).resolve())
    start = time.monotonic()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    readers: list[threading.Thread] = []
    report = LaunchReport()

    def say(line: str) -> None:
        with lock:
            out.write(line if line.endswith("\n") else line + "\n")
            out.flush()

    def pump(name: str, pipe: TextIO) -> None:
        for raw in pipe:
            say(f"[{name}] {raw}")

    try:
        for party in config.names:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.launch", "--cluster", path, "--name", party, "--", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=child_env,
                start_new_session=True,
                text=True,
                errors="replace",
            )
            procs[party] = proc
            reader = threading.Thread(target=pump, args=(party, proc.stdout), daemon=True)
            reader.start()
            readers.append(reader)
        stop_at: float | None = None
        while len(report.returncodes) < len(procs):
            now = time.monotonic()
            for party, proc in procs.items():
                if party not in report.returncodes and proc.poll() is not None:
                    report.returncodes[party] = proc.returncode
                    report.exit_times[party] = now - start
                    if proc.returncode != 0 and report.first_failure is None:
                        report.first_failure = party
                        stop_at = now + grace_s
                        say(f"[launch] party {party!r} exited with status {proc.returncode}; "
                            f"the others have {grace_s:g} s to stop")
            if len(report.returncodes) == len(procs):
                break
            if now - start > timeout_s and not report.timed_out:
                report.timed_out = True
                say(f"[launch] the run took longer than {timeout_s:g} s; stopping every party")
                stop_at = now
            if stop_at is not None and now >= stop_at:
                for party, proc in procs.items():
                    if party not in report.returncodes:
                        report.killed.append(party)
                        _stop(proc)
                stop_at = None
            time.sleep(0.05)
    finally:
        for party, proc in procs.items():
            if proc.poll() is None:
                if party not in report.killed:
                    report.killed.append(party)
                _stop(proc)
            report.returncodes.setdefault(party, proc.wait())
            report.exit_times.setdefault(party, time.monotonic() - start)
        for reader in readers:
            reader.join(2.0)
    if report.killed:
        say(f"[launch] killed {report.killed}")
    return report


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the party's whole session (it and what it started), then kill it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _is_local(host: str) -> bool:
    """Whether ``host`` is an address of this machine (loopback, or one we can bind)."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        if host == "localhost":
            return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.launch --cluster FILE --name NAME -- SCRIPT [ARGS...]`` (what ``launch`` starts)."""
    parser = argparse.ArgumentParser(prog="python -m bridge.launch", description="Run one party of a cluster.")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("script", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        return run_party(args.cluster, args.name, args.script)
    except ClusterError as exc:
        print(f"party {args.name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
