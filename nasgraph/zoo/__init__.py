"""The model zoo: classic architectures built from motifs, each verified against an
independent implementation (tests/zoo/).

    >>> from nasgraph import zoo
    >>> "resnet50" in zoo.names()
    True
"""

# Families register in the order they were published: the order `nasgraph zoo` lists them.
from nasgraph.zoo import lenet, alexnet, nin, vgg, inception, resnet  # noqa: F401, I001
from nasgraph.zoo import fcn, squeezenet, preact_resnet, wide_resnet, densenet  # noqa: F401, I001
from nasgraph.zoo import resnext, xception, pyramidnet, mobilenet, efficientnet  # noqa: F401, I001
from nasgraph.zoo._registry import ZooEntry, entry, get, names, register

__all__ = ["ZooEntry", "entry", "get", "names", "register"]
