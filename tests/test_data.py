"""Each dataset loader reads small files written in its real format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nasgraph.data import load_dataset, read_idx
from nasgraph.errors import DataError


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


def _cifar_folder(folder: Path, protocol: int | None = None, **batch: object) -> str:
    """Two training batches and a test batch in `folder`, the first with `batch`'s entries."""
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 30), ("data_batch_2", 30), ("test_batch", 20)]:
        contents = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"labels": list(np.arange(n) % 10)}
        if name == "data_batch_1":
            contents.update({key.encode(): value for key, value in batch.items()})
        with (folder / name).open("wb") as f:
            pickle.dump(contents, f, protocol=protocol)
    return f"cifar10:{folder}"


def _data_error(spec: str) -> str:
    """The message of the DataError that loading `spec` raises, checked to be one line."""
    with pytest.raises(DataError) as raised:
        load_dataset(spec)
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("protocol", [2, None, pickle.HIGHEST_PROTOCOL])
def test_cifar10_python_batches(tmp_path, protocol):
    ds = load_dataset(_cifar_folder(tmp_path, protocol))
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and ds.flip
    assert len(ds.train) + len(ds.val) == 60 and len(ds.test) == 20


def _python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the CIFAR-10 files hold it: Python 2's cPickle, protocol 2, numpy 1.x."""

    def string(b: bytes) -> bytes:  # a Python 2 str
        if len(b) < 256:
            return pickle.SHORT_BINSTRING + bytes([len(b)]) + b
        return pickle.BINSTRING + struct.pack("<i", len(b)) + b

    def integer(i: int) -> bytes:
        return pickle.BININT + struct.pack("<i", i)

    # numpy.core.multiarray._reconstruct(ndarray, (0,), 'b'), then its state:
    # (1, shape, dtype('u1', 0, 1) with state (3, '|', None, None, None, -1, -1, 0), False, raw)
    array = (pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n"
             + pickle.GLOBAL + b"numpy\nndarray\n" + integer(0) + pickle.TUPLE1 + string(b"b")
             + pickle.TUPLE3 + pickle.REDUCE
             + pickle.MARK + integer(1) + integer(len(data)) + integer(3072) + pickle.TUPLE2
             + pickle.GLOBAL + b"numpy\ndtype\n" + string(b"u1") + integer(0) + integer(1)
             + pickle.TUPLE3 + pickle.REDUCE
             + pickle.MARK + integer(3) + string(b"|") + pickle.NONE * 3 + integer(-1)
             + integer(-1) + integer(0) + pickle.TUPLE + pickle.BUILD
             + pickle.NEWFALSE + string(data.tobytes()) + pickle.TUPLE + pickle.BUILD)
    items = [(b"batch_label", string(b"training batch 1 of 5")), (b"data", array),
             (b"labels", pickle.EMPTY_LIST + pickle.MARK
              + b"".join(integer(label) for label in labels) + pickle.APPENDS)]
    return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK
            + b"".join(string(key) + value for key, value in items) + pickle.SETITEMS
            + pickle.STOP)


def test_cifar10_reads_the_python2_pickles_of_the_real_files(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 40), ("test_batch", 20)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.permutation(n) % 10]
        batch = _python2_batch(data, labels)
        assert np.array_equal(pickle.loads(batch, encoding="bytes")[b"data"], data)
        (tmp_path / name).write_bytes(batch)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert len(ds.train) + len(ds.val) == 40 and ds.num_classes == 10
    assert ds.test.y.tolist() == labels


