"""The model zoo: classic architectures built from motifs, each verified against an
independent implementation (tests/zoo/).

    >>> from nasgraph import zoo
    >>> "resnet50" in zoo.names()
    True
"""

# Families register in the order they were published, which is the order `nasgraph zoo`
# lists them.
from nasgraph.zoo import lenet, alexnet, vgg, resnet, fcn, squeezenet  # noqa: F401, I001
from nasgraph.zoo import preact_resnet, wide_resnet, densenet, resnext, pyramidnet  # noqa: F401
from nasgraph.zoo._registry import ZooEntry, entry, get, names, register

__all__ = ["ZooEntry", "entry", "get", "names", "register"]
