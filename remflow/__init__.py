"""remflow: corrupted-data unlearning for vision classifiers as a cacheable DVC pipeline."""

__version__ = "0.1.0"
