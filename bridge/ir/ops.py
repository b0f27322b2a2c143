"""The opset: every op the IR knows, each with typed attributes.

An op is a pydantic model whose ``kind`` field is the discriminator, so a Node's
attributes are validated per op (like an ONNX schema) instead of living in a
free-form dict.  Adding an op means adding one class here and one entry in each
rule table (shapes, reference, secure forward/backward).

Versions: v1 had the 14 kinds of ``V1_KINDS``; v2 adds padding and cropping,
1-D / dilated / grouped / depthwise convolutions, 1-D and global max pools,
upsampling, the merging ops, PReLU, rescaling, the smooth activations and the
shape ops, and gives existing ops new attributes whose defaults keep v1 meaning
(``Relu.max_value``, ``Softmax.axis``, ``BatchNorm.axis``, ``Conv2D.dilation_rate``
...).  A Program records the opset it was written with; a v1 Program still loads.

Axes: ``axis``/``perm``/``pads`` attributes count *feature* axes (the batch axis
excluded; negative values count from the end), so an op never touches the batch.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OPSET_VERSION = 2


class _Op(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: parameter roles this op reads, e.g. ("kernel", "bias"); fixed per op class.
    @property
    def param_roles(self) -> tuple[str, ...]:
        return ()

    #: how many inputs the op takes (None: two or more).
    @property
    def arity(self) -> int | None:
        return 1


class _Merge(_Op):
    """An op of two or more inputs."""

    @property
    def arity(self) -> int | None:
        return None


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair of ints, received {value!r}")
    return (int(value[0]), int(value[1]))


def _single(value: int | tuple[int] | list[int]) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 1:
        raise ValueError(f"expected an int or a 1-tuple, received {value!r}")
    return int(value[0])


class _Window(_Op):
    """Shared by pools: a 2-D window over NHWC input."""

    pool_size: tuple[int, int]
    strides: tuple[int, int]
    padding: Literal["valid", "same"] = "valid"

    @field_validator("pool_size", "strides", mode="before")
    @classmethod
    def _as_pair(cls, v):  # noqa: N805 - pydantic validator
        return _pair(v)


class _Window1D(_Op):
    """Shared by 1-D pools over (batch, steps, channels): the 2-D pool on a (1, steps) image."""

    pool_size: int = Field(gt=0)
    strides: int = Field(gt=0)
    padding: Literal["valid", "same"] = "valid"

    @field_validator("pool_size", "strides", mode="before")
    @classmethod
    def _as_int(cls, v):  # noqa: N805
        return _single(v)


class Dense(_Op):
    kind: Literal["dense"] = "dense"
    units: int = Field(gt=0)
    use_bias: bool = True

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)


class Conv2D(_Op):
    """Keras Conv2D: kernel (kh, kw, C / groups, filters); group g reads channels
    [g C/G, (g+1) C/G) and writes filters [g F/G, (g+1) F/G)."""

    kind: Literal["conv2d"] = "conv2d"
    filters: int = Field(gt=0)
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Literal["valid", "same"] = "valid"
    use_bias: bool = True
    dilation_rate: tuple[int, int] = (1, 1)
    groups: int = Field(default=1, gt=0)

    @field_validator("kernel_size", "strides", "dilation_rate", mode="before")
    @classmethod
    def _as_pair(cls, v):  # noqa: N805
        return _pair(v)

    @model_validator(mode="after")
    def _one_of_strides_or_dilation(self) -> "Conv2D":
        if self.strides != (1, 1) and self.dilation_rate != (1, 1):
            raise ValueError("strides > 1 together with dilation_rate > 1 is not defined (as in Keras)")
        if self.filters % self.groups:
            raise ValueError(f"filters={self.filters} must be divisible by groups={self.groups}")
        return self

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)


class Conv1D(_Op):
    """Keras Conv1D ('valid'/'same'; 'causal' is a left Pad then 'valid'): the 2-D rule on a
    (1, steps) image with kernel (1, k, C / groups, filters)."""

    kind: Literal["conv1d"] = "conv1d"
    filters: int = Field(gt=0)
    kernel_size: int = Field(gt=0)
    strides: int = Field(default=1, gt=0)
    padding: Literal["valid", "same"] = "valid"
    use_bias: bool = True
    dilation_rate: int = Field(default=1, gt=0)
    groups: int = Field(default=1, gt=0)

    @field_validator("kernel_size", "strides", "dilation_rate", mode="before")
    @classmethod
    def _as_int(cls, v):  # noqa: N805
        return _single(v)

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)

    def as_2d(self) -> Conv2D:
        return Conv2D(filters=self.filters, kernel_size=(1, self.kernel_size), strides=(1, self.strides),
                      padding=self.padding, use_bias=self.use_bias, dilation_rate=(1, self.dilation_rate),
                      groups=self.groups)


class DepthwiseConv2D(_Op):
    """Keras DepthwiseConv2D: kernel (kh, kw, C, M); output channel c M + m reads channel c only."""

    kind: Literal["depthwise_conv2d"] = "depthwise_conv2d"
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Literal["valid", "same"] = "valid"
    depth_multiplier: int = Field(default=1, gt=0)
    dilation_rate: tuple[int, int] = (1, 1)
    use_bias: bool = True

    @field_validator("kernel_size", "strides", "dilation_rate", mode="before")
    @classmethod
    def _as_pair(cls, v):  # noqa: N805
        return _pair(v)

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)


class DepthwiseConv1D(_Op):
    """Keras DepthwiseConv1D (and SeparableConv1D's first half): kernel (k, C, M)."""

    kind: Literal["depthwise_conv1d"] = "depthwise_conv1d"
    kernel_size: int = Field(gt=0)
    strides: int = Field(default=1, gt=0)
    padding: Literal["valid", "same"] = "valid"
    depth_multiplier: int = Field(default=1, gt=0)
    dilation_rate: int = Field(default=1, gt=0)
    use_bias: bool = True

    @field_validator("kernel_size", "strides", "dilation_rate", mode="before")
    @classmethod
    def _as_int(cls, v):  # noqa: N805
        return _single(v)

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)

    def as_2d(self) -> DepthwiseConv2D:
        return DepthwiseConv2D(kernel_size=(1, self.kernel_size), strides=(1, self.strides), padding=self.padding,
                               depth_multiplier=self.depth_multiplier, dilation_rate=(1, self.dilation_rate),
                               use_bias=self.use_bias)


