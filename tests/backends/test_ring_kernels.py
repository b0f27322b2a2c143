"""Every RingKernels implementation against exact integer arithmetic modulo 2^64.

One suite, parametrized over the NumPy reference, PyTorch (CUDA too where present)
and TensorFlow; the matmul tests run on every exact matmul path of each framework
(int64, 22-bit limbs, 16-bit limbs, and the timed choice among them).  The oracle is
Python's unbounded integers (NumPy object arrays), reduced to the signed
representative in [-2^63, 2^63), never another backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import torch  # noqa: F401  - torch before TensorFlow, as Keras' own tests do

from bridge.mpc.kernels import RingKernels
from bridge.mpc.limbs import LIMBS16, LIMBS22, LimbScheme, chunk_size, pairs_per_sum
from bridge.mpc.numpy_kernels import NumpyKernels

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXTREMES = np.array([INT64_MIN, INT64_MIN + 1, -(2**32), -1, 0, 1, 2**32, INT64_MAX - 1, INT64_MAX], dtype=np.int64)


def _make(name: str) -> RingKernels:
    """``framework`` or ``framework:path``: the timed choice (memory only) or one forced path."""
    framework, _, path = name.partition(":")
    if framework == "numpy":
        return NumpyKernels()
    if framework.startswith("torch"):
        from backends.torch_spdz.kernels import TorchKernels

        if framework == "torch-cuda":
            return TorchKernels(device="cuda")
        return TorchKernels(matmul=path or "auto", kernel_cache=False)
    pytest.importorskip("tensorflow")
    from backends.tf_pond.kernels import TfKernels

    return TfKernels(matmul=path or "auto", kernel_cache=False)


KERNELS = ["numpy", "torch", "tensorflow"]
if torch.cuda.is_available():
    KERNELS.append("torch-cuda")
#: every exact matmul path of every framework
MATMUL_KERNELS = KERNELS + [f"{f}:{p}" for f in ("torch", "tensorflow") for p in ("int64", "limbs", "limbs16")]
_made: dict[str, RingKernels] = {}


def _ring(name: str) -> RingKernels:
    if name not in _made:
        _made[name] = _make(name)
    return _made[name]


@pytest.fixture(params=KERNELS)
def ring(request) -> RingKernels:
    return _ring(request.param)


@pytest.fixture(params=MATMUL_KERNELS)
def matmul_ring(request) -> RingKernels:
    return _ring(request.param)


# -- the oracle -------------------------------------------------------------------------------


def wrap(values) -> np.ndarray:
    """Python integers (object array or int) to their int64 residue mod 2^64."""
    obj = np.asarray(values, dtype=object)
    return np.asarray((obj + 2**63) % 2**64 - 2**63, dtype=object).astype(np.int64)


def exact(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(object)


def ring_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform int64 values with extremes and small values planted in about a third of the slots."""
    values = rng.integers(INT64_MIN, INT64_MAX, size=shape, dtype=np.int64, endpoint=True)
    if values.size:
        flat = values.reshape(-1)
        spots = rng.random(flat.size)
        flat[spots < 0.2] = rng.choice(EXTREMES, size=int((spots < 0.2).sum()))
        small = (spots >= 0.2) & (spots < 0.3)
        flat[small] = rng.integers(-1000, 1000, size=int(small.sum()))
    return values


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def roundtrip(ring: RingKernels, array: np.ndarray) -> np.ndarray:
    return ring.to_numpy(ring.from_numpy(array))


def same(ring: RingKernels, tensor, expected: np.ndarray) -> None:
    got = ring.to_numpy(tensor)
    assert got.dtype == np.int64 and got.flags.c_contiguous
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


ring_ints = hnp.arrays(np.int64, st.integers(1, 6), elements=st.integers(INT64_MIN, INT64_MAX))
HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- conversion -------------------------------------------------------------------------------


def test_roundtrip_is_exact_and_c_contiguous(ring, rng):
    values = ring_values(rng, (4, 5, 3))
    same(ring, ring.from_numpy(values), values)
    same(ring, ring.from_numpy(values.transpose(2, 0, 1)), values.transpose(2, 0, 1))
    same(ring, ring.from_numpy(values[::-1, ::2]), values[::-1, ::2])
    same(ring, ring.transpose(ring.from_numpy(values), (1, 2, 0)), values.transpose(1, 2, 0))
    same(ring, ring.from_numpy(EXTREMES[3]), EXTREMES[3].reshape(()))
    assert ring.shape(ring.from_numpy(values)) == (4, 5, 3)


