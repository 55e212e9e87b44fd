"""The PyTorch backend: lowering to torch.fx, inference options, weight import, export."""

from nasgraph.backends.torch.export import (
    MODULE_SOURCE,
    SOURCE,
    export,
    export_onnx,
    export_python,
    export_torchscript,
    python_source,
)
from nasgraph.backends.torch.fusion import FusedConvReLU, fuse_conv_relu
from nasgraph.backends.torch.inference import Autocast, fuse_conv_bn, inplace_ops, prepare
from nasgraph.backends.torch.lower import EMITTERS, MODULES, PASS_THROUGH, lower
from nasgraph.backends.torch.weights import (
    expected_state,
    import_timm_weights,
    import_torchvision_weights,
    import_weights,
)

__all__ = [
    "EMITTERS", "MODULES", "MODULE_SOURCE", "PASS_THROUGH", "SOURCE", "Autocast", "FusedConvReLU",
    "expected_state", "export", "export_onnx", "export_python", "export_torchscript",
    "fuse_conv_bn", "fuse_conv_relu", "import_timm_weights", "import_torchvision_weights",
    "import_weights", "inplace_ops", "lower", "prepare", "python_source",
]