class AvgPool2D(_Window):
    kind: Literal["avg_pool2d"] = "avg_pool2d"


class MaxPool2D(_Window):
    kind: Literal["max_pool2d"] = "max_pool2d"


class AvgPool1D(_Window1D):
    kind: Literal["avg_pool1d"] = "avg_pool1d"

    def as_2d(self) -> AvgPool2D:
        return AvgPool2D(pool_size=(1, self.pool_size), strides=(1, self.strides), padding=self.padding)


class MaxPool1D(_Window1D):
    kind: Literal["max_pool1d"] = "max_pool1d"

    def as_2d(self) -> MaxPool2D:
        return MaxPool2D(pool_size=(1, self.pool_size), strides=(1, self.strides), padding=self.padding)


class GlobalAvgPool2D(_Op):
    kind: Literal["global_avg_pool2d"] = "global_avg_pool2d"
    keepdims: bool = False


class GlobalMaxPool2D(_Op):
    kind: Literal["global_max_pool2d"] = "global_max_pool2d"
    keepdims: bool = False


class GlobalAvgPool1D(_Op):
    kind: Literal["global_avg_pool1d"] = "global_avg_pool1d"
    keepdims: bool = False


class GlobalMaxPool1D(_Op):
    kind: Literal["global_max_pool1d"] = "global_max_pool1d"
    keepdims: bool = False


class UpSample2D(_Op):
    """Nearest-neighbour upsampling of NHWC images: each cell repeated (sh, sw) times."""

    kind: Literal["upsample2d"] = "upsample2d"
    size: tuple[int, int]

    @field_validator("size", mode="before")
    @classmethod
    def _as_pair(cls, v):  # noqa: N805
        return _pair(v)


class UpSample1D(_Op):
    kind: Literal["upsample1d"] = "upsample1d"
    size: int = Field(gt=0)


class Pad(_Op):
    """Zero padding: one (before, after) pair per feature axis (ZeroPadding1D/2D, causal Conv1D)."""

    kind: Literal["pad"] = "pad"
    pads: tuple[tuple[int, int], ...]


class Crop(_Op):
    """Cropping: one (before, after) pair of cells dropped per feature axis (Cropping1D/2D)."""

    kind: Literal["crop"] = "crop"
    crops: tuple[tuple[int, int], ...]


class Flatten(_Op):
    kind: Literal["flatten"] = "flatten"


class Reshape(_Op):
    kind: Literal["reshape"] = "reshape"
    #: target shape without the batch dimension; one entry may be -1.
    target_shape: tuple[int, ...]


