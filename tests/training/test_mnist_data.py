"""The IDX reader and the MNIST / Fashion-MNIST loader: files written here in the real format
(gzip-compressed and raw, damaged ones), the directory discovery and its error message, and the
Debian package's files when installed."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import IDX_FILES, MNIST_FAMILY, find_mnist_dir, load_dataset, mnist_search_dirs
from training.idx import IdxFormatError, read_idx

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``, written independently of the reader: magic 00 00, type, ndim,
    big-endian uint32 sizes, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    content = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if compress else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, compress: bool = True, seed: int = 0):
    """The four files of an MNIST-format dataset; returns the arrays written, by file stem."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for (images, labels), n in zip(IDX_FILES.values(), (n_train, n_test), strict=True):
        arrays[images] = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        arrays[labels] = rng.integers(0, 10, n).astype(np.uint8)
    for stem, array in arrays.items():
        write_idx(folder / stem, array, compress)
    return arrays


@pytest.fixture
def system_dir(tmp_path, monkeypatch):
    """Fashion-MNIST's system directory pointed at a temporary one (empty: nothing installed)."""
    folder = tmp_path / "system" / "fashion-mnist"
    family = dataclasses.replace(MNIST_FAMILY["fashion_mnist"], system_dirs=(folder,))
    monkeypatch.setitem(MNIST_FAMILY, "fashion_mnist", family)
    return folder


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_idx_round_trips(tmp_path, compress, dtype):
    array = (np.random.default_rng(1).standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / "array-idx3", array, compress)
    read = read_idx(path)
    assert read.dtype == np.dtype(dtype).newbyteorder("=") and read.shape == (3, 4, 5)
    np.testing.assert_array_equal(read, array)
    read[0, 0, 0] = 1  # a writable array, not a view of the file's bytes


def test_read_idx_refuses_wrong_magic_numbers(tmp_path):
    content = idx_bytes(np.zeros((2, 3), np.uint8))
    for name, damaged in {
        "first-bytes": b"\x01\x00" + content[2:],
        "type": content[:2] + b"\x07" + content[3:],
        "not-idx": b"P5\n28 28\n255\n" + bytes(784),
    }.items():
        (tmp_path / name).write_bytes(damaged)
        with pytest.raises(IdxFormatError, match=rf"{name}: not an IDX file \(magic number"):
            read_idx(tmp_path / name)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_read_idx_refuses_truncated_and_overlong_files(tmp_path, compress):
    content = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    cases = {
        "short-data": (
            content[:-1],
            r"truncated: shape \(3, 4, 5\) of uint8 needs 60 bytes of data, found 59",
        ),
        "short-header": (content[:10], r"truncated IDX header \(3 dimensions announced, 10 bytes\)"),
        "tiny": (content[:3], r"3 bytes, too short for an IDX header"),
        "long": (content + b"\x00", r"longer than its header says: .* needs 60 bytes of data, found 61"),
    }
    for name, (damaged, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(damaged) if compress else damaged)
        with pytest.raises(IdxFormatError, match=message):
            read_idx(path)


def test_read_idx_refuses_a_cut_gzip_stream(tmp_path):
    compressed = gzip.compress(idx_bytes(np.random.default_rng(2).integers(0, 256, (50, 28, 28), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IdxFormatError, match=r"cut\.gz: truncated gzip stream"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "bad.gz").write_bytes(compressed[:20] + bytes(len(compressed) - 20))
    with pytest.raises(IdxFormatError, match=r"bad\.gz: corrupted gzip stream"):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_loads_the_four_idx_files_of_a_directory(tmp_path, name, compress):
    arrays = write_mnist(tmp_path, compress=compress)
    data = load_dataset(name, tmp_path)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.float64) / 255).float()
    torch.testing.assert_close(data.x_test[:, 0], expected, rtol=0, atol=0)
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.preprocessing == {"dataset": name, "transform": "pixel / 255", "input_range": [0.0, 1.0]}


