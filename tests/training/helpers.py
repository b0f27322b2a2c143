"""Shared pieces of the training tests: autodiff oracles, secure runs of one backward pass,
and small training Programs built straight in the IR."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bridge.ir import (
    Graph,
    Loss,
    Node,
    ParamSpec,
    Party,
    Placement,
    PrivacyMode,
    Program,
    Role,
    SGDSpec,
    TensorSpec,
    TrainingSpec,
)
from bridge.ir import ops as irops
from bridge.mpc.backward import secure_backward
from bridge.mpc.layers import secure_forward, secure_parameters
from bridge.mpc.protocol import reveal_to, share_input
from bridge.mpc.runtime import ThreadedParties
from bridge.mpc.session import compute_and_dealer, setup_party
from bridge.reference_train import batch_schedule

# -- TensorFlow autodiff, the oracle of every backward rule ------------------------------------------


def _tf_conv2d(tf, x, kernel, op, groups=None):
    """Conv2D with dilation and groups (grouped as one conv per group: TF has no grouped conv on CPU)."""
    groups = groups or getattr(op, "groups", 1)
    dilations = getattr(op, "dilation_rate", (1, 1))
    xs = tf.split(x, groups, axis=-1) if groups > 1 else [x]
    ks = tf.split(kernel, groups, axis=-1) if groups > 1 else [kernel]
    ys = [tf.nn.convolution(a, w, op.strides, op.padding.upper(), dilations=dilations) for a, w in zip(xs, ks)]
    return tf.concat(ys, axis=-1) if groups > 1 else ys[0]


def _tf_depthwise(tf, x, kernel, op):
    """Depthwise as a convolution with one group per channel (tf.nn.depthwise_conv2d needs equal strides)."""
    kh, kw, c, m = kernel.shape
    return _tf_conv2d(tf, x, tf.reshape(kernel, (kh, kw, 1, c * m)), op, groups=c)


def _tf_keras_relu(tf, x, op):
    """Keras' relu with options, as the reference states it (x above threshold, clipped at
    max_value, negative_slope (x - threshold) below)."""
    y = tf.where(x > op.threshold, x, op.negative_slope * (x - op.threshold))
    return y if op.max_value is None else tf.where(x >= op.max_value, tf.constant(op.max_value, x.dtype), y)


def _tf_2d(tf, op2d, x, params, node):
    """A 1-D op through its 2-D form on (n, 1, steps, C), as the IR defines it."""
    lifted = {r: (v[None] if r == "kernel" else v) for r, v in params.items()}
    y = tf_forward(node.model_copy(update={"op": op2d}), [x[:, None]], lifted)
    return y[:, 0]


def tf_forward(node: Node, xs: list, params: Mapping):
    """The op in float64 TensorFlow (tf.nn), with Keras' semantics."""
    import tensorflow as tf

    op = node.op
    kind = op.kind
    x = xs[0]
    rank = len(x.shape)
    if kind == "dense":
        y = tf.matmul(xs[0], params["kernel"])
        return y + params["bias"] if op.use_bias else y
    if kind in ("conv2d", "depthwise_conv2d"):
        y = (_tf_conv2d if kind == "conv2d" else _tf_depthwise)(tf, x, params["kernel"], op)
        return y + params["bias"] if op.use_bias else y
    if kind in ("conv1d", "depthwise_conv1d", "avg_pool1d", "max_pool1d"):
        return _tf_2d(tf, op.as_2d(), x, params, node)
    if kind == "avg_pool2d":
        return tf.nn.avg_pool2d(xs[0], op.pool_size, op.strides, op.padding.upper())
    if kind == "max_pool2d":
        return tf.nn.max_pool2d(xs[0], op.pool_size, op.strides, op.padding.upper())
    if kind in ("global_avg_pool2d", "global_avg_pool1d"):
        return tf.reduce_mean(x, axis=tuple(range(1, rank - 1)), keepdims=op.keepdims)
    if kind in ("global_max_pool2d", "global_max_pool1d"):
        return tf.reduce_max(x, axis=tuple(range(1, rank - 1)), keepdims=op.keepdims)
    if kind in ("upsample2d", "upsample1d"):
        sizes = op.size if isinstance(op.size, tuple) else (op.size,)
        for axis, size in enumerate(sizes, start=1):
            x = tf.repeat(x, size, axis=axis)
        return x
    if kind == "pad":
        return tf.pad(x, [(0, 0), *op.pads])
    if kind == "crop":
        return x[(slice(None), *(slice(b, d - a) for d, (b, a) in zip(x.shape[1:], op.crops)))]
    if kind == "transpose":
        return tf.transpose(x, (0, *(a + 1 for a in op.perm)))
    if kind == "repeat_vector":
        return tf.repeat(x[:, None, :], op.n, axis=1)
    if kind == "concat":
        return tf.concat(xs, axis=op.axis % (rank - 1) + 1)
    if kind == "flatten":
        return tf.reshape(xs[0], (xs[0].shape[0], -1))
    if kind == "reshape":
        return tf.reshape(xs[0], (xs[0].shape[0], *op.target_shape))
    if kind in ("add", "average", "multiply", "maximum", "minimum", "subtract"):
        combine = {"add": tf.add, "average": tf.add, "multiply": tf.multiply, "maximum": tf.maximum,
                   "minimum": tf.minimum, "subtract": tf.subtract}[kind]
        out = xs[0]
        for other in xs[1:]:
            out = combine(out, other)
        return out / len(xs) if kind == "average" else out
    if kind == "identity":
        return tf.identity(xs[0])
    if kind == "relu":
        return tf.nn.relu(x) if op.plain else _tf_keras_relu(tf, x, op)
    if kind == "prelu":
        return tf.where(x >= 0, x, params["alpha"] * x)
    if kind == "rescale":
        return x * tf.constant(op.scale, tf.float64) + tf.constant(op.offset, tf.float64)
    if kind == "elu":
        return tf.where(x > 0, x, op.alpha * (tf.exp(tf.minimum(x, 0.0)) - 1.0))
    if kind == "gelu":
        return tf.nn.gelu(x, approximate=op.approximate)
    if kind == "hard_sigmoid":
        return tf.clip_by_value(x / 6.0 + 0.5, 0.0, 1.0)
    if kind == "hard_silu":
        return x * tf.clip_by_value(x / 6.0 + 0.5, 0.0, 1.0)
    if kind == "softmax":
        return tf.nn.softmax(x, axis=op.axis % (rank - 1) + 1)
    if kind == "layer_norm":
        from bridge.ir.shapes_attention import layer_norm_axes

        axes = [a + 1 for a in layer_norm_axes(op, rank - 1)]
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        var = tf.reduce_mean((x - mean) ** 2, axis=axes, keepdims=True)
        shape = [1] * rank
        for a in axes:
            shape[a] = x.shape[a]
        return (x - mean) / tf.sqrt(var + op.epsilon) * tf.reshape(params["gamma"], shape) + tf.reshape(
            params["beta"], shape)
    if kind == "layer_scale":
        return x * params["gamma"]
    if kind in ("reduce_sum", "reduce_mean"):
        from bridge.ir.shapes_attention import reduced_axes

        reduce = tf.reduce_sum if kind == "reduce_sum" else tf.reduce_mean
        return reduce(x, axis=[a + 1 for a in reduced_axes(op, rank - 1)], keepdims=op.keepdims)
    if kind == "exp":
        return tf.exp(x)
    if kind == "matmul":
        return tf.matmul(xs[0], xs[1])
    if kind == "embedding":  # x holds the one-hot rows the data owner shared
        return tf.tensordot(x, params["embeddings"], axes=1)
    if kind == "conv2d_transpose":
        from bridge.ir.shapes_attention import transpose_output

        out = [transpose_output(size, window, stride, op.padding)
               for size, window, stride in zip(x.shape[1:3], op.kernel_size, op.strides)]
        y = tf.nn.conv2d_transpose(x, params["kernel"], (x.shape[0], *out, op.filters), op.strides,
                                   op.padding.upper())
        return y + params["bias"] if op.use_bias else y
    if kind == "multi_head_attention":
        query, value = xs[0], xs[1]
        key = xs[2] if len(xs) == 3 else value

        def project(t, part):
            out = tf.einsum("btd,dhk->bthk", t, params[f"{part}_kernel"])
            return out + params[f"{part}_bias"] if op.use_bias else out

        q = project(query, "query") / np.sqrt(op.key_dim)
        scores = tf.einsum("bshk,bthk->bhts", project(key, "key"), q)
        if op.causal:
            allowed = np.tril(np.ones(scores.shape[2:], dtype=bool))
            scores = tf.where(allowed, scores, tf.constant(-1e9, tf.float64))
        weights = tf.nn.softmax(scores, axis=-1)
        heads = tf.einsum("bhts,bshv->bthv", weights, project(value, "value"))
        out = tf.einsum("bthv,hvo->bto", heads, params["output_kernel"])
        return out + params["output_bias"] if op.use_bias else out
    if kind == "add_constant":
        return x + params["constant"]
    if kind == "reverse":
        return tf.reverse(x, axis=[op.axis % (rank - 1) + 1])
    if kind == "batch_norm":
        shape = [1] * rank
        shape[op.axis % (rank - 1) + 1] = params["gamma"].shape[0]
        g, b, m, v = (tf.reshape(params[r], shape) for r in ("gamma", "beta", "moving_mean", "moving_variance"))
        return g * (x - m) / tf.sqrt(v + op.epsilon) + b
    return {"relu": tf.nn.relu, "sigmoid": tf.nn.sigmoid, "tanh": tf.nn.tanh, "silu": tf.nn.silu,
            "softplus": tf.nn.softplus, "softsign": tf.nn.softsign}[kind](x)


