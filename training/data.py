"""Datasets as in-memory tensors, with the preprocessing the certificate is stated in.

Every image tensor is float32 (N, C, H, W) in [0, 1]: the certificate is stated in that raw pixel
space (a model that standardises its inputs does so inside the network, where the bound sees it).

The embedded default is scikit-learn's handwritten digits: 1797 grey 8x8 images shipped inside
scikit-learn (no download). Pixel values 0..16 are divided by 16, giving float32 images of shape
(1, 8, 8) in [0, 1]. The split is fixed and stratified: 25 % test (450 images), 75 % train (1347),
drawn with ``train_test_split(..., stratify=labels, random_state=0)``.

MNIST and Fashion-MNIST are read from their four original idx files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each ``.gz`` or
not; :mod:`training.idx`): from ``--data-dir`` when given, otherwise from where a system package
installs them (Fashion-MNIST: Debian's ``dataset-fashion-mnist``, ``/usr/share/datasets/fashion-mnist``).
Images are pixel / 255, float32 (1, 28, 28) in [0, 1]; the split is the distribution's
(60,000 train, 10,000 test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.idx import IdxFormatError, read_idx

__all__ = [
    "DIGITS_PREPROCESSING",
    "MNIST_FAMILY",
    "Dataset",
    "find_mnist_dir",
    "load_dataset",
    "load_digits",
    "load_mnist_family",
    "mnist_search_dirs",
]

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
        class_names: the name of each label, when the dataset has names.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    preprocessing: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()

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


@dataclass(frozen=True)
class MnistFamily:
    """Where a dataset of MNIST's format is looked for.

    Attributes:
        torchvision_folder: ``DIR/<folder>/raw`` is where torchvision keeps (and downloads) its files.
        system_dirs: directories a system package installs the idx files into, searched without --data-dir.
        apt_package: the Debian / Ubuntu package that installs them, if any.
        class_names: the name of each label.
    """

    torchvision_folder: str
    system_dirs: tuple[Path, ...] = ()
    apt_package: str | None = None
    class_names: tuple[str, ...] = ()


MNIST_FAMILY: dict[str, MnistFamily] = {
    "mnist": MnistFamily("MNIST", class_names=tuple(str(digit) for digit in range(10))),
    "fashion_mnist": MnistFamily(
        "FashionMNIST",
        (Path("/usr/share/datasets/fashion-mnist"),),
        apt_package="dataset-fashion-mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}
# The four files of the original distributions, each either as is or gzip-compressed (``.gz``).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists."""
    return next((path for path in (folder / stem, folder / f"{stem}.gz") if path.is_file()), None)


def mnist_search_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    """The directories searched for the idx files of ``name``, in order: ``data_dir`` and its
    torchvision layout ``data_dir/<Folder>/raw`` when given, else the system package's directories."""
    family = MNIST_FAMILY[name]
    if data_dir is None:
        return list(family.system_dirs)
    return [Path(data_dir), Path(data_dir) / family.torchvision_folder / "raw"]


def find_mnist_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The first directory of :func:`mnist_search_dirs` holding all four idx files of ``name``.

    Raises:
        FileNotFoundError: none does; the message names every directory looked in, what each lacks,
            and how to get the files (the apt package, --data-dir, --download).
    """
    family = MNIST_FAMILY[name]
    looked = []
    for folder in mnist_search_dirs(name, data_dir):
        missing = [stem for pair in IDX_FILES.values() for stem in pair if _idx_file(folder, stem) is None]
        if not missing:
            return folder
        looked.append(f"{folder} (missing {', '.join(missing)})" if folder.is_dir() else f"{folder} (absent)")
    remedies = []
    if family.apt_package is not None:
        remedies.append(f"install it with `apt-get install -y {family.apt_package}`")
    remedies.append("pass --data-dir DIR holding the four idx files (.gz or not)")
    if data_dir is not None:
        remedies.append("add --download to fetch them into DIR (needs network access)")
    where = f"looked in {'; '.join(looked)}" if looked else "no system package installs it"
    raise FileNotFoundError(f"{name}: dataset not found ({where}); {', or '.join(remedies)}")


def _read_mnist_split(name: str, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float32 = pixel / 255 and labels (N,) int64 of one split."""
    image_path, label_path = (_idx_file(folder, stem) for stem in IDX_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise IdxFormatError(
            f"{name}: {image_path} holds {images.dtype} {images.shape}, not uint8 (N, H, W) images"
        )
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise IdxFormatError(
            f"{name}: {label_path} holds {labels.dtype} {labels.shape}, not {len(images)} uint8 labels "
            f"(one per image of {image_path.name})"
        )
    if labels.size and int(labels.max()) > 9:
        raise IdxFormatError(f"{name}: {label_path} has labels above 9 (max {int(labels.max())})")
    x = torch.from_numpy(images).unsqueeze(1).float().div(255)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist_family(name: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """MNIST or Fashion-MNIST from their idx files (see :func:`find_mnist_dir`), pixel / 255 in [0, 1].

    With ``download`` (and ``data_dir``), files not found are first fetched by torchvision into
    ``data_dir/<Folder>/raw``."""
    if download and data_dir is None:
        raise ValueError(f"{name}: --download needs --data-dir (where to put the files)")
    try:
        folder = find_mnist_dir(name, data_dir)
    except FileNotFoundError:
        if not download:
            raise
        from torchvision.datasets import MNIST, FashionMNIST

        {"mnist": MNIST, "fashion_mnist": FashionMNIST}[name](str(data_dir), download=True)
        folder = find_mnist_dir(name, data_dir)
    (x_train, y_train), (x_test, y_test) = (_read_mnist_split(name, folder, split) for split in IDX_FILES)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise IdxFormatError(
            f"{name}: train images {tuple(x_train.shape[1:])} and test images {tuple(x_test.shape[1:])} "
            f"in {folder} differ in size"
        )
    preprocessing = {"dataset": name, **MNIST_PREPROCESSING}
    class_names = MNIST_FAMILY[name].class_names
    return Dataset(x_train, y_train, x_test, y_test, 10, preprocessing, class_names)


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
    """Load a dataset by its models.yaml name: 'digits' (embedded); 'mnist' or 'fashion_mnist' from
    their idx files (in ``data_dir``, or where the system package puts them: see
    :func:`find_mnist_dir`); 'cifar10' from ``data_dir``. Downloads only when ``download`` is true."""
    if name == "digits":
        return load_digits()
    if name in MNIST_FAMILY:
        return load_mnist_family(name, data_dir, download)
    if name != "cifar10":
        raise ValueError(f"unknown dataset {name!r}; known: digits, mnist, fashion_mnist, cifar10")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs a data directory (--data-dir)")
    return _cifar10(Path(data_dir), download)
