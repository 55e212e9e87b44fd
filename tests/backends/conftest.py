"""Fixtures of the backend tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def exact_cuda():
    """fp32 convs and matmuls on the GPU without TF32, so that 1e-4 is a fair bound."""
    import torch  # only where a CUDA test asks for it

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
