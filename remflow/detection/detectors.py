"""Detectors: rank the training set by how suspicious each (image, given label) is, from the pretrained
model, and flag the top `budget x |D_c|`. They see what a user has (the stored images, triggers included,
and their given labels), never the manifest's indices.

- loss: the pretrained model's cross-entropy against the given label (in-sample; a model that memorised its
  corruption gives its corrupted samples a low loss, so this is the naive baseline).
- cross_val: held-out self-confidence (confident learning's ranking, Northcutt et al. 2021): a logistic
  regression on the pretrained model's penultimate features, fitted on k-1 folds, gives each sample of the
  k-th the probability of its given label; the least probable are flagged.
- spectral: spectral signatures (Tran et al. 2018) on the penultimate features: the class whose centred
  features put the largest share of their variance on one direction (the class a trigger was relabelled to:
  its poisoned samples split off along it) is flagged first, its samples by their projection on that
  direction, minority side first; then the next class.
"""

from __future__ import annotations

import numpy as np
import torch

from remflow.data.task import Task
from remflow.train import autocast


def penultimate(model: torch.nn.Module, task: Task, batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of every training sample, inputs as trained on (triggers on), eval mode."""
    head = getattr(model, "fc", None) or getattr(model, "head")
    grabbed: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda mod, inp, out: grabbed.append(inp[0].detach().float()))
    feats, logits = [], []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, task.num_train, batch_size):
                sl = slice(s, s + batch_size)
                x = task.inputs(task.train_x[sl], task.triggered[sl], None)
                with autocast(x.device):
                    out = model(x)
                logits.append(out.float().cpu())
                feats.append(grabbed.pop().cpu())
    finally:
        hook.remove()
        model.train(was)
    return torch.cat(feats).numpy().astype(np.float64), torch.cat(logits).numpy().astype(np.float64)


def one_blas_thread():
    """NumPy's and SciPy's BLAS (and OpenMP) on one thread inside: a fit's sums then do not depend on how many
    threads the process was given. Without it the score moved with the machine's cores and the scheduler:
    serial `dvc repro` (BLAS on every core) and `remflow run` (Ray sets a worker's OMP_NUM_THREADS to its CPUs)
    wrote different regularity scores for the same manifest (0.717104 and 0.718483 on Fashion-MNIST), and the
    two-thread fit was 6x slower on 2 cores. Call it after scikit-learn is imported: it limits the libraries
    loaded at entry."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def loss_scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def cross_val_scores(feats: np.ndarray, labels: np.ndarray, folds: int, seed: int, max_iter: int,
                     num_classes: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    x = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    fold = np.random.default_rng([seed, 41]).permutation(len(labels)) % folds
    p_given = np.zeros(len(labels))
    with one_blas_thread():  # the same scores under `dvc repro` and `remflow run`
        for f in range(folds):
            fit, held = fold != f, fold == f
            lr = LogisticRegression(max_iter=max_iter).fit(x[fit], labels[fit])
            proba = np.zeros((int(held.sum()), num_classes))
            proba[:, lr.classes_] = lr.predict_proba(x[held])
            p_given[held] = proba[np.arange(len(proba)), labels[held]]
    return 1.0 - p_given


def spectral_scores(feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Classes in order of the share of their feature variance on the top singular direction (a poisoned
    class splits along one direction); within a class, samples by their projection on that direction, signed
    so that the side opposite the class's median (the minority side, where the poison lies) comes first.
    Scores: class rank first, projection second, so flagging fills the most suspicious class first."""
    order = []
    for c in np.unique(labels):
        of = np.flatnonzero(labels == c)
        if len(of) < 3:
            continue
        centred = feats[of] - feats[of].mean(0)
        with one_blas_thread():
            _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        side = -np.sign(np.median(proj)) or 1.0
        order.append((float(sv[0] ** 2 / (sv ** 2).sum()), of, side * proj))
    order.sort(key=lambda t: -t[0])
    scores = np.full(len(labels), -np.inf)
    for rank, (_, of, s) in enumerate(order):
        # the projection squashed into (0, 1) so that a class's block never overlaps the next one's
        scores[of] = (len(order) - rank) + 1.0 / (1.0 + np.exp(-s / (s.std() + 1e-12)))
    return scores


def flag(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest scores' indices, sorted (ties: the lower index first)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:k])


def scores_of(detector: str, model: torch.nn.Module, task: Task, *, folds: int = 5, seed: int = 0,
              max_iter: int = 300, batch_size: int = 2048) -> np.ndarray:
    feats, logits = penultimate(model, task, batch_size)
    labels = task.train_y.cpu().numpy()
    if detector == "loss":
        return loss_scores(logits, labels)
    if detector == "cross_val":
        return cross_val_scores(feats, labels, folds, seed, max_iter, task.splits.num_classes)
    if detector == "spectral":
        return spectral_scores(feats, labels)
    raise ValueError(f"unknown detector {detector}")  # pragma: no cover  the schema admits no other


def precision_recall(found, corrupted) -> tuple[float, float]:
    found, corrupted = set(found), set(corrupted)
    hits = len(found & corrupted)
    return (hits / len(found) if found else float("nan"), hits / len(corrupted))
