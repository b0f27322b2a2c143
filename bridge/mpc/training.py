"""Encrypted training: forward, backward and SGD on shares, SPMD like ``session``.

Per party, in order:
  setup   dealer seeds; the model owner shares every parameter (``session.setup_party``);
          kernels are masked for the first batch.
  data    each data owner shares its own rows x AND labels y (``share_input``), once;
          labels are one-hot encoded by their owner first, so class values stay secret.
  batch   the compute parties gather the batch's rows from the shares (public row
          indices, ``reference_train.batch_schedule``: local, free); forward with
          ``training=True``; the overflow check (below); loss and metrics; the fused
          loss gradient (p - y)/n; backward (``backward.secure_backward``); the compiled
          optimizer's step on shares (``optimizers``: SGD, Adam, RMSprop); kernels re-masked for the next batch (Pond: one opening
          of each kernel per batch serves its forward and backward products).
  end     the model owner receives the trained parameters (``reveal_to``), or they stay
          shared and ``serving()`` wraps them for encrypted serving.
Who learns what: the compute parties and the dealer learn nothing but the overflow
bits; the model owner learns each batch's summed loss and correct count (what Keras'
progress bar shows) and, at the end, the trained weights; data owners learn nothing.

Overflow check (``check_overflow``, on by default).  Fixed-point training fails
silently when a value leaves its range: a local-truncation wrap adds about
2^(64 - 2f) = 2^32 to a value, a diverging model grows its activations until
products wrap the ring.  After the forward pass the outputs of every node of
``CHECKED_KINDS`` (dense, the convolutions, add, subtract, multiply) are checked against
a bound B (``overflow_bound``, default 1024):
  1. [B - |x| >= 0] for every element where x feeds a plain ReLU (|x| = 2 ReLU(x) - x, exact
     and local), [x + B >= 0] and [B - x >= 0] elsewhere: all in one comparison call;
  2. the bits become arithmetic (one round, 1 bit per element) and are summed per
     layer into its count of violations v_l, locally;
  3. [v_l >= 1] is compared and revealed: one bit per layer per batch, to the
     compute parties, the dealer and the model owner, who all stop.
Values below B are never flagged; every truncation wrap in the forward pass is
(its error 2^32 exceeds any bound below 2^31), and a wrap in a gradient inflates a
weight by about lr 2^32, which the next batch's forward pass flags at that layer.
The trained weights the model owner receives are checked against B in the clear.
Cost per batch: one comparison per element of a layer that feeds a ReLU (about as
much as that ReLU), two elsewhere (about 26 bytes each per compute party), and 12
rounds.  Measured on mlp_train (bridge/bench_train.py) and in tests/training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bridge.backend import BackendError, Executable, StepResult, TrainingExecutable
from bridge.ir import Placement, PrivacyMode, Program, validate_program, validate_weights
from bridge.mpc.backward import loss_gradient, probabilities, secure_backward
from bridge.mpc.batched import mask_many
from bridge.mpc.comm import CommStats
from bridge.mpc.compare import Bits, ge_zero, mul_bit
from bridge.mpc.kernels import RingKernels
from bridge.mpc.layers import masked_parameter_names, secure_forward, secure_parameter_specs, secure_parameters
from bridge.mpc.offline import SlotCounter
from bridge.mpc.optimizers import OptimizerState, check_numerics, secure_update, sgd_step  # noqa: F401  (sgd_step re-exported)
from bridge.mpc.party import PartyContext
from bridge.mpc.range_check import bits_to_arith, overflow_flags
from bridge.mpc.protocol import (
    Masked,
    Shared,
    add,
    add_constant,
    add_public,
    beaver,
    mul,
    mul_public_int,
    neg,
    reveal_to,
    share_input,
    sub,
    truncate,
)
from bridge.mpc.runtime import PartyRunner, ThreadedParties
from bridge.mpc.session import SecureExecutable, compute_and_dealer, setup_party
from bridge.reference_train import LossHead, TrainingRefused, loss_head, owner_rows

#: op kinds whose outputs the overflow check reads: the ones that can grow a value
CHECKED_KINDS = frozenset({"dense", "conv2d", "add", "conv1d", "depthwise_conv2d", "depthwise_conv1d", "multiply",
                           "subtract"})
DEFAULT_OVERFLOW_BOUND = 1024.0


class TrainingOverflowError(ArithmeticError):
    """A value left the fixed-point range during training; the model would be wrong."""


# -- small protocols ------------------------------------------------------------------------------

#: ln(m) on [1/2, 1] as a polynomial in m - 3/4 (least squares on Chebyshev nodes, max error 1.5e-6)
_NODES = 0.75 + 0.25 * np.cos(np.pi * (np.arange(400) + 0.5) / 400)
LOG_COEFFICIENTS = tuple(float(c) for c in np.polyfit(_NODES - 0.75, np.log(_NODES), 6))


def log_unit(ctx: PartyContext, x: Shared) -> Shared:
    """ln(x) for x in (0, 1], clamped below at 2^-f (so ln(x) >= -f ln 2, about -11.1 at f = 16).

    1. c_j = [x >= 2^-j] for j = 1..f, in one comparison call (f comparisons per element).
    2. Clamp: x' = 2^-f + c_f (x - 2^-f) (bit injection).
    3. With b_j = 1 - c_j (arithmetic, one round) and k = sum_{j<f} b_j, x' lies in
       [2^-(k+1), 2^-k), and 2^k = 1 + sum_{j<f} b_j 2^(j-1) because the b_j are monotone.
    4. m = x' 2^k in [1/2, 1] (one product, integer factor: no truncation).
    5. ln x = P(m - 3/4) - k ln 2, P of degree 6 by Horner (6 rounds).
    Rounds about 5 + 1 + 1 + 1 + 6; max error 1e-5 plus fixed-point rounding.
    """
    k = ctx.kernels
    f = ctx.numerics.frac_bits
    shape = k.shape(x.share)
    scale = ctx.numerics.scale
    with ctx.messenger.label("log"):
        thresholds = np.array([scale >> j for j in range(1, f + 1)], dtype=np.int64).reshape((f,) + (1,) * len(shape))
        stacked = Shared(k.broadcast_to(k.reshape(x.share, (1,) + shape), (f,) + shape))
        above = ge_zero(ctx, add_public(ctx, stacked, ctx.public(-thresholds)))
        planes = k.unstack(above.share)
        ulp = ctx.public(np.array(1, dtype=np.int64))
        clamped, _ = mul_bit(ctx, Bits(planes[-1]), add_public(ctx, x, k.neg(ulp)))
        clamped = add_public(ctx, clamped, ulp)
        below = bits_to_arith(ctx, Bits(k.stack(planes[:-1], axis=0)))  # c_1..c_{f-1}
        # b_j = 1 - c_j
        ones = ctx.public(np.ones((f - 1,) + shape, dtype=np.int64))
        b = add_public(ctx, neg(ctx, below), ones)
        weights = np.array([1 << (j - 1) for j in range(1, f)], dtype=np.int64).reshape((f - 1,) + (1,) * len(shape))
        power = add_public(ctx, Shared(k.sum(k.mul(b.share, ctx.public(weights)), axis=0)), ctx.public(np.array(1)))
        count = Shared(k.sum(b.share, axis=0))
        m = beaver(ctx, clamped, power, k.mul, shape)
        u = add_constant(ctx, m, -0.75)
        acc = add_constant(ctx, Shared(k.zeros(shape)), LOG_COEFFICIENTS[0])
        for c in LOG_COEFFICIENTS[1:]:
            acc = add_constant(ctx, truncate(ctx, beaver(ctx, acc, u, k.mul, shape)), c)
        ln2 = int(round(math.log(2) * scale))
        return sub(ctx, acc, mul_public_int(ctx, count, ctx.public(np.array(ln2))))


def batch_metrics(
    ctx: PartyContext, head: LossHead, p: Shared, y: Shared, with_accuracy: bool, weights: Shared | None = None,
) -> Shared:
    """[(summed loss, summed accuracy)] over the batch's rows, both fixed point.

    Cross-entropy reads ln(p) through ``log_unit`` (so a row's loss is at most f ln 2,
    11.1 at f = 16, where Keras clips at 16.1); MSE is exact up to rounding.
    ``weights`` (per row, shared): the loss sums w_i loss_i, as Keras' weighted loss
    before it divides by the batch size (one more product); accuracy stays unweighted,
    as Keras' ``metrics`` are.
    Accuracy: a softmax row is right when p_true >= p_c for every class c (C comparisons
    in one call, then one on their count: 12 rounds); the one-hot product p_true is kept
    at 2f fractional bits, so it equals the winning p_c exactly.  Sigmoid units compare
    p > 1/2 with y.
    """
    k = ctx.kernels
    n, width = k.shape(p.share)
    scale = ctx.numerics.scale
    zero = Shared(k.zeros(()))

    def total(per_row: Shared) -> Shared:
        """sum_i w_i l_i (or sum_i l_i) of per-row values of shape (n,)."""
        if weights is not None:
            per_row = mul(ctx, per_row, weights)
        return Shared(k.sum(per_row.share, axis=0))

    with ctx.messenger.label("metrics"):
        if head.link is None:  # mean squared error
            diff = sub(ctx, p, y)
            sq = truncate(ctx, beaver(ctx, diff, diff, k.mul, (n, width)))
            loss = truncate(ctx, mul_public_int(ctx, total(Shared(k.sum(sq.share, axis=1))),
                                                ctx.public(np.array(round(scale / width)))))
            return Shared(k.stack([loss.share, zero.share], axis=0))
        if head.link == "softmax":
            wide = Shared(k.sum(beaver(ctx, p, y, k.mul, (n, width)).share, axis=1))  # p_true * 2^2f
            p_true = truncate(ctx, wide)
            loss = neg(ctx, total(log_unit(ctx, p_true)))
            if not with_accuracy:
                return Shared(k.stack([loss.share, zero.share], axis=0))
            # a row is right when p_true >= p_c for all C classes: count those, compare with C
            lifted = mul_public_int(ctx, p, ctx.public(np.array(scale)))
            gaps = sub(ctx, Shared(k.broadcast_to(k.reshape(wide.share, (n, 1)), (n, width))), lifted)
            wins = bits_to_arith(ctx, ge_zero(ctx, gaps))
            count = add_public(ctx, Shared(k.sum(wins.share, axis=1)), ctx.public(np.array(-width)))
            hit = bits_to_arith(ctx, ge_zero(ctx, count))
            hits = mul_public_int(ctx, Shared(k.sum(hit.share, axis=0)), ctx.public(np.array(scale)))
            return Shared(k.stack([loss.share, hits.share], axis=0))
        # sigmoid: -(y ln p + (1 - y) ln(1 - p)), mean over units
        both = Shared(k.stack([p.share, add_constant(ctx, neg(ctx, p), 1.0).share], axis=0))
        logs = log_unit(ctx, both)
        log_p, log_q = k.unstack(logs.share)
        per_unit = add(ctx, truncate(ctx, beaver(ctx, y, Shared(k.sub(log_p, log_q)), k.mul, (n, width))), Shared(log_q))
        loss = neg(ctx, total(Shared(k.sum(per_unit.share, axis=1))))
        loss = truncate(ctx, mul_public_int(ctx, loss, ctx.public(np.array(round(scale / width)))))
        if not with_accuracy:
            return Shared(k.stack([loss.share, zero.share], axis=0))
        above = ge_zero(ctx, add_constant(ctx, p, -0.5 - 1.0 / scale))  # p > 1/2
        by, b = mul_bit(ctx, above, y)
        b_fixed = mul_public_int(ctx, b, ctx.public(np.array(scale)))
        # correct = 1 - b - y + 2 b y, per unit; summed, then divided by the width
        agree = add_constant(ctx, sub(ctx, add(ctx, by, by), add(ctx, b_fixed, y)), 1.0)
        hits = truncate(ctx, mul_public_int(ctx, Shared(k.sum(agree.share, axis=(0, 1))),
                                            ctx.public(np.array(round(scale / width)))))
        return Shared(k.stack([loss.share, hits.share], axis=0))


def remask(ctx: PartyContext, program: Program, params: dict[str, Any]) -> None:
    """Mask the updated kernels once for the next batch's forward and backward products,
    all of them opened in one round (``batched.mask_many``)."""
    names = [n for n in masked_parameter_names(program) if not isinstance(params[n], Masked)]
    params.update(zip(names, mask_many(ctx, [params[n] for n in names]), strict=True))


# -- the executable ---------------------------------------------------------------------------------

class SecureTrainingExecutable(TrainingExecutable):
    """Encrypted training of one Program on two compute parties and a dealer.

    ``metrics``: names of accuracy metrics to report ("accuracy", ...); the loss is
    always reported.  ``check_overflow`` / ``overflow_bound``: see the module docstring.
    """

    def __init__(
        self,
        program: Program,
        weights: Mapping[str, np.ndarray] | None,
        kernels: RingKernels,
        *,
        metrics: tuple[str, ...] = (),
        check_overflow: bool = True,
        overflow_bound: float = DEFAULT_OVERFLOW_BOUND,
        timeout_s: float = 60.0,
        runner: PartyRunner | None = None,
    ) -> None:
        validate_program(program)
        self.head = loss_head(program)
        if not 0 < overflow_bound < 2.0 ** (62 - 2 * program.numerics.frac_bits):
            raise ValueError(
                f"overflow_bound must be in (0, 2^{62 - 2 * program.numerics.frac_bits}) so that a flagged "
                f"value cannot have wrapped the ring; received {overflow_bound}"
            )
        spec = program.training
        assert spec is not None  # loss_head checked it
        if spec.optimizer.kind == "sgd":  # SGD multiplies by lr at f bits; Adam/RMSprop keep 12 significant bits
            for what, value in (("learning_rate", spec.optimizer.learning_rate), ("momentum", spec.optimizer.momentum)):
                encoded = round(value * program.numerics.scale) / program.numerics.scale
                if value and abs(encoded - value) > 0.01 * value:
                    raise TrainingRefused(
                        f"SGD {what}={value:g} is not representable in fixed point with frac_bits="
                        f"{program.numerics.frac_bits} (it would become {encoded:g}); raise Numerics.frac_bits "
                        f"or use a {what} of at least {100 / program.numerics.scale:.2g}"
                    )
        try:
            check_numerics(spec.optimizer, program.numerics.frac_bits, program.numerics.compare_bits)
        except ValueError as exc:
            raise TrainingRefused(str(exc)) from None
        self.program = program
        self.metrics = tuple(metrics)
        self.check_overflow = check_overflow
        self.overflow_bound = float(overflow_bound)
        placement = program.placement
        compute, dealer = compute_and_dealer(program)
        self.owner = placement.param_owner
        self.parties: PartyRunner = runner or ThreadedParties(
            placement.names, kernels, program.numerics, compute, dealer, timeout_s
        )
        prepared = None
        if self.owner in self.parties.contexts:  # weights are needed only where the model owner runs
            if weights is None:
                raise ValueError(f"party {self.owner!r} owns the model here but no weights were given")
            validate_weights(program, weights)
            prepared = secure_parameters(program, weights)
        # parameters the owner folds before sharing (a frozen batch norm's statistics) never change:
        # the model owner keeps its own copy and gets it back from ``weights``
        folded = sorted(set(program.graph.parameters) - set(secure_parameter_specs(program)))
        self._folded = {n: np.asarray(weights[n]) for n in folded} if prepared is not None else {}
        before = self.parties.stats.snapshot()
        self._params: dict[str, dict[str, Any]] = self.parties.run(
            lambda ctx: setup_party(ctx, program, prepared if ctx.name == self.owner else None)
        )
        self.setup_stats: CommStats = self.parties.stats.since(before)
        self._optimizer: dict[str, OptimizerState] = {p: OptimizerState() for p in self.parties.contexts}
        self._data: dict[str, dict[str, tuple[dict[str, Shared], Shared, Shared | None]]] = {
            p: {} for p in self.parties.contexts
        }
        self._rows: dict[str, int] = {}
        self._checked = [n for n in program.graph.nodes if n.op.kind in CHECKED_KINDS]
        # |x| = 2 relu(x) - x holds for the plain relu only (not relu6, leaky or thresholded)
        relu_of = {n.inputs[0]: n.output for n in program.graph.nodes if n.op.kind == "relu" and n.op.plain}
        self._rectified = [relu_of.get(n.output) for n in self._checked]
        self.step_count = 0
        self.last_stats: CommStats | None = None

    # -- data ----------------------------------------------------------------------------------
    def load_data(self, data: Mapping[str, Any], split: str = "train") -> int:
        """Each owner shares its rows (every input), one-hot labels and, when given, sample
        weights: 8 bytes per value to each compute party.  ``data``: {owner: (x, y) or
        (x, y, sample_weight)}, x one array or {input name: array}; all owners weighted or none."""
        names = set(self.program.placement.names)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"data owners {unknown} are not parties of the placement {sorted(names)}; "
                "add them to the placement (fit_encrypted does this from the data's keys)"
            )
        plain = {owner: owner_rows(self.program, self.head, item, owner) for owner, item in data.items()}
        weighted = {w is not None for _, _, w in plain.values()}
        if len(weighted) > 1:
            raise ValueError("either every data owner gives sample weights or none does")
        inputs = list(self.program.graph.inputs)

        def share(ctx: PartyContext) -> None:
            xs: dict[str, list[Shared]] = {name: [] for name in inputs}
            ys, ws = [], []
            for owner, (x, labels, w) in plain.items():
                mine = ctx.name == owner
                for name in inputs:
                    what = f"{split}:{owner}:x" + (f":{name}" if len(inputs) > 1 else "")
                    xs[name].append(share_input(ctx, owner, x[name] if mine else None, x[name].shape, what))
                ys.append(share_input(ctx, owner, labels if mine else None, labels.shape, f"{split}:{owner}:y"))
                if w is not None:
                    ws.append(share_input(ctx, owner, w if mine else None, w.shape, f"{split}:{owner}:w"))
            if ctx.in_protocol:
                k = ctx.kernels
                join = lambda parts: Shared(k.concat([p.share for p in parts], axis=0))  # noqa: E731
                self._data[ctx.name][split] = (
                    {name: join(parts) for name, parts in xs.items()}, join(ys), join(ws) if ws else None,
                )

        self.parties.run(share)
        self._rows[split] = sum(len(labels) for _, labels, _ in plain.values())
        return self._rows[split]

    # -- steps ---------------------------------------------------------------------------------
    def _receivers(self) -> tuple[str, ...]:
        placement = self.program.placement
        compute, dealer = compute_and_dealer(self.program)
        return tuple(dict.fromkeys((*compute, dealer, placement.param_owner)))

    def _step(self, rows: np.ndarray, split: str, train: bool) -> StepResult:
        if split not in self._rows:
            raise ValueError(f"no {split!r} data loaded; call load_data(..., split={split!r}) first")
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0 or rows.min() < 0 or rows.max() >= self._rows[split]:
            raise ValueError(f"rows must index the {self._rows[split]} {split!r} rows; received {rows.size} indices")
        program, head = self.program, self.head
        spec = program.training
        assert spec is not None
        receivers = self._receivers()

        def step(ctx: PartyContext) -> Any:
            k = ctx.kernels
            params = self._params.get(ctx.name)
            values: dict[str, Shared] = {}
            caches: dict[str, Any] = {}
            if ctx.in_protocol:
                x_all, y_all, w_all = self._data[ctx.name][split]
                xs = {name: Shared(k.gather(x.share, rows, axis=0)) for name, x in x_all.items()}
                y = Shared(k.gather(y_all.share, rows, axis=0))
                w = None if w_all is None else Shared(k.gather(w_all.share, rows, axis=0))
                values, caches = secure_forward(ctx, program, params, xs, training=train)
            if self.check_overflow and self._checked:
                flags = None
                if ctx.in_protocol:
                    checked = [values[n.output] for n in self._checked]
                    rectified = [values[r] if r is not None else None for r in self._rectified]
                    flags = overflow_flags(ctx, checked, self.overflow_bound, rectified)
                seen = reveal_to(ctx, flags, receivers, "overflow")
                if seen is not None and np.any(seen > 0):
                    return ("overflow", [n.name for n, f in zip(self._checked, seen) if f > 0])
            summary = None
            if ctx.in_protocol:
                p = probabilities(ctx, head, values)
                summary = batch_metrics(ctx, head, p, y, bool(self.metrics), w)
                if train:
                    seed = loss_gradient(ctx, head, p, y)
                    if w is not None:  # Keras: d(sum w_i l_i / n) = w_i (d l_i / n), row by row
                        seed = mul(ctx, seed, Shared(k.broadcast_to(k.reshape(w.share, (len(rows), 1)),
                                                                    k.shape(seed.share))))
                    grads, _ = secure_backward(ctx, program, params, values, caches, {head.seed: seed})
                    secure_update(ctx, spec.optimizer, params, self._optimizer[ctx.name], grads)
                    remask(ctx, program, params)
            return ("metrics", reveal_to(ctx, summary, (self.owner,), "metrics"))

        before = self.parties.stats.snapshot()
        results = self.parties.run(step)
        self.last_stats = self.parties.stats.since(before)
        # every protocol party and the model owner learn the overflow bits; only the owner the metrics
        overflow = next((payload for kind, payload in results.values() if kind == "overflow"), None)
        if overflow is not None:
            payload = overflow
            later = f" (and after it in {payload[1:]})" if len(payload) > 1 else ""
            raise TrainingOverflowError(
                f"fixed-point overflow in layer {payload[0]!r}{later}: some |activation| exceeded "
                f"{self.overflow_bound:g} at step {self.step_count + 1} ({split}). Training stopped; the model "
                "was not updated from this batch on. Lower the learning rate, normalise the inputs, or raise "
                "overflow_bound (values must stay well below 2^(63 - 2 frac_bits) in fixed point)."
            )
        if train:
            self.step_count += 1
        count = len(rows)
        if self.owner not in results:  # the model owner runs in another process: it got the metrics
            return StepResult(float("nan"), {m: float("nan") for m in self.metrics}, count, self.last_stats)
        loss_sum, hits = (float(v) for v in results[self.owner][1])
        return StepResult(loss_sum / count, {m: hits / count for m in self.metrics}, count, self.last_stats)

    def train_batch(self, rows: np.ndarray) -> StepResult:
        return self._step(rows, "train", train=True)

    def evaluate_batch(self, rows: np.ndarray, split: str = "validation") -> StepResult:
        return self._step(rows, split, train=False)

    # -- results -------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """Reveal the parameters to the model owner; refuse any beyond the overflow bound.

        Every party takes part; a process that does not host the model owner gets ``{}``.
        """
        names = sorted(set(self.program.graph.parameters) & set(secure_parameter_specs(self.program)))

        def reveal(ctx: PartyContext) -> dict[str, np.ndarray]:
            out = {}
            for name in names:
                p = self._params[ctx.name].get(name) if ctx.in_protocol else None
                share = p.value if isinstance(p, Masked) else p
                value = reveal_to(ctx, share, (self.owner,), f"trained {name}")
                if value is not None:
                    out[name] = value
            return out

        results = self.parties.run(reveal)
        if self.owner not in results:
            return {}  # the model owner runs in another process: only it receives the weights
        revealed = results[self.owner]
        if self.check_overflow:
            bad = sorted(n for n, v in revealed.items() if np.max(np.abs(v), initial=0.0) >= self.overflow_bound)
            if bad:
                raise TrainingOverflowError(
                    f"trained parameters {bad} exceed the overflow bound {self.overflow_bound:g}: a fixed-point "
                    "overflow corrupted the last update. Lower the learning rate and train again."
                )
        specs = self.program.graph.parameters
        revealed.update(self._folded)
        return {n: revealed[n].astype(specs[n].dtype) for n in sorted(specs)}

    def serving(self, placement: Placement | None = None) -> Executable:
        """The trained model, still shared, as an encrypted-serving executable.

        ``placement`` (same party names) says who sends queries and gets answers; by
        default the training placement's input owner and output receivers.
        """
        program = self.program.model_copy(
            update={"privacy": PrivacyMode.ENCRYPTED_SERVING, "training": None,
                    "placement": placement or self.program.placement}
        )
        validate_program(program)
        missing = sorted(set(program.placement.names) - set(self.program.placement.names))
        if missing:
            raise BackendError(f"serving placement names parties {missing} that did not take part in training")
        return _SharedModel(program, self.parties, self._params)

    def close(self) -> None:
        """Drop the shared training data; the parameters stay, for ``serving``."""
        self._data = {p: {} for p in self._data}


class _SharedModel(SecureExecutable):
    """A SecureExecutable over parameters that are already shared and masked (after training)."""

    def __init__(self, program: Program, parties: PartyRunner, params: dict[str, dict[str, Any]]) -> None:
        self.program = program
        self.parties = parties
        self._params = params
        self.setup_stats = CommStats()
        self.last_stats = None
        # the serving state SecureExecutable.__init__ sets up (it would share the weights again)
        self._slots = SlotCounter()
        self.offline = {name: self._party_offline(ctx) for name, ctx in parties.contexts.items() if ctx.in_protocol}
        self.last_material: dict[str, bool] = {}
