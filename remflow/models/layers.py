"""Widenable layers and per-sample channel routing: the expansion interface REM needs (paper §3).

A widenable layer keeps one parameter tensor per weight. Its first rows/columns are the deployed
("base") channels; widening appends freshly initialised added channels. Two forward modes:

- base (`route is None`): the layer computes with the base slice only, which is exactly the deployed layer
  (same values, same shapes), so a widened model in base mode reproduces the original outputs bit for bit;
- full (`route` given): all channels; after each activation the added channels are multiplied by the
  sample's binary channel mask (`Route`), generated on the fly from a hash of the sample's dataset index.

Masks are nested by default, as in the released REM code (which seeds its RNG with the sample id alone): bit c
of a sample's mask depends on the sample id, the run's mask seed and c only, so every layer of equal width
gives a sample the same mask and a narrower layer gets a prefix of a wider one's. Its overlap with D_f's shared
path is then the same in every layer. `per_layer=True` salts the hash with the group name instead (remflow's
earlier choice: independent masks per layer).

`deploy_()` slices every parameter back to its base block: same state-dict keys and shapes as before.
Channels are grouped: every layer reading or writing one activation (a residual stream, say) names the
same group, so added channels line up across layers and one mask per group serves a whole forward pass.
"""

from __future__ import annotations

import math
import zlib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**27, so products of 32-bit values stay inside int64
SHARED_ID = 2**31 - 1  # the mask id every discovered sample shares (outside any dataset's index range)
CrossInit = Literal["random", "zero"]
Layout = Literal["released", "every_conv"]


def layout_widths(layout: str, stream: int) -> tuple[int, bool]:
    """(inner width, whether the inner group is widened) of a residual block on a stream of `stream` channels.

    released (the default): the released REM code masks block outputs only (its four mask pairs), so a residual
    block's inner convolutions run at the full-width network's width (twice the deployed stream), unmasked,
    as part of the deployed model. every_conv: the inner activation has the stream's width and is widened and
    masked like every other conv output (remflow's earlier layout)."""
    if layout == "released":
        return 2 * stream, False
    if layout == "every_conv":
        return stream, True
    raise ValueError(f"unknown layout {layout!r}")


def _mix32(x):
    """A bijective 32-bit integer mixer, on Python ints or int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL) & M32
    x = x ^ (x >> 16)
    x = (x * _MUL) & M32
    return x ^ (x >> 16)


def group_code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) & M32


def channel_keep(ids: torch.Tensor, n: int, *, keep: float, seed: int, group: str | None = None) -> torch.Tensor:
    """(B, n) bool: whether sample id `ids[b]` may use added channel c. Pure function of its inputs; bit c does
    not depend on n (nested prefixes). `group` given: salted by the group (independent masks per layer)."""
    salt = _mix32((seed * 0x9E3779B1 + (0 if group is None else group_code(group))) & M32)  # a Python int
    h = _mix32((ids.to(torch.int64) ^ salt) & M32)
    h = _mix32((h[:, None] + torch.arange(n, device=ids.device, dtype=torch.int64)) & M32)
    return h < int(round(keep * 2**32))


class Route:
    """Which added channels each sample of one batch may use. Masks are built once per group and batch."""

    def __init__(self, ids: torch.Tensor, *, keep: float, seed: int, per_layer: bool = False):
        self.ids = ids
        self.keep = keep
        self.seed = seed
        self.per_layer = per_layer
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def for_batch(cls, idx: torch.Tensor, shared: torch.Tensor | None, *, keep: float, seed: int,
                  per_layer: bool = False) -> "Route":
        """Every sample routes by its own index, except those flagged `shared` (D_f), which share one mask.

        The shared id is SHARED_ID, outside every dataset's index range. The released code uses a fixed
        sample id (0) for it, so D_f's shared path is also training sample 0's own mask; remflow keeps the
        shared path for D_f alone, and the frozen reference routes with the same ids (`ReferenceCE`)."""
        ids = idx if shared is None else torch.where(shared, torch.full_like(idx, SHARED_ID), idx)
        return cls(ids, keep=keep, seed=seed, per_layer=per_layer)

    def mask(self, group: str, base: int, added: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, base + added) multipliers: 1 for base units, the sample's 0/1 bits for added units."""
        key = (group if self.per_layer else None, base, added, dtype)
        m = self._cache.get(key)
        if m is None:
            bits = channel_keep(self.ids, added, keep=self.keep, seed=self.seed,
                                group=group if self.per_layer else None).to(dtype)
            m = torch.cat([torch.ones(len(self.ids), base, dtype=dtype, device=bits.device), bits], 1)
            self._cache[key] = m
        return m

    def apply(self, x: torch.Tensor, group: str, base: int, added: int) -> torch.Tensor:
        """Mask the added channels of an activation: (B, C, H, W) or (B, T, C)."""
        m = self.mask(group, base, added, x.dtype)
        return x * (m[:, :, None, None] if x.dim() == 4 else m[:, None, :])


