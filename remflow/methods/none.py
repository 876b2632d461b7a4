"""none: the original (corrupted) model, unchanged: the starting point of every cell."""

from typing import Literal

from remflow.methods.base import MethodConfig, UnlearnContext, register


class NoneConfig(MethodConfig):
    method: Literal["none"] = "none"


@register("none", NoneConfig, summary="the original model, no unlearning (the starting point)",
          reference="-")
def unlearn(ctx: UnlearnContext, cfg: NoneConfig):
    return ctx.model
