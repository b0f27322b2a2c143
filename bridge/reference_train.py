"""Training in the clear, in NumPy float64: the oracle for encrypted training.

Protocol-neutral pieces every training backend shares live here too:
  * ``loss_head``: what ``model.compile()``'s loss means on the IR graph, checked
    once (which value the loss gradient enters, through which link function);
  * ``batch_schedule``: the order in which rows are visited, fixed by a seed, so
    that private and plaintext training see the same batches;
  * ``encode_labels``: labels as the float rows the loss reads (sparse -> one-hot).

The backward rules (``REFERENCE_BACKWARD``) mirror ``bridge.mpc.backward`` one for
one, in float64; tests check them against TensorFlow's autodiff.  Optimizers: SGD
(with momentum), Adam and RMSprop exactly as Keras 3 applies them (``optimizer_update``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bridge.backend import BackendError, StepResult, TrainingExecutable
from bridge.im2col import Im2ColPlan, extract_patches, im2col_plan
from bridge.ir import AdamSpec, Graph, Loss, Node, Program, RMSpropSpec, SGDSpec, validate_program, validate_weights
from bridge.ir import ops as irops
from bridge.ir.tokens import one_hot_inputs
from bridge.reference import channel_shape, evaluate

#: Keras' clipping of probabilities before a logarithm (keras.config.epsilon())
EPSILON = 1e-7


class TrainingRefused(BackendError):
    """The model or its compile() settings cannot be trained here; the message says why."""


# -- what the loss means on the graph ------------------------------------------------------------

@dataclass(frozen=True)
class LossHead:
    """How the loss attaches to the graph.

    The loss gradient with respect to ``seed`` is ``gradient_scale * (p - y) / n`` for a
    batch of n rows, with p = link(seed) (or p = seed for MSE, link None).  ``probs``
    names the value already holding p (the model's own final softmax/sigmoid, whose
    backward is thereby fused into the loss); None means p is computed from logits.
    """

    loss: Loss
    output: str
    seed: str
    link: Literal["softmax", "sigmoid"] | None
    probs: str | None
    gradient_scale: float
    #: width of a label row (classes, or output units)
    width: int

    @property
    def classifies(self) -> bool:
        return self.loss != Loss.MSE


_LINK = {
    Loss.CATEGORICAL_CROSSENTROPY: "softmax",
    Loss.SPARSE_CATEGORICAL_CROSSENTROPY: "softmax",
    Loss.BINARY_CROSSENTROPY: "sigmoid",
}


def refuse_untrainable(graph: Graph) -> None:
    """Refuse, naming the first such layer and why, a graph with a node encrypted training cannot
    run: a serving-only op (``ops.training_refusal``) or a trainable batch norm.  Needs no
    compile() settings, so the Keras front end calls it when ``privatize`` is asked to train."""
    for node in graph.nodes:
        if node.op.kind == "batch_norm" and any(graph.parameters[p].trainable for p in node.params.values()):
            raise TrainingRefused(
                f"layer {node.name!r} is a trainable BatchNormalization layer, which encrypted training does "
                "not support (Keras trains it with batch statistics, which would need a secure square root "
                "per step). Freeze it (layer.trainable = False: Keras then runs it in inference mode, an "
                "affine map that trains encrypted), remove it, or train in the clear and use encrypted serving."
            )
        why = irops.training_refusal(node.op)
        if why:
            raise TrainingRefused(f"layer {node.name!r} ({node.op.kind}) cannot be trained encrypted: {why}")


def loss_head(program: Program) -> LossHead:
    """Check that ``program`` can be trained and say how its loss attaches; refuse clearly."""
    spec = program.training
    if spec is None:
        raise TrainingRefused(
            "the Program has no training spec; compile the Keras model with a loss and an "
            "optimizer (frontends.keras.training.training_spec builds it)"
        )
    graph = program.graph
    if len(graph.outputs) != 1:
        raise TrainingRefused(
            f"training takes one loss on one output; this model has outputs {list(graph.outputs)}. "
            "Train a single-output model (any number of inputs), or compute the other heads' losses in the clear."
        )
    refuse_untrainable(graph)
    output = next(iter(graph.outputs))
    width = graph.outputs[output].feature_shape
    if len(width) != 1:
        raise TrainingRefused(
            f"the model's output {output!r} has shape (batch, {', '.join(map(str, width))}); training "
            "needs a flat (batch, units) output. Add a Flatten layer before the output."
        )
    last = next(n for n in graph.nodes if n.output == output)
    if spec.loss == Loss.MSE:
        return LossHead(spec.loss, output, output, None, output, 2.0 / width[0], width[0])
    link = _LINK[spec.loss]
    scale = 1.0 / width[0] if link == "sigmoid" else 1.0
    if spec.from_logits:
        return LossHead(spec.loss, output, output, link, None, scale, width[0])
    if last.op.kind != link:
        raise TrainingRefused(
            f"loss {spec.loss.value!r} reads probabilities, so the model must end in a {link} "
            f"activation; its last layer {last.name!r} is {last.op.kind!r}. Add activation='{link}' "
            "to the last layer, or compile with from_logits=True."
        )
    return LossHead(spec.loss, output, last.inputs[0], link, output, scale, width[0])


def encode_labels(head: LossHead, y: np.ndarray) -> np.ndarray:
    """Labels as float64 rows of the output's width (sparse class indices -> one-hot)."""
    y = np.asarray(y)
    if head.loss == Loss.SPARSE_CATEGORICAL_CROSSENTROPY:
        flat = y.reshape(len(y), -1)
        if flat.shape[1] != 1:
            raise ValueError(
                f"sparse_categorical_crossentropy expects one class index per row, received labels of "
                f"shape {y.shape}; pass integer labels of shape (n,) or use categorical_crossentropy"
            )
        index = flat[:, 0]
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(index) | (index != np.round(index)) | (index < 0) | (index >= head.width))
        if bad.size:
            shown = ", ".join(f"{index[i]:g} at index {i}" for i in bad[:5])
            more = f" and {bad.size - 5} more" if bad.size > 5 else ""
            raise ValueError(
                f"class indices must be integers in [0, {head.width}) for the model's {head.width} output units; "
                f"received {shown}{more} ({bad.size} of {len(index)} labels). Fix those labels, or give the last "
                "layer as many units as there are classes."
            )
        return np.eye(head.width)[index.astype(np.int64)]
    rows = y.astype(np.float64).reshape(len(y), -1)
    if rows.shape[1] != head.width:
        raise ValueError(
            f"labels have {rows.shape[1]} value(s) per row but the model outputs {head.width}; "
            f"received labels of shape {y.shape}"
        )
    return rows


