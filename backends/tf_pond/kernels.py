"""Exact Z_2^64 kernels on TensorFlow int64 tensors, with stock TF ops only.

TensorFlow's int64 Add/Sub/Mul/Neg wrap modulo 2^64, ``tf.bitwise.right_shift`` is
arithmetic on signed types, and ``tf.linalg.matmul`` has an exact int64 CPU kernel
(each checked against Python integers in ``tests/backends/test_ring_kernels.py``).
``matmul`` has three exact paths: that int64 kernel and two float64 limb layouts
(``bridge.mpc.limbs``, each one traced ``tf.function`` per K-chunk).  Which is fastest
depends on the host (int64 2.5 ms against 3.9 ms for limbs on one 2-core EPYC for
(128, 784) @ (784, 128), the other way round elsewhere), so ``matmul="auto"`` times
them once per shape class and caches the choice (``bridge.mpc.calibration``).

TensorFlow is imported by this module only; the tf-pond backend imports this module
only when it makes its kernels.  Every call into TensorFlow holds ``TENSORFLOW_LOCK``
(see there: TensorFlow 2.21's API dispatch is not safe for concurrent threads).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from bridge.mpc.calibration import KernelChooser
from bridge.mpc.kernels import RingKernels
from bridge.mpc.limbs import LIMBS16, SCHEMES, LimbScheme, chunk_size, pairs_per_sum
from bridge.mpc.numpy_kernels import (
    as_int64_array,
    check_matmul,
    check_pads,
    check_segment_ids,
    check_shift,
    check_take_indices,
    normalize_axis,
)


#: held by every call of this module into TensorFlow, so that one thread at a time runs TensorFlow
#: Python code.  Why: TensorFlow 2.21's type-based API dispatch (``tf.add``, ``tf.subtract``, ...,
#: ``PythonAPIDispatcher::Dispatch``) is not safe for concurrent Python threads: it works on
#: borrowed references to the call's arguments and keeps an unlocked per-type cache, and a type
#: check that runs Python code lets another thread in mid-dispatch.  The embedded tf-pond run (each
#: party a thread) died of SIGSEGV there: ``PyType_IsSubtype`` on an already freed argument, under
#: ``PyInstanceChecker::Check``, two party threads in ``tf.add`` and ``tf.subtract`` (issue 16;
#: faulthandler stacks and a core dump, README "Tests").  TensorFlow's pull request 125641 makes
#: that dispatch thread-safe; 2.21 needs this lock.  Re-entrant: kernels call kernels.
TENSORFLOW_LOCK = threading.RLock()


def _holding_tensorflow_lock(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with TENSORFLOW_LOCK:
            return method(*args, **kwargs)

    return locked


def _one_thread_in_tensorflow(cls: type) -> type:
    """Wrap every method ``cls`` defines (dunders aside) in ``TENSORFLOW_LOCK``."""
    for name, member in list(vars(cls).items()):
        if callable(member) and not (name.startswith("__") and name.endswith("__")):
            setattr(cls, name, _holding_tensorflow_lock(member))
    return cls


def _wrap64(value: int) -> int:
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


#: the exact matmul paths, in order of preference on a tie
PATHS = ("int64", "limbs", "limbs16") if sys.byteorder == "little" else ("int64", "limbs")


def _intra_op_threads() -> int:
    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1


def _limb_stack(x: tf.Tensor, scheme: LimbScheme) -> tf.Tensor:
    """(L, *x.shape) float64 digits of x: x = sum_i d_i 2^(w i) mod 2^64."""
    if scheme is LIMBS16:  # the four 16-bit words of each int64, little-endian: a bitcast
        words = tf.cast(tf.bitcast(x, tf.uint16), tf.float64)  # (..., 4)
        return tf.transpose(words, [2, 0, 1])
    offset = sum(1 << (w - 1 + scheme.width * i) for i, w in enumerate(scheme.widths))
    y = x + tf.constant(_wrap64(offset), tf.int64)
    digits = []
    for i, w in enumerate(scheme.widths):
        shifted = tf.bitwise.right_shift(y, tf.constant(scheme.width * i, tf.int64)) if i else y
        digit = tf.bitwise.bitwise_and(shifted, tf.constant((1 << w) - 1, tf.int64))
        digits.append(tf.cast(digit, tf.float64) - float(1 << (w - 1)))
    return tf.stack(digits)


def _chunk_product(scheme: LimbScheme, group: int) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """a @ b mod 2^64 for one K-chunk, as one traced function for every shape:
    [A_0; ...; A_{L-1-j}] @ B_j per limb of B, each S_t summed in float64 by ``group``."""
    count, width = scheme.count, scheme.width
    spec = tf.TensorSpec([None, None], tf.int64)

    @tf.function(input_signature=[spec, spec])
    def product(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        m, k, n = tf.shape(a)[0], tf.shape(a)[1], tf.shape(b)[1]
        a_limbs, b_limbs = _limb_stack(a, scheme), _limb_stack(b, scheme)
        products = [
            tf.reshape(tf.matmul(tf.reshape(a_limbs[: count - j], [-1, k]), b_limbs[j]), [count - j, m, n])
            for j in range(count)
        ]
        out = tf.zeros([m, n], tf.int64)
        for t in range(count):
            for first in range(0, t + 1, group):
                terms = [products[t - i][i] for i in range(first, min(t + 1, first + group))]
                total = tf.cast(tf.add_n(terms), tf.int64)  # exact: an integer of magnitude <= 2^53
                if t:
                    total = tf.bitwise.left_shift(total, tf.constant(width * t, tf.int64))
                out = out + total
        return out

    return product


@_one_thread_in_tensorflow
class TfKernels(RingKernels):
    """Z_2^64 on tf.int64 eager tensors (CPU); one thread at a time (``TENSORFLOW_LOCK``).

    ``matmul``: "auto" times the exact paths once per shape class and uses the fastest;
    "int64", "limbs" or "limbs16" force one.  ``kernel_cache``: where "auto" keeps its
    timings (a directory; ``None``: the user's cache directory; ``False``: memory only).
    """

    name = "tensorflow"

    def __init__(self, matmul: str = "auto", kernel_cache: Path | str | None | bool = None) -> None:
        if matmul != "auto" and matmul not in PATHS:
            raise ValueError(f"matmul must be 'auto' or one of {list(PATHS)}; received {matmul!r}")
        self.matmul_path = matmul
        self.chooser = KernelChooser(
            host={"backend": "tensorflow", "framework": f"tensorflow {tf.__version__}", "device": "cpu"},
            candidates=PATHS,
            threads=_intra_op_threads,
            cache=Path(kernel_cache) if isinstance(kernel_cache, str) else kernel_cache,
            forced=None if matmul == "auto" else matmul,
        )
        self._products: dict[tuple[str, int], Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {}

    # -- conversion ---------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray) -> tf.Tensor:
        return tf.convert_to_tensor(as_int64_array(array), dtype=tf.int64)

    def to_numpy(self, tensor: tf.Tensor) -> np.ndarray:
        return np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor, dtype=np.int64, order="C")

    def shape(self, tensor: tf.Tensor) -> tuple[int, ...]:
        return tuple(tensor.shape)

    def zeros(self, shape: Sequence[int]) -> tf.Tensor:
        return tf.zeros(tuple(shape), dtype=tf.int64)

    def constant(self, value: int, shape: Sequence[int] = ()) -> tf.Tensor:
        return tf.fill(tuple(shape), tf.constant(_wrap64(int(value)), dtype=tf.int64))

    # -- elementwise ------------------------------------------------------------------------
    # The raw ops skip tf.add's Python layers (type-based dispatch, the WeakTensor wrapper,
    # traceback filtering): 25 us against 47-71 us per small int64 add here, and the most
    # frequent kernels of the protocols.  Same ops underneath (tf.add is AddV2 for numbers).
    def add(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.raw_ops.AddV2(x=a, y=b)

    def sub(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.raw_ops.Sub(x=a, y=b)

    def mul(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.raw_ops.Mul(x=a, y=b)

    def neg(self, a: tf.Tensor) -> tf.Tensor:
        return tf.raw_ops.Neg(x=a)

    # -- bitwise ----------------------------------------------------------------------------
    def bit_and(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.bitwise.bitwise_and(a, b)

    def bit_xor(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.bitwise.bitwise_xor(a, b)

    def shift_right(self, a: tf.Tensor, bits: int) -> tf.Tensor:
        return tf.bitwise.right_shift(a, tf.constant(check_shift(bits), dtype=tf.int64))

    def shift_left(self, a: tf.Tensor, bits: int) -> tf.Tensor:
        return tf.bitwise.left_shift(a, tf.constant(check_shift(bits), dtype=tf.int64))

    # -- linear algebra -----------------------------------------------------------------------
    def matmul_path_for(self, m: int, k: int, n: int) -> str:
        """The exact path ``matmul`` takes for (m, k) @ (k, n) (timed on first use under "auto")."""
        return self.chooser.choose("matmul", (m, k, n), lambda path: self._bench(path, m, k, n))

    def _bench(self, path: str, m: int, k: int, n: int) -> Callable[[], None]:
        a = tf.reshape(tf.range(m * k, dtype=tf.int64) * _wrap64(0x9E3779B97F4A7C15), (m, k))
        b = tf.reshape(tf.range(k * n, dtype=tf.int64) * 0x632BE59BD9B4E019, (k, n))

        def run() -> None:
            self._matmul_by(path, a, b).numpy()  # numpy(): wait for the result

        return run

    def matmul(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        check_matmul(tuple(a.shape), tuple(b.shape))
        (m, k), n = a.shape, b.shape[1]
        return self._matmul_by(self.matmul_path_for(m, k, n), a, b)

    def _matmul_by(self, path: str, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        if path == "int64":
            return tf.linalg.matmul(a, b)
        return self.limb_matmul(a, b, SCHEMES[path])

    def limb_matmul(self, a: tf.Tensor, b: tf.Tensor, scheme: LimbScheme) -> tf.Tensor:
        """a @ b mod 2^64 from float64 products of limbs, exact for any K (``bridge.mpc.limbs``)."""
        (m, k), n = a.shape, b.shape[1]
        if m == 0 or n == 0 or k == 0:
            return tf.zeros((m, n), tf.int64)
        size = chunk_size(k, scheme)
        out = None
        for k0 in range(0, k, size):
            part = min(size, k - k0)
            key = (scheme.name, min(scheme.count, pairs_per_sum(part, scheme)))
            if key not in self._products:
                self._products[key] = _chunk_product(scheme, key[1])
            pieces = (a, b) if part == k else (a[:, k0 : k0 + part], b[k0 : k0 + part])
            product = self._products[key](*pieces)
            out = product if out is None else tf.raw_ops.AddV2(x=out, y=product)
        return out

    # -- layout ---------------------------------------------------------------------------------
    def sum(self, a: tf.Tensor, axis: int | tuple[int, ...], keepdims: bool = False) -> tf.Tensor:
        if isinstance(axis, tuple) and not axis:
            return a
        return tf.reduce_sum(a, axis=list(axis) if isinstance(axis, tuple) else axis, keepdims=keepdims)

    def reshape(self, a: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
        return tf.reshape(a, tuple(shape))

    def transpose(self, a: tf.Tensor, perm: Sequence[int]) -> tf.Tensor:
        return tf.transpose(a, perm=tuple(perm))

    def broadcast_to(self, a: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
        return tf.broadcast_to(a, tuple(shape))

    def pad(self, a: tf.Tensor, pads: Sequence[tuple[int, int]]) -> tf.Tensor:
        pairs = check_pads(pads, len(a.shape))
        if not any(p for pair in pairs for p in pair):
            return a
        return tf.pad(a, pairs, mode="CONSTANT", constant_values=0)

    def gather(self, a: tf.Tensor, indices: np.ndarray, axis: int) -> tf.Tensor:
        axis = normalize_axis(axis, len(a.shape))
        idx = check_take_indices(indices, a.shape[axis], axis)
        return tf.gather(a, idx, axis=axis)

    def segment_sum(self, a: tf.Tensor, segment_ids: np.ndarray, num_segments: int) -> tf.Tensor:
        ids = check_segment_ids(segment_ids, tuple(a.shape), num_segments)
        return tf.math.unsorted_segment_sum(a, ids.reshape(np.shape(segment_ids)), num_segments)

    def concat(self, tensors: Sequence[tf.Tensor], axis: int) -> tf.Tensor:
        return tf.concat(list(tensors), axis=axis)

    def stack(self, tensors: Sequence[tf.Tensor], axis: int = 0) -> tf.Tensor:
        return tf.stack(list(tensors), axis=axis)

    def unstack(self, a: tf.Tensor) -> list[tf.Tensor]:
        return tf.unstack(a, axis=0)

    # -- optional acceleration -----------------------------------------------------------------
    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Identity, by measurement (TF 2.21, CPU): ``tf.function`` is no faster than eager
        for our kernels (0.33 ms vs 0.15 ms for a Beaver combination on 128x128, 11.6 vs
        14.0 ms for a long shift/xor chain on 16x65536), and ``jit_compile=True`` fuses
        elementwise chains (4.8x on that chain) but makes int64 matmul 5.6x slower and
        recompiles for every new shape."""
        return fn
