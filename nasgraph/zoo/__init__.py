"""The model zoo: classic architectures built from motifs, each verified against an
independent implementation (tests/test_zoo.py).

    >>> from nasgraph import zoo
    >>> "resnet50" in zoo.names()
    True
"""

from nasgraph.zoo import inception, lenet, nin, resnet  # noqa: F401  (registers the models)
from nasgraph.zoo._registry import ZooEntry, entry, get, names, register

__all__ = ["ZooEntry", "entry", "get", "names", "register"]
