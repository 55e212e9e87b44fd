"""What an op is: the `Op` base class, its weight schema (`WeightSpec`), the registry
(`OPS`, `register_op`), the attribute types and helpers the specs share, and the
one-line error for bad attributes. The specs themselves are in ops.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
)

from nasgraph.errors import GraphError, ShapeError
from nasgraph.ir.types import TensorType


def _pair(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _positive_pair(value: tuple[int, int]) -> tuple[int, int]:
    if min(value) <= 0:
        raise ValueError("sizes must be positive")
    return value


def _non_negative_pair(value: tuple[int, int]) -> tuple[int, int]:
    if min(value) < 0:
        raise ValueError("padding must be non-negative")
    return value


# An int or an (h, w) pair, stored as the pair: kernel=3 and kernel=(3, 3) are the same spec.
PositivePair = Annotated[tuple[int, int], BeforeValidator(_pair), AfterValidator(_positive_pair)]
PaddingPair = Annotated[tuple[int, int], BeforeValidator(_pair),
                        AfterValidator(_non_negative_pair)]

ActivationFn = Literal["relu", "relu6", "sigmoid", "tanh", "silu", "hardswish", "gelu"]

# Arithmetic per element of each activation, as counted in `flops` (docs/costs.md).
ACTIVATION_FLOPS: dict[str, int] = {
    "relu": 1,  # max(x, 0)
    "relu6": 2,  # min(max(x, 0), 6)
    "sigmoid": 4,  # exp, add, divide, negate
    "tanh": 5,
    "silu": 5,  # x * sigmoid(x)
    "hardswish": 5,  # x * min(max(x + 3, 0), 6) / 6
    "gelu": 8,  # x * Phi(x) via erf
}

Window = tuple[tuple[int, int], tuple[float, float]]

# How a weight starts (`nasgraph.init_state`), as torch and He et al. initialize it:
# N(0, 2 / fan) for "he_normal_fan_out", U(-1/sqrt(fan), 1/sqrt(fan)) for "uniform_fan_in".
Init = Literal["he_normal_fan_out", "uniform_fan_in", "zeros", "ones"]


@dataclass(frozen=True)
class WeightSpec:
    """One tensor of an op's state dict: its shape, dtype and initialization.

    `fan` is what `init` scales by: the layer weight's fan_out or fan_in as torch's
    `nn.init._calculate_fan_in_and_fan_out` counts it (0 for constant inits). A tensor that
    is not `trainable` is a buffer (BN's running statistics): in the state dict, not in
    `params`. An `optional` one may be missing from a state dict because no computation
    reads it: BN's `num_batches_tracked`, torch's int64 count of training steps, is part of
    the schema (so `init_state` and `lower(graph).state_dict()` have the same keys) but
    the numba backend neither needs nor checks it.
    """

    shape: tuple[int, ...]
    init: Init
    fan: int = 0
    trainable: bool = True
    optional: bool = False
    dtype: Literal["float32", "int64"] = "float32"


def _fmt(pair: tuple[int, int]) -> str:
    return f"{pair[0]}x{pair[1]}"


def _fail(message: str, hint: str | None = None) -> ShapeError:
    return ShapeError(message + (f"; hint: {hint}" if hint else ""))


class Op(BaseModel):
    """Base of every op spec. Subclasses set `kind` and override the cost methods they need.

    Attributes are validated leniently from Python (`kernel=3`, numpy integers) and strictly
    from JSON (`Graph.from_dict`: "8" is not 8); NaN and infinity are refused everywhere.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: ClassVar[str]
    # Inputs accepted: (minimum, maximum); maximum None means any number.
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    # Drawing style family: io, conv, norm, act, pool, merge, linear, reshape.
    family: ClassVar[str]
    # Output is a view of the first input: no new memory (Identity, Dropout, Flatten, Output).
    is_alias: ClassVar[bool] = False
    # Counts as one layer of depth (conv and linear).
    is_layer: ClassVar[bool] = False
    # After this op every output element sees the whole input (global pooling, flatten).
    is_global: ClassVar[bool] = False

    def infer(self, inputs: Sequence[TensorType]) -> TensorType:
        """Output type for these input types; raises ShapeError when they do not fit."""
        return inputs[0]

    def weight_specs(self, inputs: Sequence[TensorType]) -> dict[str, WeightSpec]:
        """The op's state-dict entries for these input types: suffix -> spec, stored under
        `<node.param_key>.<suffix>` (`weight`, `bias`, ...); none for most ops.

        (Not named `weights`: that is `Add`'s attribute.)"""
        return {}

    def params(self, inputs: Sequence[TensorType]) -> int:
        """Trainable parameters, as torch's `sum(p.numel() for p in m.parameters())`."""
        return sum(math.prod(w.shape) for w in self.weight_specs(inputs).values()
                   if w.trainable)

    def macs(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        """Multiply-accumulates of conv and linear layers; 0 for every other op."""
        return 0

    def flops(self, inputs: Sequence[TensorType], output: TensorType) -> int:
        """All arithmetic: 2 per MAC plus elementwise work (docs/costs.md)."""
        return 0

    def window(self, inputs: Sequence[TensorType]) -> Window:
        """Effective kernel (h, w) and stride (h, w) for receptive-field arithmetic."""
        return ((1, 1), (1.0, 1.0))

    def label(self) -> str:
        """A short human label: `conv 3x3/2, 64`, `maxpool 3x3/2`, `concat`."""
        return self.kind

    def attrs(self) -> dict:
        """The attributes as plain JSON data."""
        return self.model_dump(mode="json")


OPS: dict[str, type[Op]] = {}


def register_op(cls: type[Op]) -> type[Op]:
    """Class decorator adding an op spec to the registry under its `kind`."""
    if cls.kind in OPS:
        raise GraphError(f"op kind {cls.kind!r} is registered twice")
    OPS[cls.kind] = cls
    return cls


def _shortened(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def attribute_error(cls: type[Op], attrs: Mapping[str, object], error: ValidationError) -> str:
    """The first problem pydantic found in `attrs` for `cls`, as one line: the attribute,
    what it should be and the value given."""
    problems = error.errors()
    first = problems[0]
    if first["type"] == "json_invalid":  # pydantic's JSON parser stops at depth 200
        return "attributes nested too deeply"
    if not first["loc"]:  # a check across attributes (a model validator)
        return first["msg"].removeprefix("Value error, ")
    field = str(first["loc"][0])
    if first["type"] == "missing":
        return f"attribute {field!r} is required"
    if first["type"] == "extra_forbidden":
        known = ", ".join(cls.model_fields)
        return f"unknown attribute {field!r}; hint: " + (
            f"{cls.kind} takes {known}" if known else f"{cls.kind} takes no attributes")
    # a union (padding: a pair or "same") reports one problem per alternative
    messages = dict.fromkeys(p["msg"] for p in problems if p["loc"][:1] == first["loc"][:1])
    valid = [m.removeprefix("Input should be ") for m in messages
             if m.startswith("Input should be ")]
    texts = [m.removeprefix("Value error, ") for m in messages
             if not m.startswith("Input should be ")]
    if valid:
        texts.insert(0, "should be " + " or ".join(valid))
    return f"attribute {field!r}: {'; '.join(texts)} (got {_shortened(attrs.get(field))})"


def _require_spatial(op: Op, t: TensorType) -> None:
    if t.flat:
        raise _fail(f"{op.kind} needs a C x H x W input, got the flat vector {t}",
                    "apply it before Flatten/Linear")