def owner_rows(program: Program, head: LossHead, item: Any, owner: str) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                               np.ndarray | None]:
    """One owner's ``load_data`` entry, checked: (x by input name, encoded labels, weights or None).

    ``item`` is (x, y) or (x, y, sample_weight); x is one array for a single-input model,
    else a dict {input name: array}.
    """
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(f"{owner}'s data must be (x, y) or (x, y, sample_weight), received {type(item).__name__}")
    inputs = program.graph.inputs
    x = item[0]
    if not isinstance(x, Mapping):
        if len(inputs) != 1:
            raise ValueError(f"{owner}'s x must be a dict over the model's inputs {list(inputs)}")
        x = {next(iter(inputs)): x}
    if set(x) != set(inputs):
        raise ValueError(f"{owner}'s x has inputs {sorted(x)}; the model takes {list(inputs)}")
    x = one_hot_inputs(program.graph, x)  # token ids -> one-hot rows here, at their owner, before sharing
    xs = {}
    for name, spec in inputs.items():
        value = np.asarray(x[name], dtype=np.float64)
        if value.shape[1:] != spec.feature_shape:
            shown = f"{name!r} " if len(inputs) > 1 else ""
            raise ValueError(
                f"{owner}'s x {shown}has shape {value.shape}; the model takes (rows, "
                f"{', '.join(map(str, spec.feature_shape))})"
            )
        xs[name] = value
    labels = encode_labels(head, item[1])
    weights = None if len(item) == 2 or item[2] is None else np.asarray(item[2], dtype=np.float64).reshape(-1)
    for name, value in xs.items():
        if len(value) != len(labels):
            raise ValueError(f"{owner} gave {len(value)} rows of x but {len(labels)} labels")
    if weights is not None and len(weights) != len(labels):
        raise ValueError(f"{owner} gave {len(labels)} labels but {len(weights)} sample weights")
    return xs, labels, weights


