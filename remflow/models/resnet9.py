"""ResNet-9 as in Goel et al. and the REM paper (§2.2): conv-BN-CELU blocks, two residual stages, max pooling,
a bias-free linear head. `width` 64 is the full model; the paper deploys the capacity-0.5 model, width 32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from remflow.models.layers import ConvBN, Residual, Route, WidenableNet, WLinear


class ResNet9(WidenableNet):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 2 * width
        self.group_widths = {"c1": c1, "c2": c2, "r1": c2, "c3": c3, "r2": c3, "c4": c4}
        self.conv1 = ConvBN(in_channels, c1, 3, 1, 1, out_group="c1")
        self.conv2 = ConvBN(c1, c2, 5, 2, 2, in_group="c1", out_group="c2")
        self.res1 = Residual(c2, stream="c2", inner="r1")
        self.conv3 = ConvBN(c2, c3, 3, 1, 1, in_group="c2", out_group="c3")
        self.res2 = Residual(c3, stream="c3", inner="r2")
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