def test_from_numpy_copies_read_only_buffers_and_reinterprets_unsigned(ring):
    wire = np.frombuffer(EXTREMES.tobytes(), dtype=np.int64)
    assert not wire.flags.writeable
    same(ring, ring.from_numpy(wire), EXTREMES)
    same(ring, ring.from_numpy(EXTREMES.view(np.uint64)), EXTREMES)
    same(ring, ring.from_numpy(np.array([[1, -2]], dtype=np.int8)), np.array([[1, -2]], dtype=np.int64))
    with pytest.raises(TypeError, match="int64"):
        ring.from_numpy(np.array([1.5]))


def test_zeros_and_constants(ring):
    same(ring, ring.zeros((2, 3)), np.zeros((2, 3), dtype=np.int64))
    for value in EXTREMES:
        same(ring, ring.constant(int(value), (2, 1)), np.full((2, 1), value, dtype=np.int64))
    same(ring, ring.constant(7), np.array(7, dtype=np.int64))


# -- elementwise ------------------------------------------------------------------------------

BROADCASTS = [((4, 5), (4, 5)), ((4, 5), (5,)), ((3, 1, 5), (1, 4, 1)), ((), (3, 4)), ((2, 3), ())]


@pytest.mark.parametrize(("shape_a", "shape_b"), BROADCASTS)
def test_add_sub_mul_wrap_and_broadcast(ring, rng, shape_a, shape_b):
    a, b = ring_values(rng, shape_a), ring_values(rng, shape_b)
    ta, tb = ring.from_numpy(a), ring.from_numpy(b)
    same(ring, ring.add(ta, tb), wrap(exact(a) + exact(b)))
    same(ring, ring.sub(ta, tb), wrap(exact(a) - exact(b)))
    same(ring, ring.mul(ta, tb), wrap(exact(a) * exact(b)))
    same(ring, ring.bit_and(ta, tb), wrap(exact(a) & exact(b)))
    same(ring, ring.bit_xor(ta, tb), wrap(exact(a) ^ exact(b)))


def test_extremes_pairwise(ring):
    a, b = np.meshgrid(EXTREMES, EXTREMES, indexing="ij")
    ta, tb = ring.from_numpy(a), ring.from_numpy(b)
    same(ring, ring.add(ta, tb), wrap(exact(a) + exact(b)))
    same(ring, ring.mul(ta, tb), wrap(exact(a) * exact(b)))
    same(ring, ring.neg(ta), wrap(-exact(a)))
    same(ring, ring.neg(ring.from_numpy(np.array([INT64_MIN]))), np.array([INT64_MIN]))


@pytest.mark.parametrize("bits", [0, 1, 7, 16, 31, 32, 62, 63])
def test_shifts(ring, rng, bits):
    a = np.concatenate([EXTREMES, ring_values(rng, (40,))])
    ta = ring.from_numpy(a)
    same(ring, ring.shift_right(ta, bits), wrap(exact(a) >> bits))  # arithmetic: floor division
    same(ring, ring.shift_left(ta, bits), wrap(exact(a) << bits))


@pytest.mark.parametrize("bits", [-1, 64, 1.0, True])
def test_shift_amount_outside_the_word_is_refused(ring, bits):
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        ring.shift_right(ring.from_numpy(EXTREMES), bits)
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        ring.shift_left(ring.from_numpy(EXTREMES), bits)


@HYPOTHESIS
@given(data=st.data())
def test_mul_matches_python_integers(ring, data):
    a = data.draw(ring_ints)
    b = data.draw(hnp.arrays(np.int64, a.shape, elements=st.integers(INT64_MIN, INT64_MAX)))
    same(ring, ring.mul(ring.from_numpy(a), ring.from_numpy(b)), wrap(exact(a) * exact(b)))
    same(ring, ring.sub(ring.from_numpy(a), ring.from_numpy(b)), wrap(exact(a) - exact(b)))


