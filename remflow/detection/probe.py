"""Regularity, measured: how much of a corruption transfers from a discovered half of D_c to the other half.

The probe (one number per corruption manifest, no parameters): split D_c in two halves A and B (seeded);
fit a multinomial logistic regression on the training inputs as trained on (normalised, triggers on,
flattened) of R ∪ A with their given labels, where R is the training set outside D_c (at most 2000 samples,
seeded); fit a second one on R alone. The score is the mean over B of the probability the first gives B's
corrupted label minus the probability the second gives it; then the same with A and B swapped, and the two
averaged. 0: the discovered half teaches nothing about the rest (random labels); 1: it teaches all of it
(a trigger that a linear model on pixels picks up).
"""

from __future__ import annotations

import numpy as np
import torch

from remflow.data.task import Task
from remflow.detection.detectors import one_blas_thread

REFERENCE = 2000
MAX_ITER = 500
_STREAM = 53


def _inputs(task: Task, idx: torch.Tensor) -> np.ndarray:
    x = task.inputs(task.train_x[idx], task.triggered[idx], None)
    return x.reshape(len(idx), -1).float().cpu().numpy().astype(np.float64)


def regularity_score(task: Task, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression

    k = task.splits.num_classes
    corrupted = task.corrupted.cpu().numpy()
    rng = np.random.default_rng([seed, _STREAM])
    rest = np.setdiff1d(np.arange(task.num_train), corrupted)
    ref = np.sort(rng.choice(rest, size=min(REFERENCE, len(rest)), replace=False))
    perm = rng.permutation(corrupted)
    halves = (np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:]))
    y = task.train_y.cpu().numpy()

    def fit(idx):
        t = torch.as_tensor(idx, device=task.device)
        return LogisticRegression(max_iter=MAX_ITER).fit(_inputs(task, t), y[idx])

    def p_label(model, idx):
        proba = np.zeros((len(idx), k))
        proba[:, model.classes_] = model.predict_proba(_inputs(task, torch.as_tensor(idx, device=task.device)))
        return proba[np.arange(len(idx)), y[idx]]

    with one_blas_thread():
        clean = fit(ref)
        scores = []
        for taught, held in (halves, halves[::-1]):
            if len(taught) == 0 or len(held) == 0:
                continue
            scores.append(float(np.mean(p_label(fit(np.concatenate([ref, taught])), held) - p_label(clean, held))))
    return float(np.mean(scores)) if scores else float("nan")

