"""The params loader under its earlier name: remflow.params is the one loader (its schema includes the
detection study's section). Kept so that scripts importing it keep working."""

from remflow.params import detection_checks, load_params, schema, validate

__all__ = ["detection_checks", "load_params", "schema", "validate"]
