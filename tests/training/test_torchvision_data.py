"""MNIST, Fashion-MNIST and CIFAR-10 loaders, on small files written here in their real formats."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from training.data import load_dataset


def write_idx(path, array: np.ndarray) -> None:
    """IDX format (MNIST): big-endian magic 0x08 (ubyte) + ndim, the dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_from_idx_files(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    images = {"train": rng.integers(0, 256, (12, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    labels = {"train": rng.integers(0, 10, 12), "t10k": rng.integers(0, 10, 5)}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    data = load_dataset(name, tmp_path)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert data.x_train.dtype == torch.float32
    torch.testing.assert_close(data.x_test[:, 0], torch.from_numpy(images["t10k"] / 255).float())
    assert data.y_train.tolist() == labels["train"].tolist()
    assert data.preprocessing["input_range"] == [0.0, 1.0]


def test_mnist_missing_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("mnist")


def write_cifar_batch(path, labels: np.ndarray, images: np.ndarray) -> None:
    records = np.concatenate([labels[:, None], images.reshape(len(labels), -1)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.astype(np.uint8).tofile(path)


def test_cifar10_from_the_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    batches = []
    for i in range(1, 6):
        labels, images = rng.integers(0, 10, 3), rng.integers(0, 256, (3, 3, 32, 32))
        write_cifar_batch(folder / f"data_batch_{i}.bin", labels, images)
        batches.append((labels, images))
    test_labels, test_images = rng.integers(0, 10, 4), rng.integers(0, 256, (4, 3, 32, 32))
    write_cifar_batch(folder / "test_batch.bin", test_labels, test_images)

    data = load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    torch.testing.assert_close(data.x_test, torch.from_numpy(test_images / 255).float())
    assert data.y_train.tolist() == np.concatenate([b[0] for b in batches]).tolist()

    (folder / "data_batch_3.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a CIFAR-10 binary batch"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3\.bin"):
        load_dataset("cifar10", tmp_path)
