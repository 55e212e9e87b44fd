"""The model zoo: classic architectures built from motifs, each verified against an
independent implementation (tests/zoo/).

    >>> from nasgraph import zoo
    >>> "resnet50" in zoo.names()
    True
"""

from nasgraph.zoo import (  # noqa: F401  (registers the models)
    alexnet,
    densenet,
    fcn,
    lenet,
    preact_resnet,
    pyramidnet,
    resnet,
    resnext,
    squeezenet,
    vgg,
    wide_resnet,
)
from nasgraph.zoo._registry import ZooEntry, entry, get, names, register

__all__ = ["ZooEntry", "entry", "get", "names", "register"]
