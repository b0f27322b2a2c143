"""Secure Conv2DTranspose: a 'valid' convolution of the zero-dilated, zero-padded input with the
spatially flipped kernel (registered in ``bridge.mpc.layers.SECURE_FORWARD``).

The full transposed convolution is full[p] = sum_{i s + a = p} x[i] K[a] on each axis.  With x_d
the input with s - 1 zeros after each cell and k - 1 - o zeros before it (o the cells Keras
drops before its output, ``reference_attention.conv_transpose_offset``), the output is the
valid correlation of x_d with K flipped: y[j] = sum_t x_d[j + t] K[k - 1 - t].  Dilation,
padding and flipping are local (zeros are shares of zero), so the whole op is one Beaver
product of the bilinear map (x, K) -> conv(dilate(x), flip(K)) with the masked Keras kernel,
then one truncation: conv2d's cost on the dilated input and its error (2^-16 per output).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.im2col import im2col_plan
from bridge.ir import Node
from bridge.ir.shapes_attention import transpose_output
from bridge.mpc.kernels import RingKernels, Tensor
from bridge.mpc.protocol import Masked, Shared, add, beaver, truncate
from bridge.reference_attention import conv_transpose_offset


def _dilate_and_pad(k: RingKernels, x: Tensor, op: Any) -> Tensor:
    """(n, H, W, C) -> the zero-dilated, padded input whose valid correlation is the output."""
    n, h, w, c = k.shape(x)
    (kh, kw), (sh, sw) = op.kernel_size, op.strides
    spread = k.pad(k.reshape(x, (n, h, 1, w, 1, c)), [(0, 0), (0, 0), (0, sh - 1), (0, 0), (0, sw - 1), (0, 0)])
    spread = k.reshape(spread, (n, h * sh, w * sw, c))  # each cell followed by s - 1 zeros
    pads = []
    for size, window, stride in ((h, kh, sh), (w, kw, sw)):
        before = window - 1 - conv_transpose_offset(window, stride, op.padding)
        after = transpose_output(size, window, stride, op.padding) + window - 1 - before - size * stride
        pads.append((before, after))
    if any(a < 0 for _, a in pads):  # never for Keras' shapes; kept as a guard
        raise ValueError(f"conv2d_transpose padding {pads} is negative for input {(h, w)}")
    return k.pad(spread, [(0, 0), *pads, (0, 0)])


def _flip(k: RingKernels, kernel: Tensor) -> Tensor:
    """(kh, kw, F, C) -> (kh, kw, C, F), reversed on both spatial axes."""
    kh, kw = k.shape(kernel)[:2]
    flipped = k.gather(k.gather(kernel, np.arange(kh - 1, -1, -1), axis=0), np.arange(kw - 1, -1, -1), axis=1)
    return k.transpose(flipped, (0, 1, 3, 2))


def conv2d_transpose(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    from bridge.mpc.layers import conv2d_ring

    ctx, k, op = env.ctx, env.ctx.kernels, node.op
    n, h, w, c = k.shape(xs[0].share)
    oh, ow = (transpose_output(s, kk, st, op.padding) for s, kk, st in zip((h, w), op.kernel_size, op.strides))
    plan = im2col_plan(oh + op.kernel_size[0] - 1, ow + op.kernel_size[1] - 1, c, *op.kernel_size, (1, 1), "valid")

    def bilinear(x: Tensor, kernel: Tensor) -> Tensor:
        return conv2d_ring(k, plan, _dilate_and_pad(k, x, op), _flip(k, kernel))

    with ctx.messenger.label(op.kind):
        y = truncate(ctx, beaver(ctx, xs[0], env.param(node, "kernel"), bilinear, (n, oh, ow, op.filters)))
    if op.use_bias:
        bias = env.param(node, "bias")
        y = add(ctx, y, bias.value if isinstance(bias, Masked) else bias)
    return y, None


RULES = {"conv2d_transpose": conv2d_transpose}
MASKED_ROLES = {"conv2d_transpose": ("kernel",)}
