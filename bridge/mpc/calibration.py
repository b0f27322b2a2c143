"""Pick the fastest exact kernel per shape class by timing the candidates on this host.

Which exact Z_2^64 matmul is fastest depends on the CPU, the framework's build and the
thread count: torch's int64 matmul took 1.3 ms for (128, 784) @ (784, 128) on one Intel
host and 27 ms on an AMD one, where six float64 limb products cost 3 ms.  A threshold
measured once is wrong on the next machine, so a backend hands ``KernelChooser`` its
exact candidates and the chooser times them, once per shape class and host, and keeps
the answer in the user's cache directory (``kernel-choices.json``, plain JSON: nothing
is ever unpickled).  Every candidate is exact, so the choice changes speed only, never
a result.

A shape class is the power-of-two bucket of each dimension (``matmul 128x1024x128``
holds (128, 784, 128)); it is timed on the first shape of the class that is seen.
The cache is keyed by the backend, the framework version, the CPU model, the thread
count and the device.  A corrupt cache file is ignored with a warning and rewritten;
writes go to a temporary file that replaces the cache atomically.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: bump when a candidate's implementation changes enough to invalidate old timings
REVISION = 2
CACHE_FILE = "kernel-choices.json"
FORMAT = 1

Bench = Callable[[str], Callable[[], object]]


def cache_dir() -> Path:
    """The per-user cache directory, as platformdirs' ``user_cache_dir`` puts it.

    ``PRIVACY_BRIDGE_CACHE_DIR`` overrides it (a test, a read-only home)."""
    override = os.environ.get("PRIVACY_BRIDGE_CACHE_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "privacy-bridge" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "privacy-bridge"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "privacy-bridge"


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) ..."), or the best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def size_class(value: int) -> int:
    """The power of two at or above ``value`` (1 for 0 and 1)."""
    return 1 << max(0, math.ceil(math.log2(max(1, value))))


def shape_class(op: str, dims: Sequence[int]) -> str:
    return f"{op} " + "x".join(str(size_class(d)) for d in dims)


@dataclass
class Measurement:
    """One shape class's timings (best-of, milliseconds) and the candidate chosen."""

    choice: str
    ms: dict[str, float]
    shape: tuple[int, ...]
    source: str = "measured"  # "measured", "cache" or "forced"

    def as_json(self) -> dict[str, Any]:
        return {"choice": self.choice, "ms": self.ms, "shape": list(self.shape)}


