"""Weight import refuses wrong architectures with one line naming the key and the node.

That imported weights reproduce torchvision's and timm's outputs is checked, model by model,
in test_torch_export.py (with every export format).
"""

from __future__ import annotations

import pytest
import torch

from nasgraph import zoo
from nasgraph.backends.torch import (
    expected_state,
    import_timm_weights,
    import_torchvision_weights,
    import_weights,
    lower,
)
from nasgraph.errors import GraphError
from tests.references import reference_model


def test_expected_state_is_lower_state_dict():
    g = zoo.get("resnet18", input_shape=(3, 32, 32))
    want = {k: tuple(v.shape) for k, v in lower(g).state_dict().items()}
    assert {k: shape for k, (shape, _) in expected_state(g).items()} == want


def test_a_plain_state_dict_is_accepted():
    g = zoo.get("lenet5")
    source = lower(g).state_dict()
    assert import_weights(g, source).keys() == source.keys()


def test_a_wrong_shape_names_the_key_and_node():
    g = zoo.get("resnet18", num_classes=10)
    tv = reference_model("resnet18")  # 1000 classes
    with pytest.raises(GraphError, match=r"^weight 'fc.weight' of node 'fc' \(linear 10\) "
                                         r"needs shape 10x512, .* have 1000x512"):
        import_torchvision_weights(g, tv)


def test_a_missing_key_names_the_node_and_hints_at_rename():
    g = zoo.get("resnet18")
    state = {"model." + k: v for k, v in reference_model("resnet18").state_dict().items()}
    with pytest.raises(GraphError, match=r"weight 'conv1.weight' of node 'conv1' .* missing "
                                         r"from the torchvision weights.*rename"):
        import_torchvision_weights(g, state)
    sd = import_torchvision_weights(g, state, rename=lambda k: k.removeprefix("model."))
    assert len(sd) == len(expected_state(g))


def test_unused_source_weights_are_refused_unless_not_strict():
    g = zoo.get("resnet18")
    state = {**reference_model("resnet18").state_dict(), "aux.weight": torch.zeros(3)}
    with pytest.raises(GraphError, match=r"weight 'aux.weight' has no node"):
        import_torchvision_weights(g, state)
    assert "aux.weight" not in import_torchvision_weights(g, state, strict=False)
    state["aux.bias"] = torch.zeros(3)
    with pytest.raises(GraphError, match=r"weight 'aux.weight' \(and 1 more\) has no node"):
        import_torchvision_weights(g, state)


def test_a_value_that_is_not_a_tensor_names_the_key_and_node():
    g = zoo.get("lenet5")
    state = {**lower(g).state_dict(), "c1.weight": [[0.0]]}
    with pytest.raises(GraphError, match=r"^weight 'c1.weight' of node 'c1' \(conv 5x5, 6\) is "
                                         r"a list in the given weights, not a tensor$"):
        import_weights(g, state, origin="given")


def test_a_different_architecture_is_refused():
    g = zoo.get("resnet34")
    with pytest.raises(GraphError, match=r"layer1.2.conv1.weight"):
        import_torchvision_weights(g, reference_model("resnet18"))


def test_timm_import_names_timm_in_its_errors():
    with pytest.raises(GraphError, match=r"missing from the timm weights"):
        import_timm_weights(zoo.get("lenet5"), {})
