"""The zoo registry: every reference architecture by name, with its usual input and classes."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph

Shape = tuple[int, int, int]
Builder = Callable[..., Graph]


@dataclass(frozen=True)
class ZooEntry:
    """A registered model: how to build it and what it is checked against."""

    name: str
    family: str
    build: Builder  # build(num_classes=..., input_shape=...) -> Graph
    num_classes: int
    input_shape: Shape
    # An independent implementation: "torchvision:resnet50", "timm:legacy_xception", or
    # None where only the paper's counts exist (checked in tests/zoo).
    reference: str | None = None
    # Smallest input the architecture accepts (for fast tests at a reduced size).
    min_input: Shape | None = None


_REGISTRY: dict[str, ZooEntry] = {}


def register(name: str, *, family: str, num_classes: int, input_shape: Shape,
             reference: str | None = None,
             min_input: Shape | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering `build(num_classes, input_shape) -> Graph` under `name`."""

    def wrap(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise NasgraphError(f"zoo model {name!r} is registered twice")
        _REGISTRY[name] = ZooEntry(name, family, build, num_classes, input_shape, reference,
                                   min_input)
        return build

    return wrap


def names() -> list[str]:
    """Every zoo model name, in registration order (family by family)."""
    return list(_REGISTRY)


def entry(name: str) -> ZooEntry:
    """The registry entry of `name`, or one clear error naming the closest match."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "`nasgraph zoo` lists them"
        raise NasgraphError(f"unknown zoo model {name!r}; hint: {hint}") from None


def get(name: str, num_classes: int | None = None,
        input_shape: Shape | None = None) -> Graph:
    """Build zoo model `name` (defaults: its usual number of classes and input size).

        >>> from nasgraph import zoo
        >>> g = zoo.get("resnet18", num_classes=10, input_shape=(3, 64, 64))
        >>> g.outputs[0].type.shape
        (10,)
    """
    e = entry(name)
    if num_classes is not None and num_classes < 1:
        raise NasgraphError(f"zoo model {name!r}: {num_classes} classes; expected at least 1")
    return e.build(num_classes=e.num_classes if num_classes is None else num_classes,
                   input_shape=tuple(input_shape or e.input_shape))
