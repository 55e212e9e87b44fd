"""Datasets for search and training, held in memory as tensors: small data, fast epochs.

A dataset is named by a spec string:

- `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, works offline);
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
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nasgraph.errors import NasgraphError

DATASETS = ("digits", "cifar10:PATH", "mnist:PATH", "imagefolder:PATH", "synthetic")


class DataError(NasgraphError):
    """A dataset cannot be found or read."""


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
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        return _digits(seed)
    if kind == "synthetic" and not path:
        return _synthetic(seed)
    if kind in ("cifar10", "mnist", "imagefolder"):
        if not path:
            raise DataError(f"dataset {spec!r}: give the folder, e.g. '{kind}:data/{kind}'")
        loader = {"cifar10": _cifar10, "mnist": _mnist, "imagefolder": _imagefolder}[kind]
        return loader(path, seed)
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

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        file = folder / name
        try:
            with file.open("rb") as f:
                d = pickle.load(f, encoding="bytes")
            data, labels = d[b"data"], d[b"labels"]
        except (OSError, KeyError, pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"{file}: not a CIFAR-10 python batch ({e})") from None
        return (np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32) / 255.0,
                np.asarray(labels))

    names = sorted(p.name for p in folder.glob("data_batch_*"))
    if not names:
        raise DataError(f"{folder}: no data_batch_* files; hint: the folder of the "
                        "'python version' archive (cifar-10-batches-py)")
    parts = [batch(n) for n in names]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return _assemble("cifar10", train, batch("test_batch"), seed, flip=True, val_fraction=0.1)


def read_idx(file: Path) -> np.ndarray:
    """An IDX array (the MNIST format), gzipped or not."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error) as e:
        raise DataError(f"{file}: not an unsigned-byte IDX file ({e})") from None


def _mnist(path: str, seed: int) -> Dataset:
    folder = _folder(path, "mnist")

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                     stem.replace("-idx", ".idx") + ".gz"):
            if (folder / name).is_file():
                return folder / name
        raise DataError(f"{folder}: no {stem}[.gz]; hint: the four MNIST IDX files")

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
        return images[:, None] / 255.0, labels

    return _assemble("mnist", split("train"), split("t10k"), seed, flip=False, val_fraction=0.1)


def _imagefolder(path: str, seed: int) -> Dataset:
    from PIL import Image

    path, _, size_text = path.partition("@")
    size = int(size_text) if size_text.isdigit() else 32
    folder = _folder(path, "imagefolder")
    subsets = {s: folder / s for s in ("train", "val", "test") if (folder / s).is_dir()}
    roots = subsets or {"all": folder}
    classes = sorted({d.name for root in roots.values() for d in root.iterdir() if d.is_dir()})
    if not classes:
        raise DataError(f"{folder}: no class sub-folders; hint: PATH/<class>/<image> or "
                        "PATH/train/<class>/<image>")

    def read(root: Path) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, name in enumerate(classes):
            for file in sorted((root / name).glob("*")) if (root / name).is_dir() else []:
                try:
                    with Image.open(file) as im:
                        im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                        xs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
                except OSError:
                    continue  # not an image: a README or a thumbnail cache
                ys.append(label)
        if not xs:
            raise DataError(f"{root}: no readable images")
        return np.stack(xs), np.asarray(ys)

    if "train" not in roots:
        x, y = read(roots["all"])
        rest, test = _stratified_split(y, 0.2, seed=1234)
        return _assemble("imagefolder", (x[rest], y[rest]), (x[test], y[test]), seed, True)
    train = read(roots["train"])
    val = read(roots["val"]) if "val" in roots else None
    if "test" in roots:
        test = read(roots["test"])
    else:
        rest, part = _stratified_split(train[1], 0.2, seed=1234)
        train, test = (train[0][rest], train[1][rest]), (train[0][part], train[1][part])
    return _assemble("imagefolder", train, test, seed, flip=True, val=val)


def _folder(path: str, kind: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset '{kind}:{path}': {folder} is not a folder")
    return folder
