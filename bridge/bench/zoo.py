"""Zoo rows: real Keras architectures (keras.applications, ``weights=None``) served encrypted.

Each row is one model on one backend, embedded (every party in threads of one process),
measured in a fresh child process so that its peak resident set (``ru_maxrss``) is that
row's alone: Keras, the framework, the model, the shared weights and the run.  A row
gives the wall time of the setup (sharing the weights) and of a query after a warm-up
query (the warm-up pays the kernel choice of new shapes), the process's CPU seconds in that
query (user + system, all threads: what a loaded host does not stretch), each compute party's bytes and
rounds (the client's input sharing excluded, as in the inference rows), the dealer's
bytes, the peak RSS, the RSS before anything was shared, the load average of the host,
and how far the output is from ``model.predict`` (max abs error, argmax agreement).

The models are Keras models, so this imports the Keras front end lazily, as
``bridge.bench.federated`` does; nothing here is imported by the protocol code.

Run: ``privacy-bridge bench --zoo [--model resnet50] [--backend torch-spdz]`` or
``python -m bridge.bench.zoo --model resnet50 --backend torch-spdz`` (one row per line,
JSON).  Figures are printed and kept in the README, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: model name -> (keras.applications constructor, input shape, constructor options)
ZOO_MODELS: dict[str, tuple[str, tuple[int, ...], dict[str, Any]]] = {
    "resnet50": ("ResNet50", (224, 224, 3), {}),
    "mobilenetv2": ("MobileNetV2", (224, 224, 3), {}),
    # a small stand-in with the same code path, for a test and a quick look
    "mobilenetv2_32": ("MobileNetV2", (32, 32, 3), {"alpha": 0.35, "classes": 10}),
    # keras.io's text CNN from token ids, vocabulary 20,000, 200 tokens (bridge.bench.text_models)
    "text_cnn": ("text", (200,), {}),
}
#: the default rows: the issue's two 224x224x3 models
DEFAULT_MODELS = ("resnet50", "mobilenetv2")
#: the client's traffic (sharing its input) is left out, as in ``bridge.bench.inference``
EXCLUDE = ("share:",)


def build_model(name: str, size: int | None = None) -> Any:
    """The Keras model ``name`` of ``ZOO_MODELS``, seeded (weights=None: He/Glorot init);
    ``size`` replaces the input's height and width (for a profile at a smaller scale)."""
    if name not in ZOO_MODELS:
        raise ValueError(f"unknown zoo model {name!r}; choose from {sorted(ZOO_MODELS)}")
    import keras

    constructor, shape, options = ZOO_MODELS[name]
    if constructor == "text":
        from bridge.bench.text_models import build_text_model

        return build_text_model(name)
    if size is not None:
        shape = (size, size, shape[2])
    keras.utils.set_random_seed(0)
    return getattr(keras.applications, constructor)(weights=None, input_shape=shape, **options)


