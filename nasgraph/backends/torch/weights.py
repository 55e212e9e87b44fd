"""Weight import: a torchvision or timm model's state dict -> `lower(graph)`'s.

Zoo graphs name their weighted nodes exactly like the reference implementation's modules, so
the import is a checked identity mapping: every key `lower(graph)` needs must be present with
the same shape. A key that is missing or has another shape is an error naming the node, which
is how the tests prove that a zoo graph IS the architecture it names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from nasgraph.errors import GraphError
from nasgraph.ir import Graph, Node

StateDict = Mapping[str, torch.Tensor]
# source key -> key in lower(graph)'s state dict, or None to drop it
Rename = Callable[[str], str | None]


def expected_state(graph: Graph) -> dict[str, tuple[tuple[int, ...], Node]]:
    """Every key of `lower(graph).state_dict()`: its shape and the node that owns it
    (`Graph.weight_specs`)."""
    return {key: (spec.shape, node) for key, (node, spec) in graph.weight_specs().items()}


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def import_weights(graph: Graph, source: nn.Module | StateDict, *, origin: str = "source",
                   rename: Rename | None = None, strict: bool = True) -> dict[str, torch.Tensor]:
    """Map a model's (or a state dict's) weights onto `lower(graph)`'s state dict keys.

    Args:
        graph: the graph whose lowering receives the weights.
        source: an `nn.Module` or a state dict.
        origin: what the source is, for error messages ("torchvision", "timm", a file).
        rename: maps a source key to its key in the graph's state dict (None drops it);
            only needed where a model names its modules differently from the graph.
        strict: raise when the source has weights the graph does not use.

    Returns:
        A state dict for `lower(graph).load_state_dict(...)` (tensors shared with the source).

    Raises:
        GraphError: a weight the graph needs is missing or has another shape, or (strict) the
            source has a weight the graph does not use.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    if rename is not None:
        state = {new: t for k, t in state.items() if (new := rename(k)) is not None}
    expected = expected_state(graph)
    result: dict[str, torch.Tensor] = {}
    for key, (shape, node) in expected.items():
        where = f"weight {key!r} of node {node.id!r} ({node.op.label()})"
        if key not in state:
            raise GraphError(f"{where} is missing from the {origin} weights; hint: the "
                             f"{origin} model is not the architecture of graph {graph.name!r}, "
                             "or names its modules differently (pass rename=...)")
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise GraphError(f"{where} is a {type(t).__name__} in the {origin} weights, not a "
                             "tensor")
        if tuple(t.shape) != shape:
            raise GraphError(f"{where} needs shape {_shape(shape)}, the {origin} weights have "
                             f"{_shape(tuple(t.shape))}; hint: check num_classes, input "
                             "channels and widths")
        result[key] = t.detach()
    unused = [k for k in state if k not in expected]
    if strict and unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise GraphError(f"{origin} weight {unused[0]!r}{more} has no node in graph "
                         f"{graph.name!r}; hint: pass strict=False to ignore weights the graph "
                         "does not use")
    return result


def import_torchvision_weights(graph: Graph, model: nn.Module | StateDict, *,
                               rename: Rename | None = None,
                               strict: bool = True) -> dict[str, torch.Tensor]:
    """The weights of torchvision `model` (or its state dict), keyed for `lower(graph)`.

    This is how to start from pretrained weights:

        >>> import torchvision, nasgraph
        >>> from nasgraph.backends.torch import import_torchvision_weights, lower
        >>> g = nasgraph.zoo.get("resnet18")
        >>> tv = torchvision.models.resnet18(weights=None)  # or weights="DEFAULT"
        >>> m = lower(g)
        >>> m.load_state_dict(import_torchvision_weights(g, tv))
        <All keys matched successfully>

    See `import_weights` for `rename` and `strict`.
    """
    return import_weights(graph, model, origin="torchvision", rename=rename, strict=strict)


def import_timm_weights(graph: Graph, model: nn.Module | StateDict, *,
                        rename: Rename | None = None,
                        strict: bool = True) -> dict[str, torch.Tensor]:
    """The weights of timm `model` (or its state dict), keyed for `lower(graph)`.

        >>> import timm  # doctest: +SKIP
        >>> tm = timm.create_model("legacy_xception", pretrained=True)  # doctest: +SKIP
        >>> lower(g).load_state_dict(import_timm_weights(g, tm))  # doctest: +SKIP

    See `import_weights` for `rename` and `strict`.
    """
    return import_weights(graph, model, origin="timm", rename=rename, strict=strict)
