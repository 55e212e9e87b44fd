"""`Autocast`: a module run under `torch.autocast`, with the wrapped module's state dict."""

from __future__ import annotations

import torch
from torch import nn

from nasgraph.errors import NasgraphError

AUTOCAST_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}



class Autocast(nn.Module):
    """Runs a module under `torch.autocast` on its input's device.

    The wrapper holds the module's children as its own, so its state dict keys (and
    parameters) are exactly the module's: weights load into either.

        >>> import torch, nasgraph
        >>> from nasgraph.backends.torch import Autocast, lower
        >>> m = lower(nasgraph.zoo.get("lenet5"))
        >>> a = Autocast(m, "bf16")
        >>> a(torch.randn(2, 1, 32, 32)).dtype
        torch.bfloat16
        >>> list(a.state_dict()) == list(m.state_dict())
        True
    """

    def __init__(self, module: nn.Module, dtype: str | torch.dtype = "bf16") -> None:
        super().__init__()
        if isinstance(dtype, str):
            if dtype not in AUTOCAST_DTYPES:
                raise NasgraphError(f"autocast dtype {dtype!r} is not one of "
                                    f"{', '.join(AUTOCAST_DTYPES)}")
            dtype = AUTOCAST_DTYPES[dtype]
        self.dtype = dtype
        for name, child in module.named_children():
            self.add_module(name, child)
        # kept out of _modules, so that parameters are not listed twice
        self.__dict__["module"] = module

    @property
    def code(self) -> str:
        """The wrapped module's generated code (fx modules)."""
        return self.module.code

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        with torch.autocast(inputs[0].device.type, dtype=self.dtype):
            return self.module(*inputs)
