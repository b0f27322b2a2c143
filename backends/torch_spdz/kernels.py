"""Exact Z_2^64 kernels on PyTorch int64 tensors, on CPU or CUDA.

Elementwise int64 arithmetic in PyTorch wraps modulo 2^64 on both devices.  The one
kernel that needs care is ``matmul``.  CUDA has no int64 matmul at all (``addmm_cuda``
is not implemented for Long), so there it always runs as float64 products of 22-bit
limbs, exact by construction.  On CPU there are three exact paths, and which is fastest
depends on the host: PyTorch's int64 matmul (no BLAS: 1.3 ms for (128, 784) @
(784, 128) on one Intel host, 27 ms on an AMD EPYC), and two float64 limb layouts
(``bridge.mpc.limbs``: six products of 22-bit limbs, or ten of 16-bit limbs read by a
dtype view).  ``matmul="auto"`` times them once per shape class on this host and
caches the answer (``bridge.mpc.calibration``); ``privacy-bridge bench --kernels``
prints the table.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from bridge.mpc.calibration import KernelChooser
from bridge.mpc.kernels import RingKernels
from bridge.mpc.limbs import LIMBS16, LIMBS22, SCHEMES, LimbScheme, chunk_size, pairs_per_sum
from bridge.mpc.numpy_kernels import (
    as_int64_array,
    check_matmul,
    check_pads,
    check_segment_ids,
    check_shift,
    check_take_indices,
    normalize_axis,
)

MatmulPath = Literal["auto", "int64", "limbs", "limbs16"]
#: the exact CPU paths, in order of preference on a tie
CPU_PATHS = ("int64", "limbs", "limbs16") if sys.byteorder == "little" else ("int64", "limbs")

# The CUDA layout (one batched matmul of all pairs): x = sum_i d_i 2^(22 i) mod 2^64 with
# balanced digits of widths (22, 22, 20); pairs i + j < 3.
LIMB_BITS = LIMBS22.width
LIMB_WIDTHS = LIMBS22.widths
LIMB_PAIRS = tuple((i, j) for i in range(3) for j in range(3) if i + j < 3)
# |d_i e_j| <= 2^21 * 2^21 = 2^42, so a float64 dot product of length K is exact (every
# partial sum is an integer of magnitude <= K * 2^42 <= 2^53) for K <= 2^11.
MAX_EXACT_K = LIMBS22.max_terms
# Elements per temporary.  On CPU, 2^21 (16 MiB) stays below glibc's 32 MiB mmap
# threshold, above which every fresh temporary costs page faults (limb extraction for a
# (4096, 784) operand: 164 ms in one piece).  On CUDA, larger batches mean fewer launches.
CPU_BLOCK_ELEMENTS = 2**21
CUDA_BLOCK_ELEMENTS = 2**25


def _wrap64(value: int) -> int:
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


def _offset(scheme: LimbScheme) -> int:
    """x + offset has the plain digits d_i + 2^(w_i - 1) of the balanced ones."""
    return _wrap64(sum(1 << (w - 1 + scheme.width * i) for i, w in enumerate(scheme.widths)))


class TorchKernels(RingKernels):
    """Z_2^64 on torch int64 tensors.

    ``device``: "cpu" (default), "cuda", "cuda:1", or a ``torch.device``.
    ``matmul``: "auto" times the exact paths once per shape class and uses the fastest;
    "int64", "limbs" (22-bit) or "limbs16" force one (benchmarks, tests).  CUDA has
    only "limbs".  ``kernel_cache``: where "auto" keeps its timings (a directory;
    ``None``: the user's cache directory; ``False``: memory only).
    """

    name = "torch"

    def __init__(
        self,
        device: str | torch.device = "cpu",
        matmul: MatmulPath = "auto",
        kernel_cache: Path | str | None | bool = None,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"TorchKernels(device={str(device)!r}) needs CUDA, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}). Use device='cpu' or install a CUDA build of PyTorch."
            )
        paths = CPU_PATHS if self.device.type == "cpu" else ("limbs",)
        if matmul != "auto" and matmul not in paths:
            raise ValueError(
                f"matmul must be 'auto' or one of {list(paths)} on {self.device.type}; received {matmul!r}"
            )
        self.matmul_path: MatmulPath = matmul
        self.chooser = KernelChooser(
            host={"backend": "torch", "framework": f"torch {torch.__version__}", "device": str(self.device)},
            candidates=paths,
            threads=torch.get_num_threads,
            cache=Path(kernel_cache) if isinstance(kernel_cache, str) else kernel_cache,
            forced=None if matmul == "auto" else matmul,
        )

        dev = self.device
        shifts = [LIMB_BITS * i for i in range(len(LIMB_WIDTHS))]
        halves = [1 << (w - 1) for w in LIMB_WIDTHS]
        self._limb_offset = _offset(LIMBS22)
        self._limb_shifts = torch.tensor(shifts, dtype=torch.int64, device=dev).view(-1, 1, 1)
        masks = [(1 << w) - 1 for w in LIMB_WIDTHS]
        self._limb_masks = torch.tensor(masks, dtype=torch.int64, device=dev).view(-1, 1, 1)
        self._limb_halves = torch.tensor(halves, dtype=torch.float64, device=dev).view(-1, 1, 1)
        self._pair_left = torch.tensor([i for i, _ in LIMB_PAIRS], dtype=torch.int64, device=dev)
        self._pair_right = torch.tensor([j for _, j in LIMB_PAIRS], dtype=torch.int64, device=dev)
        self._pair_weights = torch.tensor(
            [1 << (LIMB_BITS * (i + j)) for i, j in LIMB_PAIRS], dtype=torch.int64, device=dev
        ).view(-1, 1, 1, 1)

    # -- threads ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def parallel_parties(self, count: int) -> Iterator[None]:
        """Intra-op threads = cores // parties (at least 1, at most the current setting) while
        ``count`` party threads share this process.  torch's thread count is global, but each
        new thread takes it up when it first runs an op, so the party threads the runner
        starts inside this block run with it; the caller's setting is restored after.
        Measured on a loaded 2-core host: a float64 matmul of the conv1 shape took 1.8 ms
        with one thread and 96 ms with two, when several threads ran teams at once."""
        if self.device.type != "cpu":
            yield
            return
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        before = torch.get_num_threads()
        want = max(1, min(before, cores // max(1, count)))
        if want != before:
            torch.set_num_threads(want)
        try:
            yield
        finally:
            if want != before:
                torch.set_num_threads(before)

    # -- conversion ---------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray) -> torch.Tensor:
        array = as_int64_array(array)
        # torch.from_numpy shares memory; it cannot take negative strides, and sharing a
        # read-only buffer (e.g. np.frombuffer on received bytes) would let torch write to it.
        if not array.flags.writeable or any(s < 0 for s in array.strides):
            array = np.array(array, dtype=np.int64, order="C")
        return torch.from_numpy(array).to(self.device)

    def to_numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return np.asarray(tensor.detach().cpu().numpy(), dtype=np.int64, order="C")

    def shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        return tuple(tensor.shape)

    def zeros(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=torch.int64, device=self.device)

    def constant(self, value: int, shape: Sequence[int] = ()) -> torch.Tensor:
        return torch.full(tuple(shape), _wrap64(int(value)), dtype=torch.int64, device=self.device)

    # -- elementwise ------------------------------------------------------------------------
    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.add(a, b)

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sub(a, b)

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.mul(a, b)

    def neg(self, a: torch.Tensor) -> torch.Tensor:
        return torch.neg(a)

    # -- bitwise ----------------------------------------------------------------------------
    def bit_and(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bitwise_and(a, b)

    def bit_xor(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bitwise_xor(a, b)

    def shift_right(self, a: torch.Tensor, bits: int) -> torch.Tensor:
        return torch.bitwise_right_shift(a, check_shift(bits))  # arithmetic on int64

    def shift_left(self, a: torch.Tensor, bits: int) -> torch.Tensor:
        return torch.bitwise_left_shift(a, check_shift(bits))

    # -- linear algebra -----------------------------------------------------------------------
    def matmul_path_for(self, m: int, k: int, n: int) -> str:
        """The exact path ``matmul`` takes for (m, k) @ (k, n); on first use of a shape
        class under "auto", the candidates are timed on this host (``KernelChooser``)."""
        return self.chooser.choose("matmul", (m, k, n), lambda path: self._bench(path, m, k, n))

    def _bench(self, path: str, m: int, k: int, n: int):
        """One run of ``path`` on operands of this shape (values do not change the timing)."""
        a = torch.arange(m * k, dtype=torch.int64, device=self.device).mul_(0x9E3779B97F4A7C15 - (1 << 64))
        b = torch.arange(k * n, dtype=torch.int64, device=self.device).mul_(0x632BE59BD9B4E019)
        a, b = a.view(m, k), b.view(k, n)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        def run() -> None:
            self._matmul_by(path, a, b)
            sync()

        return run

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        check_matmul(tuple(a.shape), tuple(b.shape))
        (m, k), n = a.shape, b.shape[1]
        return self._matmul_by(self.matmul_path_for(m, k, n), a, b)

    def _matmul_by(self, path: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if path == "int64":
            return torch.matmul(a, b)
        return self.limb_matmul(a, b, SCHEMES[path])

    def limb_matmul(self, a: torch.Tensor, b: torch.Tensor, scheme: LimbScheme = LIMBS22) -> torch.Tensor:
        """a @ b mod 2^64 from float64 products of limbs; exact for any K (``bridge.mpc.limbs``).

        On CPU the limbs of each K-chunk lie side by side, so that each S_t is one
        float64 matmul (``_limb_matmul_blocked``); on CUDA all pairs and chunks go into
        one batched matmul (few kernel launches).
        """
        (m, k), n = a.shape, b.shape[1]
        if m == 0 or n == 0 or k == 0:
            return torch.zeros((m, n), dtype=torch.int64, device=a.device)
        if a.device.type == "cpu":
            return self._limb_matmul_blocked(a, b, scheme)
        return self._limb_matmul_batched(a, b)

    def _fill_limbs(self, x: torch.Tensor, out: list[torch.Tensor], scheme: LimbScheme) -> None:
        """Write the float64 digits of x into ``out[i]`` (views of one buffer)."""
        if scheme is LIMBS16:  # the four 16-bit words of each int64, little-endian: a view
            words = x.contiguous().view(torch.uint16).view(*x.shape, 4)
            for i, dest in enumerate(out):
                dest.copy_(words[..., i])
            return
        y = torch.add(x, _offset(scheme))
        for i, (dest, w) in enumerate(zip(out, scheme.widths, strict=True)):
            digit = torch.bitwise_right_shift(y, scheme.width * i) if i else y
            dest.copy_(torch.bitwise_and(digit, (1 << w) - 1))
            dest.sub_(float(1 << (w - 1)))

    def _limb_matmul_blocked(self, a: torch.Tensor, b: torch.Tensor, scheme: LimbScheme = LIMBS22) -> torch.Tensor:
        """Per K-chunk and block of rows: A's limbs stacked along the rows, one float64
        matmul per limb of B (``[A_0; ...; A_{L-1-j}] @ B_j``), each S_t summed in float64
        while exact, then shifted into the int64 result."""
        (m, k), n = a.shape, b.shape[1]
        count, width = scheme.count, scheme.width
        size = chunk_size(k, scheme)
        rows = max(1, CPU_BLOCK_ELEMENTS // (count * max(size, n)))
        out = torch.zeros((m, n), dtype=torch.int64, device=a.device)
        for k0 in range(0, k, size):
            part = min(size, k - k0)
            group = pairs_per_sum(part, scheme)
            b_limbs = torch.empty((count, part, n), dtype=torch.float64, device=a.device)
            self._fill_limbs(b[k0 : k0 + part], list(b_limbs), scheme)
            for r0 in range(0, m, rows):
                block = a[r0 : r0 + rows, k0 : k0 + part]
                height = block.shape[0]
                a_limbs = torch.empty((count, height, part), dtype=torch.float64, device=a.device)
                self._fill_limbs(block, list(a_limbs), scheme)
                # products[j][i] = A_i @ B_j for i + j < count, exact integers in float64
                products = [
                    torch.mm(a_limbs[: count - j].view(-1, part), b_limbs[j]).view(count - j, height, n)
                    for j in range(count)
                ]
                target = out[r0 : r0 + rows]
                for t in range(count):
                    for first in range(0, t + 1, group):
                        terms = [products[t - i][i] for i in range(first, min(t + 1, first + group))]
                        total = terms[0] if len(terms) == 1 else torch.add(terms[0], terms[1])
                        for term in terms[2:]:
                            total.add_(term)
                        total = total.to(torch.int64)  # exact: an integer of magnitude <= 2^53
                        if t:
                            total.bitwise_left_shift_(width * t)
                        target.add_(total)
        return out

    def _limbs(self, x: torch.Tensor) -> torch.Tensor:
        """(3, *x.shape) float64 balanced digits: x = sum_i d_i 2^(22 i) mod 2^64."""
        digits = torch.bitwise_and(
            torch.bitwise_right_shift((x + self._limb_offset).unsqueeze(0), self._limb_shifts), self._limb_masks
        )
        return digits.to(torch.float64) - self._limb_halves

    def _limb_matmul_batched(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        (m, k), n = a.shape, b.shape[1]
        chunks = -(-k // MAX_EXACT_K)
        chunk = -(-k // chunks)
        if chunks * chunk != k:  # zero padding adds zero products: still exact
            a = F.pad(a, (0, chunks * chunk - k))
            b = F.pad(b, (0, 0, 0, chunks * chunk - k))
        b_pairs = self._limbs(b).view(3, chunks, chunk, n).index_select(0, self._pair_right)
        pairs = len(LIMB_PAIRS)
        rows = max(1, CUDA_BLOCK_ELEMENTS // (pairs * chunks * max(n, chunk)))
        blocks = []
        for r0 in range(0, m, rows):
            a_limbs = self._limbs(a[r0 : r0 + rows]).view(3, -1, chunks, chunk).transpose(1, 2)
            a_pairs = a_limbs.index_select(0, self._pair_left)  # (6, C, rows, chunk)
            products = torch.matmul(a_pairs, b_pairs).to(torch.int64)  # (6, C, rows, N), exact
            blocks.append(torch.sum(products * self._pair_weights, dim=(0, 1)))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)

    # -- layout ---------------------------------------------------------------------------------
    def sum(self, a: torch.Tensor, axis: int | tuple[int, ...], keepdims: bool = False) -> torch.Tensor:
        if isinstance(axis, tuple) and not axis:
            return a
        return torch.sum(a, dim=axis, keepdim=keepdims, dtype=torch.int64)

    def reshape(self, a: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return torch.reshape(a, tuple(shape))

    def transpose(self, a: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
        return torch.permute(a, tuple(perm))

    def broadcast_to(self, a: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return torch.broadcast_to(a, tuple(shape))

    def pad(self, a: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
        pairs = check_pads(pads, a.dim())
        flat = [p for pair in reversed(pairs) for p in pair]  # torch pads the last axis first
        return F.pad(a, flat, mode="constant", value=0) if any(flat) else a

    def _index(self, indices: np.ndarray) -> torch.Tensor:
        flat = np.ascontiguousarray(indices.reshape(-1))
        if not flat.flags.writeable:  # cached plans are read-only; torch wants writable memory
            flat = flat.copy()
        return torch.from_numpy(flat).to(self.device)

    def gather(self, a: torch.Tensor, indices: np.ndarray, axis: int) -> torch.Tensor:
        axis = normalize_axis(axis, a.dim())
        idx = check_take_indices(indices, a.shape[axis], axis)
        picked = torch.index_select(a, axis, self._index(idx))
        return picked.reshape(*a.shape[:axis], *idx.shape, *a.shape[axis + 1 :])

    def segment_sum(self, a: torch.Tensor, segment_ids: np.ndarray, num_segments: int) -> torch.Tensor:
        ids = check_segment_ids(segment_ids, tuple(a.shape), num_segments)
        rest = tuple(a.shape[np.ndim(segment_ids) :])
        out = torch.zeros((num_segments, *rest), dtype=torch.int64, device=a.device)
        return out.index_add_(0, self._index(ids), a.reshape(ids.size, *rest))

    def concat(self, tensors: Sequence[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(list(tensors), dim=axis)

    def stack(self, tensors: Sequence[torch.Tensor], axis: int = 0) -> torch.Tensor:
        return torch.stack(list(tensors), dim=axis)

    def unstack(self, a: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.unbind(a, 0))  # views: no copies, one dispatch
