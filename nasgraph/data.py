"""Datasets for search and training, held in memory as tensors: small data, fast epochs.

A dataset is named by a spec string:

- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, works offline);
- `fashion-mnist`: Zalando's 70,000 28x28 clothing images in 10 classes, the harder drop-in
  for MNIST, and `mnist`: the IDX files found in `$NASGRAPH_DATA/<name>/` or in Debian's
  `/usr/share/datasets/<name>/` (`apt-get install dataset-fashion-mnist`);
- `cifar10:PATH`: the CIFAR-10 python-pickle folder (`data_batch_1..5`, `test_batch`);
- `mnist:PATH`: a folder of MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...);
- `imagefolder:PATH`: one sub-folder per class (or `train/`, `val/`, `test/` folders of
  them), images resized to 32x32 (`imagefolder:PATH@64` for 64x64);
- `synthetic`: class templates plus noise, 3x16x16, 10 classes (for tests and smoke runs).

    >>> from nasgraph.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.input_shape, ds.num_classes, len(ds.train) + len(ds.val) + len(ds.test)
    ((1, 8, 8), 10, 1797)

Every dataset has train, validation and test splits; when the source has no validation
split, a stratified, seeded part of the training split becomes one. Images are standardized
with the training split's per-channel mean and deviation.

Bad data is a DataError of one line, never a silent wrong result, and data files never run
code: CIFAR-10 pickles are read by an unpickler that builds nothing but arrays, lists and bytes.
In an image folder, hidden sub-folders are not classes and files that PIL cannot read (a
README, a thumbnail cache) are skipped, but every class folder needs one image it can read.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from nasgraph.errors import DataError

if TYPE_CHECKING:  # imported where tensors are made, so that a wrong name fails in a second
    import torch

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10:PATH", "mnist:PATH",
            "imagefolder:PATH", "synthetic")
# Data sets found by name: where Debian's packages put them, and the package, if there is one
DEBIAN_DATASETS = Path("/usr/share/datasets")
NAMED = {"fashion-mnist": "dataset-fashion-mnist", "mnist": None}


@dataclass(frozen=True)
class Split:
    """Images N x C x H x W (float32, standardized) and labels N (int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    """Three splits and what a model needs to know about them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    flip: bool  # horizontal flips are a label-preserving augmentation (not for digits)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """The dataset named by `spec` (see the module docstring); `seed` fixes the splits."""
    kind, path = parse_spec(spec)
    if kind == "digits":
        return _digits(seed)
    if kind == "synthetic":
        return _synthetic(seed)
    if kind in NAMED and not path:
        return _mnist(str(named_folder(kind)), seed, name=kind)
    loader = {"cifar10": _cifar10, "mnist": _mnist, "imagefolder": _imagefolder}[kind]
    return loader(path, seed)


def parse_spec(spec: str) -> tuple[str, str]:
    """`spec`'s kind and folder ("" for a named one), or a DataError if no loader takes it:
    the check `load_dataset` starts with, which reads no file.

        >>> parse_spec("cifar10:data/cifar10"), parse_spec("digits")
        (('cifar10', 'data/cifar10'), ('digits', ''))
    """
    kind, _, path = spec.partition(":")
    if kind in ("digits", "synthetic", *NAMED) and not path:
        return kind, path
    if kind in ("cifar10", "mnist", "imagefolder"):
        if not path:
            raise DataError(f"dataset {spec!r}: give the folder, e.g. '{kind}:data/{kind}'")
        return kind, path
    raise DataError(f"unknown dataset {spec!r}; hint: one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------------- assembling splits


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """Indices (rest, part) with `fraction` of every class in `part`."""
    rng = np.random.default_rng(seed)
    part = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        part.append(idx[: max(1, round(fraction * len(idx)))])
    part_idx = np.sort(np.concatenate(part))
    rest = np.setdiff1d(np.arange(len(y)), part_idx)
    return rest, part_idx


def _assemble(name: str, train: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], seed: int, flip: bool,
              val: tuple[np.ndarray, np.ndarray] | None = None,
              val_fraction: float = 0.15) -> Dataset:
    import torch

    x, y = train
    if val is None:
        rest, part = _stratified_split(y, val_fraction, seed)
        val, (x, y) = (x[part], y[part]), (x[rest], y[rest])
    x = x.astype(np.float32)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        images = (images.astype(np.float32) - mean) / std
        return Split(torch.from_numpy(np.ascontiguousarray(images)),
                     torch.from_numpy(labels.astype(np.int64)))

    classes = int(max(y.max(), test[1].max(), val[1].max())) + 1
    return Dataset(name, split(x, y), split(*val), split(*test), classes, flip)


# ---------------------------------------------------------------------- the sources


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.images.reshape(-1, 1, 8, 8) / 16.0
    y = data.target
    rest, test = _stratified_split(y, 0.2, seed=1234)  # the test split never moves with seed
    return _assemble("digits", (x[rest], y[rest]), (x[test], y[test]), seed, flip=False)


def _synthetic(seed: int, n: int = 1200, classes: int = 10) -> Dataset:
    rng = np.random.default_rng(4321)
    templates = rng.normal(size=(classes, 3, 16, 16))
    y = np.arange(n) % classes
    x = templates[y] + rng.normal(scale=1.5, size=(n, 3, 16, 16))
    rest, test = _stratified_split(y, 0.2, seed=1234)
    return _assemble("synthetic", (x[rest], y[rest]), (x[test], y[test]), seed, flip=False)


def _cifar10(path: str, seed: int) -> Dataset:
    folder = _folder(path, "cifar10")
    names = sorted(p.name for p in folder.glob("data_batch_*"))
    if not names:
        raise DataError(f"{folder}: no data_batch_* files; hint: the folder of the "
                        "'python version' archive (cifar-10-batches-py)")
    parts = [_cifar_batch(folder / n) for n in names]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _cifar_batch(folder / "test_batch")
    return _assemble("cifar10", train, test, seed, flip=True, val_fraction=0.1)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds, so that a crafted batch cannot run code."""

    # The globals of the CIFAR-10 files (Python 2's cPickle, protocol 2, numpy 1) and of
    # pickle.dump of the same dict at any protocol (numpy 2 renamed numpy.core to numpy._core).
    ALLOWED = frozenset({
        "numpy.ndarray", "numpy.dtype",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",  # protocol 5
        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",  # numpy integers
        "_codecs.encode", "__builtin__.bytes", "builtins.bytes",  # Python 3 bytes, protocol < 3
    })

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file, encoding="bytes")  # Python 2's str as bytes: keys b'data', ...
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" not in self.ALLOWED:
            raise DataError(f"{self.source}: refuses to load global {module}.{name}; a CIFAR-10 "
                            "batch holds only arrays, lists and bytes")
        return super().find_class(module, name)


