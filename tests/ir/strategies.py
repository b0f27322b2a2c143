"""Hypothesis strategies for valid Programs: random MLP/CNN chains with branches and adds.

Each step picks an op that fits the current value's shape, so every drawn Program
passes ``validate_program`` by construction (the strategy asserts it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from bridge.ir import (
    Graph,
    Loss,
    Node,
    Numerics,
    ParamSpec,
    Placement,
    PrivacyMode,
    Program,
    SGDSpec,
    TensorSpec,
    TrainingSpec,
    infer_shape,
    validate_program,
)
from bridge.ir import ops as irops

Shape = tuple[int, ...]
ELEMENTWISE = (irops.Relu, irops.Sigmoid, irops.Tanh, irops.Identity)


@dataclass
class _Chain:
    rng: np.random.Generator
    dtype: str
    extreme: bool
    nodes: list[Node] = field(default_factory=list)
    params: dict[str, ParamSpec] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict)

    def weight(self, shape: Shape, role: str) -> np.ndarray:
        if role == "moving_variance":
            value = self.rng.uniform(0.2, 2.0, shape)
        else:
            value = self.rng.normal(0.0, 0.5, shape)
        value = value.astype(self.dtype)
        if self.extreme and value.size >= 3:
            # Values a lossy writer would get wrong: signed zero, a subnormal, the largest finite.
            flat = value.reshape(-1)
            flat[0], flat[1], flat[2] = -0.0, np.finfo(self.dtype).smallest_subnormal, np.finfo(self.dtype).max
        return value

    def add(self, op: irops.Op, inputs: list[str], param_shapes: dict[str, Shape] | None = None) -> str:
        index = len(self.nodes)
        name, out = f"n{index}_{op.kind}", f"v{index}"
        params = {}
        for role, shape in (param_shapes or {}).items():
            pname = f"{name}/{role}"
            self.params[pname] = ParamSpec(shape=shape, dtype=self.dtype, trainable=not role.startswith("moving"))
            self.weights[pname] = self.weight(shape, role)
            params[role] = pname
        self.shapes[out] = infer_shape(op, [self.shapes[v] for v in inputs], dict(param_shapes or {}))
        self.nodes.append(Node(name=name, op=op, inputs=tuple(inputs), output=out, params=params))
        return out


def _step(draw, chain: _Chain, value: str) -> str:
    shape = chain.shapes[value]
    choices = ["elementwise", "batch_norm", "residual", "reshape", "softmax"]
    if len(shape) == 1:
        choices += ["dense", "dense", "dense"]
    else:
        choices += ["flatten"]
    if len(shape) == 3:
        # Mostly stay an image for a while: windows are where the subtle rules are.
        choices += ["conv2d"] * 4 + ["pool"] * 4 + ["global_pool"]
    kind = draw(st.sampled_from(choices))

    if kind == "elementwise":
        return chain.add(draw(st.sampled_from(ELEMENTWISE))(), [value])
    if kind == "softmax":
        return chain.add(irops.Softmax(), [value])
    if kind == "flatten":
        return chain.add(irops.Flatten(), [value])
    if kind == "global_pool":
        return chain.add(irops.GlobalAvgPool2D(), [value])
    if kind == "batch_norm":
        eps = draw(st.sampled_from([1e-3, 1e-5, 0.1]))
        channels = (shape[-1],)
        roles = {r: channels for r in ("gamma", "beta", "moving_mean", "moving_variance")}
        return chain.add(irops.BatchNorm(epsilon=eps), [value], roles)
    if kind == "residual":
        branch = chain.add(draw(st.sampled_from(ELEMENTWISE))(), [value])
        extra = draw(st.lists(st.sampled_from([value, branch]), min_size=0, max_size=2))
        return chain.add(irops.Add(), [value, branch, *extra])
    if kind == "reshape":
        size = math.prod(shape)
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        first = draw(st.sampled_from(divisors))
        target = draw(st.sampled_from([(first, size // first), (first, -1), (-1,), (size,)]))
        return chain.add(irops.Reshape(target_shape=target), [value])
    if kind == "dense":
        units = draw(st.integers(1, 6))
        use_bias = draw(st.booleans())
        roles = {"kernel": (shape[0], units), **({"bias": (units,)} if use_bias else {})}
        return chain.add(irops.Dense(units=units, use_bias=use_bias), [value], roles)

    h, w, c = shape
    padding = draw(st.sampled_from(["valid", "same"]))
    limit_h, limit_w = (h, w) if padding == "valid" else (3, 3)
    window = (draw(st.integers(1, min(3, limit_h))), draw(st.integers(1, min(3, limit_w))))
    strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if kind == "conv2d":
        filters = draw(st.integers(1, 3))
        use_bias = draw(st.booleans())
        roles = {"kernel": (*window, c, filters), **({"bias": (filters,)} if use_bias else {})}
        op = irops.Conv2D(filters=filters, kernel_size=window, strides=strides, padding=padding, use_bias=use_bias)
        return chain.add(op, [value], roles)
    pool = draw(st.sampled_from([irops.AvgPool2D, irops.MaxPool2D]))
    return chain.add(pool(pool_size=window, strides=strides, padding=padding), [value])


_PARTY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,7}", fullmatch=True)


@st.composite
def placements(draw, inputs: list[str], outputs: list[str]) -> Placement:
    names = draw(st.lists(_PARTY, min_size=5, max_size=5, unique=True))
    return Placement.default(
        inputs, outputs, data_owner=names[0], model_owner=names[1], compute=(names[2], names[3]), dealer=names[4]
    )


@st.composite
def programs(draw, extreme_weights: bool = False, max_steps: int = 6) -> tuple[Program, dict[str, np.ndarray]]:
    """A valid Program and its weights."""
    chain = _Chain(
        rng=np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        extreme=extreme_weights,
    )
    if draw(st.booleans()):
        in_shape: Shape = (draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 3)))
    else:
        in_shape = (draw(st.integers(1, 8)),)
    inputs = ["x"] + (["x2"] if draw(st.booleans()) else [])
    for name in inputs:
        chain.shapes[name] = in_shape
    value = chain.add(irops.Add(), inputs) if len(inputs) == 2 else "x"
    for _ in range(draw(st.integers(1, max_steps))):
        value = _step(draw, chain, value)
    outputs = [value]
    produced = [n.output for n in chain.nodes[:-1]]
    if produced and draw(st.booleans()):
        outputs.insert(0, draw(st.sampled_from(produced)))

    graph = Graph(
        inputs={n: TensorSpec(shape=(None, *in_shape), dtype=draw(st.sampled_from(["float32", "float64"])))
                for n in inputs},
        outputs={n: TensorSpec(shape=(None, *chain.shapes[n])) for n in outputs},
        parameters=chain.params,
        nodes=tuple(chain.nodes),
    )
    training = None
    if draw(st.booleans()):
        training = TrainingSpec(
            loss=draw(st.sampled_from(list(Loss))),
            from_logits=draw(st.booleans()),
            optimizer=SGDSpec(learning_rate=draw(st.floats(1e-4, 1.0)), momentum=draw(st.floats(0.0, 0.99))),
            epochs=draw(st.integers(1, 5)),
            batch_size=draw(st.integers(1, 64)),
            shuffle=draw(st.booleans()),
        )
    frac = draw(st.integers(8, 20))
    program = Program(
        name=draw(st.text(min_size=1, max_size=12)),
        graph=graph,
        placement=draw(placements(inputs, outputs)),
        numerics=Numerics(frac_bits=frac, compare_bits=draw(st.integers(frac + 8, 64))),
        privacy=draw(st.sampled_from(list(PrivacyMode))),
        training=training,
    )
    validate_program(program)
    return program, chain.weights
