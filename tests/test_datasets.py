"""Dataset loaders: digits split, MNIST IDX and CIFAR-10 batches written here in their real formats, torchvision."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_load_digits

from gpex_gpytorch.datasets import load_cifar10, load_digits, load_mnist_idx, load_torchvision

# ----------------------------------------------------------------------------- digits


def _rows(images: torch.Tensor) -> list[bytes]:
    return sorted(row.numpy().tobytes() for row in images.reshape(len(images), -1))


def test_digits_split_sizes_shapes_and_range():
    train, test = load_digits(seed=0)
    x_train, y_train = train.tensors
    x_test, y_test = test.tensors
    assert (len(train), len(test)) == (1347, 450)  # 1797 images, 25% (rounded up) held out
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    both = torch.cat([x_train, x_test])
    assert both.min() == 0.0 and both.max() == 1.0
    # values/16 of integer counts 0..16
    assert torch.equal(both * 16, (both * 16).round())
    assert set(torch.cat([y_train, y_test]).tolist()) == set(range(10))


def test_digits_split_is_a_partition_of_sklearn_digits_with_matching_labels():
    train, test = load_digits(seed=3)
    bunch = sklearn_load_digits()
    reference = torch.from_numpy(bunch.images.astype(np.float32) / 16).unsqueeze(1)
    assert _rows(torch.cat([train.tensors[0], test.tensors[0]])) == _rows(reference)
    # Each test image's label is sklearn's label for that image.
    lookup = {img.tobytes(): int(t) for img, t in zip(reference.reshape(1797, -1).numpy(), bunch.target, strict=True)}
    for x, y in zip(test.tensors[0][:50].reshape(50, -1).numpy(), test.tensors[1][:50], strict=True):
        assert lookup[x.tobytes()] == int(y)


def test_digits_split_is_stratified():
    train, test = load_digits(seed=1, test_size=0.3)
    totals = np.bincount(sklearn_load_digits().target, minlength=10)
    test_counts = np.bincount(test.tensors[1].numpy(), minlength=10)
    train_counts = np.bincount(train.tensors[1].numpy(), minlength=10)
    assert np.array_equal(test_counts + train_counts, totals)
    assert np.all(np.abs(test_counts - 0.3 * totals) <= 1.0)


def test_digits_split_is_fixed_by_seed():
    a_train, a_test = load_digits(seed=7)
    b_train, b_test = load_digits(seed=7)
    c_train, _ = load_digits(seed=8)
    assert torch.equal(a_train.tensors[0], b_train.tensors[0]) and torch.equal(a_test.tensors[1], b_test.tensors[1])
    assert not torch.equal(a_train.tensors[0], c_train.tensors[0])


def test_digits_classes_subset_is_relabelled_in_given_order():
    train, test = load_digits(seed=0, classes=[8, 3])
    labels = torch.cat([train.tensors[1], test.tensors[1]])
    images = torch.cat([train.tensors[0], test.tensors[0]])
    bunch = sklearn_load_digits()
    assert int((labels == 0).sum()) == int((bunch.target == 8).sum()) == 174
    assert int((labels == 1).sum()) == int((bunch.target == 3).sum()) == 183
    digit_eights = torch.from_numpy(bunch.images[bunch.target == 8].astype(np.float32) / 16).unsqueeze(1)
    assert _rows(images[labels == 0]) == _rows(digit_eights)


@pytest.mark.parametrize("test_size", [0, 1, 1.5, -0.1])
def test_digits_rejects_bad_test_size(test_size):
    with pytest.raises(ValueError, match="test_size"):
        load_digits(test_size=test_size)


@pytest.mark.parametrize("classes", [[], [10], [-1], [1, 1], [0.5], "01"])
def test_digits_rejects_bad_classes(classes):
    with pytest.raises(ValueError, match="classes"):
        load_digits(classes=classes)


# ----------------------------------------------------------------------------- MNIST IDX


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(array)
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)


def _mnist_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    if n > 2:
        images[2, 3, 17], images[2, 17, 3] = 255, 0
    return images, rng.integers(0, 10, size=n).astype(np.uint8)


def test_mnist_idx_reads_the_real_format(tmp_path):
    images, labels = _mnist_arrays(5)
    _write_mnist(tmp_path, "train", images, labels)
    t10k_images, t10k_labels = _mnist_arrays(3, seed=1)
    _write_mnist(tmp_path, "t10k", t10k_images, t10k_labels)

    train = load_mnist_idx(tmp_path)
    x, y = train.tensors
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert torch.equal(x, torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1))
    assert x[2, 0, 3, 17] == 1.0 and x[2, 0, 17, 3] == 0.0  # row-major: (row 3, col 17) is not (17, 3)

    test = load_mnist_idx(str(tmp_path), train=False)
    assert len(test) == 3 and test.tensors[1].tolist() == t10k_labels.tolist()


def test_mnist_idx_reads_gz_and_torchvision_layout(tmp_path):
    images, labels = _mnist_arrays(4)
    _write_mnist(tmp_path / "MNIST" / "raw", "train", images, labels, gz=True)
    x, y = load_mnist_idx(tmp_path).tensors
    assert torch.equal(x[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
    assert y.tolist() == labels.tolist()


def test_mnist_idx_missing_file(tmp_path):
    images, labels = _mnist_arrays(2)
    _write_mnist(tmp_path, "train", images, labels)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_mnist_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="root"):
        load_mnist_idx(tmp_path / "nowhere")


def test_mnist_idx_wrong_magic(tmp_path):
    images, labels = _mnist_arrays(2)
    _write_mnist(tmp_path, "train", images, labels)
    # A label file where the image file should be: magic 0x801 instead of 0x803.
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(labels))
    with pytest.raises(ValueError, match=r"magic number 0x00000801, expected 0x00000803"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_truncated_data_and_header(tmp_path):
    images, labels = _mnist_arrays(3)
    _write_mnist(tmp_path, "train", images, labels)
    path = tmp_path / "train-images-idx3-ubyte"
    full = path.read_bytes()
    path.write_bytes(full[:-10])
    with pytest.raises(ValueError, match=r"truncated IDX data.*2342 bytes"):
        load_mnist_idx(tmp_path)
    path.write_bytes(full[:9])
    with pytest.raises(ValueError, match="truncated IDX header"):
        load_mnist_idx(tmp_path)
    path.write_bytes(full + b"\x00")
    with pytest.raises(ValueError, match="1 unexpected bytes"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_count_mismatch(tmp_path):
    images, labels = _mnist_arrays(5)
    _write_mnist(tmp_path, "train", images, labels[:4])
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_mnist_idx(tmp_path)


def test_mnist_idx_corrupt_gzip(tmp_path):
    images, labels = _mnist_arrays(2)
    _write_mnist(tmp_path, "train", images, labels, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read IDX file"):
        load_mnist_idx(tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10


def _batch(n: int, first_label: int = 0) -> dict[bytes, object]:
    return {
        b"batch_label": b"test batch",
        b"labels": [(first_label + i) % 10 for i in range(n)],
        b"data": np.zeros((n, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def _write_batch(path: Path, batch: dict, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def _write_cifar(folder: Path, per_batch: int = 2, protocol: int = 2) -> None:
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", _batch(per_batch, first_label=i), protocol)
    _write_batch(folder / "test_batch", _batch(per_batch + 1), protocol)


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar10_pixel_order_channels_rows_columns(tmp_path, protocol):
    batch = _batch(3)
    data = batch[b"data"]
    # Image 1: blue plane (c=2), row 5, column 7; image 2: red plane, row 31, column 0.
    data[1, 2 * 1024 + 5 * 32 + 7] = 200
    data[2, 0 * 1024 + 31 * 32 + 0] = 255
    _write_batch(tmp_path / "test_batch", batch, protocol)
    x, y = load_cifar10(tmp_path, train=False).tensors
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 2]
    assert x[1, 2, 5, 7] == pytest.approx(200 / 255)
    assert x[2, 0, 31, 0] == 1.0
    assert int((x != 0).sum()) == 2


def test_cifar10_train_concatenates_batches_in_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, per_batch=2)
    for root in (tmp_path, folder):  # the parent folder or the batch folder itself
        x, y = load_cifar10(root).tensors
        assert x.shape == (10, 3, 32, 32)
        assert y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert len(load_cifar10(tmp_path, train=False)) == 3


def test_cifar10_reads_numpy1_python2_style_pickles(tmp_path):
    # The real batches were pickled by Python 2 with NumPy 1, naming numpy.core.multiarray.
    batch = _batch(2)
    batch[b"data"][0, 1024] = 9  # green plane, row 0, column 0
    raw = pickle.dumps(batch, protocol=2)
    legacy = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy or b"numpy._core" not in raw  # NumPy 1 writes the old name already
    (tmp_path / "test_batch").write_bytes(legacy)
    x, _ = load_cifar10(tmp_path, train=False).tensors
    assert x[0, 1, 0, 0] == pytest.approx(9 / 255)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar10_refuses_arbitrary_globals(tmp_path):
    batch = _batch(1)
    batch[b"evil"] = _Payload()
    _write_batch(tmp_path / "test_batch", batch)
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_missing_and_corrupt_files(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_cifar10(tmp_path, train=False)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_batch(2), protocol=2)[:-40])
    with pytest.raises(ValueError, match="corrupt"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_accepts_protocol_2_empty_bytes_and_refuses_bytes_with_arguments(tmp_path):
    batch = _batch(2)
    batch[b"batch_label"] = b""  # protocol 2 writes b"" as __builtin__.bytes()
    raw = pickle.dumps(batch, protocol=2)
    assert b"__builtin__\nbytes" in raw
    _write_batch(tmp_path / "test_batch", batch)
    assert len(load_cifar10(tmp_path, train=False)) == 2
    # bytes(10**12) would allocate a terabyte: only the empty call is allowed.
    opcode = pickle.GLOBAL + b"__builtin__\nbytes\n" + pickle.BININT + (10**9).to_bytes(4, "little") + pickle.TUPLE1
    (tmp_path / "test_batch").write_bytes(pickle.PROTO + b"\x02" + opcode + pickle.REDUCE + pickle.STOP)
    with pytest.raises(ValueError, match=r"refusing bytes\(\.\.\.\) with arguments"):
        load_cifar10(tmp_path, train=False)


def test_cifar10_shared_nested_labels_are_refused_before_any_conversion(tmp_path):
    # 2**40 leaves in a few hundred bytes (pickle's memo shares the inner lists): np.asarray would not finish.
    labels: list = [0]
    for _ in range(40):
        labels = [labels, labels]
    batch = _batch(2)
    batch[b"labels"] = labels
    _write_batch(tmp_path / "test_batch", batch)
    assert (tmp_path / "test_batch").stat().st_size < 7000
    start = time.perf_counter()
    with pytest.raises(ValueError, match="labels' as a list of integers, found a list"):
        load_cifar10(tmp_path, train=False)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop(b"labels"), "missing key b'labels'"),
        (lambda b: b.__setitem__(b"data", np.zeros((2, 100), np.uint8)), "3072"),
        (lambda b: b.__setitem__(b"data", np.zeros((2, 3072), np.float32)), "uint8"),
        (lambda b: b.__setitem__(b"labels", [1, 2, 3]), "2 images but 3 labels"),
        (lambda b: b.__setitem__(b"labels", [1, 2.0]), "labels' as a list of integers, found a float"),
        (lambda b: b.__setitem__(b"labels", "ab"), "labels' as a list or 1-d array of integers, got str"),
        (lambda b: b.__setitem__(b"data", [[0] * 3072] * 2), "numpy array of dtype uint8 .*got list"),
        (lambda b: b.__setitem__(b"labels", [1, 10]), r"labels in 0\.\.9"),
    ],
)
def test_cifar10_malformed_batches(tmp_path, change, message):
    batch = _batch(2)
    change(batch)
    _write_batch(tmp_path / "test_batch", batch)
    with pytest.raises(ValueError, match=message):
        load_cifar10(tmp_path, train=False)


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_missing_gives_install_hint(monkeypatch):
    # None in sys.modules makes `import torchvision` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match=r"pip install gpex-gpytorch\[vision\]"):
        load_torchvision("MNIST", "/tmp")


@pytest.fixture
def fake_torchvision(monkeypatch):
    class ToTensor:
        pass

    class MNIST:
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            self.kwargs = {"root": root, "train": train, "transform": transform, "download": download}

    class SVHN:
        def __init__(self, root, split="train", transform=None, target_transform=None, download=False):
            self.kwargs = {"root": root, "split": split, "transform": transform, "download": download}

    package = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    transforms = types.ModuleType("torchvision.transforms")
    datasets.MNIST, datasets.SVHN, transforms.ToTensor = MNIST, SVHN, ToTensor
    package.datasets, package.transforms = datasets, transforms
    modules = {"torchvision": package, "torchvision.datasets": datasets, "torchvision.transforms": transforms}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(MNIST=MNIST, SVHN=SVHN, ToTensor=ToTensor)


def test_torchvision_passes_split_download_and_to_tensor(fake_torchvision, tmp_path):
    mnist = load_torchvision("mnist", tmp_path, train=False, download=True)
    assert isinstance(mnist, fake_torchvision.MNIST)
    assert mnist.kwargs["root"] == str(tmp_path) and mnist.kwargs["train"] is False and mnist.kwargs["download"] is True
    assert isinstance(mnist.kwargs["transform"], fake_torchvision.ToTensor)
    svhn = load_torchvision("SVHN", tmp_path, train=False)
    assert svhn.kwargs["split"] == "test" and svhn.kwargs["download"] is False
    assert load_torchvision("SVHN", tmp_path).kwargs["split"] == "train"


def test_torchvision_unknown_name(fake_torchvision, tmp_path):
    with pytest.raises(ValueError, match="name: 'ImageNet42'"):
        load_torchvision("ImageNet42", tmp_path)
