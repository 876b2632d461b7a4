"""Healed, Utility and Utility x Healed (paper §5.1) of one deployed model on one task.

- healed: accuracy on all of D_c (discovered or not) against the clean labels, images as trained on
  (backdoor samples keep their trigger), no augmentation.
- utility: clean test accuracy; for interclass confusion, test accuracy on the classes outside the pair.
- score: utility * healed of the same run (averaged per run later, never the product of means).
- healed_test: the corruption's test-time face: triggered test images with clean labels (high), the two
  confused classes of the test set (medium), the clean test set (low: random labels have no test-time face).
- forget_acc: accuracy on D_f against its corrupted labels (how much of the known corruption is still fitted).
"""

from __future__ import annotations

import torch
from torch import nn

from remflow.data.task import Task
from remflow.train import accuracy, predict

METRICS = ("healed", "utility", "score", "healed_test", "forget_acc")


def evaluate_model(model: nn.Module, task: Task, batch_size: int = 2048) -> dict[str, float]:
    reg = task.regularity
    healed = accuracy(model, task, task.corrupted, labels=task.train_clean_y, batch_size=batch_size)
    forget_acc = accuracy(model, task, task.forget, batch_size=batch_size)
    correct = predict(model, task, task.test_x, batch_size=batch_size) == task.test_y
    if reg == "medium":
        a, b = task.manifest["classes"]
        pair = (task.test_y == a) | (task.test_y == b)
        utility = float(correct[~pair].float().mean())
        healed_test = float(correct[pair].float().mean())
    else:
        utility = float(correct.float().mean())
        healed_test = utility
        if reg == "high":
            x, on = task.triggered_test()
            healed_test = float((predict(model, task, x, on, batch_size=batch_size) == task.test_y).float().mean())
    return {"healed": healed, "utility": utility, "score": utility * healed, "healed_test": healed_test,
            "forget_acc": forget_acc}