def model_input(model: Any, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A batch of images in [0, 1): what an application sees after its preprocessing."""
    if ZOO_MODELS.get(model.name, ("",))[0] == "text":
        from bridge.bench.text_models import text_input

        return text_input(model.name, batch, seed)
    shape = tuple(model.input_shape[1:])
    return np.random.default_rng(seed).uniform(0.0, 1.0, (batch, *shape)).astype(np.float32)


def _rss_mb() -> float:
    """This process's resident set now, from /proc (Linux); 0 where there is none."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _cpu_s() -> float:
    """This process's CPU seconds (user + system, every thread): on a shared host, the figure
    that other processes' load does not stretch."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """The high-water mark of this process's resident set (``ru_maxrss``: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Sampler:
    """Where the party threads spend a query, by sampling their stacks (``sys._current_frames``)
    every ``interval_s`` (only those of ``parties``, the compute parties): per op kind and per node of ``secure_forward``, else per protocol
    file (the range check, the output reveal), and per innermost function of this repository
    (which kernel or protocol step).  A sample is one thread seen once; waiting for a peer
    counts where the wait happens."""

    def __init__(self, parties: tuple[str, ...], interval_s: float = 0.02) -> None:
        import threading

        self.threads = {f"party-{p}" for p in parties}
        self.interval_s = interval_s
        self.by_kind: dict[str, int] = {}
        self.by_node: dict[str, int] = {}
        self.by_leaf: dict[str, int] = {}
        self.samples = 0
        #: (seconds since start, RSS in MB, where the first watched thread was), about once a second
        self.trace: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zoo-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import threading

        start, last = time.perf_counter(), -1.0
        while not self._stop.wait(self.interval_s):
            watched = {t.ident for t in threading.enumerate() if t.name in self.threads}
            where = []
            for ident, frame in sys._current_frames().items():
                if ident in watched:
                    where.append(self._record(frame))
            now = time.perf_counter() - start
            if now - last >= 1.0 and where:
                self.trace.append((round(now, 1), round(_rss_mb()), where[0]))
                last = now

    def _record(self, frame: Any) -> str:
        leaf = kind = None
        node = None
        f = frame
        while f is not None:
            path = f.f_code.co_filename
            here = "/bridge/" in path or "/backends/" in path
            if here and leaf is None:
                leaf = f"{os.path.basename(path)}:{f.f_code.co_name}"
            if f.f_code.co_name == "secure_forward" and "node" in f.f_locals:
                node = f.f_locals["node"]
                kind = node.op.kind
            elif kind is None and here and os.path.basename(path) in ("range_check.py",):
                kind = "(range check)"
            f = f.f_back
        if leaf is None:
            return "(outside)"
        self.samples += 1
        kind = kind or "(other)"
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if node is not None:
            self.by_node[node.name] = self.by_node.get(node.name, 0) + 1
        self.by_leaf[leaf] = self.by_leaf.get(leaf, 0) + 1
        return node.name if node is not None else f"{kind} {leaf}"

    def report(self, top: int = 12) -> dict[str, Any]:
        """Shares of the samples (percent), the largest first."""

        def share(counts: dict[str, int]) -> dict[str, float]:
            ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
            return {k: round(100.0 * v / max(self.samples, 1), 1) for k, v in ranked}

        return {"samples": self.samples, "by_kind": share(self.by_kind), "by_node": share(self.by_node),
                "by_leaf": share(self.by_leaf), "rss_trace": self.trace}


def measure(name: str, backend_name: str, batch: int = 1, repeats: int = 1, timeout_s: float = 900.0,
            profile: bool = False, size: int | None = None) -> dict[str, Any]:
    """One row, in this process: build, import, share the weights, warm up, time ``repeats``
    queries (sampled by ``Sampler`` when ``profile``, its report under "profile")."""
    import torch  # noqa: F401  (torch before TensorFlow where both load in one process)

    from bridge.ir import PrivacyMode
    from bridge.registry import get_backend
    from frontends.keras import to_ir

    model = build_model(name, size)
    program, weights = to_ir(model)
    program = program.model_copy(update={"privacy": PrivacyMode.ENCRYPTED_SERVING})
    x = model_input(model, batch)
    expected = model.predict(x, verbose=0)
    inputs = {next(iter(program.graph.inputs)): x}
    rss_before = _rss_mb()
    load_start = os.getloadavg()[0]

    start = time.perf_counter()
    executable = get_backend(backend_name).prepare(program, weights, timeout_s=timeout_s)
    setup_s = time.perf_counter() - start
    times, result = [], None
    sampler = Sampler(tuple(program.placement.compute_parties))

    cpu: list[float] = []

    def timed() -> Any:
        start, used = time.perf_counter(), _cpu_s()
        done = executable.run(inputs)
        times.append(time.perf_counter() - start)
        cpu.append(_cpu_s() - used)
        return done

    with sampler if profile and repeats <= 0 else contextlib.nullcontext():  # the warm-up, sampled when alone
        result = timed()
    with sampler if profile and repeats > 0 else contextlib.nullcontext():
        for _ in range(max(repeats, 0)):
            result = timed()
    executable.close()
    assert result is not None
    first_s, first_cpu = times[0], cpu[0]
    times, cpu = times[1:] or times, cpu[1:] or cpu
    (got,) = result.outputs.values()
    stats = result.stats
    compute = program.placement.compute_parties
    dealer = program.placement.dealer
    return {
        "model": name,
        "backend": backend_name,
        "input": "x".join(str(d) for d in x.shape),
        "params": int(model.count_params()),
        "nodes": len(program.graph.nodes),
        "setup_s": setup_s,
        "first_s": first_s,
        "wall_s": float(min(times)),
        "cpu_s": float(cpu[int(np.argmin(times))]),
        "first_cpu_s": first_cpu,
        "bytes_per_party": max(stats.total_bytes(p, EXCLUDE) for p in compute),
        "rounds": max(stats.total_rounds(p, EXCLUDE) for p in compute),
        "dealer_bytes": stats.total_bytes(dealer) if dealer else 0,
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "max_abs_error": float(np.abs(got - expected).max()),
        "argmax_agrees": bool((got.argmax(-1) == expected.argmax(-1)).all()),
        "reruns": result.reruns,
        "load_avg": f"{load_start:.1f}-{os.getloadavg()[0]:.1f}",
        **({"profile": sampler.report()} if profile else {}),
    }


def measure_in_child(name: str, backend_name: str, batch: int = 1, repeats: int = 1, profile: bool = False,
                     size: int | None = None, timeout_s: float = 3600.0) -> dict[str, Any]:
    """``measure`` in a fresh interpreter, so that ``peak_rss_mb`` is this row's alone."""
    command = [sys.executable, "-m", "bridge.bench.zoo", "--child", "--model", name, "--backend", backend_name,
               "--batch", str(batch), "--repeats", str(repeats), *(["--profile"] if profile else []),
               *(["--size", str(size)] if size else [])]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    if done.returncode != 0:
        raise RuntimeError(f"zoo row {name} on {backend_name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def zoo_rows(models: list[str] | None = None, backends: list[str] | None = None, repeats: int = 1,
             profile: bool = False, size: int | None = None, emit: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every chosen model on every chosen backend, each row in its own child process."""
    from bridge.bench.suite import secure_backend_names

    chosen = list(models or DEFAULT_MODELS)
    unknown = sorted(set(chosen) - set(ZOO_MODELS))
    if unknown:
        raise ValueError(f"unknown zoo models {unknown}; choose from {sorted(ZOO_MODELS)}")
    rows = []
    for name in chosen:
        for backend_name in backends or secure_backend_names():
            row = measure_in_child(name, backend_name, repeats=repeats, profile=profile, size=size)
            rows.append(row)
            if emit is not None:
                emit(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.bench.zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help=f"one of {sorted(ZOO_MODELS)} (repeatable)")
    parser.add_argument("--backend", action="append", help="secure backend (repeatable; default: all)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed queries after the warm-up (0: the warm-up query is the one timed)")
    parser.add_argument("--size", type=int, help="input height and width instead of the model's")
    parser.add_argument("--profile", action="store_true", help="sample the party threads' stacks (see Sampler)")
    parser.add_argument("--child", action="store_true", help="measure here (one model, one backend)")
    args = parser.parse_args(argv)
    if args.child:
        if len(args.model or ()) != 1 or len(args.backend or ()) != 1:
            parser.error("--child measures one model on one backend: give --model and --backend once each")
        row = measure(args.model[0], args.backend[0], args.batch, args.repeats, profile=args.profile,
                      size=args.size)
        print(json.dumps(row), flush=True)
        return 0
    zoo_rows(args.model, args.backend, args.repeats, args.profile, args.size, emit=lambda row: print(json.dumps(row), flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