def tf_gradients(program: Program, weights: Mapping, inputs: Mapping, seeds: Mapping[str, np.ndarray]):
    """d(sum_v sum(v * seed_v)) / d(inputs, parameters), the graph run in float64 TensorFlow
    under a GradientTape.  Returns (parameter gradients, input gradients)."""
    import tensorflow as tf

    xs = {v: tf.Variable(np.asarray(inputs[v], dtype=np.float64)) for v in program.graph.inputs}
    params = {p: tf.Variable(np.asarray(w, dtype=np.float64)) for p, w in weights.items()}
    with tf.GradientTape() as tape:
        values = dict(xs)
        for node in program.graph.nodes:
            node_params = {role: params[p] for role, p in node.params.items()}
            values[node.output] = tf_forward(node, [values[v] for v in node.inputs], node_params)
        objective = tf.add_n([tf.reduce_sum(values[v] * seed) for v, seed in seeds.items()])
    grads = tape.gradient(objective, {"params": params, "inputs": xs})
    as_numpy = lambda d: {k: g.numpy() for k, g in d.items() if g is not None}  # noqa: E731
    return as_numpy(grads["params"]), as_numpy(grads["inputs"])


# -- one secure forward + backward --------------------------------------------------------------------


def secure_gradients(kernels, program: Program, weights: Mapping, inputs: Mapping, dy: np.ndarray):
    """Share weights, inputs and dy; run forward (training) and backward on shares; reveal the
    parameter and input gradients to the data owner.  Returns (param grads, input grads)."""
    placement = program.placement
    compute, dealer = compute_and_dealer(program)
    parties = ThreadedParties(placement.names, kernels, program.numerics, compute, dealer, timeout_s=60)
    owner = placement.param_owner
    client = next(iter(placement.input_owners.values()))
    prepared = secure_parameters(program, weights)
    (out_name,) = program.graph.outputs
    names = list(program.graph.inputs)

    def body(ctx):
        params = setup_party(ctx, program, prepared if ctx.name == owner else None)
        xs = {v: share_input(ctx, client, inputs[v] if ctx.name == client else None, inputs[v].shape, v) for v in names}
        grad_y = share_input(ctx, client, dy if ctx.name == client else None, dy.shape, "dy")
        pg, ig = {}, {}
        if ctx.in_protocol:
            values, caches = secure_forward(ctx, program, params, xs, training=True)
            pg, ig = secure_backward(ctx, program, params, values, caches, {out_name: grad_y}, wrt=tuple(names))
        trainable = sorted(p for p, spec in program.graph.parameters.items() if spec.trainable)
        out_p = {p: reveal_to(ctx, pg.get(p), (client,), p) for p in trainable}
        out_i = {v: reveal_to(ctx, ig.get(v), (client,), v) for v in names}
        return out_p, out_i

    return parties.run(body)[client]


