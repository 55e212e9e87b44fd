"""from_onnx against onnxruntime: torchvision's classifiers exported by torch, and small
hand-written ONNX graphs for the patterns torch does not export, compute what onnxruntime
computes on both backends; what the IR lacks is refused in one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nasgraph.errors import GraphError
from nasgraph.importers import from_onnx
from nasgraph.ir import Graph
from tests.importers import (
    assert_close,
    example_input,
    lowered,
    model_params,
    randomize_batch_norms,
    torchvision_model,
)

ort = pytest.importorskip("onnxruntime")

# torch's ONNX exporter refuses adaptive pools whose output does not divide their input:
# VGG's 7 x 7 and AlexNet's 6 x 6 need inputs of 224 (VGG's then weigh 500 MB)
ONNX_SIZES = {"alexnet": 224}
EXPORTED = [n for n in model_params() if getattr(n, "values", [n])[0] != "vgg11"]
# IR ops that a model's ONNX patterns must become (channel split and shuffle, LayerNorm over
# channels), and ops it must not have (ConvNeXt's layer scale is folded into its convs)
KINDS: dict[str, tuple[set[str], set[str]]] = {
    "shufflenet_v2_x0_5": ({"channel_shuffle", "channel_slice"}, set()),
    "convnext_tiny": ({"layernorm2d", "activation"}, {"mul"}),
}


def export(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """`module` as ONNX (opset 17, batch dimension dynamic), by torch's TorchScript exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return path


