"""State dicts in files: .safetensors, or torch's .pt/.pth read without running code."""

from __future__ import annotations

from pathlib import Path

import torch

from nasgraph.errors import NasgraphError


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a .safetensors file or a torch .pt/.pth file (loaded
    with `weights_only`: no code runs); a bad file is one NasgraphError line, which starts
    with `what` and the path."""
    path = str(path)
    if not Path(path).is_file():
        raise NasgraphError(f"{what} {path}: no such file")
    safetensors = path.endswith(".safetensors")
    try:
        if safetensors:
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise NasgraphError(f"{what} {path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # corrupt or truncated: safetensors, zip and pickle raise their own
        detail = str(e).splitlines()[0] if safetensors and str(e) else type(e).__name__
        kind = "a safetensors" if safetensors else "a torch state dict"
        raise NasgraphError(f"{what} {path}: not {kind} file, or a damaged one "
                            f"({detail})") from None
    if not isinstance(state, dict):
        raise NasgraphError(f"{what} {path}: not a state dict (got {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            hint = "; hint: save model.state_dict() alone" if isinstance(value, dict) else ""
            raise NasgraphError(f"{what} {path}: {key!r} holds a value of type "
                                f"{type(value).__name__}, not a tensor{hint}")
    return state
