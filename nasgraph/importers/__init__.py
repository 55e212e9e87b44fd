"""Frontends: a PyTorch module (`from_torch`, via torch.export) or an ONNX file
(`from_onnx`) into a nasgraph Graph and its state dict; `load` reads either kind of source
by name, as the CLI's MODEL argument names them.

Each frontend is loaded on first use, so importing this package pulls in neither torch nor
onnx: `from_onnx` works where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nasgraph.errors import NasgraphError
from nasgraph.ir import Graph

__all__ = ["from_onnx", "from_torch", "is_foreign", "load"]

TORCHVISION = "torchvision:"
DEFAULT_INPUT = (3, 224, 224)


def is_foreign(source: str) -> bool:
    """Whether `source` names a model for `load` (an .onnx file, `torchvision:NAME`)."""
    return source.startswith(TORCHVISION) or source.lower().endswith(".onnx")


def load(source: str, input_shape: tuple[int, int, int] | None = None,
         num_classes: int | None = None, weights: bool = False
         ) -> tuple[Graph, dict[str, np.ndarray]]:
    """The graph and weights of an `.onnx` file or of `torchvision:NAME` (built with
    `weights=None`, random weights, unless `weights`: torchvision's default pretrained
    ones), captured at `input_shape` (default 3 x 224 x 224) with `num_classes`.

        >>> g, state = load("torchvision:resnet18", (3, 64, 64), num_classes=10)  # doctest: +SKIP
    """
    if source.startswith(TORCHVISION):
        return _torchvision(source.removeprefix(TORCHVISION), input_shape or DEFAULT_INPUT,
                            num_classes, weights)
    if input_shape is not None or num_classes is not None or weights:
        raise NasgraphError(f"{source}: an ONNX file fixes its input size, classes and "
                            "weights; drop --input, --classes and --weights")
    if not Path(source).is_file():
        raise NasgraphError(f"{source}: no such file")
    from nasgraph.importers.onnx_model import from_onnx

    return from_onnx(source)


def _torchvision(name: str, input_shape: tuple[int, int, int], num_classes: int | None,
                 weights: bool) -> tuple[Graph, dict[str, np.ndarray]]:
    import torch
    import torchvision

    from nasgraph.importers.torch_module import from_torch

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise NasgraphError(f"torchvision:{name}: no such torchvision classifier; hint: one "
                            f"of {', '.join(available[:8])}, ...")
    kwargs: dict[str, object] = {"weights": "DEFAULT" if weights else None}
    if num_classes is not None:
        if weights:
            raise NasgraphError("--classes changes the classifier, which the pretrained "
                                "weights fix; drop one of --classes and --weights")
        kwargs["num_classes"] = num_classes
    if name in ("googlenet", "inception_v3") and not weights:
        kwargs.update(aux_logits=False, init_weights=False)
    try:
        model = torchvision.models.get_model(name, **kwargs)
    except Exception as e:  # downloads, bad arguments: torchvision's own message
        raise NasgraphError(f"torchvision:{name}: {str(e).splitlines()[0]}") from None
    return from_torch(model, torch.randn(2, *input_shape))  # 2: the batch stays apart


def __getattr__(name: str) -> object:
    if name == "from_torch":
        from nasgraph.importers.torch_module import from_torch

        return from_torch
    if name == "from_onnx":
        from nasgraph.importers.onnx_model import from_onnx

        return from_onnx
    raise AttributeError(f"module 'nasgraph.importers' has no attribute {name!r}")