def runtime(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def assert_imports_and_agrees(path: Path, x: np.ndarray) -> Graph:
    """from_onnx(path) on the torch and numba backends equals onnxruntime's outputs; the
    imported graph, for more checks."""
    from nasgraph.backends.numba import compile

    graph, state = from_onnx(path)
    refs = runtime(path, x)
    with torch.no_grad():
        outs = lowered(graph, state)(torch.from_numpy(x))
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    numba_outs = compile(graph, state)(x)
    numba_outs = [numba_outs] if isinstance(numba_outs, np.ndarray) else list(numba_outs)
    for out, numba_out, ref in zip(outs, numba_outs, refs, strict=True):
        assert_close(out.numpy(), ref)
        assert_close(numba_out, ref)
    return graph


@pytest.mark.parametrize("name", EXPORTED)
def test_exported_torchvision_models_import_and_agree(name, tmp_path):
    size = ONNX_SIZES.get(name)
    x = example_input(name) if size is None else torch.randn(2, 3, size, size)
    path = export(torchvision_model(name), x, tmp_path / f"{name}.onnx")
    kinds = {n.kind for n in assert_imports_and_agrees(path, x.numpy())}
    wanted, unwanted = KINDS.get(name, (set(), set()))
    assert wanted <= kinds and not unwanted & kinds


def test_torch_module_paths_become_node_ids(tmp_path):
    path = export(torchvision_model("resnet18"), example_input("resnet18"), tmp_path / "r.onnx")
    graph, state = from_onnx(path)
    ids = {n.id for n in graph}
    # torch folds each BN into its conv when exporting: the conv keeps the module's path
    assert {"conv1", "layer1/0/conv1", "layer2/0/downsample/0", "fc", "layer1/0/add"} <= ids
    assert {"fc.weight", "fc.bias", "layer1.0.conv1.weight"} <= set(state)


class Resized(nn.Module):
    """Ops torch exports with shape arithmetic (Shape, Slice, Concat, ConstantOfShape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.gate = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn(self.conv(x)))
        y = y * F.hardsigmoid(self.gate(F.adaptive_avg_pool2d(y, 1)))
        y = torch.tanh(y) - y / 4 + 0.5 * torch.sigmoid(y)
        y = F.interpolate(y, scale_factor=2, mode="bilinear") + F.interpolate(
            y, size=(16, 16), mode="bilinear", align_corners=True)
        y = F.pad(y, (0, 0, 0, 0, 1, 1))  # two zero channels
        y = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        return self.fc(F.adaptive_avg_pool2d(y, 1).view(y.size(0), -1))


def test_shape_arithmetic_resizing_and_padding_import_and_agree(tmp_path):
    model = Resized().eval()
    randomize_batch_norms(model)
    x = torch.randn(2, 3, 8, 8)
    path = export(model, x, tmp_path / "resized.onnx")
    assert {"Shape", "ConstantOfShape", "Resize", "Pad", "HardSigmoid", "Reshape"} <= {
        n.op_type for n in onnx.load(str(path)).graph.node}
    assert_imports_and_agrees(path, x.numpy())


# --------------------------------------------------------------------------- hand-made graphs


def _model(nodes: list, inputs: list, outputs: list, constants: dict[str, np.ndarray],
           path: Path, opset: int = 17) -> Path:
    initializers = [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f"
                                            else v, k) for k, v in constants.items()]
    graph = helper.make_graph(nodes, "handmade", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _value(name: str, *shape: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _weights(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.3


def test_same_padding_gemm_matmul_add_hardswish_and_reshape(tmp_path):
    constants = {
        "w": _weights(6, 3, 3, 3), "b": _weights(6, seed=1),
        "gb": _weights(6, 8, seed=2), "gc": _weights(8, seed=3),  # Gemm with transB = 0
        "mw": _weights(8, 5, seed=4), "mb": _weights(5, seed=5),
        "shape": np.array([0, -1], dtype=np.int64),
        "up": np.array([1, 1, 2, 2], dtype=np.float32),
        "lo": np.array(0, dtype=np.float32), "hi": np.array(6, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem/conv", auto_pad="SAME_UPPER"),
        helper.make_node("HardSigmoid", ["c"], ["hs"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["c", "hs"], ["h"], name="stem/act"),
        helper.make_node("Resize", ["h", "", "up"], ["u"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Clip", ["u", "lo", "hi"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "gb", "gc"], ["g"], transB=0),
        helper.make_node("Relu", ["g"], ["gr"]),
        helper.make_node("MatMul", ["gr", "mw"], ["mm"], name="head/mm"),
        helper.make_node("Add", ["mm", "mb"], ["y"]),
    ]
    path = _model(nodes, [_value("x", "N", 3, 10, 10)], [_value("y", "N", 5)], constants,
                  tmp_path / "m.onnx")
    graph, _ = from_onnx(path)
    assert [n.kind for n in graph if n.kind in ("activation", "linear")] == [
        "activation", "activation", "linear", "activation", "linear"]
    assert graph["head/mm"].op.bias  # MatMul + Add is one Linear
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype(np.float32)
    assert_imports_and_agrees(path, x)


def test_split_shuffle_slice_and_channels_last_layers_import_and_agree(tmp_path):
    """ShuffleNet's and ConvNeXt's ONNX patterns written by hand (with ONNX's 0 and -1 in
    the shapes, and Split, which torch exports as Slice): split, channel shuffle, layer
    scale, LayerNormalization and MatMul + Add on the channels-last view, erf gelu, Slice."""
    constants = {
        "w": _weights(8, 8, 1, 1), "b": _weights(8, seed=1), "sizes": np.array([3, 5]),
        "grouped": np.array([0, 2, 4, -1, 4]), "back": np.array([0, -1, 4, 4]),
        "w2": _weights(6, 8, 1, 1, seed=2), "b2": _weights(6, seed=3),
        "scale": _weights(6, 1, 1, seed=4), "lw": _weights(6, seed=5) + 1,
        "lb": _weights(6, seed=6), "mw": _weights(6, 5, seed=7), "mb": _weights(5, seed=8),
        "root2": np.array(np.sqrt(2), np.float32), "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32), "starts": np.array([1]), "ends": np.array([4]),
        "axes": np.array([1]),
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w", "b"], ["c"], name="/conv/Conv"),
        node("Split", ["c", "sizes"], ["s0", "s1"], name="/Split", axis=1),
        node("Relu", ["s1"], ["r"], name="/relu/Relu"),
        node("Concat", ["s0", "r"], ["cat"], name="/Concat", axis=1),
        node("Reshape", ["cat", "grouped"], ["g"], name="/Reshape"),
        node("Transpose", ["g"], ["t"], name="/Transpose", perm=[0, 2, 1, 3, 4]),
        node("Reshape", ["t", "back"], ["shuffled"], name="/Reshape_1"),
        node("Conv", ["shuffled", "w2", "b2"], ["c2"], name="/block/conv/Conv"),
        node("Mul", ["scale", "c2"], ["scaled"], name="/block/Mul"),
        node("Transpose", ["scaled"], ["p"], name="/block/Transpose", perm=[0, 2, 3, 1]),
        node("LayerNormalization", ["p", "lw", "lb"], ["ln"], epsilon=1e-6,
             name="/block/norm/LayerNormalization"),
        node("MatMul", ["ln", "mw"], ["mm"], name="/block/fc/MatMul"),
        node("Add", ["mb", "mm"], ["a"], name="/block/fc/Add"),
        node("Div", ["a", "root2"], ["d"], name="/block/act/Div"),
        node("Erf", ["d"], ["e"], name="/block/act/Erf"),
        node("Add", ["e", "one"], ["e1"], name="/block/act/Add"),
        node("Mul", ["a", "e1"], ["h"], name="/block/act/Mul"),
        node("Mul", ["h", "half"], ["gl"], name="/block/act/Mul_1"),
        node("Transpose", ["gl"], ["nchw"], name="/block/Transpose_1", perm=[0, 3, 1, 2]),
        node("Slice", ["nchw", "starts", "ends", "axes"], ["y"], name="/Slice"),
    ]
    path = _model(nodes, [_value("x", "N", 8, 4, 4)], [_value("y", "N", 3, 4, 4)],
                  constants, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32)
    graph = assert_imports_and_agrees(path, x)
    kinds = [n.kind for n in graph]
    assert kinds.count("channel_slice") == 3 and kinds.count("channel_shuffle") == 1
    assert kinds.count("conv2d") == 3 and "mul" not in kinds  # layer scale folded
    assert graph["block/act/gelu"].op.fn == "gelu"
    assert graph["block/norm"].op.eps == 1e-6


def _refused(nodes: list, out_shape: tuple, constants: dict, path: Path) -> str:
    """from_onnx's one-line refusal of a graph of `nodes` on x of shape N x 4 x 4 x 4."""
    model = _model(nodes, [_value("x", "N", 4, 4, 4)], [_value("y", "N", *out_shape)],
                   constants, path)
    with pytest.raises(GraphError) as error:
        from_onnx(model)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_views_that_are_not_the_patterns_are_refused(tmp_path):
    node = helper.make_node
    w, scale = {"w": _weights(4, 4, 1, 1)}, {"scale": _weights(4, 1, 1)}
    last = [node("Transpose", ["x"], ["p"], name="/to_last", perm=[0, 2, 3, 1])]
    cases = [
        ([node("Transpose", ["x"], ["y"], name="/swap", perm=[0, 1, 3, 2])], (4, 4, 4), {},
         "Transpose node '/swap': Transpose perm [0, 1, 3, 2]"),
        (last + [node("Conv", ["p", "w"], ["y"], name="/conv")], (4, 4, 4), w,
         "Conv node '/conv': input 0 is a channels-last"),
        (last + [node("Mul", ["p", "v"], ["y"], name="/mul")], (4, 4, 4),
         {"v": _weights(4)}, "Mul node '/mul': input 0 is a channels-last"),
        (last + [node("Flatten", ["p"], ["y"], name="/flat")], (64,), {},
         "Flatten node '/flat': input 0 is a channels-last"),
        ([node("LayerNormalization", ["x", "s"], ["y"], name="/ln")], (4, 4, 4),
         {"s": _weights(4)}, "LayerNormalization is an IR op only over the channels"),
        ([node("Reshape", ["x", "s"], ["g"], name="/r"),
          node("Reshape", ["g", "t"], ["y"], name="/back")], (4, 4, 4),
         {"s": np.array([0, 2, 2, 4, 4]), "t": np.array([0, 4, 4, 4])},
         "Reshape node '/back': Reshape of a N x 2 x C/2"),
        ([node("Reshape", ["x", "s"], ["g"], name="/r"),  # a 5-D view is no channels-last one
          node("Relu", ["g"], ["h"], name="/relu"),
          node("Transpose", ["h"], ["y"], name="/t", perm=[0, 3, 1, 2])], (4, 4, 4),
         {"s": np.array([0, 2, 2, 4, 4])}, "Relu node '/relu': input 0 is a N x 2 x C/2"),
        ([node("Slice", ["x", "a", "b", "ax"], ["y"], name="/s")], (4, 2, 4),
         {"a": np.array([0]), "b": np.array([2]), "ax": np.array([2])},
         "Slice node '/s': Slice along axes [2]"),
        ([node("Conv", ["x", "w"], ["c"], name="/conv"),  # the conv is also read by Relu
          node("Mul", ["c", "scale"], ["y"], name="/scale"),
          node("Relu", ["c"], ["r"], name="/relu")], (4, 4, 4), w | scale,
         "Mul node '/scale': multiplying by a constant tensor"),
    ]
    for k, (nodes, shape, constants, expected) in enumerate(cases):
        assert expected in _refused(nodes, shape, constants, tmp_path / f"{k}.onnx")


def test_asymmetric_padding_is_refused_naming_the_node(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="/body/conv", pads=[0, 0, 1, 1])]
    path = _model(nodes, [_value("x", 1, 3, 8, 8)], [_value("y", 1, 4, 7, 7)],
                  {"w": _weights(4, 3, 2, 2)}, tmp_path / "m.onnx")
    with pytest.raises(GraphError, match=r"Conv node '/body/conv': asymmetric padding") as e:
        from_onnx(path)
    assert "\n" not in str(e.value)