# What unpickling a damaged file raises: pickle's documentation names the first five, numpy's
# array and dtype rebuilders raise the others on arguments they cannot take.
_UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
                      KeyError, TypeError, ValueError)


def _cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images N x 3 x 32 x 32 in [0, 1] and labels N of one CIFAR-10 python batch."""
    source = f"cifar10 batch {file}"
    try:
        with file.open("rb") as f:
            batch = _CifarUnpickler(f, source).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{source}: cannot be read ({e.strerror or e})") from None
    except _UNPICKLING_ERRORS as e:
        raise DataError(f"{source}: not a CIFAR-10 python batch ({e})") from None
    if not (isinstance(batch, dict) and b"data" in batch and b"labels" in batch):
        held = (f"keys {', '.join(repr(k) for k in list(batch)[:8])}" if isinstance(batch, dict)
                else f"a {type(batch).__name__}")
        raise DataError(f"{source}: holds {held}; a CIFAR-10 batch is a dict with keys b'data' "
                        "and b'labels'")
    data = batch[b"data"]
    try:
        labels = np.asarray(batch[b"labels"])
    except ValueError:  # nested lists of different lengths
        raise DataError(f"{source}: labels are ragged lists; a CIFAR-10 batch holds one label "
                        "per image") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise DataError(f"{source}: data is {_describe(data)}; a CIFAR-10 batch holds N x 3072 "
                        "uint8 (N images of 3 x 32 x 32)")
    if labels.shape != (len(data),):
        raise DataError(f"{source}: {_describe(labels)} labels for {len(data)} images; a "
                        "CIFAR-10 batch holds one label per image")
    _check_labels(labels, source)
    return data.reshape(-1, 3, 32, 32) / np.float32(255), labels


def read_idx(file: Path) -> np.ndarray:
    """An unsigned-byte IDX array (the MNIST format), gzipped when its name ends in .gz."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise DataError(f"{file}: cannot be read ({reason})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{file}: starts with {raw[:4].hex(' ') or 'nothing'}; an unsigned-byte "
                        "IDX file starts with 00 00 08 and its number of dimensions")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{file}: {len(raw)} bytes, too few for the header of {ndim} dimensions "
                        f"({start} bytes); the file is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    if len(raw) - start != math.prod(shape):
        raise DataError(f"{file}: its header says {_describe(shape)} ({math.prod(shape)} bytes) "
                        f"but {len(raw) - start} bytes follow it; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


def named_folder(name: str) -> Path:
    """The folder of the data set `name`: `$NASGRAPH_DATA/<name>`, else Debian's."""
    places = [Path(os.environ["NASGRAPH_DATA"]) / name] if os.environ.get("NASGRAPH_DATA") \
        else []
    places.append(DEBIAN_DATASETS / name)
    for folder in places:
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    package = NAMED[name]
    install = f"`apt-get install {package}` (Debian), or " if package else ""
    raise DataError(f"dataset {name!r}: not found in {' or '.join(map(str, places))}; hint: "
                    f"{install}its four IDX files in $NASGRAPH_DATA/{name}/, or "
                    f"'mnist:PATH' for a folder of them")


def _mnist(path: str, seed: int, name: str = "mnist") -> Dataset:
    folder = _folder(path, "mnist")

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                     stem.replace("-idx", ".idx") + ".gz"):
            if (folder / name).is_file():
                return folder / name
        raise DataError(f"{folder}: no {stem}[.gz]; hint: the four MNIST IDX files")

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images_file = find(f"{prefix}-images-idx3-ubyte")
        labels_file = find(f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3:
            raise DataError(f"{images_file}: holds {_describe(images)}; expected N x H x W "
                            "images")
        if labels.ndim != 1:
            raise DataError(f"{labels_file}: holds {_describe(labels)}; expected N labels")
        if len(images) != len(labels):
            raise DataError(f"{images_file} holds {len(images)} images but {labels_file} holds "
                            f"{len(labels)} labels; each image needs one label")
        _check_labels(labels, str(labels_file))
        return images[:, None] / np.float32(255), labels

    return _assemble(name, split("train"), split("t10k"), seed, flip=False, val_fraction=0.1)


def _check_labels(labels: np.ndarray, source: str) -> None:
    """Raise unless `labels` are class numbers 0..9 (CIFAR-10 and the MNIST family)."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{source}: labels are {labels.dtype}; expected integers 0..9")
    outside = labels[(labels < 0) | (labels > 9)]
    if outside.size:
        raise DataError(f"{source}: labels outside 0..9: {outside.size} of {labels.size}, the "
                        f"first {outside[0]}; expected one of the 10 classes")


def _describe(value: object) -> str:
    """'200 x 28 x 28 uint8' for an array, '200 x 28 x 28' for a shape, else the type."""
    if isinstance(value, tuple):
        return " x ".join(map(str, value)) or "a scalar"
    if isinstance(value, np.ndarray):
        return f"{_describe(value.shape)} {value.dtype}"
    return f"a {type(value).__name__}"


def _imagefolder(path: str, seed: int) -> Dataset:
    path, size = _image_size(path)
    folder = _folder(path, "imagefolder")
    subsets = {s: folder / s for s in ("train", "val", "test") if (folder / s).is_dir()}
    if subsets and "train" not in subsets:
        raise DataError(f"{folder}: has {'/ and '.join(subsets)}/ but no train/; hint: "
                        "PATH/<class>/<image> or PATH/train/<class>/<image>")
    training = subsets.get("train", folder)
    classes = _class_folders(training)
    if len(classes) < 2:
        raise DataError(f"{training}: {len(classes)} class sub-folder(s) {classes}; a classifier "
                        "needs at least 2, as PATH/<class>/<image> or PATH/train/<class>/<image>")

    def read(root: Path) -> tuple[np.ndarray, np.ndarray]:
        unknown = sorted(set(_class_folders(root)) - set(classes))
        if unknown:
            raise DataError(f"{root}: class folders {unknown} are not in {training}; every "
                            "class needs training images")
        xs, ys = [], []
        for label, name in enumerate(classes):
            if not (root / name).is_dir():
                continue  # a class missing from val/ or test/ only leaves that split smaller
            images = [x for file in sorted((root / name).iterdir())
                      if (x := _read_image(file, size)) is not None]
            if not images:
                raise DataError(f"{root / name}: no image that PIL can read; each class folder "
                                "needs at least one (png, jpeg, ...)")
            xs += images
            ys += [label] * len(images)
        if not xs:
            raise DataError(f"{root}: holds none of the class folders {classes}; hint: "
                            f"{root}/<class>/<image>")
        return np.stack(xs), np.asarray(ys)

    if "train" not in subsets:
        x, y = read(folder)
        rest, test = _stratified_split(y, 0.2, seed=1234)
        return _assemble("imagefolder", (x[rest], y[rest]), (x[test], y[test]), seed, True)
    train = read(subsets["train"])
    val = read(subsets["val"]) if "val" in subsets else None
    if "test" in subsets:
        test = read(subsets["test"])
    else:
        rest, part = _stratified_split(train[1], 0.2, seed=1234)
        train, test = (train[0][rest], train[1][rest]), (train[0][part], train[1][part])
    return _assemble("imagefolder", train, test, seed, flip=True, val=val)


def _class_folders(root: Path) -> list[str]:
    """The names of the sub-folders of `root` except hidden ones (.ipynb_checkpoints, .git)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_size(path: str) -> tuple[str, int]:
    """The folder and the image side in pixels of 'PATH' (32) or 'PATH@64'."""
    if "@" not in path:
        return path, 32
    folder, _, size = path.rpartition("@")
    if not (size.isascii() and size.isdigit() and int(size) > 0):
        raise DataError(f"dataset 'imagefolder:{path}': the size '@{size}' must be a positive "
                        "integer (pixels), e.g. 'imagefolder:PATH@64'")
    return folder, int(size)


def _read_image(file: Path, size: int) -> np.ndarray | None:
    """`file` as 3 x size x size in [0, 1]; None when PIL cannot read it (a README, a cache)."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    except (OSError, Image.DecompressionBombError):  # not an image, a truncated one, a folder
        return None
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _folder(path: str, kind: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset '{kind}:{path}': {folder} is not a folder")
    return folder
