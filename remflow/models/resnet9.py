"""ResNet-9 as in Goel et al. and the REM paper (§2.2): conv-BN-CELU blocks, two residual stages, max pooling,
a bias-free linear head. `width` 64 is the full model; the paper deploys the capacity-0.5 model, width 32.

Layouts (`model.layout`, layers.layout_widths):

- released (default): added channels and masks only where the released REM code masks, at the block outputs
  of its four mask pairs (conv1; conv2 and res1's output; conv3 and res2's output; conv4). The residual blocks'
  inner convolutions run at the full network's width (128 and 256 at width 32), unmasked, and belong to the
  deployed model. Width 32 deployed is then exactly the released capacity-0.5 model (the channels its drop
  mode keeps: 940,032 parameters, 936,800 of them conv weights), and widened by ratio 1 it is the full-width ResNet-9 (2,276,224).
- every_conv: every conv-BN output is widened and masked, the residual inner ones included (deployed width 32:
  a uniformly half-width ResNet-9, 570,816 parameters, 568,160 conv weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from remflow.models.layers import ConvBN, Residual, Route, WidenableNet, WLinear, layout_widths


class ResNet9(WidenableNet):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64, layout: str = "released"):
        super().__init__()
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 2 * width
        (i1, w1), (i2, w2) = layout_widths(layout, c2), layout_widths(layout, c3)
        self.layout = layout
        self.group_widths = {"c1": c1, "c2": c2, "c3": c3, "c4": c4}
        if w1:
            self.group_widths["r1"] = i1
        if w2:
            self.group_widths["r2"] = i2
        self.conv1 = ConvBN(in_channels, c1, 3, 1, 1, out_group="c1")
        self.conv2 = ConvBN(c1, c2, 5, 2, 2, in_group="c1", out_group="c2")
        self.res1 = Residual(c2, stream="c2", inner="r1", inner_width=i1)
        self.conv3 = ConvBN(c2, c3, 3, 1, 1, in_group="c2", out_group="c3")
        self.res2 = Residual(c3, stream="c3", inner="r2", inner_width=i2)
        self.conv4 = ConvBN(c3, c4, 3, 1, 0, in_group="c3", out_group="c4")
        self.fc = WLinear(c4, num_classes, bias=False, in_group="c4")

    def forward(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:
        x = self.conv2(self.conv1(x, route), route)
        x = self.res1(x, route)
        x = F.max_pool2d(self.conv3(x, route), 2)
        x = self.res2(x, route)
        x = self.conv4(x, route)
        x = torch.amax(x, dim=(2, 3))
        return self.fc(x, route is not None)