def test_reads_torchvision_layout_and_mixed_compression(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    arrays = write_mnist(raw, compress=False)
    gz = raw / "t10k-images-idx3-ubyte"
    write_idx(gz, arrays["t10k-images-idx3-ubyte"], compress=True)
    gz.unlink()  # one file compressed, the three others not
    data = load_dataset("fashion_mnist", tmp_path)
    assert find_mnist_dir("fashion_mnist", tmp_path) == raw
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_inconsistent_files_are_refused(tmp_path):
    arrays = write_mnist(tmp_path, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["train-labels-idx1-ubyte"][:-1], compress=False)
    with pytest.raises(
        IdxFormatError, match=r"train-labels-idx1-ubyte holds uint8 \(11,\), not 12 uint8 labels"
    ):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 10, np.uint8), compress=False)
    with pytest.raises(IdxFormatError, match=r"labels above 9 \(max 10\)"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", arrays["train-labels-idx1-ubyte"], compress=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 784), np.uint8), compress=False)
    with pytest.raises(
        IdxFormatError, match=r"t10k-images-idx3-ubyte holds uint8 \(5, 784\), not uint8 \(N, H, W\)"
    ):
        load_dataset("mnist", tmp_path)


def test_fashion_mnist_is_found_in_the_system_directory_without_data_dir(system_dir, tmp_path):
    arrays = write_mnist(system_dir, seed=3)
    assert mnist_search_dirs("fashion_mnist", None) == [system_dir]
    data = load_dataset("fashion_mnist")
    assert data.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    # --data-dir overrides the system directory: its files are read, and only it is searched.
    other = write_mnist(tmp_path / "mine", seed=4)
    assert load_dataset("fashion_mnist", tmp_path / "mine").y_train.tolist() == (
        other["train-labels-idx1-ubyte"].tolist()
    )
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion_mnist", tmp_path / "empty")
    assert str(system_dir) not in str(error.value)


def test_the_debian_location_is_searched_by_default():
    assert mnist_search_dirs("fashion_mnist", None) == [DEBIAN_DIR]
    assert MNIST_FAMILY["fashion_mnist"].apt_package == "dataset-fashion-mnist"


def test_absent_data_names_the_apt_package_and_the_directories(system_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion_mnist")
    message = str(error.value)
    assert f"looked in {system_dir} (absent)" in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "--data-dir" in message
    assert "\n" not in message

    write_mnist(system_dir)
    (system_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"\(missing t10k-labels-idx1-ubyte\)"):
        load_dataset("fashion_mnist")

    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion_mnist", tmp_path / "data")
    message = str(error.value)
    assert f"{tmp_path / 'data'} (absent); {tmp_path / 'data' / 'FashionMNIST' / 'raw'} (absent)" in message
    assert "--download" in message and "apt-get install -y dataset-fashion-mnist" in message


def test_mnist_without_data_dir_says_where_to_put_it():
    with pytest.raises(
        FileNotFoundError, match=r"mnist: dataset not found \(no system package installs it\); "
    ):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="--download needs --data-dir"):
        load_dataset("mnist", download=True)


@pytest.mark.skipif(
    not all((DEBIAN_DIR / f"{stem}.gz").is_file() for pair in IDX_FILES.values() for stem in pair),
    reason=f"Fashion-MNIST is not installed in {DEBIAN_DIR} (apt-get install -y dataset-fashion-mnist)",
)
def test_the_installed_fashion_mnist():
    data = load_dataset("fashion_mnist")
    assert data.x_train.shape == (60_000, 1, 28, 28) and data.x_test.shape == (10_000, 1, 28, 28)
    assert torch.bincount(data.y_train).tolist() == [6000] * 10
    assert torch.bincount(data.y_test).tolist() == [1000] * 10
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert data.input_shape == (1, 28, 28)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
