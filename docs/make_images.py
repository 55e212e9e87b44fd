"""Draw the pictures shown in docs/render.md into docs/img/ (PNG).

    python docs/make_images.py

Rerun after changing the renderer or the zoo, then look at every picture.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nasgraph import zoo  # noqa: E402
from nasgraph.drawing import render  # noqa: E402

IMG = ROOT / "docs" / "img"
DPI = 110

# (file name, zoo model, block scope to draw alone or None, render options)
PICTURES = [
    ("inception_block", "googlenet", "inception3a", {}),
    ("inception_resnet_block", "inception_resnet_v2", "repeat/0", {}),
    ("resnet50_collapsed", "resnet50", None, {"collapse": True}),
    ("resnet50", "resnet50", None, {}),
    ("googlenet", "googlenet", None, {}),
    ("googlenet_collapsed", "googlenet", None, {"collapse": True}),
    ("densenet121_collapsed", "densenet121", None, {"collapse": True}),
    ("densenet121_block1", "densenet121", "features/denseblock1", {}),
]


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    for file, model, scope, options in PICTURES:
        graph = zoo.get(model)
        if scope is not None:
            graph = graph.subgraph(scope)
        path = render(graph, IMG / f"{file}.png", dpi=DPI, **options)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
