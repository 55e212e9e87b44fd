"""The segmentation head against torchvision's FCNHead, and its width and depth."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.segmentation.fcn import FCNHead

from nasgraph import summarize
from nasgraph.ir import ops
from nasgraph.motifs import SegmentationHead, segmentation_head
from tests.motifs._build import alone


def head(cfg: SegmentationHead, channels: int = 64, size=(40, 30)):
    return alone(lambda b, x: segmentation_head(b, x, cfg, size=size), (channels, 5, 4))


def test_matches_torchvision_fcn_head():
    g = head(SegmentationHead(num_classes=21))
    reference = FCNHead(64, 21).eval()
    assert summarize(g).params == sum(p.numel() for p in reference.parameters())
    weighted = {n.param_key for n in g if isinstance(n.op, ops.Conv2d | ops.BatchNorm2d)}
    assert weighted == {"classifier." + k.rpartition(".")[0] for k in reference.state_dict()}
    y = F.interpolate(reference(torch.randn(1, 64, 5, 4)), size=(40, 30), mode="bilinear")
    assert g.outputs[0].type.shape == tuple(y.shape[1:]) == (21, 40, 30)
    assert g["upsample"].op.mode == "bilinear"


def test_width_and_depth():
    g = head(SegmentationHead(num_classes=5, width=12, depth=3))
    convs = [n for n in g if isinstance(n.op, ops.Conv2d)]
    assert [c.type.channels for c in convs] == [12, 12, 12, 5]
    assert summarize(g).depth == 4
    assert summarize(head(SegmentationHead(num_classes=5, depth=0))).depth == 1
    assert g["classifier/9"].op == ops.Dropout(p=0.1)  # numbered as an nn.Sequential
