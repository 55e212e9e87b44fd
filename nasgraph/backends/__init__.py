"""Backends that run a Graph: `torch` (lowering to torch.fx, CPU and CUDA) and `numba`
(a JIT-compiled CPU executor). Import the one you need; neither is imported by nasgraph."""