# -- small training Programs --------------------------------------------------------------------------

def training_placement(inputs, outputs, data_owners=("alice", "bob")) -> Placement:
    parties = [Party(name="owner", roles=frozenset({Role.MODEL_OWNER}))]
    parties += [Party(name=d, roles=frozenset({Role.DATA_OWNER, Role.CLIENT})) for d in data_owners]
    parties += [Party(name=c, roles=frozenset({Role.COMPUTE})) for c in ("s0", "s1")]
    parties += [Party(name="dealer", roles=frozenset({Role.DEALER}))]
    return Placement(
        parties=tuple(parties),
        input_owners={v: data_owners[0] for v in inputs},
        param_owner="owner",
        output_receivers={v: (data_owners[0],) for v in outputs},
    )


def mlp_program(
    sizes: list[int],
    loss: Loss = Loss.SPARSE_CATEGORICAL_CROSSENTROPY,
    from_logits: bool = False,
    hidden: str = "relu",
    learning_rate: float = 0.1,
    momentum: float = 0.0,
    seed: int = 0,
    weight_scale: float = 1.0,
) -> tuple[Program, dict[str, np.ndarray]]:
    """Dense layers with ``hidden`` activations; the last one softmax/sigmoid/linear per the loss."""
    rng = np.random.default_rng(seed)
    nodes, params, weights = [], {}, {}
    value = "x"
    for i, (fan_in, units) in enumerate(zip(sizes, sizes[1:])):
        name = f"dense_{i}"
        params[f"{name}/kernel"] = ParamSpec(shape=(fan_in, units))
        params[f"{name}/bias"] = ParamSpec(shape=(units,))
        weights[f"{name}/kernel"] = (rng.normal(size=(fan_in, units)) * np.sqrt(2 / fan_in) * weight_scale).astype(np.float32)
        weights[f"{name}/bias"] = (rng.normal(size=units) * 0.1).astype(np.float32)
        nodes.append(Node(name=name, op=irops.Dense(units=units), inputs=(value,), output=name,
                          params={"kernel": f"{name}/kernel", "bias": f"{name}/bias"}))
        value = name
        last = i == len(sizes) - 2
        kind = hidden if not last else {Loss.MSE: None, Loss.BINARY_CROSSENTROPY: "sigmoid"}.get(loss, "softmax")
        if last and from_logits:
            kind = None
        if kind is not None:
            op = {"relu": irops.Relu, "sigmoid": irops.Sigmoid, "tanh": irops.Tanh, "softmax": irops.Softmax}[kind]()
            nodes.append(Node(name=f"{kind}_{i}", op=op, inputs=(value,), output=f"{kind}_{i}"))
            value = f"{kind}_{i}"
    graph = Graph(inputs={"x": TensorSpec(shape=(None, sizes[0]))}, outputs={value: TensorSpec(shape=(None, sizes[-1]))},
                  parameters=params, nodes=tuple(nodes))
    spec = TrainingSpec(loss=loss, from_logits=from_logits,
                        optimizer=SGDSpec(learning_rate=learning_rate, momentum=momentum), batch_size=32)
    program = Program(graph=graph, placement=training_placement(["x"], [value]),
                      privacy=PrivacyMode.ENCRYPTED_TRAINING, training=spec)
    return program, weights


def keras_fit_in_order(model, x, y, epochs, batch_size, seed):
    """Plaintext Keras training on the batches of ``batch_schedule`` (same order, same sizes)."""
    for epoch in range(epochs):
        order = np.concatenate(batch_schedule(len(x), batch_size, epoch, seed))
        model.fit(x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
