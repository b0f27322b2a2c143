"""Secure MultiHeadAttention and keras.ops.matmul: secret x secret batched products, written
once against the ring-kernel interface (registered in ``bridge.mpc.layers.SECURE_FORWARD``).

MultiHeadAttention on query (n, T, Dq), value (n, S, Dv), key (n, S, Dk) (key = value if absent):
  1. q, k, v projections: one Beaver matmul each with the masked kernels (H heads side by side),
     plus the biases; q times 1/sqrt(key_dim) (one public product).
  2. scores = q k^T per (example, head): one Beaver product of two *secret* tensors
     (``batch_matmul``, 1 round, 8 (|q| + |k|) bytes per party), truncated.
  3. ``use_causal_mask``: the public constant -CAUSAL_OFFSET added where key step s > query
     step t, so that after the softmax's max subtraction those scores are below exp's floor
     (-256) and their weights are 0 up to rounding, whenever |scores| < CAUSAL_OFFSET / 2 - 256.
  4. ``functions.softmax`` over the key axis (the Softmax op's protocol).
  5. weights v per (example, head): a second secret x secret product; then the output
     projection (masked kernel) and bias.
  Rounds: 3 (projections) + 1 + softmax's 5 ceil(log2 S) + 14 + 2 t (t Newton steps of the
  reciprocal on [1, S]) + 1 + 1: 40 for S = 4, 47 for S = 8 (``tests/conformance/test_attention``).
  Error: each attention weight carries
  softmax's error (at most 5e-3 absolute, mostly exp's 256 2^-16 relative), so an output
  before the projection is off by at most 5e-3 sum_s |v_s| + 2^-16, and after it by that
  times the output kernel's column sums; ``tests/conformance`` measures it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bridge.ir import Node
from bridge.mpc import functions
from bridge.mpc.kernels import RingKernels, Tensor
from bridge.mpc.party import PartyContext
from bridge.mpc.protocol import Masked, Shared, add, add_public, beaver, matmul, mul_public, truncate

#: subtracted from masked attention scores (public): 2^12
CAUSAL_OFFSET = 4096.0
#: above this many products per batch_matmul, loop over the batch with 2-D matmuls
_BROADCAST_LIMIT = 1 << 22


def batch_matmul_ring(k: RingKernels, a: Tensor, b: Tensor) -> Tensor:
    """(..., M, K) @ (..., K, N) exactly modulo 2^64, leading axes equal.  Bilinear in (a, b)."""
    sa, sb = k.shape(a), k.shape(b)
    lead, (m, kk), n = sa[:-2], sa[-2:], sb[-1]
    batch = math.prod(lead)
    if batch * m * kk * n <= _BROADCAST_LIMIT:
        prod = k.mul(k.reshape(a, (*lead, m, kk, 1)), k.reshape(b, (*lead, 1, kk, n)))
        return k.sum(prod, axis=len(lead) + 1)
    a3, b3 = k.reshape(a, (batch, m, kk)), k.reshape(b, (batch, kk, n))
    outs = [k.matmul(k.reshape(k.gather(a3, np.array([i]), axis=0), (m, kk)),
                     k.reshape(k.gather(b3, np.array([i]), axis=0), (kk, n))) for i in range(batch)]
    return k.reshape(k.stack(outs, axis=0), (*lead, m, n))


def secret_matmul(ctx: PartyContext, a: Shared, b: Shared) -> Shared:
    """[a @ b] for two secret tensors (..., M, K), (..., K, N): one Beaver product, truncated."""
    k = ctx.kernels
    sa, sb = k.shape(a.share), k.shape(b.share)
    with ctx.messenger.label("secret_matmul"):
        return truncate(ctx, beaver(ctx, a, b, lambda x, y: batch_matmul_ring(k, x, y), (*sa[:-1], sb[-1])))


def _param(ctx: PartyContext, p: Shared | Masked, shape: tuple[int, ...]) -> Shared | Masked:
    from bridge.mpc.layers import reshape_param

    return reshape_param(ctx.kernels, p, shape)


def _value(p: Shared | Masked) -> Shared:
    return p.value if isinstance(p, Masked) else p


def _project(env: Any, node: Node, x: Shared, part: str, width: int) -> Shared:
    """(n, L, D) -> (n, H, L, width): x times the part's (D, H, width) kernel, plus its bias."""
    ctx, k, heads = env.ctx, env.ctx.kernels, node.op.num_heads
    n, steps, d = k.shape(x.share)
    kernel = _param(ctx, env.param(node, f"{part}_kernel"), (d, heads * width))
    y = matmul(ctx, Shared(k.reshape(x.share, (n * steps, d))), kernel)
    if node.op.use_bias:
        bias = _value(env.param(node, f"{part}_bias"))
        y = add(ctx, y, Shared(k.reshape(bias.share, (1, heads * width))))
    return Shared(k.transpose(k.reshape(y.share, (n, steps, heads, width)), (0, 2, 1, 3)))