@dataclass
class KernelChooser:
    """The fastest of ``candidates`` per shape class, measured once per host and cached.

    ``host``: what the timings depend on besides the shape (backend, framework version,
    device); the CPU model, the thread count (``threads()``) and ``REVISION`` are added.
    ``cache``: a directory, ``None`` for ``cache_dir()``, or ``False`` for memory only.
    ``forced``: a candidate to use for every shape (tests, benchmarks of one path).
    ``budget_s``: the time one shape class may spend timing, after one warm-up call each
    (at least two rounds run); ``slow_s``: a warm-up longer than this is the candidate's time.
    """

    host: Mapping[str, str]
    candidates: tuple[str, ...]
    threads: Callable[[], int] = lambda: 1
    cache: Path | None | bool = None
    forced: str | None = None
    budget_s: float = 0.2
    slow_s: float = 1.0
    clock: Callable[[], float] = time.perf_counter
    _choices: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    _loaded: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError("KernelChooser needs at least one candidate kernel")
        if self.forced is not None and self.forced not in self.candidates:
            raise ValueError(f"forced kernel must be one of {list(self.candidates)}; received {self.forced!r}")

    # -- keys ------------------------------------------------------------------------------
    def host_key(self) -> str:
        parts = {**self.host, "cpu": cpu_model(), "threads": str(self.threads()), "revision": str(REVISION)}
        return "; ".join(f"{k}={v}" for k, v in sorted(parts.items()))

    @property
    def path(self) -> Path | None:
        if self.cache is False:
            return None
        return (cache_dir() if self.cache in (None, True) else Path(self.cache)) / CACHE_FILE  # type: ignore[arg-type]

    # -- choosing --------------------------------------------------------------------------
    def choose(self, op: str, dims: Sequence[int], bench: Bench) -> str:
        """The candidate to run ``op`` on operands of ``dims``; times the class on first use.

        ``bench(candidate)`` returns a function that runs that candidate once on operands
        of this shape (synchronised, for asynchronous devices)."""
        if self.forced is not None:
            return self.forced
        if len(self.candidates) == 1:
            return self.candidates[0]
        key = (self.host_key(), shape_class(op, dims))
        found = self._choices.get(key)
        if found is not None:
            return found.choice
        with self._lock:  # one party thread measures; the others wait instead of disturbing it
            if not self._loaded:
                self._load()
            found = self._choices.get(key)
            if found is None:
                found = self._measure(tuple(dims), bench)
                self._choices[key] = found
                self._save(key, found)
            return found.choice

    def _measure(self, dims: tuple[int, ...], bench: Bench) -> Measurement:
        """Best-of timing: one warm-up call each (not counted: tracing, allocation), then
        rounds over the candidates still within 4x of the fastest, until ``budget_s``.
        A candidate whose warm-up alone took over ``slow_s`` keeps that time and is not
        run again (an int64 matmul of 2^30 multiply-adds takes seconds)."""
        runs = {c: bench(c) for c in self.candidates}
        best = dict.fromkeys(self.candidates, float("inf"))
        alive = []
        for name, run in runs.items():
            start = self.clock()
            run()
            took = self.clock() - start
            if took > self.slow_s:
                best[name] = took
            else:
                alive.append(name)
        deadline = self.clock() + self.budget_s
        for round_ in range(7):
            if not alive or (round_ >= 2 and self.clock() > deadline):
                break
            for name in alive:
                start = self.clock()
                runs[name]()
                best[name] = min(best[name], self.clock() - start)
            fastest = min(best.values())
            alive = [c for c in alive if best[c] <= 4 * fastest]  # clear losers stop here
        choice = min(self.candidates, key=lambda c: (best[c], self.candidates.index(c)))
        return Measurement(choice, {c: round(best[c] * 1e3, 4) for c in self.candidates}, dims)

    def table(self) -> list[dict[str, Any]]:
        """What has been chosen on this host so far: one row per shape class."""
        self._ensure_loaded()
        here = self.host_key()
        rows = []
        for (host, cls), m in sorted(self._choices.items()):
            if host == here:
                rows.append({"shape_class": cls, "shape": "x".join(map(str, m.shape)), **{
                    f"{c}_ms": m.ms.get(c, "") for c in self.candidates}, "choice": m.choice, "source": m.source})
        return rows

    def forget(self) -> None:
        """Drop this host's choices (memory and cache file): the next calls measure again."""
        with self._lock:
            self._ensure_loaded()
            here = self.host_key()
            for key in [k for k in self._choices if k[0] == here]:
                del self._choices[key]
            self._write(lambda hosts: hosts.pop(here, None))

    # -- the cache file ----------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        with self._lock:
            if not self._loaded:
                self._load()

    def _read(self) -> dict[str, Any]:
        path = self.path
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("hosts"), dict):
                raise ValueError(f"expected a JSON object with format {FORMAT} and 'hosts'")
            return data["hosts"]
        except (OSError, ValueError) as exc:
            warnings.warn(
                f"ignoring the kernel-choice cache {path} ({type(exc).__name__}: {exc}); the kernels will be "
                "timed again and the file rewritten",
                RuntimeWarning,
                stacklevel=4,
            )
            return {}

    def _load(self) -> None:
        self._loaded = True
        for host, classes in self._read().items():
            if not isinstance(classes, dict):
                continue
            for cls, entry in classes.items():
                try:
                    choice, ms, shape = entry["choice"], entry["ms"], entry["shape"]
                    if choice not in self.candidates:
                        continue  # written by another version: measure again
                    m = Measurement(choice, {str(k): float(v) for k, v in ms.items()},
                                    tuple(int(d) for d in shape), "cache")
                except (KeyError, TypeError, ValueError):
                    continue
                self._choices.setdefault((host, cls), m)

    def _save(self, key: tuple[str, str], m: Measurement) -> None:
        host, cls = key
        self._write(lambda hosts: hosts.setdefault(host, {}).__setitem__(cls, m.as_json()))

    def _write(self, update: Callable[[dict[str, Any]], object]) -> None:
        path = self.path
        if path is None:
            return
        hosts = self._read()  # merge with what other processes wrote meanwhile
        hosts = {h: c for h, c in hosts.items() if isinstance(c, dict)}
        update(hosts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".kernel-choices-", suffix=".json", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"format": FORMAT, "hosts": hosts}, out, indent=1, sort_keys=True)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            warnings.warn(f"could not write the kernel-choice cache {path}: {exc}; choices are kept in memory only",
                          RuntimeWarning, stacklevel=4)
            self.cache = False