def batch_schedule(rows: int, batch_size: int, epoch: int, seed: int, shuffle: bool = True) -> list[np.ndarray]:
    """The batches of one epoch: row indices, in order.

    Rows are numbered as the data owners' rows concatenated in the order the data
    were given.  With ``shuffle`` the order is ``np.random.default_rng([seed, epoch])
    .permutation(rows)``, else 0..rows-1; consecutive chunks of ``batch_size`` make the
    batches, the last one possibly smaller.  A plaintext baseline that wants the same
    batches calls this function.  The order is public: it depends on the seed and the
    row count only, never on the data.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, received {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(rows) if shuffle else np.arange(rows)
    return [order[start : start + batch_size] for start in range(0, rows, batch_size)]


# -- loss values and metrics, as Keras computes them ----------------------------------------------

def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def predicted(head: LossHead, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """p: the output, or link(logits)."""
    if head.probs is not None:
        return values[head.probs]
    return softmax(values[head.seed]) if head.link == "softmax" else sigmoid(values[head.seed])


def loss_values(head: LossHead, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row loss from probabilities p (Keras' clipping at EPSILON)."""
    if head.loss == Loss.MSE:
        return np.mean((p - y) ** 2, axis=-1)
    clipped = np.clip(p, EPSILON, 1.0 - EPSILON)
    if head.link == "sigmoid":
        return -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped), axis=-1)
    return -np.sum(y * np.log(clipped), axis=-1)


