"""Exact Z_2^64 kernels on PyTorch int64 tensors, on CPU or CUDA.

Elementwise int64 arithmetic in PyTorch wraps modulo 2^64 on both devices.  The one
kernel that needs care is ``matmul``.  CUDA has no int64 matmul at all (``addmm_cuda``
is not implemented for Long), so there it always runs as float64 products of 22-bit
limbs, exact by construction (``limb_matmul``).  On CPU, PyTorch's int64 matmul is
exact but single-threaded, while float64 matmul uses every core; ``auto`` picks per
call (``matmul_path_for``), from these measurements (``scripts/bench_kernels.py``):

  * 2 cores (EPYC, torch 2.13): int64 wins every shape we ran, e.g. (128, 784) @
    (784, 128) 0.76 ms vs 3.0 ms for limbs: float64 is only 2-3x faster than int64
    there, and the limb path needs six float64 products plus limb extraction.
  * 16 cores (torch 2.11): float64 is 20-40x faster than int64.  Limbs win by 1.6-3.8x
    from 2^27 multiply-adds up ((512, 512) @ (512, 512), (4096, 784) @ (784, 128),
    (1024, 1024) @ (1024, 1024): 34 ms vs 131 ms) at 8 or 16 threads; below that the
    outcome flips from run to run with threading overhead, so int64 is kept there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from bridge.mpc.kernels import RingKernels
from bridge.mpc.numpy_kernels import (
    as_int64_array,
    check_matmul,
    check_pads,
    check_segment_ids,
    check_shift,
    check_take_indices,
    normalize_axis,
)

MatmulPath = Literal["auto", "int64", "limbs"]

# Limb layout: x = sum_i d_i 2^(22 i) mod 2^64 with balanced digits d_i in
# [-2^(w_i - 1), 2^(w_i - 1)) of widths (22, 22, 20).  A product d_i e_j with i + j >= 3
# is shifted by at least 66 bits and vanishes mod 2^64, which leaves 6 pairs.
LIMB_BITS = 22
LIMB_WIDTHS = (22, 22, 20)
LIMB_PAIRS = tuple((i, j) for i in range(3) for j in range(3) if i + j < 3)
# |d_i e_j| <= 2^21 * 2^21 = 2^42, so a float64 dot product of length K is exact (every
# partial sum is an integer of magnitude <= K * 2^42 <= 2^53) for K <= 2^11.
MAX_EXACT_K = 2 ** (53 - 2 * (LIMB_BITS - 1))
# CPU "auto" takes the limb path from this many threads and multiply-adds (measured).
CPU_LIMB_MIN_THREADS = 8
CPU_LIMB_MIN_MACS = 2**27
# Elements per temporary.  On CPU, 2^21 (16 MiB) stays below glibc's 32 MiB mmap
# threshold, above which every fresh temporary costs page faults (limb extraction for a
# (4096, 784) operand: 164 ms in one piece).  On CUDA, larger batches mean fewer launches.
CPU_BLOCK_ELEMENTS = 2**21
CUDA_BLOCK_ELEMENTS = 2**25


def _wrap64(value: int) -> int:
    value %= 1 << 64
    return value - (1 << 64) if value >= 1 << 63 else value


class TorchKernels(RingKernels):
    """Z_2^64 on torch int64 tensors.

    ``device``: "cpu" (default), "cuda", "cuda:1", or a ``torch.device``.
    ``matmul``: "auto" picks the faster exact path per call (``matmul_path_for``);
    "int64" and "limbs" force one (benchmarks, tests).  "int64" fails on CUDA.
    """

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu", matmul: MatmulPath = "auto") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"TorchKernels(device={str(device)!r}) needs CUDA, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}). Use device='cpu' or install a CUDA build of PyTorch."
            )
        if matmul not in ("auto", "int64", "limbs"):
            raise ValueError(f"matmul must be 'auto', 'int64' or 'limbs'; received {matmul!r}")
        self.matmul_path: MatmulPath = matmul

        dev = self.device
        shifts = [LIMB_BITS * i for i in range(len(LIMB_WIDTHS))]
        halves = [1 << (w - 1) for w in LIMB_WIDTHS]
        # x + offset has the plain digits d_i + half_i: offset = sum_i half_i 2^(22 i).
        self._limb_offset = _wrap64(sum(h << s for h, s in zip(halves, shifts, strict=True)))
        self._limb_shifts = torch.tensor(shifts, dtype=torch.int64, device=dev).view(-1, 1, 1)
        masks = [(1 << w) - 1 for w in LIMB_WIDTHS]
        self._limb_masks = torch.tensor(masks, dtype=torch.int64, device=dev).view(-1, 1, 1)
        self._limb_halves = torch.tensor(halves, dtype=torch.float64, device=dev).view(-1, 1, 1)
        self._pair_left = torch.tensor([i for i, _ in LIMB_PAIRS], dtype=torch.int64, device=dev)
        self._pair_right = torch.tensor([j for _, j in LIMB_PAIRS], dtype=torch.int64, device=dev)
        self._pair_weights = torch.tensor(
            [1 << (LIMB_BITS * (i + j)) for i, j in LIMB_PAIRS], dtype=torch.int64, device=dev
        ).view(-1, 1, 1, 1)

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
        """The exact path ``matmul`` takes for (m, k) @ (k, n): "int64" or "limbs"."""
        if self.matmul_path != "auto":
            return self.matmul_path
        if self.device.type != "cpu":
            return "limbs"
        many_threads = torch.get_num_threads() >= CPU_LIMB_MIN_THREADS
        return "limbs" if many_threads and m * k * n >= CPU_LIMB_MIN_MACS else "int64"

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        check_matmul(tuple(a.shape), tuple(b.shape))
        (m, k), n = a.shape, b.shape[1]
        if self.matmul_path_for(m, k, n) == "int64":
            return torch.matmul(a, b)
        return self.limb_matmul(a, b)

    def limb_matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b mod 2^64 from float64 products of 22-bit balanced limbs; exact for any K.

        1. Write a = sum_i A_i 2^(22 i) and b = sum_j B_j 2^(22 j) (mod 2^64) with
           integer digits |A_i|, |B_j| <= 2^21, held in float64.
        2. Cut K into chunks of at most 2^11, so that A_i @ B_j over one chunk is an
           integer of magnitude <= 2^53: computed exactly by any float64 matmul.
        3. a @ b = sum over chunks and the 6 pairs i + j < 3 of
           int64(A_i @ B_j) * 2^(22 (i + j)), summed in wrapping int64.
        On CUDA the pairs and chunks go into one batched matmul (few kernel launches);
        on CPU each pair is one 2-D matmul per block of rows (BLAS threads 2-D products
        better than small batches; small temporaries avoid page faults).
        """
        (m, k), n = a.shape, b.shape[1]
        if m == 0 or n == 0 or k == 0:
            return torch.zeros((m, n), dtype=torch.int64, device=a.device)
        if a.device.type == "cpu":
            return self._limb_matmul_blocked(a, b)
        return self._limb_matmul_batched(a, b)

    def _limbs(self, x: torch.Tensor) -> torch.Tensor:
        """(3, *x.shape) float64 balanced digits: x = sum_i d_i 2^(22 i) mod 2^64."""
        digits = torch.bitwise_and(
            torch.bitwise_right_shift((x + self._limb_offset).unsqueeze(0), self._limb_shifts), self._limb_masks
        )
        return digits.to(torch.float64) - self._limb_halves

    def _limb_matmul_blocked(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        (m, k), n = a.shape, b.shape[1]
        chunks = -(-k // MAX_EXACT_K)
        chunk = -(-k // chunks)
        rows = max(1, CPU_BLOCK_ELEMENTS // (3 * max(chunk, n)))
        out = torch.zeros((m, n), dtype=torch.int64, device=a.device)
        for k0 in range(0, k, chunk):
            b_limbs = self._limbs(b[k0 : k0 + chunk])
            for r0 in range(0, m, rows):
                a_limbs = self._limbs(a[r0 : r0 + rows, k0 : k0 + chunk])
                block = out[r0 : r0 + rows]
                for i, j in LIMB_PAIRS:
                    product = torch.matmul(a_limbs[i], b_limbs[j]).to(torch.int64)  # exact
                    if i + j:
                        product.mul_(1 << (LIMB_BITS * (i + j)))
                    block.add_(product)
        return out

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