class Transpose(_Op):
    """Permute the feature axes (Keras Permute with dims = perm + 1)."""

    kind: Literal["transpose"] = "transpose"
    perm: tuple[int, ...]


class RepeatVector(_Op):
    """(batch, features) -> (batch, n, features)."""

    kind: Literal["repeat_vector"] = "repeat_vector"
    n: int = Field(gt=0)


class Concat(_Merge):
    kind: Literal["concat"] = "concat"
    axis: int = -1


class Add(_Merge):
    kind: Literal["add"] = "add"


class Subtract(_Op):
    kind: Literal["subtract"] = "subtract"

    @property
    def arity(self) -> int | None:
        return 2


class Multiply(_Merge):
    """Elementwise product of secret values (one Beaver product per extra input)."""

    kind: Literal["multiply"] = "multiply"


class Average(_Merge):
    kind: Literal["average"] = "average"


class Maximum(_Merge):
    kind: Literal["maximum"] = "maximum"


class Minimum(_Merge):
    kind: Literal["minimum"] = "minimum"


class Relu(_Op):
    """Keras' relu: max_value where x >= max_value; x where threshold <= x < max_value;
    negative_slope (x - threshold) below threshold (LeakyReLU: negative_slope only)."""

    kind: Literal["relu"] = "relu"
    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> "Relu":
        if self.max_value is not None and self.max_value < self.threshold:
            raise ValueError(f"max_value={self.max_value} must be >= threshold={self.threshold}")
        return self

    @property
    def plain(self) -> bool:
        """max(x, 0) exactly."""
        return self.max_value is None and self.negative_slope == 0.0 and self.threshold == 0.0


class PRelu(_Op):
    """x for x >= 0, alpha x below, with a learned alpha broadcast over the feature shape."""

    kind: Literal["prelu"] = "prelu"

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("alpha",)


class Rescale(_Op):
    """y = x * scale + offset with public constants (scalars, or one per last-axis channel)."""

    kind: Literal["rescale"] = "rescale"
    scale: float | tuple[float, ...] = 1.0
    offset: float | tuple[float, ...] = 0.0


class Sigmoid(_Op):
    kind: Literal["sigmoid"] = "sigmoid"


class Tanh(_Op):
    kind: Literal["tanh"] = "tanh"


class Softmax(_Op):
    kind: Literal["softmax"] = "softmax"
    axis: int = -1


class Elu(_Op):
    kind: Literal["elu"] = "elu"
    alpha: float = 1.0


class Gelu(_Op):
    """x Phi(x) (approximate=False, erf form) or Keras' tanh form (approximate=True)."""

    kind: Literal["gelu"] = "gelu"
    approximate: bool = False


class Silu(_Op):
    """x sigmoid(x) (swish)."""

    kind: Literal["silu"] = "silu"


class HardSigmoid(_Op):
    """Keras 3: relu6(x + 3) / 6 = clip(x / 6 + 1/2, 0, 1)."""

    kind: Literal["hard_sigmoid"] = "hard_sigmoid"


class HardSilu(_Op):
    """x hard_sigmoid(x) (hard swish)."""

    kind: Literal["hard_silu"] = "hard_silu"


class Softplus(_Op):
    kind: Literal["softplus"] = "softplus"


class Softsign(_Op):
    kind: Literal["softsign"] = "softsign"


class BatchNorm(_Op):
    """Inference-form batch normalisation over one feature axis (the last by default)."""

    kind: Literal["batch_norm"] = "batch_norm"
    epsilon: float = Field(gt=0.0)
    axis: int = -1

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("gamma", "beta", "moving_mean", "moving_variance")


class Identity(_Op):
    """Dropout at inference, and any layer that passes its input through."""

    kind: Literal["identity"] = "identity"


class LayerNorm(_Op):
    """Keras LayerNormalization: (x - mean) / sqrt(var + epsilon) over ``axes`` (feature axes,
    ascending), times gamma plus beta; gamma and beta have the sizes of those axes (the
    importer gives center=False / scale=False layers zero beta / unit gamma)."""

    kind: Literal["layer_norm"] = "layer_norm"
    axes: tuple[int, ...] = (-1,)
    epsilon: float = Field(default=1e-3, gt=0.0)

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("gamma", "beta")


class LayerScale(_Op):
    """x * gamma, gamma learned per channel of the last axis (ConvNeXt's LayerScale)."""

    kind: Literal["layer_scale"] = "layer_scale"

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("gamma",)


