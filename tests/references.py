"""Independent implementations of zoo models: torchvision's and timm's own modules.

A zoo entry's `reference` names one ("torchvision:resnet50", "timm:legacy_xception",
"torchvision.segmentation:fcn_resnet50"); `reference_model` builds it with random weights.
Zoo graphs name their nodes like the reference's modules, so state dict keys match.
"""

from __future__ import annotations

import functools

from torch import nn

from nasgraph import zoo

# Keyword arguments that make the reference the architecture the zoo entry names.
REFERENCE_KWARGS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "fcn_resnet50": {"weights_backbone": None, "aux_loss": False},
}


def reference_model(name: str, num_classes: int | None = None) -> nn.Module:
    """The independent implementation of zoo model `name`, in eval mode."""
    entry = zoo.entry(name)
    if entry.reference is None:
        raise ValueError(f"zoo model {name!r} has no reference implementation")
    source, _, ref_name = entry.reference.partition(":")
    kwargs = {"num_classes": num_classes or entry.num_classes, **REFERENCE_KWARGS.get(name, {})}
    if source == "torchvision":
        import torchvision

        model = getattr(torchvision.models, ref_name)(weights=None, **kwargs)
    elif source == "torchvision.segmentation":
        import torchvision

        model = getattr(torchvision.models.segmentation, ref_name)(weights=None, **kwargs)
    elif source == "timm":
        import timm

        model = timm.create_model(ref_name, pretrained=False, **kwargs)
    else:
        raise ValueError(f"unknown reference source {source!r} for {name!r}")
    return model.eval()


# Models whose reference checks take over ~20 s on 2 cores: marked slow (CI still runs them).
LARGE_PARAMS = 40_000_000


@functools.cache
def _referenced() -> dict[str, tuple[object, int]]:
    """Zoo name -> (graph, parameters) for the models with a reference, built once for
    the test files that parametrize over them."""
    from nasgraph.analysis import params

    names = [n for n in zoo.names() if zoo.entry(n).reference is not None]
    return {n: (g, params(g)) for n in names for g in [zoo.get(n)]}


def _marked(names) -> list:
    """`names` (of `_referenced`) as test parameters, those over LARGE_PARAMS marked slow."""
    import pytest

    refs = _referenced()
    return [pytest.param(n, marks=pytest.mark.slow) if refs[n][1] > LARGE_PARAMS else n
            for n in names]


def with_reference() -> list:
    """Zoo names that have an independent implementation, the largest marked slow."""
    return _marked(_referenced())


def _op_forms(graph) -> set[tuple[str, str]]:
    """Each node's kind and attributes other than its sizes: what an exporter writes
    differently (a weighted add, a pooling's count_include_pad), not how large."""
    sizes = {"in_channels", "out_channels", "channels", "in_features", "out_features",
             "kernel", "stride", "pad", "padding", "size", "output_size"}
    return {(node.kind, repr(sorted((k, v) for k, v in node.op.model_dump().items()
                                    if k not in sizes))) for node in graph}


def exported_with_reference() -> list:
    """`with_reference`, less the large models whose export writes nothing the others'
    does not: every model of at most LARGE_PARAMS, the largest (the most bytes of
    weights a file holds), and, smallest first, each larger one with an op form
    (`_op_forms`) that none before it has. The exporters write a graph node by node, so
    a model adds to the test only what its nodes and its size add; the VGGs, AlexNet
    and the deeper ResNets took 151 of the TorchScript and ONNX test's 280 s on a fresh
    clone (`make test`, 2 cores) and added neither."""
    refs = _referenced()
    keep = {n for n, (_, size) in refs.items() if size <= LARGE_PARAMS}
    keep.add(max(refs, key=lambda n: refs[n][1]))
    covered = set().union(*(_op_forms(refs[n][0]) for n in keep))
    for name in sorted(refs.keys() - keep, key=lambda n: refs[n][1]):
        if forms := _op_forms(refs[name][0]) - covered:
            keep.add(name)
            covered |= forms
    return _marked(n for n in refs if n in keep)
