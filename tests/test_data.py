"""Each dataset loader reads small files written in its real format."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from nasgraph.data import DataError, load_dataset, read_idx


def test_digits_splits_are_disjoint_stratified_and_standardized():
    ds = load_dataset("digits")
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert len(ds.test) == pytest.approx(0.2 * 1797, abs=10)
    assert torch.bincount(ds.val.y).min() >= 20
    assert abs(float(ds.train.x.mean())) < 1e-4
    assert float(ds.train.x.std()) == pytest.approx(1, 1e-3)
    # the test split is the same whatever the seed; validation moves with it
    other = load_dataset("digits", seed=1)
    assert torch.equal(other.test.y, ds.test.y) and not torch.equal(other.val.y, ds.val.y)


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 30), ("data_batch_2", 30), ("test_batch", 20)]:
        with (tmp_path / name).open("wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": list(np.arange(n) % 10)}, f)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and ds.flip
    assert len(ds.train) + len(ds.val) == 60 and len(ds.test) == 20


def _idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    images = rng.integers(0, 256, (40, 28, 28))
    _idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(40) % 10, gz)
    _idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[:20], gz)
    _idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(20) % 10, gz)
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    ds = load_dataset(f"mnist:{tmp_path}")
    assert ds.input_shape == (1, 28, 28) and len(ds.test) == 20


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog", "emu"):
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{k}.png")
    ds = load_dataset(f"imagefolder:{tmp_path}@16")
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 3
    assert len(ds.test) == 6 and len(ds.train) + len(ds.val) == 18


def test_synthetic():
    ds = load_dataset("synthetic")
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 10


@pytest.mark.parametrize(("spec", "message"), [
    ("imagenet", "unknown dataset 'imagenet'"),
    ("cifar10", "give the folder"),
    ("mnist:/nonexistent/folder", "is not a folder"),
])
def test_bad_dataset_is_one_clear_error(spec, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec)
