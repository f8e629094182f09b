"""Datasets as in-memory tensors, with the preprocessing the certificate is stated in.

Every image tensor is float32 (N, C, H, W) in [0, 1]: the certificate is stated in that raw pixel
space (a model that standardises its inputs does so inside the network, where the bound sees it).

The embedded default is scikit-learn's handwritten digits: 1797 grey 8x8 images shipped inside
scikit-learn (no download). Pixel values 0..16 are divided by 16, giving float32 images of shape
(1, 8, 8) in [0, 1]. The split is fixed and stratified: 25 % test (450 images), 75 % train (1347),
drawn with ``train_test_split(..., stratify=labels, random_state=0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DIGITS_PREPROCESSING", "Dataset", "load_dataset", "load_digits"]

DIGITS_PREPROCESSING: dict[str, Any] = {
    "dataset": "digits",
    "transform": "pixel / 16 (scikit-learn digits values 0..16)",
    "input_range": [0.0, 1.0],
}


@dataclass(frozen=True)
class Dataset:
    """A train / test split held in memory.

    Attributes:
        x_train, x_test: float32 images (N, C, H, W) in the space the certificate is stated in.
        y_train, y_test: int64 labels (N,).
        num_classes: number of classes.
        preprocessing: how raw data became ``x`` (recorded in every certificate).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_digits() -> Dataset:
    """scikit-learn's digits with the fixed stratified split described in the module docstring."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=0
    )
    return Dataset(
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        torch.from_numpy(x_test),
        torch.from_numpy(y_test),
        num_classes=10,
        preprocessing=dict(DIGITS_PREPROCESSING),
    )


MNIST_PREPROCESSING = {"transform": "pixel / 255", "input_range": [0.0, 1.0]}
CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then the red, green and blue 32x32 planes


def _torchvision_mnist(name: str, data_dir: Path, download: bool) -> Dataset:
    """MNIST or Fashion-MNIST through torchvision, from ``data_dir/<MNIST|FashionMNIST>/raw``."""
    from torchvision.datasets import MNIST, FashionMNIST

    cls = {"mnist": MNIST, "fashion_mnist": FashionMNIST}[name]
    try:
        splits = [cls(str(data_dir), train=train, download=download) for train in (True, False)]
    except RuntimeError as error:  # torchvision: "Dataset not found. You can use download=True ..."
        raise FileNotFoundError(
            f"{name}: no dataset under {data_dir / cls.__name__ / 'raw'} ({error}); "
            "pass --download to fetch it (needs network access)"
        ) from None
    tensors = [(split.data.float().div(255).unsqueeze(1), split.targets.long()) for split in splits]
    (x_train, y_train), (x_test, y_test) = tensors
    preprocessing = {"dataset": name, **MNIST_PREPROCESSING}
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10, preprocessing=preprocessing)


def _read_cifar10_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One file of CIFAR-10's *binary* version: records of 3073 bytes (label, then CHW pixels)."""
    if not path.is_file():
        raise FileNotFoundError(f"cifar10: missing {path}; pass --download to fetch the dataset")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD:
        raise ValueError(f"cifar10: {path} is not a CIFAR-10 binary batch ({raw.size} bytes)")
    records = raw.reshape(-1, CIFAR10_RECORD)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        raise ValueError(f"cifar10: {path} has labels above 9: not a CIFAR-10 batch")
    images = torch.from_numpy(records[:, 1:].copy()).view(-1, 3, 32, 32).float().div(255)
    return images, labels


def _cifar10(data_dir: Path, download: bool) -> Dataset:
    """CIFAR-10 from its binary distribution in ``data_dir/cifar-10-batches-bin``.

    The binary version is read rather than the python one that torchvision's CIFAR10 unpickles:
    loading a dataset never unpickles anything.
    """
    folder = data_dir / "cifar-10-batches-bin"
    if download and not folder.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CIFAR10_BINARY_URL, str(data_dir), md5=CIFAR10_BINARY_MD5)
    train = [_read_cifar10_batch(folder / f"data_batch_{i}.bin") for i in range(1, 6)]
    x_test, y_test = _read_cifar10_batch(folder / "test_batch.bin")
    x_train = torch.cat([x for x, _ in train])
    y_train = torch.cat([y for _, y in train])
    preprocessing = {"dataset": "cifar10", "transform": "pixel / 255 (RGB)", "input_range": [0.0, 1.0]}
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10, preprocessing=preprocessing)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """Load a dataset by its models.yaml name: 'digits' (embedded), or 'mnist', 'fashion_mnist',
    'cifar10' from ``data_dir`` (downloaded there only when ``download`` is true)."""
    if name == "digits":
        return load_digits()
    if name not in ("mnist", "fashion_mnist", "cifar10"):
        raise ValueError(f"unknown dataset {name!r}; known: digits, mnist, fashion_mnist, cifar10")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs a data directory (--data-dir)")
    data_dir = Path(data_dir)
    if name == "cifar10":
        return _cifar10(data_dir, download)
    return _torchvision_mnist(name, data_dir, download)