def correct(head: LossHead, p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row accuracy: argmax agreement, or p > 0.5 agreeing with y (mean over units)."""
    if head.link == "sigmoid":
        return np.mean((p > 0.5) == (y > 0.5), axis=-1).astype(np.float64)
    return (np.argmax(p, axis=-1) == np.argmax(y, axis=-1)).astype(np.float64)


# -- backward rules ------------------------------------------------------------------------------

Arrays = dict[str, np.ndarray]
ReferenceBackward = Callable[[Node, list[np.ndarray], np.ndarray, Arrays, np.ndarray], tuple[list[np.ndarray], Arrays]]


def _plan(op: Any, shape: tuple[int, ...]) -> Im2ColPlan:
    _, h, w, c = shape
    if isinstance(op, (irops.AvgPool2D, irops.MaxPool2D)):
        return im2col_plan(h, w, c, op.pool_size[0], op.pool_size[1], op.strides, op.padding)
    return im2col_plan(h, w, c, op.kernel_size[0], op.kernel_size[1], op.strides, op.padding, op.dilation_rate)


def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The gradient of a value broadcast from ``shape`` to g's shape: g summed over the
    broadcast axes (the adjoint of broadcasting)."""
    axes = tuple(i for i, (a, b) in enumerate(zip(shape, g.shape, strict=True)) if a == 1 and b != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _scatter(plan: Im2ColPlan, cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The adjoint of ``extract_patches``: sum patch entries back onto their cells, drop the padding."""
    n, h, w, c = shape
    (top, bottom), (left, right) = plan.pads
    padded = np.zeros((n, (h + top + bottom) * (w + left + right) * c))
    np.add.at(padded, (slice(None), plan.indices.reshape(-1)), cols.reshape(n, -1))
    padded = padded.reshape(n, h + top + bottom, w + left + right, c)
    return padded[:, top : top + h, left : left + w, :]


def _dense(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    """Dense on (batch, ..., features): every position is a row of the product."""
    x, rows = xs[0].reshape(-1, xs[0].shape[-1]), dy.reshape(-1, dy.shape[-1])
    grads = {"kernel": x.T @ rows}
    if node.op.use_bias:
        grads["bias"] = rows.sum(axis=0)
    return [(rows @ p["kernel"].T).reshape(xs[0].shape)], grads


def _conv2d(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    """Conv2D (any dilation, groups) and DepthwiseConv2D: both bilinear in (patches, kernel).

    Group g of G: y[., g, f] = sum_{t, c} cols[., t, g, c] w[t, c, g, f]; depthwise:
    y[., c, m] = sum_t cols[., t, c] w[t, c, m]."""
    x, kernel = xs[0], p["kernel"]
    n, c = x.shape[0], x.shape[3]
    plan = _plan(node.op, x.shape)
    taps = kernel.shape[0] * kernel.shape[1]
    cols = extract_patches(plan, x).reshape(n, -1, taps, c)
    if node.op.kind == "depthwise_conv2d":
        w = kernel.reshape(taps, c, -1)
        per = dy.reshape(n, -1, c, w.shape[-1])
        grads = {"kernel": np.einsum("nptc,npcm->tcm", cols, per).reshape(kernel.shape)}
        dcols = np.einsum("npcm,tcm->nptc", per, w)
    else:
        groups = node.op.groups
        w = kernel.reshape(taps, c // groups, groups, -1)
        per = dy.reshape(n, -1, groups, w.shape[-1])
        grouped = cols.reshape(n, -1, taps, groups, c // groups)
        grads = {"kernel": np.einsum("nptgc,npgf->tcgf", grouped, per).reshape(kernel.shape)}
        dcols = np.einsum("npgf,tcgf->nptgc", per, w)
    if node.op.use_bias:
        grads["bias"] = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
    return [_scatter(plan, dcols.reshape(n, -1, taps * c), x.shape)], grads


def _avg_pool2d(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    x = xs[0]
    n, c = x.shape[0], x.shape[3]
    plan = _plan(node.op, x.shape)
    window = plan.indices.shape[1] // c
    per_output = dy.reshape(n, -1, 1, c) / plan.valid_counts.reshape(1, -1, 1, 1)
    cols = np.broadcast_to(per_output, (n, per_output.shape[1], window, c))
    return [_scatter(plan, cols, x.shape)], {}


def _max_pool2d(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    x = xs[0]
    n, c = x.shape[0], x.shape[3]
    plan = _plan(node.op, x.shape)
    window = plan.indices.shape[1] // c
    patches = extract_patches(plan, x, fill=-np.inf).reshape(n, -1, window, c)
    winner = np.argmax(patches, axis=2)  # first maximum, as TensorFlow's MaxPoolGrad
    one_hot = np.arange(window).reshape(1, 1, window, 1) == winner[:, :, None, :]
    cols = one_hot * dy.reshape(n, -1, 1, c)
    return [_scatter(plan, cols, x.shape)], {}


def _global_avg_pool2d(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays,
                       dy: np.ndarray) -> tuple[list, Arrays]:
    n, h, w, c = xs[0].shape
    return [np.broadcast_to(dy.reshape(n, 1, 1, c) / (h * w), xs[0].shape).copy()], {}


def _reshape_back(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    return [dy.reshape(xs[0].shape)], {}


def _add(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    return [unbroadcast(dy, x.shape) for x in xs], {}


def _identity(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    return [dy], {}


def _relu(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    return [dy * (xs[0] > 0)], {}


def _sigmoid(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    return [dy * y * (1 - y)], {}


def _tanh(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    return [dy * (1 - y * y)], {}


def _softmax(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    return [y * (dy - np.sum(dy * y, axis=-1, keepdims=True))], {}


def _batch_norm(node: Node, xs: list[np.ndarray], y: np.ndarray, p: Arrays, dy: np.ndarray) -> tuple[list, Arrays]:
    """A frozen batch norm (inference form, the only one ``loss_head`` lets train): y = x s + t
    with s = gamma / sqrt(variance + epsilon) per channel; no parameter gradients."""
    scale = p["gamma"] / np.sqrt(p["moving_variance"] + node.op.epsilon)
    return [dy * scale.reshape(channel_shape(node.op.axis, dy.ndim, scale.shape[0]))], {}


REFERENCE_BACKWARD: dict[str, ReferenceBackward] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "global_avg_pool2d": _global_avg_pool2d,
    "flatten": _reshape_back,
    "reshape": _reshape_back,
    "add": _add,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "softmax": _softmax,
    "batch_norm": _batch_norm,
    "identity": _identity,
}


# -- forward, backward, SGD ----------------------------------------------------------------------

def _node_params(node: Node, weights: Mapping[str, np.ndarray]) -> Arrays:
    return {role: np.asarray(weights[name], dtype=np.float64) for role, name in node.params.items()}


def reference_values(program: Program, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> Arrays:
    """Every value of the graph in float64 (the forward rules of ``bridge.reference``)."""
    return evaluate(
        program,
        {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()},
        {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()},
    )


def reference_backward(
    program: Program, weights: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray], seeds: Mapping[str, np.ndarray]
) -> tuple[Arrays, Arrays]:
    """(parameter gradients, gradients of every value reached), from the seeds' gradients."""
    grads: Arrays = {k: np.asarray(v, dtype=np.float64) for k, v in seeds.items()}
    param_grads: Arrays = {}
    for node in reversed(program.graph.nodes):
        if node.output not in grads:
            continue
        xs = [values[v] for v in node.inputs]
        dxs, dparams = REFERENCE_BACKWARD[node.op.kind](
            node, xs, values[node.output], _node_params(node, weights), grads[node.output]
        )
        for value, dx in zip(node.inputs, dxs, strict=True):
            grads[value] = grads[value] + dx if value in grads else np.asarray(dx, dtype=np.float64)
        for role, g in dparams.items():
            name = node.params[role]
            param_grads[name] = param_grads[name] + g if name in param_grads else g
    return param_grads, grads


def sgd_update(
    weights: dict[str, np.ndarray], velocity: dict[str, np.ndarray], grads: Mapping[str, np.ndarray],
    learning_rate: float, momentum: float,
) -> None:
    """Keras 3 SGD in place: v <- m v - lr g; w <- w + v (w <- w - lr g when m = 0)."""
    for name, g in grads.items():
        if momentum:
            velocity[name] = momentum * velocity.get(name, np.zeros_like(g)) - learning_rate * g
            weights[name] = weights[name] + velocity[name]
        else:
            weights[name] = weights[name] - learning_rate * g


@dataclass
class ReferenceOptimizerState:
    """Keras' optimizer variables by slot and parameter, and ``optimizer.iterations``."""

    iterations: int = 0
    slots: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def slot(self, slot: str, name: str, like: np.ndarray) -> np.ndarray:
        return self.slots.setdefault(slot, {}).get(name, np.zeros_like(like))


def adam_update(weights: dict[str, np.ndarray], state: ReferenceOptimizerState, grads: Mapping[str, np.ndarray],
                spec: AdamSpec) -> None:
    """Keras 3 Adam (keras/src/optimizers/adam.py, amsgrad=False), in place:
    t = iterations + 1;  alpha = lr sqrt(1 - b2^t) / (1 - b1^t);
    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);  w -= alpha m / (sqrt(v) + eps)."""
    t = state.iterations + 1
    alpha = spec.learning_rate * np.sqrt(1.0 - spec.beta_2**t) / (1.0 - spec.beta_1**t)
    for name, g in grads.items():
        m = state.slot("m", name, g) + (g - state.slot("m", name, g)) * (1.0 - spec.beta_1)
        v = state.slot("v", name, g) + (g * g - state.slot("v", name, g)) * (1.0 - spec.beta_2)
        state.slots["m"][name], state.slots["v"][name] = m, v
        weights[name] = weights[name] - alpha * m / (np.sqrt(v) + spec.epsilon)
    state.iterations = t


def rmsprop_update(weights: dict[str, np.ndarray], state: ReferenceOptimizerState,
                   grads: Mapping[str, np.ndarray], spec: RMSpropSpec) -> None:
    """Keras 3 RMSprop (keras/src/optimizers/rmsprop.py), in place:
    v = rho v + (1 - rho) g^2;  centered: a = rho a + (1 - rho) g, denominator v - a^2 + eps,
    else v + eps;  increment = lr g / sqrt(denominator);  with momentum:
    s = momentum s + increment, w -= s;  else w -= increment."""
    rho = spec.rho
    for name, g in grads.items():
        v = rho * state.slot("v", name, g) + (1.0 - rho) * g * g
        state.slots["v"][name] = v
        if spec.centered:
            a = rho * state.slot("average", name, g) + (1.0 - rho) * g
            state.slots["average"][name] = a
            denominator = v - a * a + spec.epsilon
        else:
            denominator = v + spec.epsilon
        increment = spec.learning_rate * g / np.sqrt(denominator)
        if spec.momentum > 0:
            increment = spec.momentum * state.slot("momentum", name, g) + increment
            state.slots["momentum"][name] = increment
        weights[name] = weights[name] - increment
    state.iterations += 1


def optimizer_update(weights: dict[str, np.ndarray], state: ReferenceOptimizerState,
                     grads: Mapping[str, np.ndarray], spec: SGDSpec | AdamSpec | RMSpropSpec) -> None:
    """One step of the compiled Keras optimizer, in float64, in place."""
    if isinstance(spec, AdamSpec):
        adam_update(weights, state, grads, spec)
    elif isinstance(spec, RMSpropSpec):
        rmsprop_update(weights, state, grads, spec)
    else:
        sgd_update(weights, state.slots.setdefault("velocity", {}), grads, spec.learning_rate, spec.momentum)
        state.iterations += 1


class ReferenceTrainingExecutable(TrainingExecutable):
    """Plaintext training in float64, with the interface of the encrypted one."""

    def __init__(self, program: Program, weights: Mapping[str, np.ndarray], metrics: tuple[str, ...] = ()) -> None:
        validate_program(program)
        validate_weights(program, weights)
        self.program = program
        self.head = loss_head(program)
        self.metrics = tuple(metrics)
        self._weights = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self._optimizer = ReferenceOptimizerState()
        self._data: dict[str, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]] = {}
        self._trainable = {n for n, s in program.graph.parameters.items() if s.trainable}

    def load_data(self, data: Mapping[str, Any], split: str = "train") -> int:
        """{owner: (x, y) or (x, y, sample_weight)}; all owners weighted or none."""
        parts = [owner_rows(self.program, self.head, item, owner) for owner, item in data.items()]
        weighted = {w is not None for _, _, w in parts}
        if len(weighted) > 1:
            raise ValueError("either every data owner gives sample weights or none does")
        xs = {name: np.concatenate([p[0][name] for p in parts]) for name in self.program.graph.inputs}
        w = np.concatenate([p[2] for p in parts]) if weighted == {True} else None
        self._data[split] = (xs, np.concatenate([p[1] for p in parts]), w)
        return len(self._data[split][1])

    def _step(self, rows: np.ndarray, split: str, train: bool) -> StepResult:
        xs, labels, weights = self._data[split]
        y = labels[rows]
        w = np.ones(len(rows)) if weights is None else weights[rows]
        values = reference_values(self.program, self._weights, {name: x[rows] for name, x in xs.items()})
        p = predicted(self.head, values)
        result = StepResult(
            float(np.mean(w * loss_values(self.head, p, y))),  # Keras: sum(w_i l_i) / batch size
            {m: float(np.mean(correct(self.head, p, y))) for m in self.metrics},
            len(rows),
        )
        if train:
            seed = self.head.gradient_scale * w[:, None] * (p - y) / len(rows)
            grads, _ = reference_backward(self.program, self._weights, values, {self.head.seed: seed})
            spec = self.program.training
            assert spec is not None
            trainable = {k: g for k, g in grads.items() if k in self._trainable}
            optimizer_update(self._weights, self._optimizer, trainable, spec.optimizer)
        return result

    def train_batch(self, rows: np.ndarray) -> StepResult:
        return self._step(np.asarray(rows), "train", train=True)

    def evaluate_batch(self, rows: np.ndarray, split: str = "validation") -> StepResult:
        return self._step(np.asarray(rows), split, train=False)

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._weights.items()}


# the opset-v2 backward rules register themselves in REFERENCE_BACKWARD (imported last: they use the rules above)
import bridge.reference_train_v2  # noqa: E402,F401
