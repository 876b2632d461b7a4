"""Data: loaders to uint8 tensors, the three corruptions, discovery, batched augmentation."""

from remflow.data.datasets import Splits, describe, load_splits

__all__ = ["Splits", "describe", "load_splits"]
