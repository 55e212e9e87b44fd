"""The model zoo: classic architectures built from motifs, each verified against an
independent implementation (tests/test_zoo.py).

    >>> from nasgraph import zoo
    >>> "resnet50" in zoo.names()
    True
"""

# Registration order is the zoo's listing order: roughly the history of the field.
from nasgraph.zoo import lenet  # noqa: F401, I001  (each import registers its models)
from nasgraph.zoo import nin  # noqa: F401
from nasgraph.zoo import inception  # noqa: F401
from nasgraph.zoo import resnet  # noqa: F401
from nasgraph.zoo import xception  # noqa: F401
from nasgraph.zoo import mobilenet  # noqa: F401
from nasgraph.zoo import efficientnet  # noqa: F401
from nasgraph.zoo._registry import ZooEntry, entry, get, names, register

__all__ = ["ZooEntry", "entry", "get", "names", "register"]
