"""rem_plus: REM whose selection does not reward re-learning what the flush disowned (remflow's own variant).

REM as the paper runs it (remflow/methods/rem.py, every default the released code's) with two switches on,
`proxy: trusted` and `disowned_weight: 0.5`, each chosen by measurement under issue 28's rule (a switch that wins
on the CPU suites with a paired interval above 0; docs/rem-plus.md):

- REM keeps the repair epoch with the best proxy Acc(D_r) x (1 - max(Acc(D_f), gamma)). D_r still holds the
  undiscovered corrupted samples D_u, so an epoch that has re-learnt them scores higher and is kept: the proxy
  rewards the very relearning REM exists to prevent.
- After the first flush the flushed base model no longer predicts the training label of some samples of D_r
  ("disowned": D_u's corrupted samples that the flush generalised to, and a few hard clean ones; the method
  never reads D_c). The trusted proxy scores Acc(D_r) on the other samples only, so re-learning the disowned
  earns an epoch nothing. The original model still competes with the released proxy (its disowned set is
  not known before the flush), and the fallback is REM's.
- The repair fits the disowned samples at half weight, so it re-teaches them less. A weight of 0 gained more on
  the backdoor and failed on Fashion-MNIST's interclass cells at full discovery; 0.5 keeps those cells.

Everything else (expansion, flush, shared-mask redirection, removal term, the cut) is REM's. Until the default
weight was set (docs/rem-plus.md, "History"), rem_plus was the trusted proxy alone: `{method: rem_plus,
disowned_weight: null}` runs that version.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from remflow.methods.base import UnlearnContext, register
from remflow.methods.rem import _DOC, RemConfig, unlearn


class RemPlusConfig(RemConfig):
    method: Literal["rem_plus"] = "rem_plus"
    proxy: Literal["released", "trusted"] = "trusted"
    disowned_weight: float | None = Field(
        0.5, ge=0, le=1, description="weight of the repair's redirect term on the D_r samples the flushed model "
        "disowns (None: every sample weighs 1, rem_plus's earlier default; 0: they are not fitted)")


def unlearn_plus(ctx: UnlearnContext, cfg: RemPlusConfig) -> torch.nn.Module:
    """REM with the trusted proxy and the disowned at half weight (its own entry, so the run's code fingerprint
    holds this module's defaults)."""
    return unlearn(ctx, cfg)


register("rem_plus", RemPlusConfig, summary="remflow's REM: the paper's REM with a selection proxy that does not "
         "reward re-learning the samples the flush disowned and a repair that fits them at half weight "
         "(proxy: trusted, disowned_weight: 0.5)",
         reference="remflow, docs/rem-plus.md (measured in docs/results.md); REM: " + _DOC,
         uses_expansion=True)(unlearn_plus)