def causal_offsets(ctx: PartyContext, steps_q: int, steps_k: int) -> Tensor:
    """The public (1, 1, T, S) ring tensor: -CAUSAL_OFFSET where s > t, else 0."""
    masked = ~np.tril(np.ones((steps_q, steps_k), dtype=bool))
    offsets = np.where(masked, -int(CAUSAL_OFFSET * ctx.numerics.scale), 0).astype(np.int64)
    return ctx.public(offsets.reshape(1, 1, steps_q, steps_k))


def multi_head_attention(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    ctx, k, op = env.ctx, env.ctx.kernels, node.op
    query, value = xs[0], xs[1]
    key = xs[2] if len(xs) == 3 else value
    n, steps_q, _ = k.shape(query.share)
    steps_k = k.shape(value.share)[1]
    with ctx.messenger.label("attention"):
        q = mul_public(ctx, _project(env, node, query, "query", op.key_dim), 1.0 / math.sqrt(op.key_dim))
        keys = _project(env, node, key, "key", op.key_dim)
        v = _project(env, node, value, "value", op.value_dim)
        scores = secret_matmul(ctx, q, Shared(k.transpose(keys.share, (0, 1, 3, 2))))  # (n, H, T, S)
        if op.causal:
            scores = add_public(ctx, scores, causal_offsets(ctx, steps_q, steps_k))
        weights = functions.softmax(ctx, scores)
        heads = secret_matmul(ctx, weights, v)  # (n, H, T, value_dim)
        flat = k.reshape(k.transpose(heads.share, (0, 2, 1, 3)), (n * steps_q, op.num_heads * op.value_dim))
        out_kernel = env.param(node, "output_kernel")
        width = k.shape(_value(out_kernel).share)[-1]
        y = matmul(ctx, Shared(flat), _param(ctx, out_kernel, (op.num_heads * op.value_dim, width)))
        if op.use_bias:
            y = add(ctx, y, _value(env.param(node, "output_bias")))
    # the backward pass reads the projections, the attention weights and the heads
    return Shared(k.reshape(y.share, (n, steps_q, width))), (q, keys, v, weights, Shared(flat))


def matmul_rule(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    return secret_matmul(env.ctx, xs[0], xs[1]), None


def add_constant(env: Any, node: Node, xs: list[Shared]) -> tuple[Shared, Any]:
    """x + c with c shared by the model owner: local (exact)."""
    k = env.ctx.kernels
    c = _value(env.param(node, "constant"))
    rank = len(k.shape(xs[0].share))
    shape = k.shape(c.share)
    return add(env.ctx, xs[0], Shared(k.reshape(c.share, (1,) * (rank - len(shape)) + tuple(shape)))), None


RULES = {
    "multi_head_attention": multi_head_attention,
    "matmul": matmul_rule,
    "add_constant": add_constant,
}

#: parameter roles used as the fixed operand of Beaver products (masked once)
MASKED_ROLES = {"multi_head_attention": ("query_kernel", "key_kernel", "value_kernel", "output_kernel")}
