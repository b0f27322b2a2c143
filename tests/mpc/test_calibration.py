"""The kernel chooser: fastest candidate per shape class, timed once, cached as JSON.

Timings come from a fake clock that each candidate advances by a scripted amount, so
every choice here is deterministic."""

from __future__ import annotations

import json
import warnings

import pytest

from bridge.mpc import calibration
from bridge.mpc.calibration import KernelChooser, shape_class, size_class


class FakeHost:
    """A clock and candidates that take ``cost[name]`` seconds per call, counted."""

    def __init__(self, cost: dict[str, float]) -> None:
        self.now = 0.0
        self.cost = cost
        self.calls: dict[str, int] = {name: 0 for name in cost}

    def clock(self) -> float:
        return self.now

    def bench(self, name: str):
        def run() -> None:
            self.calls[name] += 1
            self.now += self.cost[name]

        return run


def chooser(host: FakeHost, cache, threads: int = 2, **kw) -> KernelChooser:
    return KernelChooser(host={"backend": "fake", "framework": "fake 1.0"}, candidates=tuple(host.cost),
                         threads=lambda: threads, cache=cache, clock=host.clock, **kw)


def test_shape_classes_are_power_of_two_buckets():
    assert [size_class(v) for v in (0, 1, 2, 3, 784, 1024, 1025)] == [1, 1, 2, 4, 1024, 1024, 2048]
    assert shape_class("matmul", (128, 784, 10)) == "matmul 128x1024x16"


def test_picks_the_fastest_and_times_each_class_once(tmp_path):
    host = FakeHost({"int64": 0.030, "limbs": 0.004, "limbs16": 0.006})
    c = chooser(host, tmp_path)
    assert c.choose("matmul", (128, 784, 128), host.bench) == "limbs"
    timed = dict(host.calls)
    assert timed["limbs"] >= 3 and timed["int64"] >= 1  # warm-up, then repeats of the live ones
    assert c.choose("matmul", (100, 1000, 120), host.bench) == "limbs"  # same class: no new timing
    assert host.calls == timed
    (row,) = c.table()
    assert row["choice"] == "limbs" and row["shape"] == "128x784x128" and row["int64_ms"] == 30.0
    assert row["source"] == "measured"


