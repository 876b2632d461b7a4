"""A small residual CNN for 8x8 (digits) and 28x28 (Fashion-MNIST) inputs: ResNet-9's blocks at a size a
2-core CPU trains in seconds. Widths w, 2w, 4w; two stride-2 convolutions; global max pooling.

Layouts as ResNet-9's (resnet9.py): released (default) masks block outputs only (conv1, conv2 and res1's output,
conv3), and the residual block's inner convolutions run unmasked at twice the stream's width (the full network's
width); every_conv widens and masks the inner activation too.
"""

from __future__ import annotations

import torch

from remflow.models.layers import ConvBN, Residual, Route, WidenableNet, WLinear, layout_widths


class SmallCNN(WidenableNet):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, layout: str = "every_conv"):
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        i1, w1 = layout_widths(layout, c2)
        self.layout = layout
        self.group_widths = {"c1": c1, "c2": c2, "c3": c3}
        if w1:
            self.group_widths["r1"] = i1
        self.conv1 = ConvBN(in_channels, c1, 3, 1, 1, out_group="c1")
        self.conv2 = ConvBN(c1, c2, 3, 2, 1, in_group="c1", out_group="c2")
        self.res1 = Residual(c2, stream="c2", inner="r1", inner_width=i1)
        self.conv3 = ConvBN(c2, c3, 3, 2, 1, in_group="c2", out_group="c3")
        self.fc = WLinear(c3, num_classes, bias=False, in_group="c3")

    def forward(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:
        x = self.conv2(self.conv1(x, route), route)
        x = self.res1(x, route)
        x = self.conv3(x, route)
        x = torch.amax(x, dim=(2, 3))
        return self.fc(x, route is not None)
