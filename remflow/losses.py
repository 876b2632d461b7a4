"""Losses shared by methods: NPO adapted to classification (paper §3; Zhang et al. 2024).

With CE the per-sample cross-entropy under the trained model and CE_ref under the frozen reference,
log(pi_theta / pi_ref) = CE_ref - CE. NPO's forget loss is  -(2/beta) log sigmoid(beta (CE - CE_ref)):
its gradient is -w * grad CE with w = 2 sigmoid(-beta (CE - CE_ref)) in (0, 2), i.e. gradient ascent on
CE weighted per sample; w = 1 at theta = ref (exactly gradient ascent), and w -> 0 once a sample is
forgotten, which bounds the collapse. REM's redirect term is the mirror image, (2/beta) log sigmoid(...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def npo(ce: torch.Tensor, ce_ref: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Per-sample NPO forget loss (minimise it to forget)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (ce - ce_ref))


def npo_redirect(ce: torch.Tensor, ce_ref: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Per-sample REM redirect loss (minimise it to fit, with weight shrinking where the model fits worse than ref)."""
    return (2.0 / beta) * F.logsigmoid(beta * (ce - ce_ref))


def gradient_ascent(ce: torch.Tensor, ce_ref: torch.Tensor | None = None, beta: float = 1.0) -> torch.Tensor:
    """Per-sample gradient-ascent forget loss: -CE (unbounded)."""
    return -ce


def per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")
