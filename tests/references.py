"""Independent implementations of zoo models: torchvision's and timm's own modules.

A zoo entry's `reference` names one ("torchvision:resnet50", "timm:legacy_xception",
"torchvision.segmentation:fcn_resnet50"); `reference_model` builds it with random weights.
Zoo graphs name their nodes like the reference's modules, so state dict keys match.
"""

from __future__ import annotations

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


def with_reference() -> list:
    """Zoo names that have an independent implementation, the largest marked slow."""
    import pytest

    from nasgraph.analysis import params

    names = [n for n in zoo.names() if zoo.entry(n).reference is not None]
    return [pytest.param(n, marks=pytest.mark.slow) if params(zoo.get(n)) > LARGE_PARAMS
            else n for n in names]
