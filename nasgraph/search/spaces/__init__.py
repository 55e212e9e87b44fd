"""The built-in search spaces, one family per module, each registered by name with
`@register_space`: `inception`, `residual`, `dense`, `mobile`, and `macro`, whose stages each
pick one of the first three. `nasgraph spaces` lists them.

Every module also exposes `stage(trial, ctx, b, x, name, level, downsample)`, one stage of
its family: `macro` combines them, and a space of your own can too.
"""

from nasgraph.search.spaces import dense, inception, macro, mobile, residual

__all__ = ["dense", "inception", "macro", "mobile", "residual"]
