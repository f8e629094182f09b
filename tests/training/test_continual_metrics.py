"""Scenario splits and continual metrics, against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.continual.metrics import experience_accuracy, report, summarize
from training.continual.scenario import Experience, class_incremental


def test_digits_split_into_five_pairs(digits):
    stream = class_incremental(digits, 5)
    assert [e.classes for e in stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert sum(len(e.y_train) for e in stream) == len(digits.y_train)
    assert sum(len(e.y_test) for e in stream) == len(digits.y_test)
    for e in stream:
        assert set(e.y_train.tolist()) == set(e.classes) == set(e.y_test.tolist())
        assert len(e.x_train) == len(e.y_train)


def test_class_order_and_invalid_splits(digits):
    stream = class_incremental(digits, 2, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert [e.classes for e in stream] == [(9, 8, 7, 6, 5), (4, 3, 2, 1, 0)]
    with pytest.raises(ValueError, match="evenly"):
        class_incremental(digits, 3)
    with pytest.raises(ValueError, match="once"):
        class_incremental(digits, 5, class_order=[0] * 10)


def test_summaries_match_a_hand_computation():
    matrix = [[0.9], [0.6, 0.8], [0.3, 0.5, 0.7]]
    summary = summarize(matrix)
    assert summary["final_average_accuracy"] == pytest.approx(0.5)
    # forgetting: exp 0: max(0.9, 0.6) - 0.3 = 0.6; exp 1: 0.8 - 0.5 = 0.3
    assert summary["forgetting"] == pytest.approx(0.45)
    # BWT: exp 0: 0.3 - 0.9; exp 1: 0.5 - 0.8
    assert summary["backward_transfer"] == pytest.approx(-0.45)
    single = summarize([[0.7]])
    assert single == {"final_average_accuracy": 0.7, "forgetting": None, "backward_transfer": None}


class _FixedLogits(nn.Module):
    """Returns its input, flattened, as the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_class_il_masks_unseen_classes_and_task_il_masks_other_tasks():
    logits = torch.tensor(
        [
            [0.0, 5.0, 1.0, 0.0],  # true 2: a seen class (1) wins class-IL, the task's own classes task-IL
            [0.0, 0.0, 1.0, 9.0],  # true 2: class 3 is not seen yet: masked in class-IL
            [0.0, 0.0, 0.0, 1.0],  # true 3
        ]
    )
    experience = Experience(
        1,
        (2, 3),
        logits[:, :, None, None],
        torch.tensor([2, 2, 3]),
        logits[:, :, None, None],
        torch.tensor([2, 2, 3]),
    )
    class_il, task_il = experience_accuracy(_FixedLogits(), experience, seen_classes=[0, 1, 2])
    assert class_il == pytest.approx(1 / 3)  # rows: 1 (wrong), 2 (right), 2 (wrong)
    assert task_il == pytest.approx(2 / 3)  # rows: 2 (right), 3 (wrong), 3 (right)


def test_report_holds_both_matrices(digits):
    stream = class_incremental(digits, 2)
    document = report(stream, [[1.0], [0.5, 1.0]], [[1.0], [1.0, 1.0]])
    assert document["experiences"] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert document["class_il"]["forgetting"] == pytest.approx(0.5)
    assert document["task_il"]["accuracy_matrix"] == [[1.0], [1.0, 1.0]]
