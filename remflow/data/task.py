"""A task = dataset + corruption manifest + discovered set, on the device, ready for training and evaluation.

Images stay uint8 on the device. A batch is built by indexing, augmented in one batched op (random crop
with zero padding + horizontal flip), normalised, and the backdoor trigger is pasted afterwards on the
samples that carry it (paper §1: trigger after augmentation and normalisation). No per-sample Python.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from remflow.data.datasets import Splits
from remflow.config import AugmentCfg, DataCfg


@dataclass
class Batch:
    x: torch.Tensor  # float, normalised, augmented, trigger applied
    y: torch.Tensor  # the labels training sees (corrupted where D_c)
    idx: torch.Tensor  # training-set indices (the routing masks hash them)
    forget: torch.Tensor  # bool: sample is in D_f


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Batched RandomCrop(size, padding) + RandomHorizontalFlip on uint8 (B, C, H, W), one gather."""
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=dev)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[bi, ci, rows, cols]
    if flip:
        coin = torch.rand(b, generator=gen, device=dev) < 0.5
        x = torch.where(coin[:, None, None, None], x.flip(3), x)
    return x


@dataclass
class Trigger:
    """The paper's trigger: a size x size patch of one value in the bottom-right corner."""

    size: int
    value: float

    def paste(self, x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        s = self.size
        corner = x[:, :, -s:, -s:]
        x = x.clone()
        x[:, :, -s:, -s:] = torch.where(on[:, None, None, None], torch.full_like(corner, self.value), corner)
        return x


_STREAM_BLEND = 41


@dataclass
class BlendTrigger:
    """A blended trigger (Chen et al. 2017): x' = (1 - alpha) x + alpha P over the whole image, with P a fixed
    pattern of uniform noise drawn from `pattern_seed`. Blended in normalised units, which is the pixel-space
    blend (normalisation is affine per channel)."""

    pattern: torch.Tensor  # (1, C, H, W), normalised
    alpha: float

    @staticmethod
    def pattern_of(seed: int, shape: tuple[int, int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        noise = np.random.default_rng([int(seed), _STREAM_BLEND]).random(shape, dtype=np.float32)
        return (torch.as_tensor(noise, device=mean.device)[None] - mean) / std

    def paste(self, x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        blended = (1.0 - self.alpha) * x + self.alpha * self.pattern.to(x.dtype)
        return torch.where(on[:, None, None, None], blended, x)


def input_stats(splits: Splits, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The training set's per-channel mean and std, shaped (1, C, 1, 1) for `normalise`."""
    def shaped(v):
        return torch.tensor(v, device=device, dtype=torch.float32).view(1, -1, 1, 1)

    return shaped(splits.mean), shaped(splits.std)


def normalise(x_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images -> the network's float input, as every stage feeds it (before a trigger is pasted)."""
    return (x_u8.float() / 255.0 - mean) / std


def make_trigger(spec: dict, shape: tuple[int, int, int], mean: torch.Tensor, std: torch.Tensor):
    """The manifest's trigger: a corner patch (the paper's; manifests without `kind`) or a blend."""
    if spec.get("kind", "patch") == "blend":
        return BlendTrigger(BlendTrigger.pattern_of(spec["pattern_seed"], shape, mean, std), float(spec["alpha"]))
    return Trigger(int(spec["size"]), float(spec["value"]))


@dataclass
class Task:
    """Everything a stage needs on the device. Indices refer to the training split."""

    splits: Splits
    device: torch.device
    regularity: str | None = None
    manifest: dict | None = None
    discovered: list[int] | None = None
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    channels_last: bool = False

    def __post_init__(self):
        dev, s = self.device, self.splits
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=dev)  # noqa: E731
        self.train_x, self.train_clean_y = t(s.train_x), t(s.train_y)
        self.val_x, self.val_y = t(s.val_x), t(s.val_y)
        self.test_x, self.test_y = t(s.test_x), t(s.test_y)
        self.mean, self.std = input_stats(s, dev)
        n = len(s.train_y)
        self.train_y = self.train_clean_y.clone()
        self.triggered = torch.zeros(n, dtype=torch.bool, device=dev)
        self.corrupted = torch.zeros(0, dtype=torch.long, device=dev)
        self.trigger: Trigger | BlendTrigger | None = None
        if self.manifest is not None:
            self.corrupted = torch.tensor(self.manifest["indices"], dtype=torch.long, device=dev)
            self.train_y[self.corrupted] = torch.tensor(self.manifest["labels"], dtype=torch.long, device=dev)
            if self.manifest.get("trigger"):
                shape = tuple(int(v) for v in self.train_x.shape[1:])
                self.trigger = make_trigger(self.manifest["trigger"], shape, self.mean, self.std)
                self.triggered[self.corrupted] = True
        self.everything = torch.arange(n, device=dev)
        self._set_discovered(self.discovered)

    def _set_discovered(self, discovered: list[int] | None) -> None:
        self.discovered = discovered
        self.is_forget = torch.zeros(self.num_train, dtype=torch.bool, device=self.device)
        if discovered:
            self.is_forget[torch.tensor(discovered, dtype=torch.long, device=self.device)] = True
        self.forget = torch.nonzero(self.is_forget).flatten()
        self.retain = torch.nonzero(~self.is_forget).flatten()

    def with_discovered(self, discovered: list[int] | None) -> "Task":
        """The same task with another discovered set D_f; shares the device tensors."""
        other = copy.copy(self)
        other._set_discovered(discovered)
        return other

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    # -- building inputs
    def inputs(self, x_u8: torch.Tensor, triggered: torch.Tensor | None, gen: torch.Generator | None) -> torch.Tensor:
        """uint8 images -> the network's float input (augmented when `gen` is given)."""
        if gen is not None:
            x_u8 = random_crop_flip(x_u8, self.augment.crop_padding, self.augment.flip, gen)
        x = normalise(x_u8, self.mean, self.std)
        if self.trigger is not None and triggered is not None:
            x = self.trigger.paste(x, triggered)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batch(self, idx: torch.Tensor, gen: torch.Generator | None, labels: torch.Tensor | None = None) -> Batch:
        y = (self.train_y if labels is None else labels)[idx]
        return Batch(self.inputs(self.train_x[idx], self.triggered[idx], gen), y, idx, self.is_forget[idx])

    def batches(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator, *, augment: bool = True,
                shuffle: bool = True, labels: torch.Tensor | None = None) -> Iterator[Batch]:
        """One epoch over `indices` (shuffled on the device), as augmented batches."""
        order = indices[torch.randperm(len(indices), generator=gen, device=indices.device)] if shuffle else indices
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size], gen if augment else None, labels)

    def num_batches(self, n: int, batch_size: int) -> int:
        return (n + batch_size - 1) // batch_size

    def generator(self, seed: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    # -- the evaluation sets of paper §5.1
    def corrupted_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """D_c with its images as trained on (trigger on), with clean labels and with corrupted labels."""
        idx = self.corrupted
        return self.train_x[idx], self.triggered[idx], idx

    def triggered_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_x, torch.ones(len(self.test_y), dtype=torch.bool, device=self.device)


def make_task(data: DataCfg, splits: Splits, device: torch.device, manifest: dict | None,
              discovered: list[int] | None = None) -> Task:
    """The task of one cell: channels_last inputs on CUDA, the params' augmentation."""
    return Task(splits, device, manifest["regularity"] if manifest else None, manifest, discovered, data.augment,
                channels_last=device.type == "cuda")
