"""Draw the pictures shown in docs/render.md into docs/img/ (PNG).

    python docs/make_images.py

Zoo models that are not registered are left out (and said so); the hand-built blocks are
always drawn. Rerun after changing the renderer, then look at every picture.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nasgraph import GraphBuilder, zoo  # noqa: E402
from nasgraph.drawing import render  # noqa: E402
from nasgraph.ir import Graph  # noqa: E402
from nasgraph.motifs import conv_unit  # noqa: E402

IMG = ROOT / "docs" / "img"
DPI = 110


def inception_block() -> Graph:
    """GoogLeNet's inception (3a) (Szegedy et al. 2014), conv units as torchvision's."""
    b = GraphBuilder("inception3a")
    x = b.input(192, 28, 28)
    with b.scope("inception3a"):
        with b.scope("branch1"):
            b1 = conv_unit(b, x, 64, 1)
        with b.scope("branch2"):
            b2 = conv_unit(b, x, 96, 1, names=("conv0", "bn0", "act0"))
            b2 = conv_unit(b, b2, 128, 3)
        with b.scope("branch3"):
            b3 = conv_unit(b, x, 16, 1, names=("conv0", "bn0", "act0"))
            b3 = conv_unit(b, b3, 32, 3)
        with b.scope("branch4"):
            b4 = b.maxpool(x, 3, stride=1, padding=1, ceil_mode=True)
            b4 = conv_unit(b, b4, 32, 1)
        y = b.concat([b1, b2, b3, b4])
    b.output(y)
    return b.build()


def inception_resnet_block() -> Graph:
    """Inception-ResNet-A (Szegedy et al. 2016, the 35x35 block of Inception-ResNet-v2):
    three branches, a linear 1x1 back to the input width, a residual scaled by 0.17."""
    b = GraphBuilder("inception_resnet_a")
    x = b.input(320, 35, 35)
    with b.scope("block35"):
        with b.scope("branch0"):
            b0 = conv_unit(b, x, 32, 1)
        with b.scope("branch1"):
            b1 = conv_unit(b, x, 32, 1, names=("conv0", "bn0", "act0"))
            b1 = conv_unit(b, b1, 32, 3)
        with b.scope("branch2"):
            b2 = conv_unit(b, x, 32, 1, names=("conv0", "bn0", "act0"))
            b2 = conv_unit(b, b2, 48, 3, names=("conv1", "bn1", "act1"))
            b2 = conv_unit(b, b2, 64, 3)
        y = b.concat([b0, b1, b2])
        y = b.conv(y, 320, 1, name="up")
        y = b.relu(b.add([y, x], weights=(0.17, 1.0)))
    b.output(y)
    return b.build()


def first_scope(graph: Graph, word: str) -> str | None:
    return next((s for s in graph.scopes() if word in s.rpartition("/")[2]), None)


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    pictures: list[tuple[str, Graph, dict]] = [
        ("inception_block", inception_block(), {}),
        ("inception_resnet_block", inception_resnet_block(), {}),
    ]
    models = zoo.names()
    if "resnet50" in models:
        pictures += [("resnet50_collapsed", zoo.get("resnet50"), {"collapse": True}),
                     ("resnet50", zoo.get("resnet50"), {})]
    if "googlenet" in models:
        pictures += [("googlenet", zoo.get("googlenet"), {}),
                     ("googlenet_collapsed", zoo.get("googlenet"), {"collapse": True})]
    if "densenet121" in models:
        graph = zoo.get("densenet121")
        pictures.append(("densenet121_collapsed", graph, {"collapse": True}))
        block = first_scope(graph, "denseblock")
        if block is not None:
            pictures.append(("densenet121_block1", graph.subgraph(block), {}))
    for name in ("inception_resnet_v2", "inception_resnet_v1"):
        if name in models:
            graph = zoo.get(name)
            block = first_scope(graph, "block35") or first_scope(graph, "repeat")
            if block is not None:
                pictures.append((f"{name}_block", graph.subgraph(block), {}))
            break
    wanted = {"googlenet", "densenet121", "inception_resnet_v2"} - set(models)
    if wanted:
        print(f"not in the zoo, not drawn: {', '.join(sorted(wanted))}")
    for name, graph, options in pictures:
        path = render(graph, IMG / f"{name}.png", dpi=DPI, **options)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