# -- matmul -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 1, 1), (3, 7, 2), (9, 64, 5), (2, 2048, 3), (3, 2049, 2), (2, 5000, 3), (0, 3, 2), (2, 0, 3)]
)
def test_matmul_is_exact(matmul_ring, rng, m, k, n):
    a, b = ring_values(rng, (m, k)), ring_values(rng, (k, n))
    expected = wrap(exact(a) @ exact(b)) if k else np.zeros((m, n), dtype=np.int64)
    same(matmul_ring, matmul_ring.matmul(matmul_ring.from_numpy(a), matmul_ring.from_numpy(b)), expected)


# Operands whose balanced 22-bit digits (the limb path's, widths 22, 22, 20) all sit at
# -(2^21 - 1) or +(2^21 - 1): the odd digit products (2^21 - 1)^2 make a float64 dot
# product longer than 2^11 round, so these catch a wrong exactness bound.
LIMB_LOW = int(wrap(1 + 2**22 + 2**44 - (2**21 + 2**43 + 2**63)))
LIMB_HIGH = int(wrap(-1 - (2**21 + 2**43 + 2**63)))


@pytest.mark.parametrize("k", [683, 1025, 2048, 2049, 4097])
@pytest.mark.parametrize(
    "fill", [INT64_MIN, -1, INT64_MAX, LIMB_LOW, LIMB_HIGH], ids=["min", "minus-one", "max", "limb-low", "limb-high"]
)
def test_matmul_worst_case_digits(matmul_ring, k, fill):
    a = np.full((2, k), fill, dtype=np.int64)
    b = np.full((k, 3), fill, dtype=np.int64)
    b[:, 1] = LIMB_HIGH
    b[:, 2] = INT64_MIN
    same(matmul_ring, matmul_ring.matmul(matmul_ring.from_numpy(a), matmul_ring.from_numpy(b)), wrap(exact(a) @ exact(b)))


def test_matmul_on_views(matmul_ring, rng):
    a, b = ring_values(rng, (5, 4)), ring_values(rng, (3, 5))
    ta = matmul_ring.transpose(matmul_ring.from_numpy(a), (1, 0))  # (4, 5), not contiguous
    tb = matmul_ring.transpose(matmul_ring.from_numpy(b), (1, 0))  # (5, 3)
    same(matmul_ring, matmul_ring.matmul(ta, tb), wrap(exact(a).T @ exact(b).T))


@pytest.mark.parametrize(("shape_a", "shape_b"), [((2, 3), (4, 2)), ((2, 3, 4), (4, 2)), ((3,), (3, 1))])
def test_matmul_refuses_other_shapes(matmul_ring, shape_a, shape_b):
    with pytest.raises(ValueError, match=r"\(M, K\) @ \(K, N\)"):
        matmul_ring.matmul(matmul_ring.zeros(shape_a), matmul_ring.zeros(shape_b))


matrix_dims = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4))


def _matrix(data, shape):
    return data.draw(hnp.arrays(np.int64, shape, elements=st.integers(INT64_MIN, INT64_MAX)))


ring_or_extreme = st.one_of(st.sampled_from([int(v) for v in EXTREMES]), st.integers(INT64_MIN, INT64_MAX))


@HYPOTHESIS
@given(data=st.data(), dims=st.tuples(st.integers(1, 5), st.integers(1, 40), st.integers(1, 5)))
def test_matmul_matches_python_integers(matmul_ring, data, dims):
    m, k, n = dims
    a = data.draw(hnp.arrays(np.int64, (m, k), elements=ring_or_extreme))
    b = data.draw(hnp.arrays(np.int64, (k, n), elements=ring_or_extreme))
    same(matmul_ring, matmul_ring.matmul(matmul_ring.from_numpy(a), matmul_ring.from_numpy(b)), wrap(exact(a) @ exact(b)))


@HYPOTHESIS
@given(data=st.data(), dims=matrix_dims)
def test_matmul_distributes_over_add(matmul_ring, data, dims):
    m, k, n = dims
    a, b, c = _matrix(data, (m, k)), _matrix(data, (k, n)), _matrix(data, (k, n))
    ta, tb, tc = (matmul_ring.from_numpy(x) for x in (a, b, c))
    left = matmul_ring.matmul(ta, matmul_ring.add(tb, tc))
    right = matmul_ring.add(matmul_ring.matmul(ta, tb), matmul_ring.matmul(ta, tc))
    np.testing.assert_array_equal(matmul_ring.to_numpy(left), matmul_ring.to_numpy(right))
    same(matmul_ring, left, wrap(exact(a) @ (exact(b) + exact(c))))