class MultiHeadAttention(_Op):
    """Keras MultiHeadAttention on (batch, steps, features) inputs (query, value[, key]):
    per head h, softmax(q_h k_h^T / sqrt(key_dim) [+ causal mask]) v_h, then the output
    projection.  Kernels and biases have Keras' EinsumDense shapes."""

    kind: Literal["multi_head_attention"] = "multi_head_attention"
    num_heads: int = Field(gt=0)
    key_dim: int = Field(gt=0)
    value_dim: int = Field(gt=0)
    use_bias: bool = True
    causal: bool = False

    @property
    def arity(self) -> int | None:
        return None

    @property
    def param_roles(self) -> tuple[str, ...]:
        parts = ("query", "key", "value", "output")
        roles = tuple(f"{p}_kernel" for p in parts)
        return roles + tuple(f"{p}_bias" for p in parts) if self.use_bias else roles


class MatMul(_Op):
    """keras.ops.matmul of two secret tensors (batch, ..., M, K) @ (batch, ..., K, N)."""

    kind: Literal["matmul"] = "matmul"

    @property
    def arity(self) -> int | None:
        return 2


class ReduceSum(_Op):
    """keras.ops.sum over feature ``axes`` (None: every feature axis)."""

    kind: Literal["reduce_sum"] = "reduce_sum"
    axes: tuple[int, ...] | None = None
    keepdims: bool = False


class ReduceMean(_Op):
    """keras.ops.mean over feature ``axes`` (None: every feature axis)."""

    kind: Literal["reduce_mean"] = "reduce_mean"
    axes: tuple[int, ...] | None = None
    keepdims: bool = False


class Exp(_Op):
    """Keras' 'exponential' activation, e^x, for x <= EXP_CEIL (see bridge.mpc.normalization)."""

    kind: Literal["exp"] = "exp"


class Conv2DTranspose(_Op):
    """Keras Conv2DTranspose: kernel (kh, kw, filters, C); the adjoint of a Conv2D with these
    strides and padding (output_padding None, dilation 1)."""

    kind: Literal["conv2d_transpose"] = "conv2d_transpose"
    filters: int = Field(gt=0)
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Literal["valid", "same"] = "valid"
    use_bias: bool = True

    @field_validator("kernel_size", "strides", mode="before")
    @classmethod
    def _as_pair(cls, v):  # noqa: N805
        return _pair(v)

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "bias") if self.use_bias else ("kernel",)


class AddConstant(_Op):
    """x + c for a constant tensor c the model holds (a keras.ops add of a symbolic tensor and an
    array, e.g. keras.io's position embeddings): c is the model owner's, shared like a weight,
    and broadcasts over the feature shape."""

    kind: Literal["add_constant"] = "add_constant"

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("constant",)


#: activations a recurrent cell may use (Keras names); ``bridge.mpc.recurrent`` computes each
RecurrentActivation = Literal["tanh", "sigmoid", "relu", "linear", "hard_sigmoid"]


class Embedding(_Op):
    """Keras Embedding on token ids.  The input is a token graph input (``TensorSpec`` dtype
    "int32"): the data owner one-hot encodes its ids, so the value is (steps, vocabulary) and the
    lookup is one_hot @ embeddings (see ``bridge.ir.tokens``)."""

    kind: Literal["embedding"] = "embedding"

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("embeddings",)


class _Recurrent(_Op):
    """A Keras recurrent layer over (batch, steps, features), unrolled over the steps.
    ``go_backwards`` reads the steps last to first and, as Keras does, returns the sequence in
    that (reversed) order; ``return_sequences`` returns every step's state, else the last."""

    units: int = Field(gt=0)
    activation: RecurrentActivation = "tanh"
    use_bias: bool = True
    return_sequences: bool = False
    go_backwards: bool = False

    @property
    def param_roles(self) -> tuple[str, ...]:
        return ("kernel", "recurrent_kernel", "bias") if self.use_bias else ("kernel", "recurrent_kernel")


class SimpleRNN(_Recurrent):
    """h_t = activation(x_t W + h_(t-1) U + b)."""

    kind: Literal["simple_rnn"] = "simple_rnn"


class LSTM(_Recurrent):
    """Keras LSTM, gates in Keras' order (i, f, c, o): kernels (F, 4U), (U, 4U), bias (4U,)."""

    kind: Literal["lstm"] = "lstm"
    recurrent_activation: RecurrentActivation = "sigmoid"


class GRU(_Recurrent):
    """Keras GRU, gates (z, r, h): kernels (F, 3U), (U, 3U); bias (3U,), or (2, 3U) (input and
    recurrent biases) with ``reset_after``, where the reset gate multiplies h U_h + b_h."""

    kind: Literal["gru"] = "gru"
    recurrent_activation: RecurrentActivation = "sigmoid"
    reset_after: bool = True


