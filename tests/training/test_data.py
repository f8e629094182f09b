from __future__ import annotations

import torch

from training.data import load_digits


def test_digits_split_is_fixed_stratified_and_in_unit_range(digits):
    assert digits.x_train.shape == (1347, 1, 8, 8) and digits.x_test.shape == (450, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32
    assert float(digits.x_train.min()) >= 0.0 and float(digits.x_train.max()) <= 1.0
    assert float(digits.x_train.max()) == 1.0
    train_share = torch.bincount(digits.y_train, minlength=10) / len(digits.y_train)
    test_share = torch.bincount(digits.y_test, minlength=10) / len(digits.y_test)
    assert torch.allclose(train_share, test_share, atol=0.01)
    again = load_digits()
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_train, digits.y_train)