@HYPOTHESIS
@given(data=st.data(), dims=matrix_dims, p=st.integers(1, 3))
def test_matmul_is_associative(matmul_ring, data, dims, p):
    m, k, n = dims
    a, b, c = _matrix(data, (m, k)), _matrix(data, (k, n)), _matrix(data, (n, p))
    ta, tb, tc = (matmul_ring.from_numpy(x) for x in (a, b, c))
    same(matmul_ring, matmul_ring.matmul(matmul_ring.matmul(ta, tb), tc), matmul_ring.to_numpy(matmul_ring.matmul(ta, matmul_ring.matmul(tb, tc))))


# -- layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "keepdims"), [(0, False), (-1, True), ((0, 2), False), ((1,), True), ((), False)])
def test_sum_wraps(ring, rng, axis, keepdims):
    a = ring_values(rng, (3, 4, 5))
    a[:, 0, :] = INT64_MAX
    expected = wrap(np.sum(exact(a), axis=axis, keepdims=keepdims)) if axis != () else a
    same(ring, ring.sum(ring.from_numpy(a), axis=axis, keepdims=keepdims), expected)


def test_reshape_transpose_broadcast_concat_stack(ring, rng):
    a, b = ring_values(rng, (2, 3, 4)), ring_values(rng, (2, 3, 4))
    ta, tb = ring.from_numpy(a), ring.from_numpy(b)
    same(ring, ring.reshape(ta, (6, -1)), a.reshape(6, 4))
    same(ring, ring.transpose(ta, (2, 0, 1)), a.transpose(2, 0, 1))
    same(ring, ring.broadcast_to(ring.from_numpy(a[:, :1]), (5, 2, 3, 4)), np.broadcast_to(a[:, :1], (5, 2, 3, 4)))
    same(ring, ring.concat([ta, tb], axis=1), np.concatenate([a, b], axis=1))
    same(ring, ring.stack([ta, tb], axis=2), np.stack([a, b], axis=2))
    same(ring, ring.stack([ta, tb]), np.stack([a, b]))


@pytest.mark.parametrize("pads", [[(0, 0), (1, 2), (0, 3)], [(2, 0), (0, 0), (0, 0)], [(0, 0)] * 3])
def test_pad_with_zeros(ring, rng, pads):
    a = ring_values(rng, (2, 3, 4))
    same(ring, ring.pad(ring.from_numpy(a), pads), np.pad(a, pads))


@pytest.mark.parametrize("pads", [[(1, 1)], [(0, 0), (0, -1), (0, 0)], [(0, 0), (1,), (0, 0)]])
def test_pad_refuses_bad_pads(ring, pads):
    with pytest.raises(ValueError, match="pad expects"):
        ring.pad(ring.zeros((2, 3, 4)), pads)


@pytest.mark.parametrize(
    ("axis", "indices"),
    [
        (0, np.array([2, 0, 2, 1])),
        (1, np.array([[0, 4], [-1, -5], [3, 3]])),
        (-1, np.array(2)),
        (2, np.array([], dtype=np.int64)),
        (1, np.arange(5, dtype=np.int32)),
    ],
)
def test_gather_is_take(ring, rng, axis, indices):
    a = ring_values(rng, (3, 5, 4))
    same(ring, ring.gather(ring.from_numpy(a), indices, axis=axis), np.take(a, indices, axis=axis))


@pytest.mark.parametrize("indices", [np.array([0, 3]), np.array([-4]), np.array([[1], [7]])])
def test_gather_refuses_out_of_range_indices(ring, indices):
    with pytest.raises(IndexError, match="out of range"):
        ring.gather(ring.zeros((3, 2)), indices, axis=0)


def test_segment_sum_matches_python_and_wraps(ring, rng):
    ids = np.array([[0, 3, 0], [3, 3, 1]])
    data = ring_values(rng, (2, 3, 4))
    data[:, :, 0] = INT64_MAX
    expected = np.zeros((5, 4), dtype=object)
    for (r, c), seg in np.ndenumerate(ids):
        expected[seg] += exact(data[r, c])
    same(ring, ring.segment_sum(ring.from_numpy(data), ids, 5), wrap(expected))
    expected_rows = np.zeros((4, 4), dtype=object)
    for c, seg in enumerate(ids[0]):
        expected_rows[seg] += exact(data[0, c])
    same(ring, ring.segment_sum(ring.from_numpy(data[0]), ids[0], 4), wrap(expected_rows))