def _fresh(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """PyTorch's default conv/linear init (kaiming_uniform with a=sqrt(5) => U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


class Widenable(nn.Module):
    """A layer whose input and/or output channels belong to widenable groups."""

    in_group: str | None = None
    out_group: str | None = None
    in_unit: int = 1  # channels per group unit (a ViT head is dim_head channels)
    out_unit: int = 1

    def widen_(self, add_in: int, add_out: int, gen: torch.Generator, cross: CrossInit,
               dormant: float | None = None) -> None:
        raise NotImplementedError

    def deploy_(self) -> None:
        raise NotImplementedError


class _Affine(Widenable):
    """Shared logic of WConv2d and WLinear: weight (out, in, *k) and optional bias (out)."""

    def _setup(self, cin: int, cout: int, kshape: tuple[int, ...], bias: bool, in_group, out_group, in_unit, out_unit):
        self.in_group, self.out_group, self.in_unit, self.out_unit = in_group, out_group, in_unit, out_unit
        self.base_in, self.base_out, self.add_in, self.add_out = cin, cout, 0, 0
        self.kshape = kshape
        fan_in = cin * math.prod(kshape)
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(cout, cin, *kshape).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(cout).uniform_(-bound, bound)) if bias else None

    def params(self, full: bool):
        if full or not (self.add_in or self.add_out):
            return self.weight, self.bias
        o, i = self.base_out, self.base_in
        return self.weight[:o, :i], (None if self.bias is None else self.bias[:o])

    def widen_(self, add_in, add_out, gen, cross, dormant=None):
        o, i = self.base_out, self.base_in
        fan_in = (i + add_in) * math.prod(self.kshape)
        w = _fresh((o + add_out, i + add_in, *self.kshape), fan_in, gen).to(self.weight)
        if dormant is not None:
            w.mul_(dormant)  # a default init carried through pretraining with zero gradient: decay only
        w[:o, :i] = self.weight.data
        if cross == "zero":
            w[:o, i:] = 0  # added inputs do not reach deployed outputs: the full model starts equal to the base
        self.weight = nn.Parameter(w)
        if self.bias is not None:
            b = _fresh((o + add_out,), fan_in, gen).to(self.bias)
            if dormant is not None:
                b.zero_()  # the released model's conv biases start at 0 and a dormant one never moves
            b[:o] = self.bias.data
            self.bias = nn.Parameter(b)
        self.add_in, self.add_out = add_in, add_out

    def deploy_(self):
        o, i = self.base_out, self.base_in
        self.weight = nn.Parameter(self.weight.data[:o, :i].clone())
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.data[:o].clone())
        self.add_in = self.add_out = 0


class WConv2d(_Affine):
    def __init__(self, cin, cout, k, stride=1, padding=0, bias=True, *, in_group=None, out_group=None):
        super().__init__()
        self.stride, self.padding = stride, padding
        self._setup(cin, cout, (k, k), bias, in_group, out_group, 1, 1)

    def forward(self, x: torch.Tensor, full: bool) -> torch.Tensor:
        w, b = self.params(full)
        return F.conv2d(x, w, b, self.stride, self.padding)


class WLinear(_Affine):
    def __init__(self, cin, cout, bias=True, *, in_group=None, out_group=None, in_unit=1, out_unit=1):
        super().__init__()
        self._setup(cin, cout, (), bias, in_group, out_group, in_unit, out_unit)

    def forward(self, x: torch.Tensor, full: bool) -> torch.Tensor:
        w, b = self.params(full)
        return F.linear(x, w, b)


class WBatchNorm2d(Widenable):
    """BatchNorm over a widenable group; base mode normalises with (and updates) the base slice of the stats."""

    def __init__(self, c: int, group: str, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.in_group = self.out_group = group
        self.base_out, self.add_out = c, 0
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, full: bool) -> torch.Tensor:
        c = self.base_out + (self.add_out if full else 0)
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum, self.eps)

    def widen_(self, add_in, add_out, gen, cross, dormant=None):
        dev = self.weight.device
        scale = 1.0 if dormant is None else dormant  # a dormant BN scale decays like the weights
        self.weight = nn.Parameter(torch.cat([self.weight.data, torch.full((add_out,), scale, device=dev)]))
        self.bias = nn.Parameter(torch.cat([self.bias.data, torch.zeros(add_out, device=dev)]))
        self.running_mean = torch.cat([self.running_mean, torch.zeros(add_out, device=dev)])
        self.running_var = torch.cat([self.running_var, torch.ones(add_out, device=dev)])
        self.add_out = add_out

    def deploy_(self):
        c = self.base_out
        self.weight = nn.Parameter(self.weight.data[:c].clone())
        self.bias = nn.Parameter(self.bias.data[:c].clone())
        self.running_mean = self.running_mean[:c].clone()
        self.running_var = self.running_var[:c].clone()
        self.add_out = 0


class WidenableNet(nn.Module):
    """A model of remflow: `forward(x, route=None)`; `group_widths` names its widenable channel groups."""

    group_widths: dict[str, int]

    def __init__(self):
        super().__init__()
        self.added: dict[str, int] = {}

    @property
    def widened(self) -> bool:
        return bool(self.added)

    def added_for_ratio(self, ratio: float) -> dict[str, int]:
        return {g: max(1, int(round(ratio * w))) for g, w in self.group_widths.items()}

    def widen_(self, added: dict[str, int], *, seed: int = 0, cross: CrossInit = "random",
               dormant: float | None = None) -> "WidenableNet":
        """Append `added[g]` fresh units to every group g (deterministic init from `seed`).

        `dormant` (a factor in (0, 1]): the added units start as the unused half of a full-width network
        pretrained with that half masked off (the released code's capacity-0.5 model): default init times
        `dormant` (the decay weight decay alone gives over pretraining), conv biases 0, BN scale `dormant`,
        BN shift 0. Their BN running statistics come from `calibrate_added_stats_`."""
        if self.added:
            raise ValueError("model is already widened")
        unknown = set(added) - set(self.group_widths)
        if unknown:
            raise ValueError(f"unknown channel groups {sorted(unknown)}")
        gen = torch.Generator().manual_seed(int(seed))
        for m in self.modules():
            if isinstance(m, Widenable):
                m.widen_(added.get(m.in_group, 0) * m.in_unit, added.get(m.out_group, 0) * m.out_unit, gen, cross,
                         dormant)
        self.added = dict(added)
        return self

    @torch.no_grad()
    def calibrate_added_stats_(self, inputs) -> "WidenableNet":
        """Set the added channels' BatchNorm running statistics from data, as pretraining with those channels
        masked off leaves them: train-mode passes over `inputs` (an iterable of input batches) in full mode with
        every added channel masked to 0, averaging the batch statistics; the deployed channels' statistics are
        left exactly as they were."""
        bns = [m for m in self.modules() if isinstance(m, WBatchNorm2d)]  # unwidened ones are restored whole
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
                 for m in bns]
        was_training = self.training
        self.train()
        k = 0
        for x in inputs:
            for m in bns:
                m.momentum = 1.0 / (k + 1)  # a cumulative average over the batches
            ids = torch.zeros(len(x), dtype=torch.long, device=x.device)
            self(x, Route(ids, keep=0.0, seed=0))
            k += 1
        for m, (mean, var, n, mom) in zip(bns, saved):
            c = m.base_out
            m.running_mean[:c], m.running_var[:c] = mean[:c], var[:c]
            m.num_batches_tracked.copy_(n)
            m.momentum = mom
        self.train(was_training)
        return self

    def deploy_(self) -> "WidenableNet":
        """Remove every added channel: the model is the deployable architecture again."""
        for m in self.modules():
            if isinstance(m, Widenable):
                m.deploy_()
        self.added = {}
        return self

    def forward(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ConvBN(nn.Module):
    """conv (with bias) -> BatchNorm -> CELU(0.075), the ResNet-9 block of Goel et al. / the paper."""

    def __init__(self, cin, cout, k=3, stride=1, padding=1, *, in_group=None, out_group: str):
        super().__init__()
        self.conv = WConv2d(cin, cout, k, stride, padding, in_group=in_group, out_group=out_group)
        self.bn = WBatchNorm2d(cout, out_group)
        self.group = out_group

    def forward(self, x: torch.Tensor, route: Route | None) -> torch.Tensor:
        full = route is not None
        x = F.celu(self.bn(self.conv(x, full), full), alpha=0.075)
        if full and self.bn.add_out:
            x = route.apply(x, self.group, self.bn.base_out, self.bn.add_out)
        return x


class Residual(nn.Module):
    """x + convbn(convbn(x)); the inner activation is its own group, the output joins the stream's group.

    `inner` width defaults to the stream's. Under the released layout it is the full (widened) width and its
    group is never widened: the inner activation stays unmasked and belongs to the deployed model."""

    def __init__(self, c: int, *, stream: str, inner: str, inner_width: int | None = None):
        super().__init__()
        ci = c if inner_width is None else inner_width
        self.a = ConvBN(c, ci, in_group=stream, out_group=inner)
        self.b = ConvBN(ci, c, in_group=inner, out_group=stream)

    def forward(self, x: torch.Tensor, route: Route | None) -> torch.Tensor:
        return x + self.b(self.a(x, route), route)
