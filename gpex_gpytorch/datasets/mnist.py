"""MNIST from the original IDX files in a local folder (no download, no torchvision)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["load_mnist_idx", "read_idx"]

IDX_UBYTE = 0x08  # the only element type MNIST uses
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzip-compressed when its name ends in ``.gz``).

    The header is the 4-byte big-endian magic number ``0x0000 TT DD`` (``TT`` the element type,
    ``DD`` the number of dimensions), then ``DD`` big-endian uint32 sizes, then the data.

    :param path: the file.
    :param expected_magic: ``0x00000803`` for image files, ``0x00000801`` for label files.
    :returns: a uint8 array with the shape given by the header.
    :raises ValueError: for a wrong magic number, a truncated file or trailing bytes.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read IDX file: {error}") from error

    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file, {len(raw)} bytes is shorter than the 4-byte magic number")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise ValueError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            "(is this the right file, and decompressed if its name lacks .gz?)"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header, expected {header_size} bytes, got {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = math.prod(shape)
    actual = len(raw) - header_size
    if actual < expected:
        raise ValueError(
            f"{path}: truncated IDX data, header declares shape {shape} ({expected} bytes), found {actual} bytes"
        )
    if actual > expected:
        raise ValueError(
            f"{path}: {actual - expected} unexpected bytes after the IDX data of shape {shape} ({expected} bytes)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    # Accept the names as distributed, the "idx3-ubyte" spelling some mirrors use, their .gz
    # variants, and torchvision's MNIST/raw layout, so an existing download can be reused.
    dotted = stem.replace("-idx", ".idx")
    folders = [root, root / "MNIST" / "raw", root / "raw"]
    candidates = [folder / (name + ext) for folder in folders for name in (stem, dotted) for ext in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"root: no MNIST file {stem!r} (or {stem}.gz) found in {root}; looked for "
        + ", ".join(str(c) for c in candidates[:4])
        + ", ..."
    )


def load_mnist_idx(root: str | Path, train: bool = True) -> TensorDataset:
    """Load MNIST (or any dataset in the same IDX layout, e.g. Fashion-MNIST) from a local folder.

    Looks in ``root`` (and in ``root/MNIST/raw``, torchvision's layout) for
    ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (or ``t10k-…`` when ``train`` is
    false), each optionally gzip-compressed with a ``.gz`` suffix.

    :param root: the folder holding the IDX files.
    :param train: load the 60,000 training images rather than the 10,000 test images.
    :returns: a :class:`~torch.utils.data.TensorDataset` of images ``(N, 1, H, W)`` float32 in
        ``[0, 1]`` (``H = W = 28`` for MNIST) and labels ``(N,)`` int64.
    :raises FileNotFoundError: if a file is missing.
    :raises ValueError: for a malformed file, or image and label files of different lengths.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: {root} is not a directory")
    prefix = "train" if train else "t10k"
    images_path = _find(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} holds "
            f"{labels.shape[0]} labels; the two files must come from the same split"
        )
    image_tensor = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(image_tensor, label_tensor)
