"""ViT for small datasets (Lee et al. 2021): Shifted Patch Tokenization + Locality Self-Attention (paper §2.2).

Expansion acts on attention heads and MLP hidden units (not on tokens, which the released REM code masks):
each block's heads form group `attn{i}` (unit = dim_head channels) and its MLP hidden layer group `mlp{i}`.
The residual stream (`dim`) is never widened, so base mode is exactly the deployed network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from remflow.models.layers import Route, WidenableNet, WLinear


class ShiftedPatchTokens(nn.Module):
    """Concatenate the image with four copies shifted diagonally by half a patch, then embed patches."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        feat = 5 * in_channels * patch * patch
        self.norm = nn.LayerNorm(feat)
        self.proj = nn.Linear(feat, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, (h, w) = self.patch // 2, x.shape[2:]
        padded = F.pad(x, (s, s, s, s))
        # content moved by (dy, dx) with zero fill: out[i, j] = x[i - dy, j - dx]
        shifted = [padded[:, :, s - dy : s - dy + h, s - dx : s - dx + w] for dy, dx in ((-s, -s), (-s, s), (s, -s), (s, s))]
        x = torch.cat([x, *shifted], 1)
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        return self.proj(self.norm(x))


class LocalitySelfAttention(nn.Module):
    """Multi-head attention with a learned temperature and the diagonal (self-token) masked out."""

    def __init__(self, dim: int, heads: int, dim_head: int, group: str):
        super().__init__()
        self.heads, self.dim_head, self.group = heads, dim_head, group
        inner = heads * dim_head
        kw = dict(bias=False, out_group=group, out_unit=dim_head)
        self.q, self.k, self.v = WLinear(dim, inner, **kw), WLinear(dim, inner, **kw), WLinear(dim, inner, **kw)
        self.out = WLinear(inner, dim, in_group=group, in_unit=dim_head)
        self.temperature = nn.Parameter(torch.tensor(math.log(dim_head**-0.5)))

    def forward(self, x: torch.Tensor, route: Route | None) -> torch.Tensor:
        full = route is not None
        b, t, _ = x.shape
        added = self.q.add_out // self.dim_head if full else 0
        h = self.heads + added
        q, k, v = (lin(x, full).view(b, t, h, self.dim_head).transpose(1, 2) for lin in (self.q, self.k, self.v))
        not_self = ~torch.eye(t, dtype=torch.bool, device=x.device)
        o = F.scaled_dot_product_attention(q * self.temperature.exp(), k, v, attn_mask=not_self, scale=1.0)
        if added:
            o = o * route.mask(self.group, self.heads, added, o.dtype)[:, :, None, None]
        return self.out(o.transpose(1, 2).reshape(b, t, h * self.dim_head), full)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, group: str):
        super().__init__()
        self.group = group
        self.fc1 = WLinear(dim, hidden, out_group=group)
        self.fc2 = WLinear(hidden, dim, in_group=group)

    def forward(self, x: torch.Tensor, route: Route | None) -> torch.Tensor:
        full = route is not None
        x = F.gelu(self.fc1(x, full))
        if full and self.fc1.add_out:
            x = route.apply(x, self.group, self.fc1.base_out, self.fc1.add_out)
        return self.fc2(x, full)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, i: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = LocalitySelfAttention(dim, heads, dim_head, f"attn{i}")
        self.mlp = FeedForward(dim, mlp_dim, f"mlp{i}")

    def forward(self, x: torch.Tensor, route: Route | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), route)
        return x + self.mlp(self.norm2(x), route)


class ViT(WidenableNet):
    def __init__(self, in_channels=3, num_classes=10, image_size=32, patch=8, dim=512, depth=4, heads=4,
                 dim_head=64, mlp_dim=768):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        n = (image_size // patch) ** 2
        self.group_widths = {}
        for i in range(depth):
            self.group_widths[f"attn{i}"] = heads
            self.group_widths[f"mlp{i}"] = mlp_dim
        self.tokens = ShiftedPatchTokens(in_channels, dim, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, mlp_dim, i) for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:
        x = self.tokens(x)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        for blk in self.blocks:
            x = blk(x, route)
        return self.head(self.norm(x[:, 0]))