class Reverse(_Op):
    """Reverse one feature axis (the backward half of a Bidirectional layer)."""

    kind: Literal["reverse"] = "reverse"
    axis: int = 0


Op = Annotated[
    Union[
        Dense,
        Conv2D,
        AvgPool2D,
        MaxPool2D,
        GlobalAvgPool2D,
        Flatten,
        Reshape,
        Add,
        Relu,
        Sigmoid,
        Tanh,
        Softmax,
        BatchNorm,
        Identity,
        # -- opset v2 --
        Conv1D,
        DepthwiseConv2D,
        DepthwiseConv1D,
        AvgPool1D,
        MaxPool1D,
        GlobalMaxPool2D,
        GlobalAvgPool1D,
        GlobalMaxPool1D,
        UpSample2D,
        UpSample1D,
        Pad,
        Crop,
        Transpose,
        RepeatVector,
        Concat,
        Subtract,
        Multiply,
        Average,
        Maximum,
        Minimum,
        PRelu,
        Rescale,
        Elu,
        Gelu,
        Silu,
        HardSigmoid,
        HardSilu,
        Softplus,
        Softsign,
        LayerNorm,
        LayerScale,
        MultiHeadAttention,
        MatMul,
        ReduceSum,
        ReduceMean,
        Exp,
        Conv2DTranspose,
        AddConstant,
        Embedding,
        SimpleRNN,
        LSTM,
        GRU,
        Reverse,
    ],
    Field(discriminator="kind"),
]

V1_KINDS: tuple[str, ...] = (
    "dense",
    "conv2d",
    "avg_pool2d",
    "max_pool2d",
    "global_avg_pool2d",
    "flatten",
    "reshape",
    "add",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "batch_norm",
    "identity",
)

OP_KINDS: tuple[str, ...] = tuple(
    cls.model_fields["kind"].default for cls in get_args(get_args(Op)[0])
)

#: op kind -> the opset version that introduced it
SINCE: dict[str, int] = {kind: 1 if kind in V1_KINDS else 2 for kind in OP_KINDS}

#: opset-v2 kinds that train: their backward rules are in bridge.mpc.backward_v2 (secure, both
#: backends) and bridge.reference_train_v2 (float64), checked against TensorFlow in tests/training
TRAINABLE_V2: frozenset[str] = frozenset({
    "conv1d", "depthwise_conv2d", "depthwise_conv1d", "avg_pool1d", "max_pool1d", "global_max_pool2d",
    "global_avg_pool1d", "global_max_pool1d", "upsample2d", "upsample1d", "pad", "crop", "transpose",
    "repeat_vector", "concat", "subtract", "multiply", "average", "maximum", "minimum", "prelu", "rescale",
    "elu", "gelu", "silu", "hard_sigmoid", "hard_silu", "softplus", "softsign",
    "layer_norm", "layer_scale", "reduce_sum", "reduce_mean", "exp", "matmul", "embedding", "reverse",
    "conv2d_transpose", "add_constant", "multi_head_attention",
})

#: why a serving-only kind stays so, where there is more to say than that its rule is not written
_BPTT = ("its backward rule (backpropagation through time over the unrolled steps) is not written yet; it "
         "runs in encrypted serving only")
_SERVING_ONLY_WHY: dict[str, str] = {
    "simple_rnn": _BPTT,
    "lstm": _BPTT,
    "gru": _BPTT,
}

#: op kind -> why encrypted training refuses it; checked before training starts
#: (``reference_train.loss_head``, and ``privatize(..., privacy="encrypted_training")``), so a
#: model is refused when it is prepared, never mid-fit.  A kind added later is serving-only
#: until its backward rules are written and it joins TRAINABLE_V2.
SERVING_ONLY: dict[str, str] = {
    kind: _SERVING_ONLY_WHY.get(kind, "its backward rule is not written yet; it runs in encrypted serving only")
    for kind in OP_KINDS
    if SINCE[kind] > 1 and kind not in TRAINABLE_V2
}


def training_refusal(op: _Op) -> str | None:
    """Why encrypted training cannot run this op (None: it can).  Every option of a trainable
    kind trains (relu's max_value/negative_slope/threshold, softmax on any axis, dilated and
    grouped convolutions, keepdims); a trainable batch norm is refused by ``loss_head``, which
    sees whether its parameters are frozen."""
    return SERVING_ONLY.get(op.kind)
