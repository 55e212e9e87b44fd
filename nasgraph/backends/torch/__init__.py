"""The PyTorch backend: lowering to torch.fx, inference options, weight import, export."""

from nasgraph.backends.torch.autocast import Autocast
from nasgraph.backends.torch.export import (
    export,
    export_onnx,
    export_python,
    export_torchscript,
    python_source,
)
from nasgraph.backends.torch.fusion import FusedConvReLU, cudnn_fused
from nasgraph.backends.torch.inference import fold_and_fuse, inplace_ops, prepare
from nasgraph.backends.torch.lower import EMITTERS, MODULES, lower, trace
from nasgraph.backends.torch.weights import (
    expected_state,
    import_timm_weights,
    import_torchvision_weights,
    import_weights,
)

__all__ = [
    "EMITTERS", "MODULES", "Autocast", "FusedConvReLU",
    "expected_state", "export", "export_onnx", "export_python", "export_torchscript",
    "cudnn_fused", "fold_and_fuse", "import_timm_weights", "import_torchvision_weights",
    "import_weights", "inplace_ops", "lower", "prepare", "python_source", "trace",
]