def test_the_choice_is_read_back_from_the_json_cache(tmp_path):
    host = FakeHost({"int64": 0.001, "limbs": 0.010})
    chooser(host, tmp_path).choose("matmul", (8, 8, 8), host.bench)
    data = json.loads((tmp_path / calibration.CACHE_FILE).read_text())
    assert data["format"] == calibration.FORMAT
    (classes,) = data["hosts"].values()
    assert classes["matmul 8x8x8"]["choice"] == "int64"
    # a new process: the cache answers, nothing is timed; another thread count is another host
    fresh = FakeHost({"int64": 0.001, "limbs": 0.010})
    assert chooser(fresh, tmp_path).choose("matmul", (8, 8, 8), fresh.bench) == "int64"
    assert sum(fresh.calls.values()) == 0
    assert chooser(fresh, tmp_path, threads=1).choose("matmul", (8, 8, 8), fresh.bench) == "int64"
    assert sum(fresh.calls.values()) > 0
    assert len(json.loads((tmp_path / calibration.CACHE_FILE).read_text())["hosts"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name != calibration.CACHE_FILE]  # no temporary files left


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"format": 99, "hosts": {}}),
                                     "\x80\x04\x95 pickle"])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tmp_path, content):
    path = tmp_path / calibration.CACHE_FILE
    path.write_bytes(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
    host = FakeHost({"int64": 0.002, "limbs": 0.001})
    with pytest.warns(RuntimeWarning, match="ignoring the kernel-choice cache"):
        assert chooser(host, tmp_path).choose("matmul", (4, 4, 4), host.bench) == "limbs"
    assert json.loads(path.read_text())["format"] == calibration.FORMAT


def test_entries_naming_unknown_candidates_are_measured_again(tmp_path):
    host = FakeHost({"int64": 0.002, "limbs": 0.001})
    c = chooser(host, tmp_path)
    key = c.host_key()
    (tmp_path / calibration.CACHE_FILE).write_text(json.dumps(
        {"format": calibration.FORMAT, "hosts": {key: {"matmul 4x4x4": {"choice": "magic", "ms": {}, "shape": [4, 4, 4]}}}}))
    assert c.choose("matmul", (4, 4, 4), host.bench) == "limbs"


def test_a_slow_candidate_is_not_repeated_beyond_the_budget(tmp_path):
    host = FakeHost({"int64": 5.0, "limbs": 0.01})
    assert chooser(host, tmp_path, budget_s=0.2).choose("matmul", (4096,) * 3, host.bench) == "limbs"
    assert host.calls["int64"] == 1  # the warm-up call alone: 5 s is past slow_s
    assert 3 <= host.calls["limbs"] <= 8


class FirstCallCosts(FakeHost):
    """A candidate whose first call also traces (as tf.function does): 0.5 s once."""

    def bench(self, name: str):
        run = super().bench(name)

        def first_then_run() -> None:
            if name == "limbs" and self.calls[name] == 0:
                self.now += 0.5
            run()

        return first_then_run


def test_the_warm_up_call_is_not_counted():
    host = FirstCallCosts({"int64": 0.003, "limbs": 0.001})
    c = chooser(host, False)
    assert c.choose("matmul", (128, 784, 128), host.bench) == "limbs"
    assert c.table()[0]["limbs_ms"] == 1.0


def test_one_unlucky_round_does_not_drop_a_candidate():
    """A candidate preempted once (3x its time) is still timed again and wins."""
    host = FakeHost({"int64": 0.004, "limbs": 0.002})
    slow_once = {"limbs": 1}
    base = host.bench

    def bench(name):
        run = base(name)

        def maybe_slow():
            if name == "limbs" and host.calls["limbs"] == slow_once["limbs"]:
                host.now += 0.010  # preempted on its first timed call
            run()

        return maybe_slow

    assert chooser(host, False).choose("matmul", (8, 8, 8), bench) == "limbs"


def test_forced_and_single_candidates_are_never_timed(tmp_path):
    host = FakeHost({"int64": 0.002, "limbs": 0.001})
    assert chooser(host, tmp_path, forced="int64").choose("matmul", (4, 4, 4), host.bench) == "int64"
    single = FakeHost({"limbs": 0.001})
    assert chooser(single, tmp_path).choose("matmul", (4, 4, 4), single.bench) == "limbs"
    assert sum(host.calls.values()) + sum(single.calls.values()) == 0
    with pytest.raises(ValueError, match="forced kernel must be one of"):
        chooser(host, tmp_path, forced="float")


def test_memory_only_and_unwritable_caches(tmp_path):
    host = FakeHost({"int64": 0.002, "limbs": 0.001})
    assert chooser(host, False).choose("matmul", (4, 4, 4), host.bench) == "limbs"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="could not write the kernel-choice cache"):
        c = chooser(host, blocker / "sub")
        assert c.choose("matmul", (4, 4, 4), host.bench) == "limbs"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c.choose("matmul", (64, 4, 4), host.bench) == "limbs"  # memory only from then on


def test_forget_drops_this_hosts_choices(tmp_path):
    host = FakeHost({"int64": 0.002, "limbs": 0.001})
    c = chooser(host, tmp_path)
    c.choose("matmul", (4, 4, 4), host.bench)
    c.forget()
    assert c.table() == []
    assert json.loads((tmp_path / calibration.CACHE_FILE).read_text())["hosts"] == {}


def test_cache_dir_follows_the_override_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setattr(calibration.sys, "platform", "linux")
    monkeypatch.delenv("PRIVACY_BRIDGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert calibration.cache_dir() == tmp_path / "xdg" / "privacy-bridge"
    monkeypatch.setenv("PRIVACY_BRIDGE_CACHE_DIR", str(tmp_path / "mine"))
    assert calibration.cache_dir() == tmp_path / "mine"