def test_a_number_added_to_a_conv_used_elsewhere_is_refused(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/conv/Conv"),
             helper.make_node("Add", ["c", "one"], ["y"], name="/Add"),
             helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu")]
    path = _model(nodes, [_value("x", 1, 3, 8, 8)],
                  [_value("y", 1, 4, 6, 6), _value("r", 1, 4, 6, 6)],
                  {"w": _weights(4, 3, 3, 3), "b": _weights(4), "one": np.ones(1, np.float32)},
                  tmp_path / "m.onnx")
    with pytest.raises(GraphError, match="only right after a conv or linear layer"):
        from_onnx(path)


def test_an_op_the_ir_lacks_is_refused_in_one_line(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/conv/Conv"),
             helper.make_node("Softmax", ["c"], ["y"], name="/head/Softmax", axis=1)]
    path = _model(nodes, [_value("x", 1, 3, 8, 8)], [_value("y", 1, 4, 6, 6)],
                  {"w": _weights(4, 3, 3, 3)}, tmp_path / "m.onnx")
    with pytest.raises(GraphError) as error:
        from_onnx(path)
    message = str(error.value)
    assert "\n" not in message
    assert "ONNX Softmax node '/head/Softmax'" in message and "supported ONNX ops: " in message


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("not a model")
    with pytest.raises(GraphError, match="cannot read as ONNX"):
        from_onnx(path)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet",
                                  pytest.param("densenet121", marks=pytest.mark.slow)])
def test_the_onnx_round_trip_of_a_zoo_model_has_its_fingerprint(name, tmp_path):
    """Exported (torch's exporter folds BN, renames every node) and imported back, a zoo
    model is the same architecture: `Graph.fingerprint` says so."""
    from nasgraph import zoo
    from nasgraph.backends.torch import export_onnx

    graph = zoo.get(name, num_classes=10, input_shape=(3, 64, 64))
    export_onnx(graph, tmp_path / "m.onnx")
    back, _ = from_onnx(tmp_path / "m.onnx")
    assert len(back) < len(graph)  # BN folded: not the same nodes
    assert back.fingerprint() == graph.fingerprint()
    assert back.fingerprint() != zoo.get(name, num_classes=10,
                                         input_shape=(3, 32, 32)).fingerprint()