def test_segment_sum_one_dimensional(ring, rng):
    ids = np.array([2, 0, 2, 2, 1])
    data = ring_values(rng, (5,))
    expected = np.zeros(3, dtype=object)
    for i, seg in enumerate(ids):
        expected[seg] += int(data[i])
    same(ring, ring.segment_sum(ring.from_numpy(data), ids, 3), wrap(expected))


def test_segment_sum_refuses_bad_ids(ring):
    with pytest.raises(IndexError, match="segment ids must lie in"):
        ring.segment_sum(ring.zeros((3, 2)), np.array([0, 1, 3]), 3)
    with pytest.raises(IndexError, match="segment ids must lie in"):
        ring.segment_sum(ring.zeros((3, 2)), np.array([0, -1, 1]), 3)
    with pytest.raises(ValueError, match="leading axes"):
        ring.segment_sum(ring.zeros((3, 2)), np.array([0, 1]), 3)


def _inner(x: np.ndarray, y: np.ndarray) -> int:
    return int(wrap(np.sum(exact(x) * exact(y))))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 6),
    index_shape=st.sampled_from([(4,), (2, 3), (1,), (3, 1, 2)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_segment_sum_is_the_adjoint_of_gather(ring, n, index_shape, seed):
    """<gather(x, idx), y> = <x, segment_sum(y, idx, n)> in Z_2^64, for indices of any shape."""
    r = np.random.default_rng(seed)
    x = ring_values(r, (n, 3))
    idx = r.integers(0, n, size=index_shape)
    y = ring_values(r, (*index_shape, 3))
    gathered = ring.to_numpy(ring.gather(ring.from_numpy(x), idx, axis=0))
    scattered = ring.to_numpy(ring.segment_sum(ring.from_numpy(y), idx, n))
    assert _inner(gathered, y) == _inner(x, scattered)


def test_compile_keeps_results(ring, rng):
    a, b = ring_values(rng, (3, 4)), ring_values(rng, (4, 2))

    def affine(x, y):
        return ring.shift_right(ring.add(ring.matmul(x, y), ring.constant(5)), 3)

    compiled = ring.compile(affine)
    expected = wrap(exact(wrap(exact(a) @ exact(b) + 5)) >> 3)
    same(ring, compiled(ring.from_numpy(a), ring.from_numpy(b)), expected)


# -- torch specifics --------------------------------------------------------------------------


def test_torch_auto_times_the_paths_once_per_shape_class(tmp_path):
    import backends.torch_spdz.kernels as tk

    ring = tk.TorchKernels(kernel_cache=tmp_path)
    choice = ring.matmul_path_for(100, 30, 20)
    assert choice in tk.CPU_PATHS
    (row,) = ring.chooser.table()
    assert row["shape_class"] == "matmul 128x32x32" and row["shape"] == "100x30x20" and row["choice"] == choice
    assert all(row[f"{p}_ms"] > 0 for p in tk.CPU_PATHS)
    # the same class is not timed again, in this object or in a new one reading the cache
    assert ring.matmul_path_for(120, 17, 32) == choice and len(ring.chooser.table()) == 1
    again = tk.TorchKernels(kernel_cache=tmp_path)
    again.chooser._measure = None  # would fail if called
    assert again.matmul_path_for(128, 32, 32) == choice
    assert tk.TorchKernels(matmul="limbs16").matmul_path_for(4096, 4096, 4096) == "limbs16"
    assert tk.TorchKernels(matmul="int64").matmul_path_for(4096, 4096, 4096) == "int64"
    if torch.cuda.is_available():
        assert tk.TorchKernels(device="cuda").matmul_path_for(1, 1, 1) == "limbs"
    with pytest.raises(ValueError, match="matmul must be"):
        tk.TorchKernels(matmul="float")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_torch_refuses_cuda_without_cuda():
    from backends.torch_spdz.kernels import TorchKernels

    with pytest.raises(ValueError, match="needs CUDA"):
        TorchKernels(device="cuda")


def test_torch_from_numpy_shares_writable_cpu_memory():
    from backends.torch_spdz.kernels import TorchKernels

    array = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert np.shares_memory(TorchKernels().from_numpy(array).numpy(), array)


@pytest.mark.parametrize(("m", "k", "n"), [(7, 2100, 3), (5, 2048, 4), (3, 5000, 2), (33, 9, 17)])
@pytest.mark.parametrize("layout", ["limbs", "limbs16", "batched"])
def test_torch_limb_layouts_in_small_blocks(monkeypatch, rng, m, k, n, layout):
    """Every limb layout (CPU blocked with either scheme, CUDA batched), forced through
    many small blocks of rows."""
    import backends.torch_spdz.kernels as tk
    from bridge.mpc.limbs import SCHEMES

    monkeypatch.setattr(tk, "CPU_BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(tk, "CUDA_BLOCK_ELEMENTS", 64)
    ring = tk.TorchKernels(matmul="limbs")
    a, b = ring_values(rng, (m, k)), ring_values(rng, (k, n))
    a[0], b[:, 0] = LIMB_LOW, LIMB_HIGH
    ta, tb = ring.from_numpy(a), ring.from_numpy(b)
    got = ring._limb_matmul_batched(ta, tb) if layout == "batched" else ring._limb_matmul_blocked(ta, tb, SCHEMES[layout])
    same(ring, got, wrap(exact(a) @ exact(b)))


# A 16-bit balanced scheme that claims only 2^11 exact terms per sum: K of a few
# thousand then runs through several chunks, partial float sums of 1 or 2 pairs, and
# the shift-and-mask extraction with widths of 16 (the real schemes never split there).
TIGHT16 = LimbScheme("tight16", 16, 4, 21)


@pytest.mark.parametrize("k", [600, 683, 1000, 1025, 2049, 5000])
def test_limb_chunks_and_partial_sums_stay_exact(rng, k):
    from backends.torch_spdz.kernels import TorchKernels

    ring = TorchKernels(matmul="limbs")
    a, b = ring_values(rng, (3, k)), ring_values(rng, (k, 2))
    a[1], b[:, 1] = -1, INT64_MIN
    expected = wrap(exact(a) @ exact(b))
    same(ring, ring._limb_matmul_blocked(ring.from_numpy(a), ring.from_numpy(b), TIGHT16), expected)
    tf_ring = _ring("tensorflow:limbs")
    same(tf_ring, tf_ring.limb_matmul(tf_ring.from_numpy(a), tf_ring.from_numpy(b), TIGHT16), expected)


def test_limb_plan_bounds():
    """Every float64 sum the plan allows stays below 2^53: pairs * K * max|digit product|."""
    for scheme in (LIMBS22, LIMBS16, TIGHT16):
        for k in (1, 25, 400, 682, 683, 784, 1024, 2048, 2049, 5000, 2**21 + 1):
            size = chunk_size(k, scheme)
            assert size <= scheme.max_terms and -(-k // size) * size >= k
            assert pairs_per_sum(size, scheme) * size * 2 ** (2 * scheme.digit_bits) <= 2**53
    assert LIMBS22.widths == (22, 22, 20) and LIMBS16.widths == (16,) * 4
    assert (LIMBS22.products, LIMBS16.products) == (6, 10)


def test_party_threads_share_the_cores_instead_of_oversubscribing_them(monkeypatch):
    """Embedded mode: each party thread gets cores // (parties in the protocol) intra-op
    threads (at least one, never more than the caller's), and the caller's count comes back."""
    import os

    from backends.torch_spdz.kernels import TorchKernels
    from bridge.ir import Numerics
    from bridge.mpc.runtime import ThreadedParties

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(6)
    try:
        parties = ThreadedParties(("server0", "server1", "dealer", "client"), TorchKernels(kernel_cache=False),
                                  Numerics(), ("server0", "server1"), "dealer")
        seen = parties.run(lambda ctx: torch.get_num_threads())
        assert seen == {"server0": 2, "server1": 2, "dealer": 2, "client": 2}  # 8 cores // 3 in the protocol
        assert torch.get_num_threads() == 6
        torch.set_num_threads(1)
        assert set(parties.run(lambda ctx: torch.get_num_threads()).values()) == {1}
    finally:
        torch.set_num_threads(before)
