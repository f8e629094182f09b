"""Datasets as in-memory tensors, with the preprocessing the certificate is stated in.

The embedded default is scikit-learn's handwritten digits: 1797 grey 8x8 images shipped inside
scikit-learn (no download). Pixel values 0..16 are divided by 16, giving float32 images of shape
(1, 8, 8) in [0, 1]. The split is fixed and stratified: 25 % test (450 images), 75 % train (1347),
drawn with ``train_test_split(..., stratify=labels, random_state=0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset by its models.yaml name."""
    if name == "digits":
        return load_digits()
    raise ValueError(
        f"dataset {name!r} is not available yet in this version (only 'digits' is); "
        "the torchvision loaders are tracked in their own issue"
    )
