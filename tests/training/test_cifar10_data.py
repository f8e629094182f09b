"""The CIFAR-10 loader, on small files written here in its real format (MNIST: test_mnist_data.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data import load_dataset


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
