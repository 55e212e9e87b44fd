"""The PyTorch backend: lower a Graph to a torch.fx.GraphModule."""

from nasgraph.backends.torch.lower import EMITTERS, MODULES, PASS_THROUGH, initialize, lower

__all__ = ["EMITTERS", "MODULES", "PASS_THROUGH", "initialize", "lower"]
