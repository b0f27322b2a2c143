"""tf-pond calls TensorFlow from one thread at a time (``TENSORFLOW_LOCK``).

TensorFlow 2.21's type-based API dispatch is not safe for concurrent Python threads (borrowed
references to the arguments, an unlocked type cache): two party threads in ``tf.add`` and
``tf.subtract`` at once ended in ``isinstance`` on a freed argument, the intermittent SIGSEGV of
issue 16.  These tests watch every call
into TensorFlow's Python code (from privacy-bridge, Keras or anything else) while tf-pond serves
and trains embedded (each party a thread, the offline pool in another) and require the lock to
be held whenever another thread of privacy-bridge is alive.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from frontends.keras import privatize

ROOT = Path(__file__).resolve().parents[2]
#: the threads privacy-bridge starts in one process: a party each (embedded), the offline pool
OWN_THREADS = ("party-", "offline-")


def _calls_into_tensorflow(work: Callable[[], None]) -> list[tuple[str, str, bool]]:
    """(thread, caller file:line, safe) for every call from outside TensorFlow into one of its
    Python functions while ``work`` runs, in every thread it starts and its own.  Safe: the
    lock is held, or no other thread of privacy-bridge (party, offline pool) is alive (the front
    end reading a Keras dataset on the TensorFlow backend before the parties start)."""
    import tensorflow as tf

    from backends.tf_pond.kernels import TENSORFLOW_LOCK

    tensorflow_dir = str(Path(tf.__file__).resolve().parent) + "/"
    calls: list[tuple[str, str, bool]] = []

    def watch(frame, event, _arg):
        if event != "call" or not frame.f_code.co_filename.startswith(tensorflow_dir):
            return
        caller = frame.f_back
        if caller is not None and not caller.f_code.co_filename.startswith(tensorflow_dir):
            where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
            me = threading.current_thread()
            alone = not any(t is not me and t.name.startswith(OWN_THREADS) for t in threading.enumerate())
            calls.append((me.name, where, TENSORFLOW_LOCK._is_owned() or alone))

    threading.setprofile(watch)
    sys.setprofile(watch)
    try:
        work()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return calls


def _check_one_thread(calls: list[tuple[str, str, bool]]) -> None:
    unlocked = sorted({(thread, where) for thread, where, safe in calls if not safe})
    assert not unlocked, f"TensorFlow called without TENSORFLOW_LOCK: {unlocked[:10]}"
    party_threads = {thread for thread, _, _ in calls if thread.startswith("party-")}
    assert len(party_threads) >= 3, f"expected the parties' threads among the callers; saw {sorted(party_threads)}"


def _model(inputs: int, outputs: int, activation: str | None = None) -> keras.Model:
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(6, activation="relu"),
                             keras.layers.Dense(outputs, activation=activation)])


def test_tf_pond_serving_calls_tensorflow_from_one_thread_at_a_time():
    model = _model(8, 3)
    x = np.random.default_rng(2).normal(size=(6, 8)).astype("float32")
    private = privatize(model, privacy="encrypted_serving", backend="tf-pond")
    out: dict[str, np.ndarray] = {}
    calls = _calls_into_tensorflow(lambda: out.update(y=private.predict(x, batch_size=3, verbose=0)))
    _check_one_thread(calls)
    np.testing.assert_allclose(out["y"], model.predict(x, verbose=0), atol=3e-3)


def test_tf_pond_training_calls_tensorflow_from_one_thread_at_a_time():
    keras.utils.set_random_seed(0)
    model = _model(6, 3, "softmax")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.25), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(16, 6)).astype("float32")
    y = np.argmax(x[:, :3], axis=1)
    start = [w.copy() for w in model.get_weights()]
    private = privatize(model, privacy="encrypted_training", backend="tf-pond")
    calls = _calls_into_tensorflow(lambda: private.fit(x, y, epochs=1, batch_size=8, verbose=0))
    _check_one_thread(calls)
    assert any(not np.array_equal(a, b) for a, b in zip(start, model.get_weights()))


def test_the_watch_sees_a_kernel_that_bypasses_the_lock():
    """The control: the same kernel body called around its lock is reported."""
    from backends.tf_pond.kernels import TfKernels

    kernels = TfKernels(matmul="int64", kernel_cache=False)
    a = kernels.from_numpy(np.arange(4))
    other = threading.Event()
    party = threading.Thread(target=other.wait, name="party-other")  # another party, alive meanwhile
    party.start()
    try:
        calls = _calls_into_tensorflow(lambda: TfKernels.add.__wrapped__(kernels, a, a))
        assert [(where.split(":")[0], safe) for _, where, safe in calls] == [
            (str(ROOT / "backends" / "tf_pond" / "kernels.py"), False)]
        assert [safe for _, _, safe in _calls_into_tensorflow(lambda: kernels.add(a, a))] == [True]
    finally:
        other.set()
        party.join()