class _Call:
    """Pickles as `function(*args)`: what a crafted batch runs when read by pickle.load."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(("payload", "refused"), [
    (lambda target: _Call(open, str(target), "w"), "io.open"),
    (lambda target: _Call(os.system, f"touch {target}"), f"{os.name}.system"),
])
@pytest.mark.parametrize("protocol", [2, None])
def test_cifar10_batch_never_runs_code(tmp_path, payload, refused, protocol):
    target = tmp_path / "pwned"
    spec = _cifar_folder(tmp_path, protocol, labels=[payload(target)] * 30)
    message = _data_error(spec)
    assert not target.exists()
    assert message.startswith(f"cifar10 batch {tmp_path / 'data_batch_1'}: refuses to load "
                              f"global {refused};")


@pytest.mark.parametrize(("entries", "expected"), [
    ({"data": np.zeros((30, 100), np.uint8)}, "data is 30 x 100 uint8; a CIFAR-10 batch holds "
                                              "N x 3072 uint8"),
    ({"data": np.zeros((30, 3072))}, "data is 30 x 3072 float64"),
    ({"labels": [1] * 29}, "29 int64 labels for 30 images"),
    ({"labels": [1] * 29 + [10]}, "labels outside 0..9: 1 of 30, the first 10"),
    ({"labels": [-1] * 30}, "labels outside 0..9: 30 of 30, the first -1"),
    ({"labels": [0.5] * 30}, "labels are float64; expected integers 0..9"),
    ({"labels": [[1], [1, 2]] * 15}, "labels are ragged lists"),
])
def test_cifar10_batch_of_the_wrong_shape(tmp_path, entries, expected):
    message = _data_error(_cifar_folder(tmp_path, **entries))
    assert message.startswith(f"cifar10 batch {tmp_path / 'data_batch_1'}: ")
    assert expected in message


@pytest.mark.parametrize(("contents", "expected"), [
    (pickle.dumps({b"data": 0, b"fine_labels": []}), "holds keys b'data', b'fine_labels'; a "
                                                     "CIFAR-10 batch is a dict with keys"),
    (pickle.dumps([1, 2]), "holds a list"),
    (b"not a pickle at all", "not a CIFAR-10 python batch"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-40], "not a CIFAR-10 python batch"),
])
def test_cifar10_batch_that_is_not_one(tmp_path, contents, expected):
    spec = _cifar_folder(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(contents)
    message = _data_error(spec)
    assert message.startswith(f"cifar10 batch {tmp_path / 'data_batch_2'}: ")
    assert expected in message


def test_cifar10_without_test_batch(tmp_path):
    spec = _cifar_folder(tmp_path)
    (tmp_path / "test_batch").unlink()
    assert _data_error(spec) == (f"cifar10 batch {tmp_path / 'test_batch'}: cannot be read "
                                 "(No such file or directory)")


def _idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _mnist_folder(folder: Path, gz: bool = False, train_images: np.ndarray | None = None,
                  train_labels: np.ndarray | None = None) -> str:
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28))
    suffix = ".gz" if gz else ""
    _idx(folder / f"train-images-idx3-ubyte{suffix}",
         images if train_images is None else train_images, gz)
    _idx(folder / f"train-labels-idx1-ubyte{suffix}",
         np.arange(40) % 10 if train_labels is None else train_labels, gz)
    _idx(folder / f"t10k-images-idx3-ubyte{suffix}", images[:20], gz)
    _idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(20) % 10, gz)
    return f"mnist:{folder}"


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28))
    ds = load_dataset(_mnist_folder(tmp_path, gz, train_images=images))
    suffix = ".gz" if gz else ""
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    assert ds.input_shape == (1, 28, 28) and len(ds.test) == 20


def test_named_datasets_are_found_in_nasgraph_data(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    _mnist_folder(tmp_path / "mnist", gz=True)
    monkeypatch.setenv("NASGRAPH_DATA", str(tmp_path))
    ds = load_dataset("mnist")
    assert ds.name == "mnist" and len(ds.test) == 20


def test_a_missing_named_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NASGRAPH_DATA", str(tmp_path))
    monkeypatch.setattr("nasgraph.data.DEBIAN_DATASETS", tmp_path / "debian")
    with pytest.raises(DataError, match=r"dataset 'fashion-mnist': not found in .*; hint: "
                       r"`apt-get install dataset-fashion-mnist`"):
        load_dataset("fashion-mnist")


def test_fashion_mnist_real_files():
    # Debian's dataset-fashion-mnist, which `make test` installs: the real IDX files
    ds = load_dataset("fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.input_shape == (1, 28, 28)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54_000, 6_000, 10_000)
    assert ds.num_classes == 10 and torch.bincount(ds.test.y).tolist() == [1000] * 10
    assert abs(float(ds.train.x.mean())) < 1e-3 and abs(float(ds.train.x.std()) - 1) < 1e-2


def test_mnist_images_and_labels_must_match(tmp_path):
    spec = _mnist_folder(tmp_path, train_images=np.zeros((200, 28, 28)),
                         train_labels=np.arange(100) % 10)
    assert _data_error(spec) == (
        f"{tmp_path / 'train-images-idx3-ubyte'} holds 200 images but "
        f"{tmp_path / 'train-labels-idx1-ubyte'} holds 100 labels; each image needs one label")


@pytest.mark.parametrize(("images", "labels", "expected"), [
    (np.zeros(40), None, "images-idx3-ubyte: holds 40 uint8; expected N x H x W images"),
    (None, np.zeros((40, 1)), "labels-idx1-ubyte: holds 40 x 1 uint8; expected N labels"),
    (None, np.arange(40) % 13, "labels-idx1-ubyte: labels outside 0..9: 9 of 40, the first 10; "
                                "expected one of the 10 classes"),
])
def test_mnist_arrays_of_the_wrong_shape(tmp_path, images, labels, expected):
    spec = _mnist_folder(tmp_path, train_images=images, train_labels=labels)
    assert _data_error(spec).endswith(expected)


def _corrupt(file: Path, how: str) -> None:
    raw = file.read_bytes()
    file.write_bytes({"magic": b"\x00\x00\x0d" + raw[3:],  # 0x0D: float32 IDX
                      "short data": raw[:-1],
                      "long data": raw + b"\x00",
                      "short header": raw[:9],
                      "empty": b""}[how])


@pytest.mark.parametrize(("how", "expected"), [
    ("magic", "starts with 00 00 0d 03; an unsigned-byte IDX file starts with 00 00 08"),
    ("short data", "header says 40 x 28 x 28 (31360 bytes) but 31359 bytes follow it; the file "
                   "is truncated or corrupt"),
    ("long data", "but 31361 bytes follow it"),
    ("short header", "9 bytes, too few for the header of 3 dimensions (16 bytes)"),
    ("empty", "starts with nothing"),
])
def test_mnist_corrupt_idx(tmp_path, how, expected):
    spec = _mnist_folder(tmp_path)
    _corrupt(tmp_path / "train-images-idx3-ubyte", how)
    message = _data_error(spec)
    assert message.startswith(f"{tmp_path / 'train-images-idx3-ubyte'}: ")
    assert expected in message


@pytest.mark.parametrize(("corrupt", "expected"), [
    (lambda raw: b"\x00\x00\x08\x03" + raw, "Not a gzipped file"),  # gzip.BadGzipFile
    (lambda raw: raw[: len(raw) // 2], "Compressed file ended"),  # EOFError
    (lambda raw: raw[:10] + b"\xff" + raw[11:], "invalid block type"),  # zlib.error
    (lambda raw: raw[:-8] + b"\x00" * 4 + raw[-4:], "CRC check failed"),
])
def test_fashion_mnist_corrupt_gz(tmp_path, corrupt, expected):
    spec = _mnist_folder(tmp_path, gz=True)
    file = tmp_path / "t10k-images-idx3-ubyte.gz"
    file.write_bytes(corrupt(file.read_bytes()))
    message = _data_error(spec)
    assert message.startswith(f"{file}: cannot be read (") and expected in message


def _image(file: Path, seed: int = 0) -> None:
    from PIL import Image

    file.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(file)


def test_imagefolder(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog", "emu"):
            for k in range(n):
                _image(tmp_path / split / cls / f"{k}.png", k)
    ds = load_dataset(f"imagefolder:{tmp_path}@16")
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 3
    assert len(ds.test) == 6 and len(ds.train) + len(ds.val) == 18


def test_imagefolder_skips_files_that_are_not_images_and_hidden_folders(tmp_path):
    for cls in ("cat", "dog"):
        for k in range(5):
            _image(tmp_path / cls / f"{k}.png", k)
        (tmp_path / cls / "README.txt").write_text("not an image")
        truncated = (tmp_path / cls / "0.png").read_bytes()[:100]
        (tmp_path / cls / "truncated.png").write_bytes(truncated)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.num_classes == 2 and ds.input_shape == (3, 32, 32)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10


def test_imagefolder_class_without_a_readable_image(tmp_path):
    for cls in ("cat", "dog"):
        _image(tmp_path / "train" / cls / "0.png")
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "broken.png").write_bytes(b"\x89PNG garbage")
    assert _data_error(f"imagefolder:{tmp_path}") == (
        f"{tmp_path / 'train' / 'emu'}: no image that PIL can read; each class folder needs at "
        "least one (png, jpeg, ...)")


def test_imagefolder_where_no_image_is_readable(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.jpg").write_bytes(b"")
    assert _data_error(f"imagefolder:{tmp_path}").startswith(
        f"{tmp_path / 'cat'}: no image that PIL can read")


def test_imagefolder_needs_two_classes(tmp_path):
    _image(tmp_path / "cat" / "0.png")
    assert _data_error(f"imagefolder:{tmp_path}") == (
        f"{tmp_path}: 1 class sub-folder(s) ['cat']; a classifier needs at least 2, as "
        "PATH/<class>/<image> or PATH/train/<class>/<image>")


def test_imagefolder_splits_must_agree_on_classes(tmp_path):
    for split, cls in [("train", "cat"), ("train", "dog"), ("test", "cat"), ("test", "emu")]:
        _image(tmp_path / split / cls / "0.png")
    assert _data_error(f"imagefolder:{tmp_path}").startswith(
        f"{tmp_path / 'test'}: class folders ['emu'] are not in {tmp_path / 'train'}")
    (tmp_path / "train").rename(tmp_path / "training")
    assert "has test/ but no train/" in _data_error(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("size", ["abc", "0", "-3", "", "1.5", "²"])
def test_imagefolder_size_must_be_a_positive_integer(tmp_path, size):
    for cls in ("cat", "dog"):
        _image(tmp_path / cls / "0.png")
    assert _data_error(f"imagefolder:{tmp_path}@{size}") == (
        f"dataset 'imagefolder:{tmp_path}@{size}': the size '@{size}' must be a positive "
        "integer (pixels), e.g. 'imagefolder:PATH@64'")


def test_synthetic():
    ds = load_dataset("synthetic")
    assert ds.input_shape == (3, 16, 16) and ds.num_classes == 10


@pytest.mark.parametrize(("spec", "message"), [
    ("imagenet", "unknown dataset 'imagenet'; hint: one of digits, fashion-mnist, mnist, "
                 "cifar10:PATH"),
    ("digits:data", "unknown dataset 'digits:data'; hint: one of digits,"),
    ("cifar10", "dataset 'cifar10': give the folder, e.g. 'cifar10:data/cifar10'"),
    ("mnist:/nonexistent/folder", "dataset 'mnist:/nonexistent/folder': /nonexistent/folder is "
                                  "not a folder"),
    ("imagefolder:/nonexistent@64", "dataset 'imagefolder:/nonexistent': /nonexistent is not "
                                    "a folder"),
])
def test_bad_dataset_is_one_clear_error(spec, message):
    assert _data_error(spec).startswith(message)
